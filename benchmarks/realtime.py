"""Real-time sampling (issue 34): quality against decoded images per second for a shipped
model's 16-step guided teacher, the teacher at 4, 2 and 1 steps, the teacher's coupled
(common random numbers) 16-step sampler, and distilled students (`bld distill`).

Per row: FD / precision / recall / class accuracy with the shipped FD classifier, measured as
`bld eval` measures them (`bld.evaluation.evaluate`: `real_reference` split by the seed,
`evaluate_images`, classes cycled), N images per seed, mean over the seeds; and images per
second at ``--batch`` and ``--threads`` after a warm-up batch: the prior (sampling) and the
decoder timed apart, and both together ("decoded"). Network evaluations per image count the
unconditional pass of guided steps. Writes ``realtime_<machine>.md`` / ``.json`` and a plot of
FD against decoded images per second.

    python benchmarks/realtime.py --models fashion-mnist --students runs/st-coupled runs/st-mix
    python benchmarks/realtime.py --quick                      # n 64, one seed: a smoke run
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import common  # noqa: I001  (benchmarks/common.py; first, so the path fix applies)
import torch

log = logging.getLogger("bench")

TEACHER_STEPS = (16, 4, 2, 1)


def parse_args():
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.set_defaults(threads=2)
    p.add_argument("--models", nargs="+", default=["fashion-mnist", "faces64"],
                   help="shipped models (or pipeline folders) whose teachers to measure")
    p.add_argument("--students", nargs="*", default=[], metavar="RUN",
                   help="`bld distill` runs; each is measured with the model it was distilled "
                        "from (drawn and thresholded bits)")
    p.add_argument("--n", type=int, default=1000, help="images per seed (64 with --quick)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                   help="sampling seeds (one with --quick)")
    p.add_argument("--batch", type=int, default=256, help="batch of the speed measurement")
    p.add_argument("--teacher-steps", type=int, nargs="+", default=list(TEACHER_STEPS))
    p.add_argument("--coupled-seeds", type=int, nargs="+", default=None,
                   help="seeds of the coupled teacher rows (default: --seeds)")
    p.add_argument("--no-coupled", action="store_true",
                   help="skip the teacher's coupled 16-step sampler")
    p.add_argument("--speed-repeats", type=int, default=1,
                   help="timed batches per row, at least (more while under 10 s in all)")
    p.add_argument("--name", default=None, help="report name (default realtime_<machine>)")
    p.add_argument("--no-speed", action="store_true",
                   help="measure quality only (on a CPU shared with other work): each row's "
                        "figures are kept in --work and reused by the next run")
    p.add_argument("--work", type=Path, default=None,
                   help="where each row's quality figures are kept (default <out>/<name>_work)")
    args = p.parse_args()
    if args.quick:
        args.n, args.seeds, args.speed_repeats = 64, args.seeds[:1], 1
        args.coupled_seeds = args.seeds
        args.batch = min(args.batch, 64)
    return args


def machine_tag() -> str:
    """'avx2_epyc': torch's CPU capability and the CPU family (bld.core.device)."""
    from bld.core.device import cpu_facts, cpu_name
    cap = str(cpu_facts()["capability"]).lower()
    name = cpu_name().lower()
    family = next((f for f in ("epyc", "xeon", "ryzen", "core", "graviton") if f in name),
                  re.sub(r"[^a-z0-9]+", "", name.split()[0]) if name.split() else "cpu")
    return f"{cap}_{family}"


# ------------------------------------------------------------------------------ rows
@dataclass
class Row:
    """One sampler: ``draw(y, generator)`` -> bits (B, C, h, w) for labels y."""
    model: str
    name: str
    evaluations: float  # network evaluations per image
    draw: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
    note: str = ""
    identity: str = ""  # what else decides the samples (a student's checkpoint)
    coupled: bool = False  # a coupled teacher row (measured with --coupled-seeds)


def guided_evaluations(steps: int, T: int, guidance: float, interval) -> int:
    """Network evaluations of one S-step sample: two at each guided step."""
    from bld.models.diffusion import sampling_timesteps
    if steps == 1:
        return 1 + int(guidance > 0 and interval[0] <= 1.0 <= interval[1])
    lo, hi = interval
    return sum(1 + int(guidance > 0 and lo <= t / T <= hi) for t in sampling_timesteps(steps, T))


