"""Inference on a trained (prior, autoencoder) pair, as plain functions: encode a dataset
into a latent cache, generate, inpaint, reconstruct.

They hold the short loops (as diffusers pipelines do); `BinaryLatentDiffusionPipeline`
(`bld.inference.pipeline`) wraps them as one object with checked inputs, and `bld.evaluation.evaluate` samples
through `generate`. Imports bld.models (autoencoder, packing, sampling) and
bld.core (device, loading, metrics; checkpoint for the cache's fingerprint and write errors).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..core.device import autocast
from ..core.loading import LoadedPrior
from ..core.metrics import psnr_from_mse
from ..models.autoencoder import BinaryAutoencoder
from ..models.packing import pack_bits
from ..models.sampling import DEFAULT_EVIDENCE_WEIGHT, sample, student_sample


@torch.no_grad()
def encode_dataset(ae: BinaryAutoencoder, dataset: Dataset, out_path: str | Path, *,
                   batch_size: int = 256, device: torch.device | str = "cpu",
                   precision: str = "auto", metadata: dict | None = None,
                   progress: bool = True) -> Path:
    """Encode every image deterministically; write packed bits (1 bit per element) + labels.

    The file is safetensors: ``packed`` (N, ceil(C h w / 8)) uint8 and ``labels`` (N,) int64,
    with the latent shape and class names in its metadata. Written atomically.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    from ..core.checkpoint import WriteError, weights_fingerprint, write_failure
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    packed, labels = [], []
    for x, y in tqdm(loader, desc="encode", disable=not progress, mininterval=1.0):
        with autocast(device, precision):
            bits = ae.encode(x.to(device), deterministic=True)
        packed.append(pack_bits(bits).cpu())
        labels.append(torch.as_tensor(y).long())
    meta = {"format": "bld-latents", "shape": json.dumps(list(ae.config.latent_shape)),
            "classes": json.dumps(list(getattr(dataset, "classes", ()))),
            "autoencoder_id": weights_fingerprint(ae.state_dict())}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    try:
        save_file({"packed": torch.cat(packed).contiguous(), "labels": torch.cat(labels)},
                  str(tmp), metadata=meta)
        os.replace(tmp, out_path)
    except (OSError, SafetensorError) as e:
        tmp.unlink(missing_ok=True)
        raise WriteError(write_failure(out_path, e)) from e
    return out_path


def class_labels(prior: LoadedPrior, classes: list[int | str] | None, n: int
                 ) -> torch.Tensor | None:
    """Labels for n samples: given classes (ids or names) repeated, or None (unconditional)."""
    if classes is None or len(classes) == 0:
        return None
    nc = prior.config.model.num_classes
    if nc == 0:
        raise ValueError("this prior is unconditional; drop --class")
    ids = []
    for c in classes:
        if isinstance(c, str) and not c.lstrip("-").isdigit():
            if c not in prior.classes:
                raise ValueError(f"unknown class {c!r}; classes are {list(prior.classes)}")
            ids.append(prior.classes.index(c))
        else:
            i = int(c)
            if not 0 <= i < nc:
                raise ValueError(f"class {i} out of range 0..{nc - 1}")
            ids.append(i)
    return torch.tensor(ids).repeat(math.ceil(n / len(ids)))[:n]


@dataclass
class GenerateResult:
    images: torch.Tensor  # (N, c, H, W) in [-1, 1]
    bits: torch.Tensor  # (N, C, h, w)
    labels: torch.Tensor | None
    seconds: float
    # z_T, then z_t after each of the S steps: S + 1 tensors (N, C, h, w), on request
    trajectory: list[torch.Tensor] | None = None
    timesteps: list[int] | None = None  # the visited t, in order


