"""Cost growth with resolution: 64 -> 256 -> 1024 px, binary latent against pixel space.

For each resolution and its presets (64 px: ``emoji64``; 256 px: ``256px``; 1024 px:
``1024px``, the last two at their full published widths), on one real OpenMoji image at
that size (``bld prepare-openmoji --size N``), batch 1, in the precision the trainers' `auto` picks on this CPU:

* autoencoder training step: forward, reconstruction loss (L1 + MSE), backward;
* prior training step: the Bernoulli-diffusion loss on the image's latent shape, backward;
* sampling: 16 prior steps and one decode into an image;
* pixel space: the same transformer as that resolution's prior run over the image's 8 x 8
  pixel patches (what a pixel-space DiT with patch 8 processes); its training step is timed
  where it fits the time cap, otherwise only its FLOPs are given (marked "not run");
* latent bits / bytes per image next to the image's bytes (uint8 RGB).

Each measurement runs in a fresh process, so its peak resident memory (ru_maxrss) is its
own (the JSON also keeps the resident size once the model and input were built).
Activation checkpointing is off in every row, also where a preset turns it on; with
``--grad-checkpointing`` the largest autoencoder is measured with it too. FLOPs are counted
by torch's FlopCounterMode during the warm-up run. Nothing is asserted; timings depend on the machine and on its load.

    python benchmarks/scale.py            # ~15-25 min on a 2-core CPU
    python benchmarks/scale.py --quick    # tiny widths, a smoke test
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import common  # (sys.path set-up; imported before bld on purpose)
import torch

log = logging.getLogger("bench")

PRESETS = {64: "emoji64", 256: "256px", 1024: "1024px"}
PATCH = 8
# quick mode: the same architectures at tiny widths
QUICK_AE = ["model.channels=8", "model.hidden=32"]
QUICK_PRIOR_PRESET = "tiny"


def parse_args():
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--repeats", type=int, default=2, help="timed runs after the warm-up")
    p.add_argument("--pixel-cap-tflop", type=float, default=8.0,
                   help="run the pixel-space step only below this many TFLOPs")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="also time the 1024 px autoencoder with activation checkpointing")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # one measurement, run by main()
    return p.parse_args()


# ------------------------------------------------------------------------------ worker
def _rss_mb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _configs(size: int, quick: bool, ae_checkpointing: bool = False):
    """The size's presets (tiny widths when quick); activation checkpointing off in the prior
    and as asked in the autoencoder, whatever the preset says."""
    from bld.core.config import config_from_dict, load_config_dict
    from bld.training.prior import resolve_prior_config
    preset = PRESETS[size]
    ae_over = (QUICK_AE if quick else []) + [f"model.grad_checkpointing={str(ae_checkpointing).lower()}"]
    ae_cfg = config_from_dict("autoencoder", load_config_dict("autoencoder", preset, ae_over))
    pr_over = ([f"preset={QUICK_PRIOR_PRESET}"] if quick else []) + ["model.grad_checkpointing=false"]
    pr_cfg = config_from_dict("prior", load_config_dict("prior", preset, pr_over))
    pr_cfg = resolve_prior_config(pr_cfg, ae_cfg.model, 10)
    return ae_cfg, pr_cfg


def _pixel_model(prior_model, size: int):
    """The prior's transformer over the image's PATCH x PATCH RGB pixel patches."""
    import dataclasses
    return dataclasses.replace(prior_model, bits=3 * PATCH * PATCH, grid=size // PATCH)


def _image(size: int, quick: bool) -> tuple[torch.Tensor, str]:
    """One real image at size x size: OpenMoji at that size, or (quick) Fashion-MNIST resized."""
    from bld.data import build_dataset, default_openmoji_dir
    if not quick:
        if not default_openmoji_dir(size).is_dir():
            raise SystemExit(f"run `bld prepare-openmoji --size {size}` first")
        ds = build_dataset("openmoji", "test", image_size=size)
        return ds[0][0][None], f"openmoji-{size} test[0]"
    ds = build_dataset("fashion-mnist", "test", image_size=size, channels=3)
    return ds[0][0][None], "fashion-mnist test[0], resized"


def _timed(step, repeats: int) -> tuple[float, int]:
    """FLOPs of one step (counted during the warm-up) and the best of `repeats` timed steps."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return min(times), fc.get_total_flops()