def teacher_rows(model: str, pipe, steps: list[int], coupled: bool) -> list[Row]:
    from bld.models.sampling import sample, sample_one_step
    prior, cfg = pipe.prior, pipe.prior.config
    shape, T = pipe.latent_shape, prior.diffusion.T
    kw = dict(guidance=cfg.sample_guidance, temperature=cfg.sample_temperature,
              guidance_interval=tuple(cfg.sample_guidance_interval),
              null_label=prior.model.null_label)

    def sampler(s: int, shift: float | None = None):
        def draw(y, g):
            b = (len(y), *shape)
            if s == 1:
                return sample_one_step(prior.model, prior.diffusion, b, y=y, generator=g, **kw).z0
            noise = torch.rand(b, generator=g) if shift is not None else None
            return sample(prior.model, prior.diffusion, b, steps=s, y=y, generator=g,
                          noise=noise, noise_shift=shift or 0.0, **kw).z0
        return draw

    rows = []
    for s in steps:
        ev = guided_evaluations(s, T, cfg.sample_guidance, cfg.sample_guidance_interval)
        rows.append(Row(model, f"teacher, {s} step{'s' * (s > 1)}", ev, sampler(s),
                        "the shipped prior" if s == 16 else
                        "one step: z_0 drawn from the posterior at t = T" if s == 1 else ""))
    if coupled:
        from bld.core.config import StudentConfig
        ev = guided_evaluations(16, T, cfg.sample_guidance, cfg.sample_guidance_interval)
        golden = StudentConfig().coupling_shift
        rows.append(Row(model, "teacher, 16 steps, coupled (same u)", ev, sampler(16, 0.0),
                        "common random numbers: one uniform u per bit, [u < p] at every step",
                        coupled=True))
        rows.append(Row(model, "teacher, 16 steps, coupled (rotated u)", ev,
                        sampler(16, golden), f"step k draws [frac(u + k {golden:.4f}) < p]: "
                        "the coupled student's pairs", coupled=True))
    return rows


def student_rows(run: Path) -> tuple[str, list[Row], object]:
    """The rows of a `bld distill` run (drawn and thresholded bits) and its pipeline."""
    from bld.inference.pipeline import BinaryLatentDiffusionPipeline
    from bld.models.sampling import student_sample
    pipe = BinaryLatentDiffusionPipeline.from_run(run)
    s = pipe.prior.config.student
    if not s.design:
        raise SystemExit(f"{run} is not a distilled student (bld distill)")
    prior, shape = pipe.prior, pipe.latent_shape

    def sampler(bits: str):
        def draw(y, g):
            return student_sample(prior.model, prior.diffusion, (len(y), *shape),
                                  design=s.design, steps=s.steps, bits=bits, y=y,
                                  generator=g).z0
        return draw
    rows = [Row(s.teacher, f"student {s.design}, K = {s.steps}, {bits} ({run.name})", s.steps,
                sampler(bits), _student_note(run), str(prior.path))
            for bits in ("draw", "threshold")]
    return s.teacher, rows, pipe


def _student_note(run: Path) -> str:
    """The student's training: steps, seconds, pairs (from its checkpoint)."""
    from bld.core.checkpoint import load_checkpoint
    ck = load_checkpoint(run, kind="prior")
    s = ck.config.get("student", {})
    secs = ck.metadata.get("train_seconds")
    return (f"{ck.step} steps" + (f", {float(secs):.0f} s trained" if secs else "")
            + f", {s.get('pairs')} pairs"
            + (f", M = {s.get('mixture')}" if s.get("design") == "mixture" else ""))


