"""Shared helpers for the benchmark scripts: flags, timing, tables/JSON/plots, data, FD.

Benchmarks are not tests: they print figures and write them to an output folder
(``<out>/<name>.md``, ``<out>/<name>.json``, ``<out>/<name>_*.png``); they never assert a
wall time. Every script takes ``--quick`` (tiny sizes, a smoke test of the code path, figures
meaningless) and ``--threads`` (torch intra-op threads; default: torch's own default).

FD here is measured in the feature space of the project's own Fashion-MNIST classifier
(`bld.classifier`), so it is comparable only with figures from the same classifier and the
same N, never with published Inception FID (SPEC 5).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from tqdm.auto import tqdm

log = logging.getLogger("bench")

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH_DIR / "results"
# `python benchmarks/NAME.py` puts this folder first on sys.path; once `common` is imported,
# drop it, so that a script's name (tokenizers.py) cannot shadow an installed package.
if sys.path and sys.path[0] and Path(sys.path[0]).resolve() == BENCH_DIR:
    sys.path.pop(0)
CLASSIFIER_STEPS = 1200  # what `bld demo` trains; quick mode uses far fewer


# ------------------------------------------------------------------------------- flags
def base_parser(description: str) -> argparse.ArgumentParser:
    """Flags every benchmark shares: --out, --quick, --threads, --seed, --classifier."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=None,
                   help=f"output folder (default {DEFAULT_OUT.relative_to(BENCH_DIR.parent)}, "
                        "or its quick/ subfolder with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes: a < 60 s smoke test whose figures mean nothing")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads (0 = torch's default; 1 with --quick). On a "
                        "CPU shared with other jobs, 1 thread can be many times faster than 2")
    p.add_argument("--seed", type=int, default=0, help="first seed; the spread check adds seed+1")
    p.add_argument("--classifier", type=Path, default=None,
                   help="FD classifier checkpoint folder (default: RUN_DIR/classifier when a run "
                        "is given, else <out>/classifier, trained there if missing)")
    return p