def worker(spec: dict) -> dict:
    from bld.models.autoencoder import BinaryAutoencoder
    from bld.models.denoiser import Denoiser
    from bld.models.diffusion import BernoulliDiffusion
    from bld.models.sampling import sample
    torch.manual_seed(0)
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    size, what, quick = spec["size"], spec["what"], spec["quick"]
    # the 1024px preset turns checkpointing on; the table's rows are without it (the
    # `ae_ckpt` row with it), so the two are compared on the same model
    ckpt = bool(spec.get("grad_checkpointing"))
    ae_cfg, pr_cfg = _configs(size, quick, ae_checkpointing=ckpt)
    amp = common.autocast()
    res: dict = {"size": size, "what": what, "grad_checkpointing": ckpt}
    x, res["image"] = _image(size, quick)
    C, h, w = ae_cfg.model.latent_shape
    if what == "ae":
        model = BinaryAutoencoder(ae_cfg.model).train()
        res["params_M"] = sum(p.numel() for p in model.parameters()) / 1e6

        def step():
            model.zero_grad(set_to_none=True)
            with amp:
                out = model(x)
            r = out.recon.float()
            ((r - x).abs().mean() + ((r - x) ** 2).mean()).backward()
    elif what in ("prior", "pixel"):
        mcfg = _pixel_model(pr_cfg.model, size) if what == "pixel" else pr_cfg.model
        model = Denoiser(mcfg).train()
        diffusion = BernoulliDiffusion(pr_cfg.diffusion)
        res["params_M"] = sum(p.numel() for p in model.parameters()) / 1e6
        res["tokens"] = mcfg.grid ** 2
        if what == "pixel":  # the image's 8x8 patches, thresholded to bits: pixel-space tokens
            from einops import rearrange
            z0 = (rearrange(x, "b c (h p) (w q) -> b (c p q) h w", p=PATCH, q=PATCH) > 0).float()
        else:  # the latent of this image under an untrained encoder of the preset's shape
            z0 = (torch.rand(1, C, h, w, generator=torch.Generator().manual_seed(0)) < 0.5).float()
        y = torch.zeros(1, dtype=torch.long) if mcfg.num_classes else None

        def step():
            model.zero_grad(set_to_none=True)
            with amp:
                loss = diffusion.training_losses(model, z0, y).loss
            loss.float().backward()
    elif what == "sample":
        ae = BinaryAutoencoder(ae_cfg.model).eval()
        model = Denoiser(pr_cfg.model).eval()
        diffusion = BernoulliDiffusion(pr_cfg.diffusion)
        y = torch.zeros(1, dtype=torch.long) if pr_cfg.model.num_classes else None

        @torch.no_grad()
        def step():
            with amp:
                z = sample(model, diffusion, (1, C, h, w), steps=16, y=y,
                           generator=torch.Generator().manual_seed(0)).z0
                img = ae.decode(z)
            assert img.shape[-1] == size
    else:
        raise ValueError(what)
    res["rss_built_mb"] = _rss_mb()
    res["seconds"], res["flops"] = _timed(step, spec["repeats"])
    res["rss_peak_mb"] = _rss_mb()
    return res


# -------------------------------------------------------------------------------- main
def run_worker(spec: dict, timeout: float = 1800) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    log.info("measuring %s at %d px%s", spec["what"], spec["size"],
             " (activation checkpointing)" if spec.get("grad_checkpointing") else "")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"worker {spec} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def pixel_flops(size: int, quick: bool) -> int:
    """Forward+backward FLOPs (3 x forward) of the pixel-space transformer, from the model's count."""
    from bld.models.denoiser import Denoiser
    _, pr_cfg = _configs(size, quick)
    with torch.device("meta"):
        return 3 * Denoiser(_pixel_model(pr_cfg.model, size)).flops_per_forward()


