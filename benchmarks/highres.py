"""Short CPU runs of the 256 px and 1024 px presets on OpenMoji: how far a stated budget gets.

The preset's shapes are kept (levels, downsampling factor, one latent of 64 bits per
position: 16 x 16 at 256 px, 32 x 32 at 1024 px, no hierarchy); the widths are cut and the
losses are the ones the Fashion-MNIST study found fastest per CPU-second (MSE only,
thresholded bits), because the published widths take tens of seconds a step here
(benchmarks/scale.py measures them). Stages, each through the `bld` CLI and resumable:

1. `bld train-ae --config <size>px` on OpenMoji at that size (`bld prepare-openmoji`);
2. reconstructions of the test split: PSNR over all of it, a grid of the first 8;
3. `bld encode` of the training split;
4. `bld train-prior --config <size>px` on the packed bits (a smaller denoiser preset);
5. `bld sample`: 16 images at 16 steps, written at the full size.

Writes ``<out>/highres_<size>.json`` / ``.md`` and the two grids next to them.

    python benchmarks/highres.py --size 256     # the stated budget: see BUDGETS
    python benchmarks/highres.py --size 1024
    python benchmarks/highres.py --size 256 --quick   # a few steps, a smoke test
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import common  # noqa: F401  (sys.path set-up; imported before bld on purpose)
import torch

log = logging.getLogger("bench")

# size -> autoencoder overrides, AE steps x batch, latents encoded for the prior (0 = the
# whole training split), prior preset, prior steps x batch
BUDGETS = {
    256: {"ae": ["model.channels=16", "model.hidden=64"], "ae_steps": 250, "ae_batch": 8, "encode_limit": 0,
          "prior_preset": "small", "prior_steps": 400, "prior_batch": 16},
    1024: {"ae": ["model.channels=8", "model.hidden=32"], "ae_steps": 40, "ae_batch": 1, "encode_limit": 64,
           "prior_preset": "tiny", "prior_steps": 60, "prior_batch": 4},
}
CPU_LOSS = ["loss.l1_weight=0", "loss.mse_weight=1", "loss.disc_weight=0",
            "model.train_bits=threshold", "optim.lr=0.002", "optim.warmup=50",
            "optim.ema_decay=0.99"]


def parse_args():
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, choices=sorted(BUDGETS), required=True)
    p.add_argument("--work", type=Path, default=None,
                   help="run folders (default runs/highres-<size>); a rerun resumes there")
    return p.parse_args()


def _train(kind: str, work: Path, argv: list[str]) -> dict:
    run = work / kind
    common.run_bld(argv + ["--out", str(run)] + (["--resume"] if (run / "latest").exists() else []))
    return {}


def main() -> None:
    args = parse_args()
    size = args.size
    b = dict(BUDGETS[size])
    if args.quick:
        b.update(ae_steps=3, ae_batch=2, prior_steps=3, prior_batch=2, prior_preset="tiny")
    bench = common.setup(f"highres_{size}", args, "20-40 min", "2-4 min")
    work = args.work or Path(f"runs/highres-{size}{'-quick' if args.quick else ''}")
    work.mkdir(parents=True, exist_ok=True)
    data = ["--data", "openmoji", "--set", f"data.image_size={size}"]
    ae_set = [a for o in b["ae"] + CPU_LOSS + ["run.sample_every=0", "run.ckpt_every=100"]
              for a in ("--set", o)]
    rec: dict = {"size": size, "budget": b, "cpu_loss": CPU_LOSS}

    rec["autoencoder"] = common.resumable_stage(work, "autoencoder", lambda: _train("autoencoder", work, [
        "train-ae", "--config", f"{size}px", *data, "--steps", str(b["ae_steps"]),
        "--batch-size", str(b["ae_batch"]), *ae_set]))

    def recon() -> dict:
        from bld.core.loading import load_autoencoder
        from bld.core.plots import image_grid, save_image
        from bld.data import build_dataset
        from bld.inference.generate import reconstruct
        ae = load_autoencoder(work / "autoencoder")
        test = build_dataset("openmoji", "test", image_size=size)
        x = torch.stack([test[i][0] for i in range(len(test))])
        res = reconstruct(ae, x, batch_size=8)
        save_image(image_grid(torch.cat([x[:8], res.recon[:8]]), nrow=8), work / "reconstructions.png")
        return {"test_images": len(test), "psnr_db": res.psnr, "l1": res.l1,
                "latent_shape": list(ae.config.latent_shape),
                "params_M": sum(p.numel() for p in ae.parameters()) / 1e6}
    rec["reconstruction"] = common.resumable_stage(work, "reconstruction", recon)

    latents = work / "latents.safetensors"
    rec["encode"] = common.resumable_stage(work, "encode", lambda: common.run_bld([
        "encode", "--autoencoder", str(work / "autoencoder"), "--out", str(latents),
        "--batch-size", "8", "--limit", str(b.get("encode_limit", 0))]))

    rec["prior"] = common.resumable_stage(work, "prior", lambda: _train("prior", work, [
        "train-prior", "--config", f"{size}px", *data, "--autoencoder", str(work / "autoencoder"),
        "--latents", str(latents), "--preset", b["prior_preset"], "--steps", str(b["prior_steps"]),
        "--batch-size", str(b["prior_batch"]), "--set", "optim.lr=0.001", "--set", "optim.warmup=100",
        "--set", "optim.ema_decay=0.99", "--set", "run.sample_every=0", "--set", "run.ckpt_every=100"]))

    def samples() -> dict:
        from PIL import Image
        common.run_bld(["sample", "--prior", str(work / "prior"), "-n", "16", "--steps", "16", "--nrow", "8",
              "--out", str(work / "samples.png"), "--individual", str(work / "samples")])
        first = sorted((work / "samples").glob("*.png"))[0]
        return {"images": 16, "steps": 16, "image_size": list(Image.open(first).size)}
    rec["sample"] = common.resumable_stage(work, "sample", samples)

    for name in ("reconstructions.png", "samples.png"):
        if size <= 256:
            shutil.copyfile(work / name, bench.path(f"_{name}"))
        else:  # a 1024 px grid is ~10 MB of PNG: the published copy is at a quarter scale
            from PIL import Image
            with Image.open(work / name) as im:
                im.resize((im.width // 4, im.height // 4), Image.LANCZOS).save(bench.path(f"_{name}"))
    for kind in ("autoencoder", "prior"):
        m = work / kind / "metrics.csv"
        if m.exists():
            rows = m.read_text().strip().splitlines()
            rec[kind]["last_metrics"] = dict(zip(rows[0].split(","), rows[-1].split(",")))
    bench.results = rec
    r, a, p = rec["reconstruction"], rec["autoencoder"], rec["prior"]
    lines = [
        f"Autoencoder: `{size}px` preset shapes at reduced width ({', '.join(b['ae'])}; "
        f"{r['params_M']:.2f}M parameters), {' '.join(CPU_LOSS)}, {b['ae_steps']} steps x batch "
        f"{b['ae_batch']} in {a['seconds'] / 60:.1f} min; latent {r['latent_shape']} = "
        f"{r['latent_shape'][0] * r['latent_shape'][1] * r['latent_shape'][2] // 8} bytes per image.", "",
        f"Reconstruction PSNR over the {r['test_images']} OpenMoji-{size} test images: "
        f"{r['psnr_db']:.2f} dB.", "",
        f"Prior: denoiser preset `{b['prior_preset']}` on "
        f"{'all training latents' if not b.get('encode_limit') else str(b['encode_limit']) + ' training latents'}"
        f", {b['prior_steps']} steps x batch "
        f"{b['prior_batch']} in {p['seconds'] / 60:.1f} min. Samples: 16 at 16 steps, "
        f"{rec['sample']['image_size'][0]} x {rec['sample']['image_size'][1]} px each.", "",
        f"![reconstructions]({bench.path('_reconstructions.png').name})", "",
        *(["Grids shown at a quarter of their size; the run folder holds them at full size.", ""]
          if size > 256 else []),
        f"![samples]({bench.path('_samples.png').name})", ""]
    common.write_report(bench, f"{size} px on OpenMoji: a short CPU run", lines)


if __name__ == "__main__":
    main()