@dataclass
class Bench:
    """One benchmark run: its name, output folder, settings and collected results."""

    name: str
    out: Path
    args: argparse.Namespace
    started: float = field(default_factory=time.perf_counter)
    results: dict[str, Any] = field(default_factory=dict)

    def path(self, suffix: str) -> Path:
        return self.out / f"{self.name}{suffix}"

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def setup(name: str, args: argparse.Namespace, expected_full: str, expected_quick: str = "< 60 s"
          ) -> Bench:
    """Logging, threads, output folder; prints the expected duration. Returns the Bench."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stdout)
    if args.threads == 0 and args.quick:
        args.threads = 1  # smoke test: two OpenMP threads on a busy 2-core CPU can crawl
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    out = args.out or (DEFAULT_OUT / "quick" if args.quick else DEFAULT_OUT)
    out.mkdir(parents=True, exist_ok=True)
    expected = expected_quick if args.quick else expected_full
    log.info("%s: %s mode, %d torch threads, output in %s", name,
             "QUICK (smoke test, figures meaningless)" if args.quick else "full",
             torch.get_num_threads(), out)
    log.info("expected duration: %s (on a 2-core CPU shared with other work; "
             "contention can make it several times longer)", expected)
    return Bench(name, out, args)


def environment() -> dict[str, Any]:
    """Where the figures were measured."""
    from bld.demo import cpu_name
    return {"torch": torch.__version__, "python": platform.python_version(), "cpu": cpu_name(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(), "load_average": _loadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def _loadavg() -> list[float] | None:
    try:
        return list(os.getloadavg())
    except OSError:
        return None


# ------------------------------------------------------------------------------ timing
@dataclass
class Timing:
    """Wall times (seconds) of repeated runs of one callable, after warm-up."""

    times: list[float]

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def sync(device: torch.device | str | None = None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], Any], *, warmup: int = 1, repeats: int = 3,
            device: torch.device | str | None = None, min_time: float = 0.0) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed calls (more while the
    total is under ``min_time`` seconds). Whole calls are timed (SPEC 5: time whole batches)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    while len(times) < repeats or sum(times) < min_time:
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
        if len(times) >= 100:
            break
    return Timing(times)


# ----------------------------------------------------------------------------- writing
def fmt(v: Any, digits: int = 4) -> str:
    """A cell: floats to ``digits`` significant figures, None as '-'."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf"
        return f"{v:.{digits}g}"
    return str(v)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None,
                   headers: dict[str, str] | None = None) -> str:
    """Rows (dicts) as a Markdown table with the given column order (default: first row's keys)."""
    if not rows:
        return "(no rows)\n"
    columns = list(columns or rows[0].keys())
    headers = headers or {}
    lines = ["| " + " | ".join(headers.get(c, c) for c in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return str(obj)
    return obj


def write_report(bench: Bench, title: str, sections: Iterable[str]) -> None:
    """Write ``<name>.md`` (title, settings, the given Markdown sections) and ``<name>.json``
    (settings, environment, ``bench.results``), then print the Markdown."""
    settings = {k: v for k, v in vars(bench.args).items()}
    env = environment()
    head = [f"# {title}", "",
            ("QUICK smoke-test run: sizes are tiny and the figures mean nothing. "
             if bench.args.quick else "") +
            f"Measured {env['date']} on {env['cpu']} ({env['cpu_count']} CPUs, "
            f"{env['torch_threads']} torch threads, load average {env['load_average']}), "
            f"torch {env['torch']}; the script took {bench.elapsed / 60:.1f} min.", "",
            "Command: `python " + " ".join([f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]]) + "`",
            ""]
    text = "\n".join(head) + "\n" + "\n".join(s.rstrip("\n") for s in sections) + "\n"
    bench.path(".md").write_text(text)
    payload = {"benchmark": bench.name, "settings": settings, "environment": env,
               "seconds": bench.elapsed, "results": bench.results}
    bench.path(".json").write_text(json.dumps(_jsonable(payload), indent=2))
    print("\n" + text)
    log.info("wrote %s and %s", bench.path(".md"), bench.path(".json"))


def update_headline(bench: Bench, values: dict[str, Any]) -> Path:
    """Merge ``values`` into ``<out>/headline.json``: one flat object of the figures the
    READMEs quote, each written by the script that measured it (never typed in). Each key
    gets a ``<key>__source`` entry naming the script and the date."""
    path = bench.out / "headline.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    stamp = f"benchmarks/{bench.name}.py, {time.strftime('%Y-%m-%d %H:%M')}"
    for k, v in values.items():
        data[k] = _jsonable(v)
        data[f"{k}__source"] = stamp
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(sorted(data.items())), indent=2) + "\n")
    tmp.replace(path)
    log.info("headline: %s", {k: v for k, v in values.items()})
    return path


def run_bld(argv: list[str]) -> None:
    """Run one `bld` command in this process; a non-zero exit stops the benchmark."""
    from bld.cli import main as bld
    log.info("bld %s", " ".join(argv))
    rc = bld(argv)
    if rc:
        raise SystemExit(f"`bld {' '.join(argv)}` failed with exit code {rc}")


def resumable_stage(work: Path, name: str, fn: Callable[[], dict | None]) -> dict:
    """Run fn() once and keep its record (plus ``seconds``) in work/name.json, written
    atomically; a rerun returns the record and skips the finished stage."""
    done = work / f"{name}.json"
    if done.exists():
        log.info("%s: done earlier (%s)", name, done)
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    rec = fn() or {}
    rec["seconds"] = time.perf_counter() - t0
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=2))
    tmp.replace(done)
    return rec


