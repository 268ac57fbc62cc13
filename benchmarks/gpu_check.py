"""GPU check: train the 256 px and 1024 px presets briefly (precision auto: bf16 on CUDA) and record what they cost.

For each size: the preset's autoencoder trains for a few hundred steps on OpenMoji at that
size, encodes a subset to packed bits, the preset's prior trains on them, and `bld sample`
writes a grid of 16 images at 16 steps. Recorded per stage: steps/s and images/s (from the
trainer's metrics.csv and from wall time), peak accelerator memory
(torch.cuda.max_memory_allocated; on CPU the process's peak resident memory), sampling
images/s, and the grid's path. Results go to ``<out>/gpu_check.json`` and ``.md``.

Resumable: each finished stage leaves ``<work>/<size>/<stage>.json`` and is skipped on the
next call; an unfinished training stage resumes from its last checkpoint.

    bash benchmarks/gpu_check.sh                         # on a CUDA machine, <= 8 min on one H100
    bash benchmarks/gpu_check.sh --device cpu --tiny     # the same path at tiny sizes, on CPU

OpenMoji must be prepared at each size first (`bld prepare-openmoji --size N`, or the
script does it when npm is reachable); with ``--tiny`` Fashion-MNIST, resized to the size in
RGB, stands in so the check runs anywhere.
"""

from __future__ import annotations

import csv
import logging
import resource
import statistics
import time
from pathlib import Path

import common  # noqa: F401  (sys.path set-up; imported before bld on purpose)
import torch

log = logging.getLogger("bench")

SIZES = (256, 1024)
# steps per stage on a GPU: sized so the whole check stays under 8 minutes on one H100
FULL = {"ae_steps": {256: 300, 1024: 150}, "ae_batch": {256: 8, 1024: 2},
        "prior_steps": {256: 300, 1024: 150}, "prior_batch": {256: 32, 1024: 16},
        "encode_limit": 512, "samples": 16}
TINY = {"ae_steps": {256: 3, 1024: 2}, "ae_batch": {256: 2, 1024: 1},
        "prior_steps": {256: 3, 1024: 2}, "prior_batch": {256: 4, 1024: 2},
        "encode_limit": 8, "samples": 4}
TINY_AE = ["model.channels=4", "model.hidden=16", "model.bits=8"]
TINY_PRIOR = ["preset=tiny"]


def parse_args():
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tiny", action="store_true",
                   help="tiny widths, a few steps, Fashion-MNIST resized: the path end to end")
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    p.add_argument("--work", type=Path, default=Path("runs/gpu_check"),
                   help="run folders (checkpoints, latents, samples); reruns resume here")
    return p.parse_args()


def _peak_reset(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _peak_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process-wide, monotonic


def _median_images_per_s(run_dir: Path) -> float | None:
    path = run_dir / "metrics.csv"
    if not path.exists():
        return None
    with path.open() as f:
        vals = [float(r["images_per_s"]) for r in csv.DictReader(f) if r.get("images_per_s")]
    return statistics.median(vals) if vals else None


def check_size(size: int, args, plan: dict) -> dict:
    from bld.core.config import config_from_dict, load_config_dict
    from bld.training.loop import train_autoencoder, train_prior

    work = args.work / str(size)
    work.mkdir(parents=True, exist_ok=True)
    preset = f"{size}px"
    data = (["data.source=fashion-mnist", f"data.image_size={size}", "data.channels=3"]
            if args.tiny else ["data.source=openmoji", f"data.image_size={size}"])
    common_over = data + [f"run.device={args.device}", "run.precision=auto", f"run.seed={args.seed}"]
    out: dict = {"size": size, "preset": preset}

    def train(kind: str, over: list[str], steps: int, batch: int, fn) -> dict:
        run_dir = work / kind
        cfg = config_from_dict(kind, load_config_dict(kind, preset, common_over + over + [
            f"optim.steps={steps}", f"optim.batch_size={batch}", f"run.ckpt_every={max(1, steps // 3)}",
            "run.sample_every=0", "optim.warmup=10"]))
        _peak_reset(args.device)
        t0 = time.perf_counter()
        fn(cfg, run_dir, resume=(run_dir / "latest").exists())
        wall = time.perf_counter() - t0
        return {"steps": steps, "batch": batch, "wall_s": wall, "steps_per_s_wall": steps / wall,
                "images_per_s_median": _median_images_per_s(run_dir),
                "peak_mb": _peak_mb(args.device)}

    ae_over = TINY_AE if args.tiny else []
    out["autoencoder"] = common.resumable_stage(work, "autoencoder", lambda: train(
        "autoencoder", ae_over, plan["ae_steps"][size], plan["ae_batch"][size], train_autoencoder))

    latents = work / "latents.safetensors"

    def encode() -> dict:
        common.run_bld(["encode", "--autoencoder", str(work / "autoencoder"), "--out", str(latents),
                        "--limit", str(plan["encode_limit"]), "--device", args.device,
                        "--batch-size", "16"])
        return {"images": plan["encode_limit"]}
    out["encode"] = common.resumable_stage(work, "encode", encode)

    pr_over = (TINY_PRIOR if args.tiny else []) + [f"autoencoder={work / 'autoencoder'}",
                                                   f"latents={latents}"]
    out["prior"] = common.resumable_stage(work, "prior", lambda: train(
        "prior", pr_over, plan["prior_steps"][size], plan["prior_batch"][size], train_prior))

    def sample() -> dict:
        grid = work / "samples.png"
        n = plan["samples"]
        _peak_reset(args.device)
        # one warm-up call, then the timed one
        for path in (work / "warmup.png", grid):
            t0 = time.perf_counter()
            common.run_bld(["sample", "--prior", str(work / "prior"), "-n", str(n), "--steps", "16",
                            "--out", str(path), "--device", args.device])
            wall = time.perf_counter() - t0
        return {"images": n, "steps": 16, "wall_s": wall, "images_per_s": n / wall,
                "peak_mb": _peak_mb(args.device), "grid": str(grid)}
    out["sample"] = common.resumable_stage(work, "sample", sample)
    return out


def main() -> None:
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; use --device cpu --tiny to check the path")
    args.quick = args.quick or args.tiny  # tiny figures go to results/quick/, not the published ones
    bench = common.setup("gpu_check", args, "<= 8 min on one H100", "1-3 min on a CPU")
    plan = TINY if args.tiny else FULL
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    rows = []
    for size in args.sizes:
        rows.append(check_size(size, args, plan))
        bench.results = {"device": device_name, "tiny": args.tiny, "sizes": rows}
    table = [{"size": f"{r['size']} px",
              "AE steps/s (batch)": f"{r['autoencoder']['steps_per_s_wall']:.2f} "
                                    f"({r['autoencoder']['batch']})",
              "AE peak MB": f"{r['autoencoder']['peak_mb']:.0f}",
              "prior steps/s (batch)": f"{r['prior']['steps_per_s_wall']:.2f} ({r['prior']['batch']})",
              "prior peak MB": f"{r['prior']['peak_mb']:.0f}",
              "sampling img/s, 16 steps": f"{r['sample']['images_per_s']:.2f}",
              "grid": r["sample"]["grid"]} for r in rows]
    common.write_report(bench, f"GPU check ({device_name}{', tiny' if args.tiny else ''})", [
        "Steps/s from wall time of the whole stage (start-up and checkpoints included); "
        "peak MB is torch.cuda.max_memory_allocated on CUDA, peak resident memory on CPU.", "",
        common.markdown_table(table), ""])


if __name__ == "__main__":
    main()
