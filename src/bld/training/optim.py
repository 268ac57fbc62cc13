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
    return torch.optim.AdamW(params, lr=lr or optim.lr, betas=(optim.beta1, optim.beta2),
                             weight_decay=optim.weight_decay)


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
