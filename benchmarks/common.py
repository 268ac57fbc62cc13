"""Shared helpers for the benchmark scripts: flags, timing, tables/JSON/plots, running bld.

Benchmarks are not tests: they print figures and write them to an output folder
(``<out>/<name>.md``, ``<out>/<name>.json``, ``<out>/<name>_*.png``); they never assert a
wall time. Every script takes ``--quick`` (tiny sizes, a smoke test of the code path, figures
meaningless) and ``--threads`` (torch intra-op threads; default: torch's own default).

What several benchmarks measure alike (the data, the FD classifier and reference, a short
training loop) is in `measures.py`; its names are re-exported here, so a benchmark imports
only this module.
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

log = logging.getLogger("bench")

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH_DIR / "results"
# the shared measurements, re-exported (imported while this folder is still on sys.path)
from measures import (CLASSIFIER_STEPS, FDReference, TrainResult, autocast,  # noqa: F401
                      batches, cycled_labels, dataset_split, fashion_mnist, get_classifier,
                      precision_name, run_data_dir, run_source, sampler_setting, spread, train_model)

# `python benchmarks/NAME.py` puts this folder first on sys.path; once `common` is imported,
# drop it, so that a script's name (tokenizers.py) cannot shadow an installed package.
if sys.path and sys.path[0] and Path(sys.path[0]).resolve() == BENCH_DIR:
    sys.path.pop(0)


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
    script: str = ""  # the benchmark's file name (its outputs may be named otherwise: --name)

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
    import inspect
    return Bench(name, out, args, script=Path(inspect.stack()[1].filename).name)


def environment() -> dict[str, Any]:
    """Where the figures were measured."""
    from bld.core.device import cpu_name
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
    total is under ``min_time`` seconds). Whole calls are timed (method.md §5: time whole batches)."""
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
    stamp = f"benchmarks/{bench.script or bench.name + '.py'}, {time.strftime('%Y-%m-%d %H:%M')}"
    for k, v in values.items():
        data[k] = _jsonable(v)
        data[f"{k}__source"] = stamp
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(sorted(data.items())), indent=2) + "\n")
    tmp.replace(path)
    log.info("headline: %s", {k: v for k, v in values.items()})
    return path


def write_json(path: Path, obj: Any, indent: int = 1) -> None:
    """Write ``obj`` as JSON atomically (a temporary file, then a rename): a crash leaves
    the old file or none, never half of one. Values JSON lacks are written as floats."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=indent, default=float))
    tmp.replace(path)


def kept_result(path: Path, signature: dict[str, Any]) -> dict[str, Any] | None:
    """The record `keep_result` wrote at ``path`` if it was measured with these settings
    (``signature``), else None: none there, or measured otherwise (then it is redone)."""
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    if saved.get("signature") == json.loads(json.dumps(signature, default=str)):
        return saved
    log.info("%s was measured with other settings: measuring again", path)
    return None


def keep_result(path: Path, signature: dict[str, Any], **record: Any) -> None:
    """Keep one finished unit of a benchmark (a pipeline, tokenizer or arm) at ``path``
    (atomically) with the settings it was measured with, for `kept_result`."""
    write_json(path, {"signature": json.loads(json.dumps(signature, default=str)), **record},
               indent=None)


def run_bld(argv: list[str]) -> None:
    """Run one `bld` command in this process; a non-zero exit stops the benchmark."""
    from bld.app.cli import main as bld
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
    write_json(done, rec, indent=2)
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
