"""Classifier-free guidance w and the guidance interval (the steps it applies at) on trained
demo priors: class accuracy, recall, precision and FD at S = 16.

Guidance pushes samples toward their class and away from the rest of the distribution:
more class accuracy, less recall. Applied only at the low-noise part of sampling
(t / T <= hi; Kynkaanniemi et al. 2024, arXiv 2404.07724), it leaves the first, high-noise
steps, where the sample's mode is chosen, to the conditional model. This script measures
that trade on one or more `bld demo` runs (each with its own FD classifier and the test split
of its own dataset: Fashion-MNIST, the faces...), one row per (w, interval, temperature,
evidence weight) and seed; the first two settings are repeated with seed+1 to show the
spread. Each run is sampled in the precision `auto` picks on this CPU (run it with the AVX2
restriction for an AVX2 demo run, as the demo itself evaluated it).

    python benchmarks/guidance.py --runs runs/demo --name guidance_avx512bf16
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 \\
        python benchmarks/guidance.py --runs runs/demo-avx2 --name guidance_avx2
"""

from __future__ import annotations

import logging
from pathlib import Path

import common
from tqdm.auto import tqdm

log = logging.getLogger("bench")

# (w, lo, hi): guidance w at steps with lo <= t / T <= hi; the first two are run with two seeds
DEFAULT_SETTINGS = ["0.5:0:1", "1.5:0:0.6", "0:0:1", "1:0:0.6", "2:0:0.5", "1.5:0:0.4",
                    "1:0:0.8"]


def _setting(text: str) -> tuple[float, float, float, float, float]:
    """W:LO:HI[:TEMPERATURE[:LAMBDA]] (temperature 1 and the library's evidence weight when
    left out)."""
    try:
        return common.sampler_setting(text, evidence=True)
    except ValueError as e:
        raise SystemExit(f"--settings: {e}") from None


def parse_args():
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, nargs="+", required=True,
                   help="`bld demo --out RUN_DIR` folders (prior/, autoencoder/, classifier/)")
    p.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS,
                   help="W:LO:HI[:TEMPERATURE[:LAMBDA]] settings (temperature 1 and the library's "
                        "evidence weight lambda if left out); the first two also run with seed+1")
    p.add_argument("--n", type=int, default=None, help="samples per setting (1000; 50 quick)")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--name", default="guidance", help="file name of the report")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    n = args.n or (50 if args.quick else 1000)
    settings = [_setting(s) for s in args.settings]
    if args.quick:
        settings = settings[:2]
    bench = common.setup(args.name, args, expected_full=(
        f"~{len(settings) + 2} x 1 min per run at N = {n} for the compact prior in fp32 "
        "(x 2 for the 256 x 6 prior)"))

    from bld.core.loading import load_autoencoder, load_prior
    from bld.evaluation.evaluate import evaluate_autoencoder
    from bld.inference.generate import generate

    jobs = [(*st, args.seed) for st in settings] + [(*st, args.seed + 1) for st in settings[:2]]
    tests: dict[str, tuple] = {}  # the test split of each run's dataset, loaded once
    rows, sections = [], []
    for run in args.runs:
        for sub in ("prior", "autoencoder", "classifier"):
            if not (run / sub).exists():
                raise SystemExit(f"{run / sub} is missing: make the run with "
                                 f"`bld demo --out {run}`")
        prior, ae = load_prior(run / "prior"), load_autoencoder(run / "autoencoder")
        nc = prior.config.model.num_classes
        if not nc:
            raise SystemExit(f"{run}: the prior is unconditional; guidance needs labels")
        source, data_dir = common.run_source(run), common.run_data_dir(run)
        clf, clf_meta = common.get_classifier(bench, run, source)
        if (source, data_dir) not in tests:
            tests[source, data_dir] = common.dataset_split(source, "test", data_dir=data_dir)
        xt, yt = tests[source, data_dir]
        if n > len(xt) // 2:
            raise SystemExit(f"{run}: its test split has {len(xt)} images; FD and its floor "
                             f"need two halves of N = {n}: pass --n {len(xt) // 2} or less")
        ref = common.FDReference(clf, xt, yt, n, seed=0)
        labels = common.cycled_labels(n, nc)
        ae_fig = evaluate_autoencoder(ae, ref.floor, clf, ref.reference)
        run_rows = []
        for w, lo, hi, temp, lam, seed in tqdm(jobs, desc=str(run)):
            res = generate(prior, ae, n, steps=args.steps, guidance=w, labels=labels, seed=seed,
                           guidance_interval=(lo, hi), temperature=temp, evidence_weight=lam,
                           batch_size=250, precision=args.precision)
            m = ref.evaluate(res.images, labels)
            row = {"run": run.name, "guidance": w, "interval": f"({lo:g}, {hi:g})",
                   "temperature": temp, "evidence_weight": lam, "seed": seed, "n": n,
                   "class_accuracy": m["class_accuracy"],
                   "recall": m["recall"], "precision": m["precision"], "fd": m["fd"],
                   "fd_floor": m["fd_floor_real_vs_real"], "fd_recon": ae_fig["fd_recon"],
                   "s_per_image": res.seconds / n}
            log.info("%s", row)
            run_rows.append(row)
        rows += run_rows
        prec = common.precision_name(args.precision)
        sections += [f"## `{run}` (prior {prior.config.model.width} x "
                     f"{prior.config.model.depth}, classifier test accuracy "
                     f"{common.fmt(clf_meta.get('test_accuracy'))}, sampled in {prec})", "",
                     common.markdown_table(run_rows), ""]
    bench.results = {"n": n, "steps": args.steps, "rows": rows,
                     "precision": common.precision_name(args.precision)}
    intro = ["## Settings", "",
             f"N = {n} samples per row, S = {args.steps}, labels cycled through the classes; "
             "evidence weight lambda of method.md §2 (1 = the exact step, 0 = the original code's "
             "product). Interval (lo, hi): guidance applies "
             "at steps with lo <= t / T <= hi (t / T = 1 is pure noise), plain conditional "
             "logits elsewhere; (0, 1) guides every step. FD, precision and recall in the "
             "feature space of each run's own classifier (compare rows within a run). "
             f"Settings run twice (seeds {args.seed} and {args.seed + 1}): the first two.", ""]
    common.write_report(bench, "Guidance and its interval", intro + sections)


if __name__ == "__main__":
    main()