# --------------------------------------------------------------------------- measuring
def quality(row: Row, pipe, clf, xt: torch.Tensor, n: int, seeds: list[int], batch: int
            ) -> dict:
    """FD / precision / recall / class accuracy per seed as `bld eval` measures them, and
    their mean."""
    from tqdm.auto import tqdm

    from bld.evaluation.evaluate import evaluate_images, real_reference
    nc = pipe.num_classes
    labels = common.cycled_labels(n, nc)
    per_seed = []
    bar = tqdm(total=n * len(seeds), desc=row.name, unit="img", mininterval=2.0)
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        images = []
        with torch.no_grad(), common.autocast():
            for i, b in common.batches(n, batch):
                images.append(pipe.autoencoder.decode(row.draw(labels[i:i + b], g))
                              .float().clamp(-1, 1))
                bar.update(b)
        reference, floor = real_reference(xt, n, seed=seed)
        ev = evaluate_images(clf, reference, floor, torch.cat(images), labels)
        per_seed.append({k: ev[k] for k in ("fd", "fd_floor_real_vs_real", "precision",
                                            "recall", "class_accuracy")})
    bar.close()
    mean = {k: sum(r[k] for r in per_seed) / len(per_seed) for k in per_seed[0]}
    return {**mean, "per_seed": per_seed}


def kept_quality(bench, row: Row, pipe, clf, xt: torch.Tensor, args) -> dict:
    """`quality`, kept per row in --work (common.keep_result) and reused when a
    later run asks for the same row, N, seeds and batch."""
    slug = re.sub(r"[^a-z0-9]+", "_", f"{row.model} {row.name}".lower()).strip("_")
    path = (args.work or bench.out / f"{bench.name}_work") / f"{slug}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    seeds = args.coupled_seeds if row.coupled and args.coupled_seeds else args.seeds
    signature = {"model": row.model, "row": row.name, "identity": row.identity, "n": args.n,
                 "seeds": seeds, "batch": args.batch}
    kept = common.kept_result(path, signature)
    if kept is not None:
        log.info("%s: quality measured earlier (%s)", row.name, path)
        return kept["quality"]
    q = quality(row, pipe, clf, xt, args.n, seeds, args.batch)
    q["seeds"] = seeds
    common.keep_result(path, signature, quality=q)
    return q


def speed(row: Row, pipe, batch: int, repeats: int) -> dict:
    """Images per second of the prior, the decoder, and both, at ``batch``, after a warm-up
    batch (fewest seconds over ``repeats`` timed batches, or more while they add up to less
    than 10 s)."""
    y = common.cycled_labels(batch, pipe.num_classes)
    g = torch.Generator().manual_seed(123)
    bits = {}

    def prior():
        bits["z"] = row.draw(y, g)

    def decode():
        pipe.autoencoder.decode(bits["z"]).float()
    with torch.no_grad(), common.autocast():
        tp = common.time_fn(prior, warmup=1, repeats=repeats, min_time=10.0).best
        td = common.time_fn(decode, warmup=1, repeats=repeats, min_time=10.0).best
    return {"prior_img_s": batch / tp, "decoder_img_s": batch / td,
            "img_s": batch / (tp + td), "ms_per_image": 1000 * (tp + td) / batch}


def load_eval_data(pipe):
    """The shipped FD classifier of the pipeline's dataset and its test images."""
    from bld.data import build_dataset, dataset_tensors
    from bld.evaluation.evaluate import load_classifier, shipped_classifier
    source, data_dir = pipe.data.get("source"), pipe.data.get("data_dir") or None
    folder = shipped_classifier(source, data_dir)
    if folder is None:
        raise SystemExit(f"no FD classifier ships for {source!r}")
    clf, meta = load_classifier(folder)
    test = build_dataset(source, "test", pipe.image_size, pipe.channels, data_dir)
    return clf, {**meta, "path": str(folder)}, dataset_tensors(test)[0]


