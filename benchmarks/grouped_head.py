"""The prior's head and recipe on trained demo runs: bits predicted one by one (independent
given z_t) against a head that predicts each group of g bits jointly (``diffusion.bit_group``:
a categorical over the 2^g patterns of the group, the exact step summed over them; method.md §2),
the prior's size, token size, batch and learning rate at the run's training seconds, and its
noise schedule and training length.

BiGR (ICLR 2025) reports FID 5.84 with an independent per-bit loss against 3.17 with a head
that models the bits of a token jointly; MaskBit predicts groups of 7 bits with one 128-way
softmax each. This script measures the idea on our own trained `bld demo` runs: for each run
it retrains the run's prior (its own config: architecture, steps x batch, optimiser, seed,
on the run's latent cache) once per arm, all here with the same threads, and samples each at
the run's sampler settings (S = 16, its guidance, interval and temperature):

  per-bit          the run's prior config unchanged (the presets' loss: class-balanced BCE)
  per-bit-mean     the same with the plain BCE ("mean"), the loss the grouped head uses
  group4, group8   the grouped head over 4 / 8 bits (16 / 256 patterns), cross-entropy loss
  wide256, deep6   the prior 256 wide (4 heads) / 6 deep      } at the run's training
  narrow128        128 wide (2 heads)                          } seconds: the steps are the
  depth3           3 deep                                      } run's x (its step's seconds /
  patch1           one grid position per token (no 2x2 patch)  } the arm's, timed here first)
  batch64, batch16 batch 64 / 16                               }
  muon             Muon for the hidden 2-D weights (optim.optimizer=muon)    } equal seconds
  muon-batch64     the same at batch 64 (Muon's step costs less per image)  }
  lr2.5e-3, lr5e-3, lr1e-2   learning rate 2.5e-3 / 5e-3 / 1e-2, the run's steps
  longer           the run's config for 1.25 x its steps (the demo's prior may grow so far)
  steps2x, steps4x the run's config for 2 / 4 x its steps: how far more training takes it
  shift2, shift3   the noise schedule shifted toward noise (diffusion.schedule_shift 2 / 3),
                   the run's steps

Reported per run and arm: FD (with its real-vs-real floor and the reconstruction FD at N),
class accuracy, precision, recall, training seconds and sampling seconds per image, on the
run's own FD classifier and the test split of its dataset. Each finished arm is kept in
``--work`` (a file beside its trained prior) and skipped on the next call, so processes can
measure arms side by side and a last call reports them all.

    python benchmarks/grouped_head.py --runs runs/demo-faces runs/demo --threads 1
    python benchmarks/grouped_head.py --quick --runs runs/demo
    python benchmarks/grouped_head.py --runs runs/demo-faces@1 --arms per-bit   # prior seed 1
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import common  # noqa: I001  (benchmarks/common.py; first, so the path fix applies)
import torch

log = logging.getLogger("bench")

# arm -> (overrides of the run's prior config, note, seconds: None for the run's steps, or
# a share of the run's training seconds, its steps rescaled from timed steps of both)
ARMS = {
    "per-bit": ([], "the run's prior config (per-bit head, its loss)", None),
    "per-bit-mean": (["diffusion.loss_type=mean"], "per-bit head, plain BCE", None),
    "group4": (["diffusion.bit_group=4", "diffusion.loss_type=mean"],
               "grouped head, 4 bits -> 16 patterns, cross-entropy", None),
    "group8": (["diffusion.bit_group=8", "diffusion.loss_type=mean"],
               "grouped head, 8 bits -> 256 patterns, cross-entropy", None),
    "wide256": (["model.width=256", "model.heads=4"], "width 256 (4 heads), equal seconds",
                1.0),
    "deep6": (["model.depth=6"], "depth 6, equal seconds", 1.0),
    "narrow128": (["model.width=128", "model.heads=2"], "width 128 (2 heads), equal seconds",
                  1.0),
    "depth3": (["model.depth=3"], "depth 3, equal seconds", 1.0),
    "patch1": (["model.patch=1"], "one grid position per token, equal seconds", 1.0),
    "muon": (["optim.optimizer=muon"], "Muon on the hidden matrices, AdamW on the rest, "
             "equal seconds", 1.0),
    "muon-batch64": (["optim.optimizer=muon", "optim.batch_size=64"],
                     "Muon, batch 64, equal seconds", 1.0),
    "batch64": (["optim.batch_size=64"], "batch 64, equal seconds", 1.0),
    "batch16": (["optim.batch_size=16"], "batch 16, equal seconds", 1.0),
    "lr2.5e-3": (["optim.lr=0.0025"], "learning rate 2.5e-3, the run's steps", None),
    "lr5e-3": (["optim.lr=0.005"], "learning rate 5e-3, the run's steps", None),
    "lr1e-2": (["optim.lr=0.01"], "learning rate 1e-2, the run's steps", None),
    "longer": ([], "the run's prior config for 1.25 x its steps", 1.25),
    "steps2x": ([], "the run's prior config for 2 x its steps", 2.0),
    "steps4x": ([], "the run's prior config for 4 x its steps", 4.0),
    "shift2": (["diffusion.schedule_shift=2.0"],
               "noise schedule shifted toward noise (schedule_shift 2), the run's steps", None),
    "shift3": (["diffusion.schedule_shift=3.0"],
               "noise schedule shifted toward noise (schedule_shift 3), the run's steps", None),
}


def _step_seconds(cfg) -> float:
    """One training step of this prior config on this machine, in the precision its training
    will use (the demo's calibration)."""
    from bld.app.budget import time_prior_step
    from bld.core.device import resolve_precision
    return time_prior_step(cfg, cfg.model.num_classes, torch.device("cpu"),
                           resolve_precision(cfg.run.precision))


def _runs_and_seeds(runs: list[str], seed: int) -> list[tuple[Path, int]]:
    """``RUN`` or ``RUN@SEED`` -> (run folder, the seed its arms train and sample with)."""
    out = []
    for r in runs:
        path, at, s = r.rpartition("@") if "@" in r else (r, "", "")
        if at and not s.isdigit():
            raise SystemExit(f"--runs {r}: the part after @ must be a seed (an integer >= 0)")
        out.append((Path(path), int(s) if at else seed))
    return out


def parse_args():
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", required=True,
                   help="`bld demo --out RUN_DIR` folders (prior/, autoencoder/, classifier/, "
                        "latents_train.safetensors); RUN_DIR@SEED retrains and samples that "
                        "run's arms with SEED instead of --seed (e.g. another seed than the "
                        "run's own)")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--n", type=int, default=None, help="samples per arm (1000; 50 quick)")
    p.add_argument("--work", type=Path, default=Path("runs/grouped_head"),
                   help="trained priors and finished measurements (reused on the next call)")
    p.add_argument("--name", default="grouped_head", help="file name of the report")
    p.add_argument("--report-only", action="store_true",
                   help="train and sample nothing: report the arms kept in --work")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    q = args.quick
    n = args.n or (50 if q else 1000)
    bench = common.setup(args.name, args, expected_full=(
        f"per run: {len(args.arms)} prior trainings (each as long as the run's prior) and "
        f"{len(args.arms)} x 1-2 min of sampling at N = {n}"))

    from bld.core import checkpoint as ckpt
    from bld.core.config import apply_overrides, config_from_dict
    from bld.core.loading import load_autoencoder, load_prior
    from bld.evaluation.evaluate import evaluate_autoencoder
    from bld.inference.generate import generate
    from bld.training.loop import train_prior

    args.work.mkdir(parents=True, exist_ok=True)
    rows, sections = [], []
    for run, seed in _runs_and_seeds(args.runs, args.seed):
        for sub in ("prior", "autoencoder", "classifier", "latents_train.safetensors"):
            if not (run / sub).exists():
                raise SystemExit(f"{run / sub} is missing: make the run with "
                                 f"`bld demo --out {run}`")
        base = ckpt.load_checkpoint(run / "prior", kind="prior").config
        run_cfg = config_from_dict("prior", base)
        ae = load_autoencoder(run / "autoencoder")
        source = common.run_source(run)
        clf, clf_meta = common.get_classifier(bench, run, source)
        # quick mode measures on a seeded share of the test split (its reference half still
        # holds N images): the whole of it is most of a smoke test's time
        xt, yt = common.dataset_split(source, "test", max(4 * n, 200) if q else None,
                                      data_dir=common.run_data_dir(run))
        if n > len(xt) // 2:
            raise SystemExit(f"{run}: its test split has {len(xt)} images; FD and its floor "
                             f"need two halves of N = {n}: pass --n {len(xt) // 2} or less")
        ref = common.FDReference(clf, xt, yt, n, seed=0)
        ae_fig = evaluate_autoencoder(ae, ref.floor, clf, ref.reference)
        run_rows = []
        for arm in args.arms:
            overrides, note, seconds = ARMS[arm]
            key = f"{run}|{arm}|{seed}|n={n}"
            out = args.work / f"{run.name}-{arm}-s{seed}{'-quick' if q else ''}"
            signature = {"run": str(run), "arm": arm, "overrides": overrides,
                         "seconds": seconds, "seed": seed, "n": n, "quick": q}
            kept = common.kept_result(out / "result.json", signature)
            if kept is not None:
                log.info("%s: kept", key)
                run_rows.append(kept["row"])
                continue
            if args.report_only:
                log.info("%s: not measured yet, left out (--report-only)", key)
                continue
            flags = [f"run.seed={seed}", f"run.threads={torch.get_num_threads()}",
                     "run.device=cpu", "run.sample_every=0", "run.ckpt_every=0",
                     f"autoencoder={run / 'autoencoder'}",
                     f"latents={run / 'latents_train.safetensors'}"]
            if q:
                flags += ["optim.steps=20", "optim.warmup=2"]
            cfg = config_from_dict("prior", apply_overrides(base, overrides + flags))
            timed = {}
            if seconds is not None:
                # that share of the run's seconds: its steps x its step's / the arm's
                as_run = config_from_dict("prior", apply_overrides(base, flags))
                if overrides:
                    timed = {"step_s": _step_seconds(cfg), "run_step_s": _step_seconds(as_run)}
                    ratio = timed["run_step_s"] / timed["step_s"]
                    log.info("%s: a step %.4f s against the run's %.4f s", arm,
                             timed["step_s"], timed["run_step_s"])
                else:  # the run's own step
                    ratio = 1.0
                steps = max(1, round(as_run.optim.steps * seconds * ratio))
                log.info("%s: %d steps", arm, steps)
                cfg = config_from_dict("prior", apply_overrides(
                    base, overrides + flags + [f"optim.steps={steps}"]))
            if not (out / "done.json").exists():
                import shutil
                shutil.rmtree(out, ignore_errors=True)
                t0 = time.perf_counter()
                train_prior(cfg, out)
                (out / "done.json").write_text(json.dumps(
                    {"seconds": time.perf_counter() - t0}))
            train_s = json.loads((out / "done.json").read_text())["seconds"]
            prior = load_prior(out)
            nc = prior.config.model.num_classes
            labels = common.cycled_labels(n, nc) if nc else None
            res = generate(prior, ae, n, steps=16, labels=labels, seed=seed,
                           guidance=cfg.sample_guidance if nc else 0.0,
                           guidance_interval=tuple(cfg.sample_guidance_interval),
                           temperature=cfg.sample_temperature, batch_size=250)
            m = ref.evaluate(res.images, labels)
            row = {"run": run.name, "arm": arm, "head": note, "seed": seed, "n": n,
                   "threads": torch.get_num_threads(),
                   "steps_x_batch": f"{cfg.optim.steps} x {cfg.optim.batch_size}",
                   "train_s": train_s, "fd": m["fd"], "fd_floor": m["fd_floor_real_vs_real"],
                   "fd_recon": ae_fig["fd_recon"], "fd_ratio": m["fd"] / ae_fig["fd_recon"],
                   "class_accuracy": m.get("class_accuracy"), "precision": m["precision"],
                   "recall": m["recall"], "s_per_image": res.seconds / n, **timed}
            log.info("%s", row)
            common.keep_result(out / "result.json", signature, row=row)  # survives a crash
            run_rows.append(row)
        rows += run_rows
        if not run_rows:
            continue
        c = run_cfg
        sampler = (f"guidance {c.sample_guidance:g} at {c.sample_guidance_interval[0]:g} "
                   f"<= t / T <= {c.sample_guidance_interval[1]:g}, temperature "
                   f"{c.sample_temperature:g}")
        sections += [f"## `{run}` ({source}; prior {c.model.width} x {c.model.depth}, "
                     f"{c.model.bits} bits per position; {sampler}; classifier test accuracy "
                     f"{common.fmt(clf_meta.get('test_accuracy'))})", "",
                     common.markdown_table(run_rows, ["arm", "head", "seed", "steps_x_batch",
                                                      "step_s",
                                                      "threads", "train_s",
                                                      "fd", "fd_floor", "fd_recon", "fd_ratio",
                                                      "class_accuracy", "precision", "recall",
                                                      "s_per_image"],
                                           headers={"head": "change"}), ""]
    labels = [f"{r['run']}: {r['arm']}" for r in rows]
    common.plot_bars(bench.path("_recall.png"), labels,
                     {"recall": [r["recall"] for r in rows],
                      "class accuracy": [r["class_accuracy"] or 0.0 for r in rows]},
                     xlabel="share", title="prior head and recipe arms (S = 16)")
    common.plot_bars(bench.path("_fd_ratio.png"), labels,
                     {"sample FD / reconstruction FD": [r["fd_ratio"] for r in rows]},
                     xlabel="ratio (lower is better)", title="prior head and recipe arms (S = 16)")
    bench.results = {"n": n, "rows": rows}
    intro = ["## Settings", "",
             "Each arm retrains the run's prior from its own config (with the `seed` of its "
             "row, which also seeds its samples; "
             "`threads`: torch threads of its training) and samples N = "
             f"{n} images at S = 16 with the run's "
             "sampler settings, labels cycled through the classes. FD, precision, recall and "
             "class accuracy on each run's own classifier and test split (compare rows within "
             "a run); fd_ratio = sample FD / reconstruction FD at the same N. Arms marked "
             "\"equal seconds\" train the run's steps x (the run's step seconds / the arm's), "
             "both timed here before training (`step_s`, `run_step_s`).", "",
             f"![recall]({bench.path('_recall.png').name}) "
             f"![FD ratio]({bench.path('_fd_ratio.png').name})", ""]
    common.write_report(bench, "The prior's head and recipe on demo runs", intro + sections)


if __name__ == "__main__":
    main()
