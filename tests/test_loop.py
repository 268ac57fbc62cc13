"""The training loop takes any task: a third, toy task (a line fitted to points) trains
through `bld.training.loop.fit` with no change to the loop, with its rows, snapshots, checkpoints
and a bitwise resume after a kill, as the autoencoder and the prior do.

This is the shape a new task (say, a distilled student) takes: one module with a config
dataclass (.data, .optim, .run) and a `Task` subclass.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from typing import NamedTuple

import pytest
import torch
from torch.utils.data import Dataset

import bld.training.loop
from bld.core import checkpoint as ckpt
from bld.core import runfolder
from bld.core.config import DataConfig, OptimConfig, RunConfig
from bld.training.task import Task

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass
class LineConfig:
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        steps=8, batch_size=4, grad_accum=2, lr=0.05, warmup=2))
    run: RunConfig = field(default_factory=lambda: RunConfig(
        device="cpu", precision="fp32", log_every=1, sample_every=0, ckpt_every=4))


class Points(Dataset):
    """y = 3x - 1 with noise, 40 points."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(40, 1, generator=g)
        self.y = 3 * self.x - 1 + 0.1 * torch.randn(40, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return torch.cat([self.x[i], self.y[i]]), 0


class LineLosses(NamedTuple):
    loss: torch.Tensor


class LineTask(Task):
    kind, name, rate_column = "line", "train-line", "points_per_s"

    def load_data(self, ctx):
        self.data = Points()
        return self.data

    def make_model(self, ctx):
        self.model = torch.nn.Linear(1, 1).to(ctx.device)
        return self.model

    def summary(self) -> str:
        return f"line: {len(self.data)} points"

    def prepare(self, batch, parts, step) -> None:
        self.xy = batch[0].to(self.ctx.device)

    def loss(self, net, rows) -> LineLosses:
        x, y = self.xy[rows, :1], self.xy[rows, 1:]
        noise = 0.01 * torch.randn(y.shape, generator=self.gen)  # a draw the resume restores
        return LineLosses(torch.nn.functional.mse_loss(net(x), y + noise))

    def row(self, losses: LineLosses) -> dict:
        return {"loss": losses.loss.item()}

    def snapshot(self, ema_model, step, folder) -> None:
        w = ema_model.weight.item()
        (folder / f"line_{step:06d}.txt").write_text(f"{w:.6f}\n")


def test_a_new_task_trains_through_the_loop(tmp_path):
    out = bld.training.loop.fit(LineTask(LineConfig()), tmp_path / "line")
    assert out == runfolder.checkpoint_dir(tmp_path / "line", 8)
    ck = ckpt.load_checkpoint(tmp_path / "line", "line")
    assert ck.step == 8 and ck.metadata["precision"] == "fp32"
    with open(tmp_path / "line" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, 9))
    assert list(rows[0]) == ["step", "loss", "grad_norm", "lr", "skipped_steps", "points_per_s"]
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])  # it learns
    assert (tmp_path / "line" / "samples" / "line_000008.txt").is_file()


def test_a_new_task_resumes_bitwise(tmp_path, killed_after_checkpoint):
    a, b = tmp_path / "unbroken", tmp_path / "killed"
    bld.training.loop.fit(LineTask(LineConfig()), a)
    killed_after_checkpoint(LineTask(LineConfig()), b, 4)
    bld.training.loop.fit(LineTask(LineConfig()), b, resume=True)
    ca, cb = ckpt.load_checkpoint(a, "line"), ckpt.load_checkpoint(b, "line")
    for k in ca.model_state:
        assert torch.equal(ca.model_state[k], cb.model_state[k]), k
        assert torch.equal(ca.ema_state[k], cb.ema_state[k]), k