# ------------------------------------------------------------------------------ main
def main() -> None:
    from bld.inference.pipeline import BinaryLatentDiffusionPipeline
    args = parse_args()
    name = args.name or f"realtime_{machine_tag()}"
    bench = common.setup(name, args, expected_full="~5 min per row at N = 1000, two seeds")
    torch.set_num_threads(args.threads)
    students: dict[str, list[tuple[list[Row], object]]] = {}
    for run in args.students:
        teacher, rows, pipe = student_rows(Path(run))
        students.setdefault(teacher, []).append((rows, pipe))
    models = list(dict.fromkeys([*args.models, *students]))
    results, classifiers = [], {}
    for model in models:
        pipe = BinaryLatentDiffusionPipeline.from_pretrained(model)
        clf, meta, xt = load_eval_data(pipe)
        classifiers[model] = meta
        steps = [s for s in args.teacher_steps if s == 1 or 2 <= s <= pipe.timesteps]
        todo = [(r, pipe) for r in teacher_rows(model, pipe, steps, not args.no_coupled)]
        todo += [(r, p) for rows, p in students.get(model, []) for r in rows]
        teacher16 = None
        for row, p in todo:
            t0 = time.perf_counter()
            q = kept_quality(bench, row, p, clf, xt, args)
            # the coupled sampler costs what the plain one does: not timed again
            sp = {} if args.no_speed or row.coupled else \
                speed(row, p, args.batch, args.speed_repeats)
            res = {"model": model, "sampler": row.name, "evaluations": row.evaluations,
                   **sp, **{k: v for k, v in q.items() if k != "per_seed"},
                   "per_seed": q["per_seed"], "note": row.note,
                   "seconds": time.perf_counter() - t0}
            if row.name == "teacher, 16 steps":
                teacher16 = res
            if teacher16 is not None:
                res["fd_ratio"] = res["fd"] / teacher16["fd"]
                res["d_accuracy"] = res["class_accuracy"] - teacher16["class_accuracy"]
                res["d_recall"] = res["recall"] - teacher16["recall"]
            log.info("%s | %s: %s img/s, FD %.2f, recall %.3f, accuracy %.3f", model,
                     row.name, common.fmt(res.get("img_s")), res["fd"], res["recall"],
                     res["class_accuracy"])
            results.append(res)
    bench.results = {"rows": results, "classifiers": classifiers}
    plot = _plot(bench, results)
    cols = ["model", "sampler", "evaluations", "img_s", "prior_img_s", "decoder_img_s", "fd",
            "fd_ratio", "recall", "d_recall", "class_accuracy", "d_accuracy", "precision",
            "fd_floor_real_vs_real", "note"]
    targets = ("Issue 34's targets for a fast model: >= 100 decoded images/s (Fashion-MNIST; "
               ">= 50 for faces64) on a 2-core CPU without native bf16, FD <= 1.15 x the "
               "16-step teacher's (`fd_ratio`), class accuracy within 0.02 and recall within "
               "0.05 of it (`d_accuracy`, `d_recall`).")
    sections = [
        f"N = {args.n} images per seed, seeds {args.seeds} (figures are their means; the "
        f"coupled teacher rows: seeds {args.coupled_seeds or args.seeds}); speed at "
        f"batch {args.batch}, {args.threads} threads, after a warm-up batch, precision "
        f"{common.precision_name()}: `prior_img_s` sampling only, `decoder_img_s` decoding "
        "only, `img_s` both (decoded images per second). `evaluations`: network evaluations "
        "per image (a guided step counts two). FD / recall / class accuracy with the shipped "
        "FD classifier, as `bld eval` measures them; `fd_ratio`, `d_recall`, `d_accuracy` "
        "against the 16-step teacher of the same model." + (
            " **Speed not measured in this run (`--no-speed`: the CPU was shared with other "
            "work); the speed columns are empty.**" if args.no_speed else ""), "", targets, "",
        common.markdown_table(results, cols), "",
        f"![FD against decoded images per second]({plot.name})", ""]
    common.write_report(bench, "Real-time sampling: teachers and distilled students", sections)


def _plot(bench, results: list[dict]) -> Path:
    """FD against decoded images per second, one point per row, log-scaled speed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for r in (r for r in results if r.get("img_s")):
        ax.scatter(r["img_s"], r["fd"], marker="o" if r["sampler"].startswith("teacher") else "s")
        ax.annotate(f"{r['model']}: {r['sampler']}", (r["img_s"], r["fd"]), fontsize=6,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.axvline(100, linestyle="--", color="grey", linewidth=1)
    ax.set_xlabel("decoded images per second (log)")
    ax.set_ylabel("FD (shipped classifier; lower is better)")
    ax.set_title("FD against speed: teachers (circles), students (squares)", fontsize=10)
    ax.grid(alpha=0.3)
    return common._save_figure(fig, bench.path("_fd_vs_img_s.png"))


if __name__ == "__main__":
    main()
