"""optim.optimizer=muon: torch.optim.Muon on the hidden 2-D weights, AdamW on the rest, as one
optimizer of the training loop (lr schedule, checkpoint, bitwise resume)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

import bld.training.loop
from bld.core import checkpoint as ckpt
from bld.core.config import ConfigError, DataConfig, OptimConfig, RunConfig
from bld.training.optim import MuonAdamW, model_optimizer, muon_split
from bld.training.task import Task

pytestmark = pytest.mark.usefixtures("one_thread")


class Net(torch.nn.Module):
    """The prior's naming: embed in, hidden blocks, head out."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(2, 16)
        self.blocks = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.GELU(),
                                          torch.nn.LayerNorm(16), torch.nn.Linear(16, 16))
        self.head = torch.nn.Linear(16, 1)

    def forward(self, x):
        return self.head(torch.relu(self.blocks(self.embed(x))))


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    net = Net()
    muon, adamw = muon_split(net)
    assert {id(p) for p in muon} == {id(net.blocks[0].weight), id(net.blocks[3].weight)}
    assert len(adamw) == len(list(net.parameters())) - 2  # embed, head, biases, the norm
    opt = model_optimizer(net, OptimConfig(optimizer="muon", lr=0.01))
    assert isinstance(opt, MuonAdamW) and len(opt.param_groups) == 2
    assert isinstance(model_optimizer(net, OptimConfig()), torch.optim.AdamW)


def test_muon_refuses_a_model_without_hidden_matrices():
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 3, 3))
    with pytest.raises(ConfigError, match="no hidden 2-D weight"):
        model_optimizer(conv, OptimConfig(optimizer="muon"))


def test_an_unknown_optimizer_is_refused_with_the_choices():
    from bld.core.config import config_from_dict, load_config_dict
    with pytest.raises(ConfigError, match="adamw"):
        config_from_dict("prior", load_config_dict("prior", "fashion-mnist",
                                                   ["optim.optimizer=sgd"]))


@dataclass
class FitConfig:
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        steps=24, batch_size=8, lr=0.02, warmup=2, optimizer="muon"))
    run: RunConfig = field(default_factory=lambda: RunConfig(
        device="cpu", precision="fp32", log_every=1, sample_every=0, ckpt_every=12))


class Points(torch.utils.data.Dataset):
    """y = x0 * x1 (a product: a line cannot fit it, the hidden layers must)."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 2, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return torch.cat([self.x[i], self.x[i, :1] * self.x[i, 1:]]), 0


class FitTask(Task):
    kind, name, rate_column = "fit", "train-fit", "points_per_s"

    def load_data(self, ctx):
        self.data = Points()
        return self.data

    def make_model(self, ctx):
        return Net()

    def summary(self) -> str:
        return "fit"

    def prepare(self, batch, parts, step) -> None:
        self.xy = batch[0]

    def loss(self, net, rows):
        from typing import NamedTuple

        class Losses(NamedTuple):
            loss: torch.Tensor
        x, y = self.xy[rows, :2], self.xy[rows, 2:]
        return Losses(torch.nn.functional.mse_loss(net(x), y))

    def row(self, losses) -> dict:
        return {"loss": losses.loss.item()}

    def snapshot(self, ema_model, step, folder) -> None:
        pass


def _mse(run_dir) -> float:
    net = Net()
    net.load_state_dict(ckpt.load_checkpoint(run_dir, "fit").model_state)
    data = Points()
    xy = torch.stack([data[i][0] for i in range(len(data))])
    with torch.no_grad():
        return torch.nn.functional.mse_loss(net(xy[:, :2]), xy[:, 2:]).item()


def test_muon_trains_in_the_loop_and_resumes_bitwise(tmp_path, killed_after_checkpoint):
    a, b = tmp_path / "unbroken", tmp_path / "killed"
    torch.manual_seed(0)
    start = Net()
    xy = torch.stack([Points()[i][0] for i in range(64)])
    before = torch.nn.functional.mse_loss(start(xy[:, :2]), xy[:, 2:]).item()
    bld.training.loop.fit(FitTask(FitConfig()), a)
    ck = ckpt.load_checkpoint(a, "fit")
    assert set(ck.trainer_state()["optimizer"]) == {"muon", "adamw"}
    assert _mse(a) < 0.7 * before  # it learns
    killed_after_checkpoint(FitTask(FitConfig()), b, 12)
    bld.training.loop.fit(FitTask(FitConfig()), b, resume=True)
    cb = ckpt.load_checkpoint(b, "fit")
    for k in ck.model_state:
        assert torch.equal(ck.model_state[k], cb.model_state[k]), k


def test_our_muon_is_torchs_muon_with_the_iterations_in_a_dtype_of_our_choosing():
    """With bf16 iterations it is torch.optim.Muon (match_rms_adamw) bit for bit; in fp32 it
    differs by about bf16's rounding only."""
    from bld.training.optim import Muon
    torch.manual_seed(0)
    w = torch.randn(24, 16)
    grads = [torch.randn(24, 16) for _ in range(3)]
    results = {}
    for name in ("torch", "bf16", "fp32"):
        p = torch.nn.Parameter(w.clone())
        opt = (torch.optim.Muon([p], lr=0.01, weight_decay=0.1, momentum=0.9,
                                adjust_lr_fn="match_rms_adamw") if name == "torch" else
               Muon([p], lr=0.01, weight_decay=0.1, momentum=0.9,
                    ns_dtype=torch.bfloat16 if name == "bf16" else torch.float32))
        for g in grads:
            p.grad = g.clone()
            opt.step()
        results[name] = p.detach()
    assert torch.equal(results["torch"], results["bf16"])
    moved = (results["torch"] - w).abs().mean()
    assert 0 < (results["fp32"] - results["torch"]).abs().mean() < 0.05 * moved