def main() -> None:
    args = parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    bench = common.setup("scale", args, "15-25 min")
    base = {"quick": args.quick, "threads": args.threads, "repeats": 1 if args.quick else args.repeats}
    rows = []
    for size in args.sizes:
        ae_cfg, pr_cfg = _configs(size, args.quick)
        C, h, w = ae_cfg.model.latent_shape
        row = {"px": size, "preset": PRESETS[size],
               "latent": f"{h}x{w}x{C}", "latent_bits": C * h * w, "latent_bytes": C * h * w // 8,
               "pixel_bytes": 3 * size * size, "pixel_tokens": (size // PATCH) ** 2,
               "latent_tokens": h * w}
        row["prior_shape"] = f"{pr_cfg.model.width} x {pr_cfg.model.depth}"
        for what in ("ae", "prior", "sample"):
            r = run_worker({**base, "size": size, "what": what})
            row[what] = r
        if args.grad_checkpointing and size == max(args.sizes):
            row["ae_ckpt"] = run_worker({**base, "size": size, "what": "ae", "grad_checkpointing": True})
        flops = pixel_flops(size, args.quick)
        if flops / 1e12 <= args.pixel_cap_tflop:
            row["pixel"] = run_worker({**base, "size": size, "what": "pixel"})
        else:
            row["pixel"] = {"flops": flops, "seconds": None, "note": f"not run: {flops / 1e12:.0f} "
                            f"TFLOP per step is above the {args.pixel_cap_tflop:g} TFLOP cap"}
        rows.append(row)
        bench.results["rows"] = rows
    bench.results["rows"] = rows
    _report(bench, rows)


def _mb(r: dict, key: str) -> str:
    return f"{r[key]:.0f}" if r.get(key) is not None else "-"


def _report(bench, rows: list[dict]) -> None:
    table = []
    for r in rows:
        px = r["pixel"]
        table.append({
            "resolution": f"{r['px']} px", "latent": r["latent"],
            "bytes / image: latent vs pixels": f"{r['latent_bytes']} vs {r['pixel_bytes']} "
                                               f"({r['pixel_bytes'] / r['latent_bytes']:.0f}x)",
            "AE train step (s, GFLOP, peak MB)": f"{r['ae']['seconds']:.2f} / "
                                                 f"{r['ae']['flops'] / 1e9:.3g} / {_mb(r['ae'], 'rss_peak_mb')}",
            "prior train step (s, GFLOP, peak MB)": f"{r['prior']['seconds']:.2f} / "
                                                    f"{r['prior']['flops'] / 1e9:.3g} / "
                                                    f"{_mb(r['prior'], 'rss_peak_mb')}",
            "sample, 16 steps + decode (s)": f"{r['sample']['seconds']:.2f}",
            "tokens: latent vs 8x8 pixel patches": f"{r['latent_tokens']} vs {r['pixel_tokens']}",
            "same transformer on pixel patches (s, GFLOP)": (
                f"{px['seconds']:.2f} / {px['flops'] / 1e9:.3g}" if px.get("seconds") is not None
                else f"not run / {px['flops'] / 1e9:.3g}"),
        })
    bench.results["table_md"] = common.markdown_table(table)  # benchmarks/publish.py shows it
    sections = [f"## Cost per image, batch 1, CPU ({common.precision_name()})", "",
                bench.results["table_md"], "",
                "Prior widths x depths: " + ", ".join(f"{r['px']} px {r['prior_shape']}" for r in rows)
                + ". Peak MB is the measuring process's peak resident memory (model, optimizer-free"
                " step, Python and torch included).", ""]
    ck = [r for r in rows if "ae_ckpt" in r]
    for r in ck:
        a, b = r["ae"], r["ae_ckpt"]
        sections += [f"Activation checkpointing, {r['px']} px autoencoder step: {a['seconds']:.2f} s / "
                     f"{a['rss_peak_mb']:.0f} MB peak without, {b['seconds']:.2f} s / "
                     f"{b['rss_peak_mb']:.0f} MB with.", ""]
    xs = [r["px"] for r in rows]
    series_t = {"autoencoder step": (xs, [r["ae"]["seconds"] for r in rows]),
                "prior step (binary latent)": (xs, [r["prior"]["seconds"] for r in rows]),
                "sampling, 16 steps": (xs, [r["sample"]["seconds"] for r in rows])}
    pix = [(r["px"], r["pixel"]["seconds"]) for r in rows if r["pixel"].get("seconds") is not None]
    if pix:
        series_t["same transformer on pixel patches"] = ([p for p, _ in pix], [s for _, s in pix])
    common.plot_lines(bench.path("_seconds.png"), series_t, xlabel="resolution (px)",
                      ylabel="seconds per image (batch 1)", logx=True, logy=True,
                      title=f"Cost growth on this CPU ({common.precision_name()})")
    common.plot_lines(bench.path("_bytes.png"),
                      {"binary latent": (xs, [r["latent_bytes"] for r in rows]),
                       "pixels (uint8 RGB)": (xs, [r["pixel_bytes"] for r in rows])},
                      xlabel="resolution (px)", ylabel="bytes per image", logx=True, logy=True,
                      title="Storage per image")
    sections += [f"![seconds]({bench.path('_seconds.png').name}) ![bytes]({bench.path('_bytes.png').name})", ""]
    common.write_report(bench, "Cost growth: 64 -> 256 -> 1024 px", sections)
    if not bench.args.quick:
        big = max(rows, key=lambda r: r["px"])
        common.update_headline(bench, {
            f"latent_bytes_{big['px']}px": big["latent_bytes"],
            f"ae_train_step_s_{big['px']}px": big["ae"]["seconds"],
            f"ae_train_peak_mb_{big['px']}px": big["ae"]["rss_peak_mb"],
            f"prior_train_step_s_{big['px']}px": big["prior"]["seconds"],
            f"sample16_s_{big['px']}px": big["sample"]["seconds"]})


if __name__ == "__main__":
    main()
