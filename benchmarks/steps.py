"""Sample quality of a trained prior against the number of sampling steps S (method.md §4: "as few
as 16 steps"), the evidence weight, temperature and classifier-free guidance.

Given a `bld demo --out RUN_DIR` folder (RUN_DIR/prior, RUN_DIR/autoencoder,
RUN_DIR/classifier), samples N images per setting and measures on the Fashion-MNIST test
set: FD (with the real-vs-real floor at the same N), improved precision/recall, class
accuracy of the samples, and seconds per image (sampling + decoding, whole batches).

Settings: S in {2, 4, 8, 16, 32, 64} of the trained T = 64 at the base temperature,
guidance and evidence weight; evidence weights (docs/method.md §2's lambda) {1, 0.5, 0, -0.5},
temperatures {1.0, 0.9, 0.8} and guidance {0, 1, 3} at S = 16. The key comparisons (S = 8
and 16 against S = 64) are repeated with a second sampling seed, so the report shows the
run-to-run spread next to the differences it discusses. Writes ``fd16_over_fd64`` and
``fd8_over_fd64`` (means over the two seeds) to headline.json.

    python benchmarks/steps.py --run runs/demo             # N = 2000, ~30 min on 1 thread
    python benchmarks/steps.py --run /tmp/bench_demo --quick
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import common
import torch
from tqdm.auto import tqdm

log = logging.getLogger("bench")


def parse_args():
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True,
                   help="a `bld demo --out RUN_DIR` folder (prior/, autoencoder/, classifier/)")
    p.add_argument("--n", type=int, default=None,
                   help="samples per setting (default 2000; 100 with --quick)")
    p.add_argument("--steps", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64],
                   help="sampling steps S to sweep (each <= the trained T)")
    p.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 0.9, 0.8])
    p.add_argument("--evidence-weights", type=float, nargs="+", default=[1.0, 0.5, 0.0, -0.5],
                   help="evidence weights (lambda) swept at --sweep-steps")
    p.add_argument("--evidence-weight", type=float, default=None,
                   help="evidence weight of the other sweeps (default: the library's)")
    p.add_argument("--guidances", type=float, nargs="+", default=[0.0, 1.0, 3.0])
    p.add_argument("--guidance", type=float, default=None,
                   help="guidance w of the S and temperature sweeps (default: the prior's "
                        "sample_guidance, 1.0 for the demo preset)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="temperature of the S and guidance sweeps")
    p.add_argument("--sweep-steps", type=int, default=16,
                   help="S of the temperature and guidance sweeps")
    p.add_argument("--spread-steps", type=int, nargs="+", default=[8, 16, 64],
                   help="settings re-run with seed+1 to show the run-to-run spread")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="sampling precision (default auto, as `bld sample`: bf16 only where the "
                        "CPU runs it natively and faster)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    n = args.n or (50 if args.quick else 2000)
    if args.quick:
        args.steps = [s for s in args.steps if s in (2, 4, 16)]
        args.temperatures, args.guidances, args.spread_steps = [1.0, 0.8], [0.0, 1.0], [4, 16]
        args.evidence_weights = [1.0, 0.0]
    bench = common.setup("steps", args, expected_full=(
        f"~{max(1, round(30 * n / 2000))} min at N = {n} with 1 thread and the demo prior "
        "(~0.5 s of sampling per image over all settings; a calibrated estimate follows)"))

    from bld.core.loading import load_autoencoder, load_prior
    from bld.core.plots import image_grid, save_image
    from bld.evaluation.evaluate import evaluate_autoencoder
    from bld.inference.generate import generate
    from bld.models.sampling import DEFAULT_EVIDENCE_WEIGHT

    lam_base = DEFAULT_EVIDENCE_WEIGHT if args.evidence_weight is None else args.evidence_weight

    for sub in ("prior", "autoencoder"):
        if not (args.run / sub).exists():
            raise SystemExit(f"{args.run / sub} is missing: make the run with "
                             f"`bld demo --out {args.run}`")
    prior = load_prior(args.run / "prior")
    ae = load_autoencoder(args.run / "autoencoder")
    T = prior.diffusion.T
    nc = prior.config.model.num_classes
    w_base = args.guidance if args.guidance is not None else (
        prior.config.sample_guidance if nc else 0.0)
    if not nc:
        w_base, args.guidances = 0.0, [0.0]
        log.info("the prior is unconditional: no guidance sweep, no class accuracy")
    bad = [s for s in args.steps + args.spread_steps + [args.sweep_steps] if not 2 <= s <= T]
    if bad:
        raise SystemExit(f"steps {bad} are outside 2..T = {T} (the prior's trained steps)")
    clf, clf_meta = common.get_classifier(bench, args.run)
    xt, yt = common.fashion_mnist("test")
    ref = common.FDReference(clf, xt, yt, n, seed=0)
    labels = common.cycled_labels(n, nc) if nc else None

    # the settings, each measured once: (S, temperature, guidance, evidence weight, seed)
    settings: list[tuple[int, float, float, float, int]] = []

    def add(s: int, tau: float, w: float, seed: int, lam: float = lam_base) -> None:
        if (s, tau, w, lam, seed) not in settings:
            settings.append((s, tau, w, lam, seed))

    for s in args.steps:
        add(s, args.temperature, w_base, args.seed)
    for lam in args.evidence_weights:
        add(args.sweep_steps, args.temperature, w_base, args.seed, lam)
    for tau in args.temperatures:
        add(args.sweep_steps, tau, w_base, args.seed)
    for w in args.guidances:
        add(args.sweep_steps, args.temperature, w, args.seed)
    for s in args.spread_steps:
        add(s, args.temperature, w_base, args.seed)
        add(s, args.temperature, w_base, args.seed + 1)

    # calibrate: one small batch at S = 4 -> seconds per (image x network evaluation)
    t0 = time.perf_counter()
    generate(prior, ae, 50, steps=min(4, T), temperature=1.0, guidance=w_base,
             labels=common.cycled_labels(50, nc) if nc else None, seed=0, batch_size=50,
             precision=args.precision)
    per_eval = (time.perf_counter() - t0) / (50 * min(4, T) * (2 if w_base else 1))
    evals = sum(s * (2 if w else 1) for s, _, w, _, _ in settings)
    log.info("%d settings, N = %d each: ~%.0f network evaluations per image in all; "
             "calibrated estimate %.1f min of sampling (+ FD feature extraction)",
             len(settings), n, evals, per_eval * evals * n / 60)

    log.info("autoencoder bound: reconstructions of the %d floor images", n)
    ae_fig = evaluate_autoencoder(ae, ref.floor, clf, ref.reference)
    rows: dict[tuple, dict] = {}
    grids = []
    for s, tau, w, lam, seed in tqdm(settings, desc="settings"):
        res = generate(prior, ae, n, steps=s, temperature=tau, guidance=w, labels=labels,
                       evidence_weight=lam, seed=seed, batch_size=args.batch_size,
                       precision=args.precision)
        m = ref.evaluate(res.images, labels)
        row = {"steps": s, "temperature": tau, "guidance": w, "evidence_weight": lam,
               "seed": seed, "n": n,
               "fd": m["fd"], "fd_floor": m["fd_floor_real_vs_real"],
               "fd_recon": ae_fig["fd_recon"], "precision": m["precision"],
               "recall": m["recall"], "class_accuracy": m.get("class_accuracy"),
               "s_per_image": res.seconds / n}
        rows[(s, tau, w, lam, seed)] = row
        log.info("S=%d tau=%.2f w=%.1f lambda=%.2f seed=%d: FD %.3f (floor %.3f), P %.3f R %.3f, "
                 "acc %s, %.4f s/image", s, tau, w, lam, seed, row["fd"], row["fd_floor"],
                 row["precision"], row["recall"], common.fmt(row["class_accuracy"]),
                 row["s_per_image"])
        if seed == args.seed and tau == args.temperature and w == w_base and lam == lam_base:
            k = min(n, 2 * max(nc, 10))
            grids.append(res.images[:k])

    # ------------------------------------------------------------------------ report
    cols = ["steps", "temperature", "guidance", "evidence_weight", "seed", "n", "fd", "fd_floor",
            "fd_recon", "precision", "recall", "class_accuracy", "s_per_image"]
    base = lambda s, seed=args.seed: rows.get(  # noqa: E731
        (s, args.temperature, w_base, lam_base, seed))
    steps_rows = [base(s) for s in args.steps]
    lam_rows = [rows[(args.sweep_steps, args.temperature, w_base, lam, args.seed)]
                for lam in args.evidence_weights]
    temp_rows = [rows[(args.sweep_steps, tau, w_base, lam_base, args.seed)]
                 for tau in args.temperatures]
    guid_rows = [rows[(args.sweep_steps, args.temperature, w, lam_base, args.seed)]
                 for w in args.guidances]
    spread_rows = [r for s in args.spread_steps for r in (base(s), base(s, args.seed + 1))]

    def mean_fd(s: int) -> float | None:
        a, b = base(s), base(s, args.seed + 1)
        if a is None:
            return None
        return 0.5 * (a["fd"] + b["fd"]) if b is not None else a["fd"]

    claims = []
    ref_s = max(args.steps)
    fd_ref = mean_fd(ref_s)
    spread_pct = {s: 100 * common.spread(base(s)["fd"], base(s, args.seed + 1)["fd"])
                  for s in args.spread_steps}
    for s in sorted(set(args.steps) | set(args.spread_steps)):
        if s == ref_s or fd_ref is None or base(s) is None:
            continue
        fd_s = mean_fd(s)
        rel = (fd_s - fd_ref) / fd_ref
        claims.append({"comparison": f"S={s} vs S={ref_s}",
                       "seeds": 2 if s in spread_pct else 1, "fd_S": fd_s, "fd_ref": fd_ref,
                       "relative_difference_pct": 100 * rel,
                       "seed_spread_S_pct": spread_pct.get(s),
                       "seed_spread_ref_pct": spread_pct.get(ref_s),
                       "within_10pct": abs(rel) <= 0.10})
    verdict = ""
    c16 = next((c for c in claims if c["comparison"].startswith("S=16 ")), None)
    if c16 is not None:
        noise = max(c16["seed_spread_S_pct"] or 0.0, c16["seed_spread_ref_pct"] or 0.0)
        verdict = (f"FD(16) is {'within' if c16['within_10pct'] else 'NOT within'} 10% of "
                   f"FD({ref_s}): {c16['fd_S']:.3f} vs {c16['fd_ref']:.3f} "
                   f"({c16['relative_difference_pct']:+.1f}%, mean of seeds {args.seed} and "
                   f"{args.seed + 1}); the seed-to-seed spread of FD is {noise:.1f}% at these "
                   f"settings, so differences below that are noise.")

    headline = {}
    if fd_ref is not None and not args.quick:
        for s in (16, 8):
            if base(s) is not None:
                headline[f"fd{s}_over_fd{ref_s}"] = mean_fd(s) / fd_ref
        common.update_headline(bench, headline)
    bench.results = {"n": n, "T": T, "base_guidance": w_base, "base_evidence_weight": lam_base,
                     "headline": headline,
                     "base_temperature": args.temperature, "classifier": clf_meta,
                     "autoencoder_at_n": ae_fig, "rows": list(rows.values()),
                     "claims": claims, "verdict": verdict,
                     "run": str(args.run), "precision": common.precision_name(args.precision), "batch_size": args.batch_size}

    xs = [r["steps"] for r in steps_rows]
    series = {f"seed {args.seed}": (xs, [r["fd"] for r in steps_rows])}
    extra = [(s, base(s, args.seed + 1)) for s in args.spread_steps if base(s, args.seed + 1)]
    if extra:
        series[f"seed {args.seed + 1}"] = ([s for s, _ in extra], [r["fd"] for _, r in extra])
    common.plot_lines(bench.path("_fd_vs_steps.png"), series,
                      xlabel=f"sampling steps S (T = {T})",
                      ylabel=f"FD (N = {n})", logx=True,
                      title=f"FD vs steps (tau {args.temperature}, guidance {w_base})",
                      hlines={f"real-vs-real floor {steps_rows[0]['fd_floor']:.3g}":
                              steps_rows[0]["fd_floor"],
                              f"reconstructions {ae_fig['fd_recon']:.3g}": ae_fig["fd_recon"]})
    if grids:
        save_image(image_grid(torch.cat(grids), nrow=len(grids[0])),
                   bench.path("_samples.png"), scale=2)

    cond_text = (f"class-conditional (labels cycled through the {nc} classes)" if nc
                 else "unconditional")
    sections = [
        "## Settings", "",
        f"Run `{args.run}`: prior T = {T}, {cond_text}; "
        f"N = {n} samples per setting, compared with a reference half of the test set "
        f"({len(ref.reference)} images); the floor is {n} other real test images against the "
        f"same reference. FD in the feature space of the project classifier "
        f"(`{clf_meta['path']}`, test accuracy {common.fmt(clf_meta.get('test_accuracy'))}): "
        "not comparable to Inception FID. Seconds per image include decoding; batch "
        f"{args.batch_size}, {common.precision_name(args.precision)}, "
        f"{torch.get_num_threads()} threads; guidance doubles the network evaluations.", "",
        f"Autoencoder bound at N = {n}: reconstruction FD {ae_fig['fd_recon']:.4g}, PSNR "
        f"{ae_fig['psnr']:.3g} dB (a prior cannot beat its decoder).", "",
        f"## FD vs steps (temperature {args.temperature}, guidance {w_base}, evidence weight "
        f"{lam_base})", "",
        common.markdown_table(steps_rows, cols), "",
        f"![FD vs steps]({bench.path('_fd_vs_steps.png').name})", "",
        f"## Evidence weight (S = {args.sweep_steps}, guidance {w_base}; 1 = the exact step, "
        "0 = the original code's product)", "",
        common.markdown_table(lam_rows, cols), "",
        f"## Temperature (S = {args.sweep_steps}, guidance {w_base})", "",
        common.markdown_table(temp_rows, cols), "",
        f"## Guidance (S = {args.sweep_steps}, temperature {args.temperature})", "",
        common.markdown_table(guid_rows, cols), "",
        f"## Run-to-run spread (seeds {args.seed} and {args.seed + 1})", "",
        common.markdown_table(spread_rows, cols), "",
        f"## How far fewer steps fall from S = {ref_s} (FD averaged over the seeds run)", "",
        common.markdown_table(claims), "", verdict, "",
        f"Sample grid: `{bench.path('_samples.png').name}`, one block per S of the sweep "
        "(first images, classes cycled).",
    ]
    common.write_report(bench, "Sampling steps, temperature and guidance", sections)


if __name__ == "__main__":
    main()
