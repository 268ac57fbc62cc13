"""Which demo configuration learns the most inside the demo's fp32 budget on an AVX2 CPU.

Each arm is an autoencoder configuration and a prior configuration (overrides on the
Fashion-MNIST presets, with step counts). Two measurements per arm, made apart because one
needs a fast device and the other the target CPU:

* ``--train``: train every arm through the `bld` command line (train-ae, encode,
  train-prior, eval: N = 1000, S = 16, the demo's guidance), many arms at once as separate
  processes (``--jobs``), on any device; figures go to ``<out>/quality.json``. The arms'
  quality depends on the steps and settings, not on the device.
* ``--cost``: on this CPU, `bld.app.budget.calibrate` times each arm's steps in the precision
  `auto` picks here (for the demo's target: run it with the AVX2 restriction below) and
  predicts the whole demo's seconds for the arm; written to ``<out>/cost_<kind>.json``.

``--report`` joins the two into ``benchmarks/results/budget_sweep.md``.

    python benchmarks/budget_sweep.py --train --device cuda --jobs 12 --out runs/sweep
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 \\
        python benchmarks/budget_sweep.py --cost --out runs/sweep
    python benchmarks/budget_sweep.py --report --out runs/sweep
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent

# autoencoder arms: overrides on the fashion-mnist preset (channels 16, 2500 steps x 64)
AE_ARMS = {
    "ae16-2500": [],
    "ae16-1200": ["optim.steps=1200"],
    "ae12-2000": ["model.channels=12", "optim.steps=2000"],
    "ae12-1200": ["model.channels=12", "optim.steps=1200"],
    "ae16-1800": ["optim.steps=1800"],
    "ae16-1500": ["optim.steps=1500"],
}
C = ["model.width=192", "model.heads=3", "model.depth=4"]  # the demo's compact prior
P2 = ["model.patch=2"]  # 2 x 2 grid positions per token: 16 tokens instead of 49
# prior arms: (autoencoder arm, overrides on the fashion-mnist prior preset, seed)
PRIOR_ARMS = {
    "p256x6-2800@ae16-2500": ("ae16-2500", [], 0),
    "p256x6-1000@ae16-2500": ("ae16-2500", ["optim.steps=1000"], 0),
    "p256x6-2800@ae16-1200": ("ae16-1200", [], 0),
    "p192x6-2000@ae16-1200": ("ae16-1200", ["model.width=192", "optim.steps=2000"], 0),
    "p192x6-2000@ae16-1200-s1": ("ae16-1200", ["model.width=192", "optim.steps=2000"], 1),
    "p192x6-2800@ae16-1200": ("ae16-1200", ["model.width=192"], 0),
    "p192x4-2800@ae16-1200": ("ae16-1200", ["model.width=192", "model.depth=4"], 0),
    "p128x6-3000@ae16-1200": ("ae16-1200", ["model.width=128", "optim.steps=3000"], 0),
    "p256x4-1500@ae16-1200": ("ae16-1200", ["model.depth=4", "optim.steps=1500"], 0),
    "p192x6-2000-lr2e-3@ae16-1200": ("ae16-1200", ["model.width=192", "optim.steps=2000",
                                                   "optim.lr=0.002"], 0),
    "p192x6-2000@ae12-1200": ("ae12-1200", ["model.width=192", "optim.steps=2000"], 0),
    "p192x6-2000@ae12-2000": ("ae12-2000", ["model.width=192", "optim.steps=2000"], 0),
    # round 2: fewer tokens (patch 2), so more steps or width fit the budget
    "p256x6p2-2800@ae16-2500": ("ae16-2500", P2, 0),
    "p256x6p2-2800@ae16-1200": ("ae16-1200", P2, 0),
    "p256x6p2-2800@ae16-1200-s1": ("ae16-1200", P2, 1),
    "p256x6p2-4000@ae16-1200": ("ae16-1200", P2 + ["optim.steps=4000"], 0),
    "p384x6p2-2800@ae16-1200": ("ae16-1200", P2 + ["model.width=384", "model.heads=6"], 0),
    "p256x8p2-2800@ae16-1200": ("ae16-1200", P2 + ["model.depth=8"], 0),
    "p256x6p2-2800-lr3e-3@ae16-1200": ("ae16-1200", P2 + ["optim.lr=0.003"], 0),
    "p256x6p2-2800-b64@ae16-1200": ("ae16-1200", P2 + ["optim.batch_size=64"], 0),
    "p256x6p3-2800@ae16-1200": ("ae16-1200", ["model.patch=3"], 0),
    "p256x6p2-4000@ae16-2500": ("ae16-2500", P2 + ["optim.steps=4000"], 0),
    "p256x6p2-2800@ae16-1800": ("ae16-1800", P2, 0),
    "p384x6p2-4000-b64@ae16-1800": ("ae16-1800", P2 + ["model.width=384", "model.heads=6",
                                                       "optim.steps=4000", "optim.batch_size=64"], 0),
    # round 3 (CPU): the demo's compact setting and its neighbours
    "p192x4-2800@ae16-1500": ("ae16-1500", C, 0),
    "p192x4-2800@ae16-2500": ("ae16-2500", C, 0),
    "p192x4-2800-lr2.5e-3@ae16-1500": ("ae16-1500", C + ["optim.lr=0.0025"], 0),
}
GUIDANCE = 0.5  # the prior preset's sample_guidance, as the demo samples
CLASSIFIER_STEPS = 1200


def bld(args: list[str], log: Path, env: dict) -> None:
    with open(log, "a") as f:
        f.write(f"$ bld {' '.join(args)}\n")
        f.flush()
        subprocess.run([sys.executable, "-m", "bld.app.cli", *args], check=True, stdout=f,
                       stderr=subprocess.STDOUT, env=env)


def train(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    common = ["--device", args.device, "--precision", args.precision]
    quality = out / "quality.json"
    results = json.loads(quality.read_text()) if quality.exists() else {}
    deadline = time.time() + args.minutes * 60
    # --smoke: every step count cut to a few, to check the script end to end
    smoke = ["--set", "optim.steps=12", "--set", "optim.warmup=2"] if args.smoke else []
    n_eval = "40" if args.smoke else "1000"

    def ae_job(name):
        d = out / name
        if not (d / "latents.safetensors").exists():
            bld(["train-ae", "--out", str(d / "run"), *common, *data, "--set", "run.sample_every=0",
                 *sum((["--set", o] for o in AE_ARMS[name]), []), *smoke], out / f"{name}.log", env)
            bld(["encode", "--autoencoder", str(d / "run"), "--out",
                 str(d / "latents.safetensors"), "--device", args.device, *data],
                out / f"{name}.log", env)
        return name

    def prior_job(name):
        ae, over, seed = PRIOR_ARMS[name]
        d = out / name
        if time.time() > deadline:
            return name, None
        bld(["train-prior", "--autoencoder", str(out / ae / "run"), "--latents",
             str(out / ae / "latents.safetensors"), "--out", str(d / "run"), *common, *data,
             "--seed", str(seed), "--set", "run.sample_every=0",
             *sum((["--set", o] for o in over), []), *smoke], out / f"{name}.log", env)
        bld(["eval", "--prior", str(d / "run"), "--classifier", str(out / "classifier"),
             "-n", n_eval, "--steps", "16", "--guidance", str(GUIDANCE), "--out", str(d / "eval"),
             *common, *data], out / f"{name}.log", env)
        return name, json.loads((d / "eval" / "eval.json").read_text())

    todo = [n for n in PRIOR_ARMS if n not in results and (not args.arms or n in args.arms)]
    needed_ae = sorted({PRIOR_ARMS[n][0] for n in todo})
    with ThreadPoolExecutor(args.jobs) as pool:
        jobs = [pool.submit(ae_job, a) for a in needed_ae]
        if not (out / "classifier" / "config.json").exists():
            jobs.append(pool.submit(bld, ["train-classifier", "--out", str(out / "classifier"),
                                          "--steps", "20" if args.smoke else str(CLASSIFIER_STEPS),
                                          *data],
                                    out / "classifier.log", env))
        for j in jobs:
            j.result()
        for fut in [pool.submit(prior_job, n) for n in todo]:
            try:
                name, ev = fut.result()
            except subprocess.CalledProcessError as e:
                print(f"failed: {e}", flush=True)
                continue
            if ev is None:
                print(f"{name}: skipped (past --minutes)", flush=True)
                continue
            s, a = ev["samples"], ev["autoencoder"]
            results[name] = {"fd": s["fd"], "class_accuracy": s["class_accuracy"],
                             "precision": s["precision"], "recall": s["recall"],
                             "fd_recon": a["fd_recon"], "psnr": a.get("psnr"),
                             "fd_ratio_to_recon": ev["fd_ratio_to_recon"],
                             "device": args.device, "train_precision": args.precision}
            quality.write_text(json.dumps(results, indent=2))
            print(f"{name}: FD {s['fd']:.1f} acc {s['class_accuracy']:.3f} "
                  f"recall {s['recall']:.3f} psnr {a.get('psnr')}", flush=True)


def cost(args) -> None:
    """Predicted demo seconds per arm on this CPU (bld.app.budget)."""
    import torch

    from bld.app.budget import calibrate, predict
    from bld.core.config import config_from_dict, load_config_dict
    from bld.core.device import cpu_bf16_facts, resolve_precision
    from bld.data import build_dataset
    from bld.training.prior import resolve_prior_config
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    precision = resolve_precision("auto", device)
    train_set = build_dataset("fashion-mnist", "train", data_dir=args.data_dir or None)
    cap, native = cpu_bf16_facts()
    res = {"cpu_capability": cap, "native_bf16": native, "precision": precision.reason,
           "threads": torch.get_num_threads(), "arms": {}}
    for name, (ae, over, _) in PRIOR_ARMS.items():
        if args.arms and name not in args.arms:
            continue
        ae_cfg = config_from_dict("autoencoder", load_config_dict("autoencoder", "fashion-mnist",
                                                                  AE_ARMS[ae]))
        pr_cfg = config_from_dict("prior", load_config_dict("prior", "fashion-mnist", over))
        pr_cfg = resolve_prior_config(pr_cfg, ae_cfg.model, 10)
        rates = calibrate(ae_cfg, pr_cfg, train_set, 10, device, precision)
        p = predict(rates, ae_steps=ae_cfg.optim.steps, prior_steps=pr_cfg.optim.steps,
                    n_train=len(train_set), n_test=10000, eval_samples=1000, figure_samples=164,
                    snapshot_samples=80, sample_steps=16, classifier_steps=CLASSIFIER_STEPS)
        res["arms"][name] = {"predicted_s": p, "rates": vars(rates)}
        print(f"{name}: {p['total'] / 60:.1f} min predicted "
              f"(ae {p['autoencoder']:.0f} s, prior {p['prior']:.0f} s, eval {p['evaluation']:.0f} s)",
              flush=True)
    kind = f"{cap.lower()}-{precision.name}"
    (out / f"cost_{kind}.json").write_text(json.dumps(res, indent=2))


def report(args) -> None:
    out = Path(args.out)
    q = json.loads((out / "quality.json").read_text())
    costs = {p.stem[5:]: json.loads(p.read_text()) for p in sorted(out.glob("cost_*.json"))}
    kinds = list(costs)
    lines = ["# Demo configurations against the fp32 budget", "",
             "Quality: N = 1000 samples, S = 16, guidance 0.5, on an FD classifier trained by "
             "`--train` where the arm was trained (one classifier per `--out` folder and device; "
             "figures compare within a device, roughly across). Arms marked `(rerun)` are a "
             "second run of the same arm. Minutes: the whole demo at the arm's steps, predicted "
             "by `bld.app.budget` from timings on the CPU named in the column.", "",
             "| arm | trained on | FD | FD / recon FD | class acc | recall | recon PSNR | " +
             " | ".join(f"demo min ({k})" for k in kinds) + " |",
             "|---|---|---|---|---|---|---|" + "---|" * len(kinds)]
    for name, r in q.items():
        mins = [costs[k]["arms"].get(name.removesuffix(" (rerun)"), {}).get(
            "predicted_s", {}).get("total") for k in kinds]
        lines.append(f"| `{name}` | {r['device']}, {r['train_precision']} | {r['fd']:.1f} | "
                     f"{r['fd_ratio_to_recon']:.2f} | {r['class_accuracy']:.3f} | "
                     f"{r['recall']:.3f} | "
                     f"{r['psnr'] if r['psnr'] is None else format(r['psnr'], '.2f')} | " +
                     " | ".join("-" if m is None else f"{m / 60:.1f}" for m in mins) + " |")
    text = "\n".join(lines) + "\n"
    (HERE / "results" / "budget_sweep.md").write_text(text)
    (HERE / "results" / "budget_sweep.json").write_text(json.dumps(
        {"quality": q, "cost": costs}, indent=2))
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--train", action="store_true")
    mode.add_argument("--cost", action="store_true")
    mode.add_argument("--report", action="store_true")
    ap.add_argument("--out", default="runs/budget_sweep")
    ap.add_argument("--arms", nargs="*", help="only these prior arms")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", help="training precision of --train")
    ap.add_argument("--jobs", type=int, default=1, help="arms trained at once (--train)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per process")
    ap.add_argument("--minutes", type=float, default=60.0,
                    help="--train starts no prior arm after this many minutes")
    ap.add_argument("--data-dir", default="", help="Fashion-MNIST's folder if not Debian's")
    ap.add_argument("--smoke", action="store_true", help="a few steps per stage (a check)")
    args = ap.parse_args()
    (train if args.train else cost if args.cost else report)(args)


if __name__ == "__main__":
    main()
