"""The process a training run lives in: device, precision and, under ``torchrun``,
torch.distributed.

One code path for 1 or N processes: under ``torchrun`` the RANK / WORLD_SIZE / LOCAL_RANK
environment variables turn on DistributedDataParallel (gloo on CPU, NCCL on CUDA); rank 0
logs, draws grids, writes checkpoints and holds the lock on the run folder. `TrainingError`
is what a run raises when it cannot go on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..core import runfolder
from ..core.config import RunConfig
from ..core.device import Precision, resolve_device, resolve_precision


class TrainingError(RuntimeError):
    """A training run cannot go on (it diverged, or another process stopped)."""


@dataclass
class Context:
    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    lock: runfolder.RunLock | None = None  # rank 0's lock on the run folder
    precision: Precision = Precision("fp32", "fp32: not resolved yet")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def autocast(self):
        """bf16 autocast where the run's resolved precision is bf16, else a no-op."""
        return self.precision.autocast(self.device)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def setup_context(run: RunConfig) -> Context:
    """Start torch.distributed when launched by torchrun (RANK/WORLD_SIZE set)."""
    if run.threads > 0:
        torch.set_num_threads(run.threads)
    device = resolve_device(run.device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
            device = torch.device("cuda", local_rank)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return Context(device, rank, world, local_rank, precision=_agreed_precision(run, device))
    return Context(device, precision=resolve_precision(run.precision, device))


def _agreed_precision(run: RunConfig, device: torch.device) -> Precision:
    """Rank 0's resolution of ``run.precision``, taken by every rank (a timing at start could
    otherwise differ between processes, and DDP needs them to compute alike)."""
    box = [resolve_precision(run.precision, device) if int(os.environ["RANK"]) == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def teardown(ctx: Context) -> None:
    if ctx.lock is not None:
        ctx.lock.release()
        ctx.lock = None
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def agree(ctx: Context, error: Exception | None) -> None:
    """Raise rank 0's error on every rank (so no rank waits at a collective for one that left)."""
    if ctx.distributed:
        box = [f"{type(error).__name__}: {error}" if error is not None else None]
        dist.broadcast_object_list(box, src=0)
        if error is None and box[0] is not None:
            raise TrainingError(f"rank 0 stopped: {box[0]}")
    if error is not None:
        raise error


def gather_generator_states(gen: torch.Generator, ctx: Context) -> list[torch.Tensor]:
    """Every rank's generator state, in rank order (a collective under DDP)."""
    state = gen.get_state()
    if not ctx.distributed:
        return [state]
    out: list[Any] = [None] * ctx.world
    dist.all_gather_object(out, state)
    return out


def distribute(module: torch.nn.Module, ctx: Context) -> torch.nn.Module:
    """``module`` wrapped in DistributedDataParallel under DDP, else itself."""
    if not ctx.distributed:
        return module
    return torch.nn.parallel.DistributedDataParallel(module)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return module.module if hasattr(module, "module") else module