def _save_figure(fig, path: Path) -> Path:
    """Lay out, write and close a matplotlib figure."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_lines(path: Path, series: dict[str, tuple[Sequence[float], Sequence[float]]], *,
               xlabel: str, ylabel: str, title: str = "", logx: bool = False,
               logy: bool = False, hlines: dict[str, float] | None = None) -> Path:
    """One PNG with a line per series (label -> (xs, ys)); optional horizontal reference lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for label, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), marker="o", label=label)
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    for label, y in (hlines or {}).items():
        ax.axhline(y, linestyle="--", color="grey", linewidth=1)
        ax.text(0.01, y, label, transform=ax.get_yaxis_transform(), fontsize=7, color="grey",
                va="bottom")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    return _save_figure(fig, path)


def plot_bars(path: Path, labels: Sequence[str], series: dict[str, Sequence[float]], *,
              xlabel: str, title: str = "") -> Path:
    """Horizontal grouped bars: one group per label, one bar per series (name -> values)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = max(1, len(series))
    height = 0.8 / k
    fig, ax = plt.subplots(figsize=(9, 1.5 + 0.6 * len(labels)), dpi=120)
    for j, (name, values) in enumerate(series.items()):
        ys = [i + (j - (k - 1) / 2) * height for i in range(len(labels))]
        ax.barh(ys, list(values), height=height, label=name)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(list(labels), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8)
    return _save_figure(fig, path)


# -------------------------------------------------------------------------------- data
def fashion_mnist(split: str = "test", limit: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST as float images (N, 1, 28, 28) in [-1, 1] and int64 labels (N,)."""
    from bld.data import load_fashion_mnist, to_model_range
    images, labels = load_fashion_mnist(split)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return to_model_range(images), labels


# --------------------------------------------------------------------------- FD and co.
def get_classifier(bench: Bench, run_dir: Path | None = None) -> tuple[torch.nn.Module, dict]:
    """The FD feature classifier: --classifier, else RUN_DIR/classifier, else
    <out>/classifier (trained there on the Fashion-MNIST train split when missing;
    ``CLASSIFIER_STEPS`` steps as in `bld demo`, 60 in quick mode)."""
    from bld.evaluation import load_classifier, train_and_save_classifier
    candidates = [bench.args.classifier] if bench.args.classifier else []
    if run_dir is not None:
        candidates.append(run_dir / "classifier")
    candidates.append(bench.out / "classifier")
    for c in candidates:
        if c is not None and (c / "config.json").exists():
            clf, meta = load_classifier(c)
            log.info("FD classifier from %s (test accuracy %s)", c, meta.get("test_accuracy"))
            return clf, {**meta, "path": str(c)}
    if bench.args.classifier:
        raise FileNotFoundError(f"--classifier {bench.args.classifier} holds no classifier "
                                "checkpoint (config.json); drop the flag to train one")
    steps = 60 if bench.args.quick else CLASSIFIER_STEPS
    dest = bench.out / "classifier"
    log.info("training the FD classifier (%d steps) into %s", steps, dest)
    train_and_save_classifier("fashion-mnist", dest, steps=steps, seed=0)
    clf, meta = load_classifier(dest)
    return clf, {**meta, "path": str(dest)}


class FDReference:
    """The real side of FD on the test set: a reference half and a disjoint floor set of n
    images (`bld.evaluation.real_reference`), so that every FD comes with its real-vs-real
    floor at the same N (SPEC 5)."""

    def __init__(self, classifier: torch.nn.Module, test_images: torch.Tensor,
                 test_labels: torch.Tensor, n: int, seed: int = 0) -> None:
        from bld.evaluation import real_reference
        self.classifier, self.n = classifier, n
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(test_images), generator=g)
        half = len(test_images) // 2
        # the same split real_reference makes, kept with labels for reconstruction checks
        self.reference, self.floor = real_reference(test_images, n, seed=seed)
        self.floor_index = perm[half:half + n]  # (n,) test-set indices of the floor images
        self.floor_labels = test_labels[self.floor_index]

    def evaluate(self, images: torch.Tensor, labels: torch.Tensor | None = None
                 ) -> dict[str, float]:
        """FD (+ floor at the same N), precision/recall (+ class accuracy with labels)."""
        from bld.evaluation import evaluate_images
        if len(images) != self.n:
            raise ValueError(f"FD compares sets of one size: got {len(images)} images, the "
                             f"floor was made for n={self.n}")
        return evaluate_images(self.classifier, self.reference, self.floor, images, labels)


