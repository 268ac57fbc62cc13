"""`Task`: what the training loop (`bld.training.loop.fit`) asks of one model.

The loop owns the run: the process context, the lock and resume, precision, the lr schedule,
gradient accumulation, clipping, the non-finite guard, the EMA, metrics rows, progress,
snapshots and checkpoints. A task says what its data and its model are, what one
micro-batch's loss is, what its rows log, what its trainer state holds beyond the loop's and
what a snapshot draws. The hooks are called in this order:

    load_data -> (seed) make_model -> (lock, resume) start -> summary
    each step:  prepare -> loss per micro-batch -> finish -> (clip, guard, optimizer step)
                -> after_step -> (EMA) -> row and postfix on a logging step
    snapshot / state / metadata whenever the loop draws or checkpoints

`load_data`, `make_model`, `summary`, `loss`, `row` and `snapshot` have no default. Imports only
torch and the Context of `context.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.data import Dataset

from .context import Context


class Task:
    kind = ""  # the checkpoint's (and config's) kind, e.g. "prior"
    name = ""  # the progress bar's label, e.g. "train-prior"
    rate_column = "items_per_s"  # metrics.csv's column of items read per second
    curves: tuple[str, ...] = ("loss",)  # the columns drawn in loss_curves.png
    title = ""  # that plot's title

    def __init__(self, cfg) -> None:
        self.cfg = cfg  # a training config with .data, .optim and .run
        self.ctx: Context | None = None
        self.gen: torch.Generator | None = None

    def load_data(self, ctx: Context) -> Dataset:
        """The training set (before the run folder is locked, so bad data stops a run before
        it writes anything). May replace ``self.cfg`` with a resolved copy: the loop
        checkpoints ``self.cfg`` as it is after this call."""
        raise NotImplementedError

    def make_model(self, ctx: Context) -> torch.nn.Module:
        """The model whose weights the checkpoint, the EMA and the loop's optimizer hold, on
        ``ctx.device``, and anything else the task trains (the loop has seeded torch)."""
        raise NotImplementedError

    def start(self, ctx: Context, gen: torch.Generator, state: dict[str, Any] | None) -> None:
        """The run starts: ``gen`` is this rank's generator (restored on resume), ``state``
        the resumed trainer state (None for a new run)."""
        self.ctx, self.gen = ctx, gen

    def summary(self) -> str:
        """One line for the log at the start (rank 0): the model's size and the data's."""
        raise NotImplementedError

    def prepare(self, batch: tuple[torch.Tensor, torch.Tensor], parts: list[slice],
                step: int) -> None:
        """Before a step's micro-batches: ``batch`` is the step's (items, labels) as the
        loader gives them, ``parts`` its micro-batches' rows."""

    def loss(self, net: torch.nn.Module, rows: slice) -> NamedTuple:
        """The losses of one micro-batch (a named tuple whose ``loss`` field the loop
        back-propagates), computed through ``net`` (the model, DDP-wrapped under DDP)."""
        raise NotImplementedError

    def finish(self, losses: NamedTuple) -> NamedTuple:
        """After every micro-batch's backward, before clipping: the step's mean losses
        (change ``.grad`` here for gradients that are not one loss's)."""
        return losses

    def after_step(self, step: int, lr: float, stepped: bool, guard) -> None:
        """After the loop's optimizer step (``stepped`` False when the guard skipped it)."""

    def row(self, losses: NamedTuple) -> dict[str, Any]:
        """The task's columns of a metrics.csv row (rank 0, on logging steps)."""
        raise NotImplementedError

    def postfix(self, row: dict[str, Any]) -> dict[str, str]:
        """What the progress bar shows of a row."""
        return {"loss": f"{row['loss']:.4f}"}

    def state(self) -> dict[str, Any]:
        """Trainer state beyond the loop's (optimizer, generators, guard), for checkpoints."""
        return {}

    def metadata(self, final: bool) -> dict[str, Any]:
        """Checkpoint metadata (``final``: the run's last checkpoint)."""
        return {}

    def snapshot(self, ema_model: torch.nn.Module, step: int, folder: Path) -> None:
        """Draw a grid of what the EMA model makes at ``step`` into ``folder`` (rank 0)."""
        raise NotImplementedError
