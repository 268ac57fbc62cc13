"""Gradient accumulation: a step's batch in micro-batches, DDP's gradient sync in the last.

A step's gradient is the whole batch's: each micro-batch back-propagates its (mean) loss
divided by the number of micro-batches. Imports only torch and bld.core.config.
"""

from __future__ import annotations

import contextlib
from typing import Callable, TypeVar

import torch

from ..core.config import OptimConfig

Out = TypeVar("Out")  # a loss tensor, or a named tuple of losses with a ``loss`` field


def micro_batches(n: int, optim: OptimConfig) -> list[slice]:
    """The rows of each of a step batch's ``grad_accum`` micro-batches (n rows in all)."""
    return [slice(i, min(i + optim.batch_size, n)) for i in range(0, n, optim.batch_size)]


def sync_gradients(net: torch.nn.Module, last: bool):
    """DDP all-reduces gradients in the backward pass of the last micro-batch only."""
    if last or not isinstance(net, torch.nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return net.no_sync()


def backward_by_parts(net: torch.nn.Module, parts: list[slice],
                      loss_of: Callable[[int, slice], Out]) -> list[Out]:
    """``loss_of(k, rows)`` for each micro-batch k, back-propagating its loss / len(parts)
    (losses are means); the outputs, detached (no graphs are kept past their backward)."""
    outs = []
    for k, rows in enumerate(parts):
        with sync_gradients(net, last=k == len(parts) - 1):
            out = loss_of(k, rows)
            (_loss(out) / len(parts)).backward()
        outs.append(_detached(out))
    return outs


def mean_over(outputs: list[Out]) -> Out:
    """The mean of the micro-batches' outputs (field-wise for named tuples), for logging."""
    if isinstance(outputs[0], torch.Tensor):
        return torch.stack(outputs).mean()
    return type(outputs[0])(*(torch.stack(list(vals)).mean() for vals in zip(*outputs)))


def _loss(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.loss


def _detached(out):
    if isinstance(out, torch.Tensor):
        return out.detach()
    return type(out)(*(v.detach() for v in out))
