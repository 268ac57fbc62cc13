"""What several benchmarks measure alike: the Fashion-MNIST test set, the FD classifier and
the reference FD is measured against (with its real-vs-real floor), and one short training
loop shared by the in-script baselines so their budgets match.

FD here is measured in the feature space of the project's own Fashion-MNIST classifier
(`bld.evaluation.classifier`), so it is comparable only with figures from the same classifier and the
same N, never with published Inception FID (method.md §5). `common` re-exports these names, so a
benchmark imports only `common`; this module imports nothing of `common`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

log = logging.getLogger("bench")

CLASSIFIER_STEPS = 1200  # what `bld demo` trains; quick mode uses far fewer


# -------------------------------------------------------------------------------- data
def fashion_mnist(split: str = "test", limit: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST as float images (N, 1, 28, 28) in [-1, 1] and int64 labels (N,)."""
    from bld.data import load_fashion_mnist, to_model_range
    images, labels = load_fashion_mnist(split)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return to_model_range(images), labels


def run_source(run: Path) -> str:
    """The data source a `bld demo` run trained on (its report; Fashion-MNIST before the
    report named it)."""
    import json
    report = run / "report.json"
    return json.loads(report.read_text()).get("source", "fashion-mnist") if report.exists() \
        else "fashion-mnist"


def run_data_dir(run: Path) -> str | None:
    """The data folder a `bld demo` run was given with --data-dir (its report), else None:
    the source's default place."""
    import json
    report = run / "report.json"
    if not report.exists():
        return None
    return json.loads(report.read_text()).get("settings", {}).get("data_dir") or None


def dataset_split(source: str, split: str = "test", limit: int | None = None,
                  data_dir: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Any `bld.data.build_dataset` source (``fashion-mnist``, ``dicebear`` = the demo's
    faces, ``emoji-twitter``...) as float images (N, C, H, W) in [-1, 1] and int64 labels;
    `data_dir` the source's folder if not its default place."""
    if source == "fashion-mnist" and data_dir is None:
        return fashion_mnist(split, limit)
    from bld.data import build_dataset, dataset_tensors
    images, labels = dataset_tensors(build_dataset(source, split=split, data_dir=data_dir))
    if limit is not None and limit < len(images):  # a seeded subset: folders are sorted by class
        keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:limit]
        images, labels = images[keep.sort().values], labels[keep.sort().values]
    return images, labels


# --------------------------------------------------------------------------- FD and co.
def get_classifier(bench, run_dir: Path | None = None, source: str = "fashion-mnist"
                   ) -> tuple[torch.nn.Module, dict]:
    """The FD feature classifier of a running benchmark (``common.Bench``): --classifier, else
    RUN_DIR/classifier, else <out>/classifier (trained there on the train split of `source`
    when missing; ``CLASSIFIER_STEPS`` steps as in `bld demo`, 60 in quick mode)."""
    from bld.evaluation.evaluate import load_classifier, train_and_save_classifier
    candidates = [bench.args.classifier] if bench.args.classifier else []
    if run_dir is not None:
        candidates.append(run_dir / "classifier")
    dest = bench.out / ("classifier" if source == "fashion-mnist" else f"classifier-{source}")
    candidates.append(dest)
    for c in candidates:
        if c is not None and (c / "config.json").exists():
            clf, meta = load_classifier(c)
            if meta.get("dataset") not in (None, source):
                raise SystemExit(f"the FD classifier in {c} was trained on {meta['dataset']}, "
                                 f"not {source}: pass --classifier with one of {source} (a "
                                 f"`bld demo` run's classifier/ folder), or none to train one")
            log.info("FD classifier from %s (test accuracy %s)", c, meta.get("test_accuracy"))
            return clf, {**meta, "path": str(c)}
    if bench.args.classifier:
        raise FileNotFoundError(f"--classifier {bench.args.classifier} holds no classifier "
                                "checkpoint (config.json); drop the flag to train one")
    steps = 60 if bench.args.quick else CLASSIFIER_STEPS
    log.info("training the FD classifier on %s (%d steps) into %s", source, steps, dest)
    train_and_save_classifier(source, dest, steps=steps, seed=0)
    clf, meta = load_classifier(dest)
    return clf, {**meta, "path": str(dest)}