@torch.no_grad()
def generate(prior: LoadedPrior, ae: BinaryAutoencoder, n: int, *, steps: int = 16,
             temperature: float = 1.0, guidance: float = 0.0,
             evidence_weight: float = DEFAULT_EVIDENCE_WEIGHT,
             guidance_interval: tuple[float, float] = (0.0, 1.0),
             labels: torch.Tensor | None = None, seed: int = 0, batch_size: int = 256,
             precision: str = "auto", known: torch.Tensor | None = None,
             mask: torch.Tensor | None = None, progress: bool = False,
             generator: torch.Generator | None = None,
             callback: Callable[[int, int], None] | None = None,
             return_trajectory: bool = False) -> GenerateResult:
    """Sample n latents from the prior in ``steps`` steps and decode them (a distilled
    student, ``prior.config.student``, in its K = ``steps`` evaluations, without guidance).

    The generator is seeded once (from ``seed`` unless one is given), so the same seed and
    batch size give the same images. ``callback(done, total)`` counts sampling steps over all
    batches; ``return_trajectory`` keeps z_T and z_t after every step (``.trajectory``).
    """
    import time
    device = next(prior.model.parameters()).device
    student = prior.config.student
    if student.design and guidance != 0:
        raise ValueError(f"this prior is a distilled student ({student.design}, K = "
                         f"{student.steps}): guidance is folded into its weights; drop --guidance")
    if student.design and known is not None:
        raise ValueError("a distilled student maps noise to a sample in one go and cannot "
                         "inpaint; inpaint with its teacher "
                         f"({student.teacher or 'a diffusion prior'})")
    if guidance != 0 and prior.model.null_label is None:
        raise ValueError("this prior is unconditional (trained without class labels), so "
                         "classifier-free guidance does not apply; drop --guidance")
    if guidance != 0 and labels is None:
        raise ValueError("guidance needs class labels (--class)")
    g = generator if generator is not None else torch.Generator(device).manual_seed(seed)
    shape = ae.config.latent_shape
    imgs, bits, traj, timesteps = [], [], [], None
    t0 = time.perf_counter()
    batches = range(0, n, batch_size)
    for k, i in enumerate(tqdm(batches, desc="sample", disable=not progress)):
        b = min(batch_size, n - i)
        y = labels[i:i + b].to(device) if labels is not None else None
        kn = known[i:i + b] if known is not None else None
        mk = mask[i:i + b] if mask is not None else None
        step_cb = None if callback is None else (
            lambda j, s, k=k: callback(k * s + j, len(batches) * s))
        with autocast(device, precision):
            if student.design:
                out = student_sample(prior.model, prior.diffusion, (b, *shape),
                                     design=student.design, steps=steps, bits=student.bits, y=y,
                                     temperature=temperature, generator=g, device=device,
                                     return_intermediates=return_trajectory, callback=step_cb)
            else:
                out = sample(prior.model, prior.diffusion, (b, *shape), steps=steps, y=y,
                             guidance=guidance, temperature=temperature,
                             evidence_weight=evidence_weight,
                             guidance_interval=guidance_interval,
                             null_label=prior.model.null_label, known=kn, mask=mk,
                             generator=g, device=device,
                             return_intermediates=return_trajectory, callback=step_cb)
            x = ae.decode(out.z0).float().clamp(-1, 1)
        imgs.append(x.cpu())
        bits.append(out.z0.cpu())
        traj.append([out.z_T, *out.intermediates] if return_trajectory else [])
        timesteps = out.timesteps
    trajectory = ([torch.cat([t[s] for t in traj]) for s in range(len(traj[0]))]
                  if return_trajectory and traj else None)
    return GenerateResult(torch.cat(imgs), torch.cat(bits), labels,
                          time.perf_counter() - t0, trajectory, timesteps)


@torch.no_grad()
def inpaint(prior: LoadedPrior, ae: BinaryAutoencoder, image: torch.Tensor,
            pixel_mask: torch.Tensor, n: int = 4, paste: bool = True, **kwargs
            ) -> GenerateResult:
    """Complete the unknown part of ``image`` (c, H, W) where ``pixel_mask`` (H, W) is 0.

    Known bits come from encoding the image; a latent position is kept only when its whole
    pixel patch is known (docs/method.md §2). Returns n completions, pasted onto the known pixels
    unless ``paste`` is False (then the images are the decoder's output everywhere).
    """
    device = next(prior.model.parameters()).device
    x = image[None].to(device)
    known = ae.encode(x, deterministic=True).expand(n, -1, -1, -1)
    m = ae.latent_mask(pixel_mask[None, None].to(device)).expand(n, -1, -1, -1)
    res = generate(prior, ae, n, known=known, mask=m, **kwargs)
    if not paste:
        return res
    keep = pixel_mask[None, None].to(res.images.dtype)
    res.images = keep * image[None].cpu() + (1 - keep) * res.images
    return res


@dataclass
class ReconstructResult:
    recon: torch.Tensor
    l1: float
    mse: float
    psnr: float


@torch.no_grad()
def reconstruct(ae: BinaryAutoencoder, images: torch.Tensor, batch_size: int = 256,
                precision: str = "fp32") -> ReconstructResult:
    """Images through encode -> deterministic bits -> decode, with the errors (range [-1, 1]).
    In fp32 unless ``precision`` says otherwise: the errors are measured figures."""
    device = next(ae.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        with autocast(device, precision):
            out.append(ae(images[i:i + batch_size].to(device), deterministic=True)
                       .recon.float().clamp(-1, 1).cpu())
    recon = torch.cat(out)
    err = recon - images.float()
    mse = err.pow(2).mean().item()
    return ReconstructResult(recon, err.abs().mean().item(), mse, psnr_from_mse(mse))
