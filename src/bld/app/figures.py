"""Pictures of a trained pipeline that `bld demo` and `bld eval` write beside their reports:
the denoising trajectory, and one row of samples per class next to real test images.

Imports bld.inference.pipeline and bld.core.plots.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..core.plots import labelled_grid
from ..inference.pipeline import BinaryLatentDiffusionPipeline, bits_flipped


def trajectory_figure(pipe: BinaryLatentDiffusionPipeline, out_path: str | Path, *,
                      n: int = 4, steps: int = 16, guidance: float | None = None,
                      temperature: float | None = None, evidence_weight: float | None = None,
                      guidance_interval: tuple[float, float] | None = None,
                      seed: int = 0) -> Path:
    """Decoded z_t at every sampling step (columns) for n samples (rows), with how many
    bits flipped at each step under each image."""
    kw = {} if evidence_weight is None else {"evidence_weight": evidence_weight}
    labels = list(range(pipe.num_classes))[:n] if pipe.num_classes else None
    out = pipe(class_labels=labels, n=n, steps=steps, guidance=guidance,
               guidance_interval=guidance_interval, temperature=temperature, seed=seed,
               return_trajectory=True, **kw)
    traj = out.trajectory  # S + 1 states: z_T, then after each step
    flips = bits_flipped(traj)  # (S, n)
    frames = torch.stack([pipe.decode(z, output_type="pt") for z in traj], 1)  # (n, S+1, ...)
    ts = [pipe.timesteps, *out.timesteps[1:], 0]
    cols = [f"z_{t}" for t in ts]
    notes = [["coin flips"] + [f"{int(flips[s, i])} flipped" for s in range(len(flips))]
             for i in range(n)]
    rows = ([pipe.classes[y] if pipe.classes else str(y) for y in out.labels.tolist()]
            if out.labels is not None else [f"sample {i}" for i in range(n)])
    total = pipe.latent_shape[0] * pipe.latent_shape[1] * pipe.latent_shape[2]
    return labelled_grid(frames.flatten(0, 1), len(ts), out_path, row_labels=rows,
                         col_labels=cols, cell_notes=notes,
                         title=f"denoising trajectory: decoded z_t at each of {steps} steps "
                               f"({total} bits per image; bits flipped by each step)")


def class_rows_figure(pipe: BinaryLatentDiffusionPipeline, test_images: torch.Tensor,
                      test_labels: torch.Tensor, out_path: str | Path, *, k: int = 6,
                      steps: int = 16, guidance: float | None = None,
                      temperature: float | None = None, evidence_weight: float | None = None,
                      guidance_interval: tuple[float, float] | None = None,
                      seed: int = 0) -> Path:
    """One row per class: k real test images of the class, a gap, k samples of it."""
    if not pipe.num_classes:
        raise ValueError("the per-class figure needs a class-conditional prior")
    kw = {} if evidence_weight is None else {"evidence_weight": evidence_weight}
    nc = pipe.num_classes
    out = pipe(class_labels=torch.arange(nc).repeat_interleave(k), steps=steps,
               guidance=guidance, guidance_interval=guidance_interval,
               temperature=temperature, seed=seed, output_type="pt", **kw)
    blank = torch.ones_like(test_images[:1])  # white, as the grid padding
    tiles = []
    for c in range(nc):
        real = test_images[test_labels == c][:k]
        real = torch.cat([real, blank.expand(k - len(real), -1, -1, -1)])
        tiles += [real, blank, out.images[c * k:(c + 1) * k]]
    cols = ["test images" if i == k // 2 else "" for i in range(k)] + [""] + \
        ["samples" if i == k // 2 else "" for i in range(k)]
    names = [pipe.classes[c] if pipe.classes else str(c) for c in range(nc)]
    return labelled_grid(torch.cat(tiles), 2 * k + 1, out_path, row_labels=names,
                         col_labels=cols, cell_inches=0.5,
                         title=f"real test images (left) and samples (right) per class, "
                               f"{steps} steps, guidance {out_guidance(pipe, guidance)}")


def out_guidance(pipe: BinaryLatentDiffusionPipeline, guidance: float | None) -> float:
    return pipe.default_guidance if guidance is None else guidance
