"""The optimizer side of a step: AdamW, the lr schedule, the EMA of the weights, and the
guard that skips a step whose loss or gradient is NaN / inf.

Imports only torch, bld.core.config and the Context of `context.py`.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import torch
import torch.distributed as dist

from ..core.config import ConfigError, OptimConfig
from .context import Context, TrainingError

log = logging.getLogger("bld")


def lr_at(step: int, optim: OptimConfig) -> float:
    """Linear warm-up then cosine decay to lr * min_lr_ratio."""
    if step < optim.warmup:
        return optim.lr * (step + 1) / optim.warmup
    progress = (step - optim.warmup) / max(1, optim.steps - optim.warmup)
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return optim.lr * (optim.min_lr_ratio + (1 - optim.min_lr_ratio) * cos)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def make_optimizer(params, optim: OptimConfig, lr: float | None = None) -> torch.optim.AdamW:
    """AdamW over ``params`` (the optimizer of every weight where ``optim.optimizer`` is
    adamw, and of the autoencoder's discriminator always)."""
    return torch.optim.AdamW(params, lr=lr or optim.lr, betas=(optim.beta1, optim.beta2),
                             weight_decay=optim.weight_decay)


# first parts of parameter names that Muon leaves to AdamW: the layers that map bits, class
# labels and positions in and logits out (Muon is meant for the hidden matrices)
_MUON_EXCLUDED = ("embed", "class_embed", "pos", "head")


def muon_split(model: torch.nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(Muon's parameters, AdamW's): the hidden 2-D weight matrices, and the rest."""
    muon, adamw = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        hidden = p.ndim == 2 and name.split(".")[0] not in _MUON_EXCLUDED
        (muon if hidden else adamw).append(p)
    return muon, adamw


class Muon(torch.optim.Optimizer):
    """Muon for 2-D weights: momentum (Nesterov), the update orthogonalised by five quintic
    Newton-Schulz iterations, decoupled weight decay, and the lr scaled by 0.2 sqrt(max(A, B))
    so that the update's size matches AdamW's (Liu et al. 2025, "Muon is scalable for LLM
    training"). The same algorithm as ``torch.optim.Muon(..., adjust_lr_fn="match_rms_adamw")``,
    except the dtype of the Newton-Schulz iterations: torch's runs them in bf16, which on a CPU
    without native bf16 (AVX2, AVX-512 without BF16) made a step of the demo's 192 x 4 prior
    take 5.7 s instead of 0.14 s (benchmarks/step_time.py); here ``ns_dtype`` (fp32 unless the
    run's precision is bf16) decides. With ``ns_dtype=torch.bfloat16`` it matches torch's
    bit for bit (tests/test_muon.py)."""

    COEFFICIENTS = (3.4445, -4.7750, 2.0315)

    def __init__(self, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.95,
                 ns_dtype: torch.dtype = torch.float32, ns_steps: int = 5, eps: float = 1e-7):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum))
        self.ns_dtype, self.ns_steps, self.eps = ns_dtype, ns_steps, eps

    def orthogonalise(self, g: torch.Tensor) -> torch.Tensor:
        a, b, c = self.COEFFICIENTS
        x = g.to(self.ns_dtype)
        tall = g.size(0) > g.size(1)
        if tall:
            x = x.T
        x = x / x.norm().clamp(min=self.eps)  # spectral norm <= 1
        for _ in range(self.ns_steps):
            gram = x @ x.T
            x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
        return x.T if tall else x

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, mu = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - mu)
                update = self.orthogonalise(p.grad.lerp(buf, mu))
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-lr * 0.2 * math.sqrt(max(p.shape[:2])))


class MuonAdamW:
    """Muon on the hidden 2-D weights and AdamW on the rest, stepped together as one
    optimizer (``param_groups`` lists both, so the lr schedule sets both). Muon's lr is
    rescaled to AdamW's update size, so one ``optim.lr`` serves both."""

    def __init__(self, model: torch.nn.Module, optim: OptimConfig,
                 ns_dtype: torch.dtype = torch.float32) -> None:
        muon, rest = muon_split(model)
        if not muon:
            raise ConfigError("optim.optimizer=muon: this model has no hidden 2-D weight "
                              "matrix for Muon (a convolutional autoencoder); use adamw")
        self.muon = Muon(muon, lr=optim.lr, weight_decay=optim.weight_decay,
                         momentum=optim.muon_momentum, ns_dtype=ns_dtype)
        self.adamw = make_optimizer(rest, optim)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        # read anew each time: load_state_dict replaces each optimizer's groups
        return self.muon.param_groups + self.adamw.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.muon.step()
        self.adamw.step()

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"muon", "adamw"}:
            raise ConfigError("the checkpoint's optimizer state is AdamW's, not Muon's: resume "
                              "with the optimizer it was trained with (optim.optimizer)")
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])


def model_optimizer(model: torch.nn.Module, optim: OptimConfig, bf16: bool = False):
    """The training loop's optimizer of ``model``, as ``optim.optimizer`` names it (``bf16``:
    the run computes in bf16, so Muon's iterations may too)."""
    if optim.optimizer == "muon":
        return MuonAdamW(model, optim, torch.bfloat16 if bf16 else torch.float32)
    return make_optimizer(model.parameters(), optim)


class EMA:
    """Exponential moving average of a model's weights (used for sampling / evaluation)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1 - d)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)


class NonFiniteGuard:
    """Skips optimizer steps whose loss or gradient norm is NaN / inf, counts them, and stops
    the run after ``limit`` in a row. Under DDP the ranks agree (one bad rank skips all)."""

    def __init__(self, limit: int, ctx: Context, state: dict[str, Any] | None = None) -> None:
        if limit < 1:
            raise ConfigError(f"run.max_bad_steps must be at least 1, got {limit}")
        self.limit, self.ctx = limit, ctx
        self.total = int((state or {}).get("skipped_steps", 0))
        self.in_a_row = int((state or {}).get("bad_in_a_row", 0))

    def ok(self, step: int, *values: torch.Tensor, what: str = "loss or gradient") -> bool:
        """True if every value is finite; else count the skip (and stop after ``limit``)."""
        bad = torch.tensor(float(not all(bool(torch.isfinite(v).all()) for v in values)))
        if self.ctx.distributed:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if not bad.item():
            self.in_a_row = 0
            return True
        self.total += 1
        self.in_a_row += 1
        log.warning("step %d: non-finite %s; step skipped (%d in a row, %d in this run)",
                    step + 1, what, self.in_a_row, self.total)
        if self.in_a_row >= self.limit:
            raise TrainingError(
                f"stopped at step {step + 1}: the last {self.in_a_row} steps had a non-finite "
                f"{what} (NaN or inf) and were skipped; no weights or checkpoint were changed by "
                "them. Lower optim.lr or use --precision fp32, then continue from the last good "
                "checkpoint with --resume (or raise run.max_bad_steps).")
        return False

    def state(self) -> dict[str, int]:
        return {"skipped_steps": self.total, "bad_in_a_row": self.in_a_row}