class FDReference:
    """The real side of FD on the test set: a reference half and a disjoint floor set of n
    images (`bld.evaluation.evaluate.real_reference`), so that every FD comes with its real-vs-real
    floor at the same N (docs/method.md §5)."""

    def __init__(self, classifier: torch.nn.Module, test_images: torch.Tensor,
                 test_labels: torch.Tensor, n: int, seed: int = 0) -> None:
        from bld.evaluation.evaluate import real_reference
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
        from bld.evaluation.evaluate import evaluate_images
        if len(images) != self.n:
            raise ValueError(f"FD compares sets of one size: got {len(images)} images, the "
                             f"floor was made for n={self.n}")
        return evaluate_images(self.classifier, self.reference, self.floor, images, labels)


def sampler_setting(text: str, evidence: bool = False) -> tuple[float, ...]:
    """A sampler setting W:LO:HI[:TEMPERATURE] (guidance w at LO <= t / T <= HI; temperature
    1 when left out) as (w, lo, hi, temperature); with ``evidence``, W:LO:HI[:TEMPERATURE
    [:LAMBDA]] as (w, lo, hi, temperature, lambda), the evidence weight of docs/method.md §2 (the
    library's default when left out). ValueError with what to write instead."""
    form = "W:LO:HI[:TEMPERATURE[:LAMBDA]]" if evidence else "W:LO:HI[:TEMPERATURE]"
    example = "1.5:0:0.6:1.3:0.5" if evidence else "1.5:0:0.6:1.3"
    try:
        vals = [float(v) for v in text.split(":")]
        if len(vals) not in ((3, 4, 5) if evidence else (3, 4)):
            raise ValueError
    except ValueError:
        raise ValueError(f"a sampler setting is {form} (e.g. 1.5:0:0.6 or {example}), "
                         f"got {text!r}") from None
    w, lo, hi, temp = (vals + [1.0])[:4] if len(vals) == 3 else vals[:4]
    if not (w >= 0 and 0 <= lo <= hi <= 1 and temp > 0):
        raise ValueError(f"sampler setting {text!r}: need w >= 0, 0 <= lo <= hi <= 1 and "
                         "temperature > 0")
    if not evidence:
        return w, lo, hi, temp
    from bld.models.sampling import DEFAULT_EVIDENCE_WEIGHT
    return w, lo, hi, temp, (vals[4] if len(vals) == 5 else DEFAULT_EVIDENCE_WEIGHT)


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
    from bld.core.device import resolve_precision
    return resolve_precision(precision, "cpu").autocast("cpu")


def precision_name(precision: str = "auto") -> str:
    """What ``precision`` resolves to on this CPU (fp32 / bf16), for the tables' captions."""
    from bld.core.device import resolve_precision
    return resolve_precision(precision, "cpu").name


def train_model(model: torch.nn.Module,
                loss_fn: Callable[[torch.Tensor, torch.Generator], torch.Tensor], *, n_items: int, steps: int, batch_size: int, lr: float, seed: int, desc: str,
                warmup: int | None = None, weight_decay: float = 0.0, ema_decay: float = 0.0,
                precision: str = "auto", grad_clip: float = 1.0) -> TrainResult:
    """A short training loop shared by the in-script baselines, identical for every model so
    that budgets (steps x batch) and optimiser settings match: AdamW (betas 0.9, 0.99), linear
    warm-up then cosine decay to 0.1 x lr (`bld.training.optim.lr_at`), gradient clipping, optional
    EMA (`bld.training.optim.EMA`), the given precision (`bld.core.device`; auto: bf16 autocast only
    where this CPU runs it natively and faster).

    ``loss_fn(idx, generator)`` gets the indices (batch_size,) of this step's items (epochs
    of a seeded permutation of range(n_items)) and returns the scalar loss.
    """
    from bld.core.config import OptimConfig
    from bld.training.optim import EMA, lr_at
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