def spread(a: float, b: float) -> float:
    """Relative difference |a - b| / mean(a, b)."""
    m = 0.5 * (abs(a) + abs(b))
    return abs(a - b) / m if m > 0 else 0.0


def cycled_labels(n: int, num_classes: int) -> torch.Tensor:
    """0, 1, ..., num_classes - 1, 0, 1, ... (n labels): balanced classes."""
    return torch.arange(num_classes).repeat(n // num_classes + 1)[:n]


def batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, size) of each batch covering range(n)."""
    return [(i, min(batch_size, n - i)) for i in range(0, n, batch_size)]


# ---------------------------------------------------------------------------- training
@dataclass
class TrainResult:
    model: torch.nn.Module  # the EMA copy when ema_decay > 0, else the trained model (eval mode)
    losses: list[float]
    seconds: float
    steps: int
    batch_size: int


def autocast(precision: str = "auto"):
    """bf16 autocast on the CPU where ``precision`` (auto | fp32 | bf16) resolves to bf16."""
    from bld.precision import resolve_precision
    return resolve_precision(precision, "cpu").autocast("cpu")


def precision_name(precision: str = "auto") -> str:
    """What ``precision`` resolves to on this CPU (fp32 / bf16), for the tables' captions."""
    from bld.precision import resolve_precision
    return resolve_precision(precision, "cpu").name


def train_model(model: torch.nn.Module,
                loss_fn: Callable[[torch.Tensor, torch.Generator], torch.Tensor], *, n_items: int, steps: int, batch_size: int, lr: float, seed: int, desc: str,
                warmup: int | None = None, weight_decay: float = 0.0, ema_decay: float = 0.0,
                precision: str = "auto", grad_clip: float = 1.0) -> TrainResult:
    """A short training loop shared by the in-script baselines, identical for every model so
    that budgets (steps x batch) and optimiser settings match: AdamW (betas 0.9, 0.99), linear
    warm-up then cosine decay to 0.1 x lr (`bld.training.optim.lr_at`), gradient clipping, optional
    EMA (`bld.training.optim.EMA`), the given precision (`bld.precision`; auto: bf16 autocast only
    where this CPU runs it natively and faster).

    ``loss_fn(idx, generator)`` gets the indices (batch_size,) of this step's items (epochs
    of a seeded permutation of range(n_items)) and returns the scalar loss.
    """
    from bld.training.optim import EMA, lr_at
    from bld.train_config import OptimConfig
    optim = OptimConfig(steps=steps, batch_size=batch_size, lr=lr,
                        warmup=max(1, steps // 20) if warmup is None else warmup,
                        weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                            betas=(optim.beta1, optim.beta2), weight_decay=weight_decay)
    ema = EMA(model, ema_decay) if ema_decay > 0 else None
    perm, pos, losses = torch.randperm(n_items, generator=gen), 0, []
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc=desc, mininterval=2.0)
    for step in bar:
        if pos + batch_size > n_items:
            perm, pos = torch.randperm(n_items, generator=gen), 0
        idx = perm[pos:pos + batch_size]
        pos += batch_size
        for g in opt.param_groups:
            g["lr"] = lr_at(step, optim)
        with autocast(precision):
            loss = loss_fn(idx, gen)
        opt.zero_grad(set_to_none=True)
        loss.float().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        if ema is not None:
            ema.update(model, step)
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    bar.close()
    seconds = time.perf_counter() - t0
    out = ema.model if ema is not None else model
    return TrainResult(out.eval(), losses, seconds, steps, batch_size)
