"""Training loops for the binary autoencoder and the Bernoulli prior.

One code path for 1 or N processes: under ``torchrun`` the RANK / WORLD_SIZE / LOCAL_RANK
environment variables turn on DistributedDataParallel (gloo on CPU, NCCL on CUDA); rank 0
logs, draws grids and writes checkpoints. Both loops read top to bottom (as nanoGPT's
``train.py``): build data and model, restore a checkpoint when resuming, then step.

Resumable: batches are a pure function of (seed, step, rank) and every random draw goes
through a per-rank ``torch.Generator`` whose state is checkpointed, so on CPU a run that is
killed and resumed ends with the same weights as one that was not.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .autoencoder import (AutoencoderConfig, AutoencoderLoss, AutoencoderLosses,
                          BinaryAutoencoder, weight_from_gradients)
from .config import ConfigError, to_dict
from .data import DATASET_SOURCES, build_dataset
from .denoiser import PRESETS, Denoiser
from .diffusion import BernoulliDiffusion
# Loading and the configurations live apart so that sampling never imports this module;
# they are imported back here for the loops (and for callers of bld.train's old names).
from .loading import (LatentDataset, LoadedPrior, load_autoencoder, load_latent_cache,  # noqa: F401
                      load_prior, resolve_device)
from .precision import Precision, resolve_precision
from .sampling import sample
from .data import ShardDataset
from .train_config import (CONFIG_KINDS, AutoencoderTrainConfig, DataConfig,  # noqa: F401
                           OptimConfig, PriorTrainConfig, RunConfig, config_from_dict,
                           upgrade_config_dict)

log = logging.getLogger("bld")


TrainingError = ckpt.TrainingError


# ------------------------------------------------------------------------ distributed
@dataclass
class Context:
    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    lock: ckpt.RunLock | None = None  # rank 0's lock on the run folder
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


# ------------------------------------------------------------------------------ data
class StepBatchSampler(Sampler[list[int]]):
    """Distributed batches that depend only on (seed, step, rank), so resuming is exact.

    Each epoch is a permutation seeded by (seed, epoch); rank r takes every world-th index
    of it (as DistributedSampler does); steps past the end of an epoch start the next one.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int, world: int,
                 start_step: int, total_steps: int) -> None:
        if n < world * batch_size:
            raise ValueError(f"the dataset has {n} items, fewer than one global batch "
                             f"({world} x {batch_size}); lower optim.batch_size or add images")
        self.n, self.bs, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.per_epoch = n // (world * batch_size)
        self.start, self.total = start_step, total_steps
        self._perm: tuple[int, torch.Tensor] | None = None

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """This rank's items of ``epoch``, in the order it reads them."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g)[self.rank::self.world]

    def batch(self, step: int) -> list[int]:
        epoch, i = divmod(step, self.per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, self.epoch_order(epoch))
        return self._perm[1][i * self.bs:(i + 1) * self.bs].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.total):
            yield self.batch(step)

    def __len__(self) -> int:
        return max(0, self.total - self.start)


class ShardBatchSampler(StepBatchSampler):
    """StepBatchSampler for a shard folder: reads stay within one shard at a time.

    Each epoch the shards are shuffled (seeded by (seed, epoch)) and rank r takes every
    world-th of them, so the processes read distinct shards; it reads its shards one after
    another, each in a shuffled order. Every rank's epoch is cut to the smallest share a rank
    can get (the len // world smallest shards), so all ranks and epochs have the same number
    of steps. Still a pure function of (seed, step, rank).
    """

    def __init__(self, counts: list[int], batch_size: int, seed: int, rank: int, world: int,
                 start_step: int, total_steps: int) -> None:
        if len(counts) < world:
            raise ValueError(f"the shard folder has {len(counts)} shards, fewer than the {world} "
                             "processes; write it again with a smaller --shard-size")
        self.counts = torch.tensor(counts)
        self.starts = torch.cat([torch.zeros(1, dtype=torch.long), self.counts.cumsum(0)[:-1]])
        self.n, self.bs, self.seed, self.rank, self.world = (
            int(self.counts.sum()), batch_size, seed, rank, world)
        # a rank gets at least len // world shards: at worst the smallest ones
        least = int(self.counts.sort().values[:len(counts) // world].sum())
        self.per_rank = least
        if least < batch_size:
            raise ValueError(f"a process may get only {least} samples per epoch from "
                             f"{len(counts)} shards, fewer than one batch ({batch_size}); lower "
                             "optim.batch_size / grad_accum or write more, smaller shards")
        self.per_epoch = least // batch_size
        self.start, self.total = start_step, total_steps
        self._perm = None

    def epoch_order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        mine = torch.randperm(len(self.counts), generator=g)[self.rank::self.world]
        order = torch.cat([self.starts[j] + torch.randperm(int(self.counts[j]), generator=g)
                           for j in mine.tolist()])
        return order[:self.per_rank]


def make_loader(dataset: Dataset, optim: OptimConfig, run: RunConfig, ctx: Context,
                start_step: int, num_workers: int) -> DataLoader:
    """Batches of ``optim.step_batch`` items, one per optimizer step from ``start_step`` on;
    with gradient accumulation the loop splits each into ``grad_accum`` micro-batches, so
    the data of a step does not depend on how it is split."""
    if isinstance(dataset, ShardDataset):
        sampler: StepBatchSampler = ShardBatchSampler(
            dataset.counts, optim.step_batch, run.seed, ctx.rank, ctx.world, start_step,
            optim.steps)
    else:
        sampler = StepBatchSampler(len(dataset), optim.step_batch, run.seed, ctx.rank,
                                   ctx.world, start_step, optim.steps)
    # Own generator: a DataLoader otherwise draws its workers' base seed from the global RNG
    # when iterated, so a resumed run's dropout (global RNG) would differ from an unbroken one.
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                      pin_memory=ctx.device.type == "cuda", persistent_workers=False,
                      generator=torch.Generator().manual_seed(run.seed * 1_000_003 + ctx.rank))


def load_data(cfg: DataConfig, split: str = "train", image_size: int = 0, channels: int = 0
              ) -> Dataset:
    """The dataset ``cfg`` names; a folder of images has no size of its own, so unless
    data.image_size / data.channels say otherwise it takes the model's ``image_size`` /
    ``channels``."""
    size, ch = cfg.image_size, cfg.channels
    if cfg.source not in DATASET_SOURCES:  # a folder of images
        size, ch = size or image_size, ch or channels
    ds = build_dataset(cfg.source, split=split, image_size=size or None,
                       channels=ch or None, data_dir=cfg.data_dir or None)
    if hasattr(ds, "scan"):  # a folder of images: unreadable files skipped (and counted) now
        ds.scan()
    if cfg.limit and isinstance(ds, ShardDataset):
        raise ConfigError(f"data.limit does not apply to the shard folder {cfg.source}; write a "
                          "smaller one with `bld shard ... --limit N`")
    if cfg.limit and cfg.limit < len(ds):
        ds = LimitedDataset(ds, cfg.limit)
    return ds


def skipped_images(data: Dataset) -> int:
    """How many unreadable images an image folder skipped so far (0 for other datasets)."""
    return int(getattr(getattr(data, "base", data), "skipped", 0))


class LimitedDataset(Dataset):
    """The first ``limit`` items of a dataset (keeps ``classes`` / ``num_classes``)."""

    def __init__(self, base: Dataset, limit: int) -> None:
        self.base, self.limit = base, limit
        self.classes = getattr(base, "classes", ())
        self.num_classes = getattr(base, "num_classes", 0)

    def __len__(self) -> int:
        return self.limit

    def __getitem__(self, i: int):
        if not 0 <= i < self.limit:
            raise IndexError(i)
        return self.base[i]


# ------------------------------------------------------------------------- utilities
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


class RateMeter:
    """Items per second since the last reading."""

    def __init__(self) -> None:
        self.t, self.n = time.perf_counter(), 0

    def add(self, n: int) -> None:
        self.n += n

    def per_second(self) -> float:
        now = time.perf_counter()
        rate = self.n / max(now - self.t, 1e-9)
        self.t, self.n = now, 0
        return rate


def micro_batches(n: int, optim: OptimConfig) -> list[slice]:
    """The rows of each of a step batch's ``grad_accum`` micro-batches (n rows in all)."""
    return [slice(i, min(i + optim.batch_size, n)) for i in range(0, n, optim.batch_size)]


def mean_over(outputs: list):
    """Field-wise mean of the micro-batches' (detached) loss tuples, for logging."""
    return type(outputs[0])(*(torch.stack([v.detach() for v in vals]).mean()
                              for vals in zip(*outputs)))


def add_gan_gradients(losses: AutoencoderLosses, params: list[torch.nn.Parameter],
                      gan_grads: list[torch.Tensor], last_layer: torch.Tensor,
                      disc_weight: float, ctx: Context) -> AutoencoderLosses:
    """Gradient accumulation with the GAN on: ``.grad`` holds the (all-reduced) gradient of
    the reconstruction loss and ``gan_grads`` that of the GAN term (this process's; they are
    averaged over the processes here). Adds the GAN term with the adaptive weight of the
    whole step batch, as one backward of the whole batch would; returns the logged losses."""
    if ctx.distributed:
        for g in gan_grads:
            dist.all_reduce(g)
            g.div_(ctx.world)
    i = next(j for j, p in enumerate(params) if p is last_layer)
    weight = weight_from_gradients(params[i].grad, gan_grads[i]) * disc_weight
    for p, g in zip(params, gan_grads):
        if p.grad is None:
            p.grad = weight * g
        else:
            p.grad.add_(weight * g)
    return losses._replace(loss=losses.loss + weight * losses.g_loss, d_weight=weight)


def sync_gradients(net: torch.nn.Module, last: bool):
    """DDP all-reduces gradients in the backward pass of the last micro-batch only."""
    if last or not isinstance(net, torch.nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return net.no_sync()


def lr_at(step: int, optim: OptimConfig) -> float:
    """Linear warm-up then cosine decay to lr * min_lr_ratio."""
    if step < optim.warmup:
        return optim.lr * (step + 1) / optim.warmup
    progress = (step - optim.warmup) / max(1, optim.steps - optim.warmup)
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return optim.lr * (optim.min_lr_ratio + (1 - optim.min_lr_ratio) * cos)


def make_optimizer(params, optim: OptimConfig, lr: float | None = None) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=lr or optim.lr, betas=(optim.beta1, optim.beta2),
                             weight_decay=optim.weight_decay)


class CSVLogger:
    """Appends rows to metrics.csv (rank 0); on resume, rows past ``start_step`` go (a row's
    step counts the steps done, so the row logged at ``start_step`` belongs to the checkpoint)."""

    def __init__(self, path: Path, start_step: int) -> None:
        self.path = path
        if start_step > 0 and path.exists():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= start_step]
            self._rewrite(rows)
        elif path.exists():
            path.unlink()

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.path)

    def log(self, row: dict[str, Any]) -> None:
        new = not self.path.exists()
        try:
            with open(self.path, "a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(row))
                if new:
                    w.writeheader()
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        except OSError as e:
            raise ckpt.WriteError(ckpt.write_failure(self.path, e)) from e


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


def _gather_generator_states(gen: torch.Generator, ctx: Context) -> list[torch.Tensor]:
    state = gen.get_state()
    if not ctx.distributed:
        return [state]
    out: list[Any] = [None] * ctx.world
    dist.all_gather_object(out, state)
    return out


def _save(run_dir: Path, kind: str, cfg, step: int, model: torch.nn.Module, ema: EMA,
          trainer_state: dict[str, Any], ctx: Context, keep: int,
          metadata: dict[str, Any] | None = None) -> None:
    """Rank 0 writes an atomic checkpoint folder and moves `latest` to it (never of weights
    holding NaN / inf: `latest` then stays at the last good checkpoint)."""
    if ctx.distributed:  # every rank must hold the weights rank 0 is about to write
        total = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum()
        sums = [torch.zeros_like(total) for _ in range(ctx.world)]
        dist.all_gather(sums, total)
        if any(not torch.equal(x, sums[0]) for x in sums):
            raise TrainingError(f"step {step}: the processes' weights differ "
                                f"({[f'{x.item():.6g}' for x in sums]}); gradients were not "
                                "averaged across ranks. Not checkpointed.")
    if ctx.is_main:
        bad = [n for n, t in [*model.state_dict().items(), *ema.model.state_dict().items()]
               if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if bad:
            raise TrainingError(f"step {step}: the weights hold NaN / inf ({', '.join(bad[:3])}); "
                                f"not checkpointed, {ckpt.find_latest(run_dir)} stays the latest. "
                                "Lower optim.lr and continue from it with --resume.")
        d = ckpt.checkpoint_dir(run_dir, step)
        metadata = {**(metadata or {}), **ctx.precision.as_dict()}
        ckpt.save_checkpoint(d, kind=kind, config=to_dict(cfg), model=model, ema=ema.model,
                             trainer_state=trainer_state, step=step, metadata=metadata)
        ckpt.write_latest(run_dir, d)
        ckpt.prune_checkpoints(run_dir, keep)
    ctx.barrier()


# Settings a resumed run may change freely: they do not change what is computed.
RESUME_FREE_KEYS = ("run.device", "run.threads", "run.log_every", "run.sample_every",
                    "run.ckpt_every", "run.keep_checkpoints", "run.max_bad_steps",
                    "data.num_workers", "data.data_dir", "model.grad_checkpointing")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """'key: saved -> now' for every setting that differs, except RESUME_FREE_KEYS."""
    a, b = _flat(saved), _flat(now)
    return [f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}"
            for k in sorted(set(a) | set(b))
            if k not in RESUME_FREE_KEYS and a.get(k) != b.get(k)]


def _read_resumable(folder: Path, kind: str, ctx: Context):
    """A checkpoint and its trainer state, or a CheckpointError naming the damaged file."""
    ck = ckpt.load_checkpoint(folder, kind=kind, map_location=ctx.device)
    if ck.ema_state is None:
        raise ckpt.CheckpointError(f"{folder} has no {ckpt.EMA_FILE}; it was not written by a "
                                   "training run")
    state = ck.trainer_state(map_location="cpu")
    if state is None:
        raise ckpt.CheckpointError(f"{folder} has no {ckpt.TRAINER_STATE_FILE}; it cannot be "
                                   "resumed (its weights still load)")
    return ck, state


def _resume(run_dir: Path, kind: str, cfg, model: torch.nn.Module, ema: EMA,
            gen: torch.Generator, ctx: Context, allow_config_change: bool = False
            ) -> tuple[int, dict[str, Any]]:
    """Load the newest readable checkpoint of ``run_dir`` (a damaged one is skipped with a
    warning); its config must match ``cfg`` unless ``allow_config_change``."""
    candidates = ckpt.resume_candidates(run_dir)
    if not candidates:
        raise ckpt.CheckpointError(f"--resume: {run_dir} holds no checkpoint to resume from; "
                                   "drop --resume to start a new run")
    errors = []
    for folder in candidates:
        try:
            ck, state = _read_resumable(folder, kind, ctx)
            break
        except ckpt.CheckpointError as e:
            errors.append(str(e))
            log.warning("--resume: skipping checkpoint %s: %s", folder, e)
    else:
        raise ckpt.CheckpointError(f"--resume: no checkpoint in {run_dir} can be read; the newest "
                                   f"failed with: {errors[0]}")
    if errors:
        log.warning("--resume: resuming from %s (step %d), the newest readable checkpoint",
                    ck.path, ck.step)
    diffs = config_differences(upgrade_config_dict(ck.config), to_dict(cfg))
    if diffs and not allow_config_change:
        raise ckpt.CheckpointError(
            f"--resume: the config differs from the checkpoint's ({ck.path}/config.json): "
            f"{'; '.join(diffs)}. Resume with the same settings, add --allow-config-change to "
            "accept the differences, or start a new --out folder")
    if diffs:
        log.warning("--resume with a changed config (--allow-config-change): %s", "; ".join(diffs))
    before = ck.metadata.get("precision")
    if before is not None and before != ctx.precision.name and ctx.is_main:
        log.warning("--resume: steps up to %d ran in %s (%s); this machine continues in %s (%s), "
                    "so the weights will not be bitwise those of an unbroken run", ck.step,
                    before, ck.metadata.get("precision_reason", "?"), ctx.precision.name,
                    ctx.precision.reason)
    ckpt.load_state_strict(model, ck.model_state, "model")
    ckpt.load_state_strict(ema.model, ck.ema_state, "ema")
    ckpt.restore_rng_state(state["rng"])
    gens = state["generators"]
    gen.set_state(gens[ctx.rank] if ctx.rank < len(gens) else gens[0])
    return ck.step, state


def _agree(ctx: Context, error: Exception | None) -> None:
    """Raise rank 0's error on every rank (so no rank waits at a collective for one that left)."""
    if ctx.distributed:
        box = [f"{type(error).__name__}: {error}" if error is not None else None]
        dist.broadcast_object_list(box, src=0)
        if error is None and box[0] is not None:
            raise TrainingError(f"rank 0 stopped: {box[0]}")
    if error is not None:
        raise error


def _start_run(run_dir: Path, kind: str, cfg, model: torch.nn.Module, ema: EMA,
               opt: torch.optim.Optimizer, ctx: Context, resume: bool,
               allow_config_change: bool = False
               ) -> tuple[torch.Generator, int, dict[str, Any] | None]:
    """The per-rank generator, start step and trainer state of a new or resumed run.

    Rank 0 locks the run folder (``run.lock``) for the whole run; a new run refuses a folder
    that already holds checkpoints; rank 0 makes the folders.
    """
    error: Exception | None = None
    if ctx.is_main:
        try:
            ctx.lock = ckpt.RunLock(run_dir).acquire()
            if not resume and ckpt.find_latest(run_dir) is not None:
                raise ckpt.CheckpointError(f"{run_dir} already holds checkpoints; pass --resume "
                                           "to continue that run, or choose a new --out folder")
        except (ckpt.RunLockedError, ckpt.CheckpointError, OSError) as e:
            error = e
    _agree(ctx, error)
    gen = torch.Generator(ctx.device).manual_seed(cfg.run.seed * 7919 + ctx.rank)
    start, state = 0, None
    if resume:
        start, state = _resume(run_dir, kind, cfg, model, ema, gen, ctx, allow_config_change)
        opt.load_state_dict(state["optimizer"])
    if ctx.is_main:
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
    return gen, start, state


def _progress(ctx: Context, start: int, total: int, desc: str):
    return tqdm(total=total, initial=start, desc=desc, disable=not ctx.is_main,
                dynamic_ncols=True, mininterval=1.0)


def _unwrap(m: torch.nn.Module) -> torch.nn.Module:
    return m.module if hasattr(m, "module") else m


# ------------------------------------------------------------------- autoencoder loop
def train_autoencoder(cfg: AutoencoderTrainConfig, run_dir: str | Path, resume: bool = False,
                      allow_config_change: bool = False) -> Path:
    """Train the binary autoencoder; returns the final checkpoint folder."""
    from .plots import image_grid, plot_metrics, save_image, write_snapshot_index

    run_dir = Path(run_dir)
    ctx = setup_context(cfg.run)
    try:
        m = cfg.model
        data = load_data(cfg.data, "train", m.image_size, m.in_channels)
        sample_img, _ = data[0]
        if (m.in_channels, m.image_size) != (sample_img.shape[0], sample_img.shape[-1]):
            raise ConfigError(
                f"model.in_channels={m.in_channels}, model.image_size={m.image_size} do not match "
                f"the data ({sample_img.shape[0]} channels, {sample_img.shape[-1]} px); set them "
                f"to match or set data.image_size / data.channels")
        torch.manual_seed(cfg.run.seed)
        model = BinaryAutoencoder(cfg.model).to(ctx.device)
        loss_fn = AutoencoderLoss(cfg.loss, cfg.model.in_channels).to(ctx.device)
        ema = EMA(model, cfg.optim.ema_decay)
        opt = make_optimizer(model.parameters(), cfg.optim)
        opt_d = (make_optimizer(loss_fn.discriminator.parameters(), cfg.optim)
                 if loss_fn.discriminator is not None else None)
        gen, start, state = _start_run(run_dir, "autoencoder", cfg, model, ema, opt, ctx, resume,
                                       allow_config_change)
        guard = NonFiniteGuard(cfg.run.max_bad_steps, ctx, state)
        if state is not None and opt_d is not None:
            loss_fn.discriminator.load_state_dict(state["discriminator"])
            opt_d.load_state_dict(state["optimizer_d"])
        if ctx.is_main:
            n_params = sum(p.numel() for p in model.parameters())
            log.info("autoencoder: %.2fM parameters, latent %s per image, %d training images "
                     "(%d unreadable, skipped)", n_params / 1e6, cfg.model.latent_shape,
                     len(data), skipped_images(data))
        net = model
        params = list(model.parameters())
        disc = loss_fn.discriminator
        if ctx.distributed:
            net = torch.nn.parallel.DistributedDataParallel(model)
            if disc is not None:
                disc = torch.nn.parallel.DistributedDataParallel(disc)
                loss_fn.discriminator = disc
        logger = CSVLogger(run_dir / "metrics.csv", start) if ctx.is_main else None
        fixed = torch.stack([data[i][0] for i in range(min(16, len(data)))]).to(ctx.device)
        loader = make_loader(data, cfg.optim, cfg.run, ctx, start, cfg.data.num_workers)
        bar = _progress(ctx, start, cfg.optim.steps, "train-ae")
        rate = RateMeter()

        def trainer_state() -> dict[str, Any]:
            st = {"optimizer": opt.state_dict(), "generators": _gather_generator_states(gen, ctx),
                  **guard.state()}
            if opt_d is not None:
                st["discriminator"] = _unwrap(disc).state_dict()
                st["optimizer_d"] = opt_d.state_dict()
            return st

        def snapshot(step: int) -> None:
            if ctx.is_main:
                with torch.no_grad():
                    rec = ema.model(fixed, deterministic=True).recon.clamp(-1, 1)
                save_image(image_grid(torch.cat([fixed, rec]), nrow=len(fixed)),
                           run_dir / "samples" / f"recon_{step:06d}.png")
                write_snapshot_index(run_dir / "samples", "autoencoder: training images above "
                                     "their reconstructions")

        step = start
        for x, _ in loader:
            x = x.to(ctx.device, non_blocking=True)
            lr = lr_at(step, cfg.optim)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            parts = micro_batches(x.shape[0], cfg.optim)
            gan = loss_fn.gan_active(step)
            # with micro-batches the GAN term's gradient is gathered apart and weighted at the
            # end by the whole batch's adaptive weight (one more backward pass per micro-batch)
            gan_apart = gan and len(parts) > 1
            gan_grads = [torch.zeros_like(p) for p in params] if gan_apart else []
            step_losses, probs, recons = [], [], []
            for k, rows in enumerate(parts):  # gradient accumulation: losses are means
                with sync_gradients(net, last=k == len(parts) - 1):
                    with ctx.autocast():
                        out = net(x[rows], generator=gen)  # bits as model.train_bits says
                    losses = loss_fn.generator_loss(x[rows], out, step, model.last_layer,
                                                    adaptive=not gan_apart)
                    if gan_apart:
                        grads = torch.autograd.grad(losses.g_loss / len(parts), params,
                                                    retain_graph=True, allow_unused=True)
                        for acc, g in zip(gan_grads, grads):
                            if g is not None:
                                acc.add_(g)
                    (losses.loss / len(parts)).backward()
                step_losses.append(type(losses)(*(v.detach() for v in losses)))  # no graphs
                probs.append(out.probs.detach())
                recons.append(out.recon.detach())
            losses = mean_over(step_losses)
            if gan_apart:
                losses = add_gan_gradients(losses, params, gan_grads, model.last_layer,
                                           cfg.loss.disc_weight, ctx)
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            good = guard.ok(step, losses.loss.detach(), gnorm)
            if good:
                opt.step()
            d_loss = torch.zeros(())
            if good and opt_d is not None and gan:
                for group in opt_d.param_groups:
                    group["lr"] = lr
                opt_d.zero_grad(set_to_none=True)
                d_parts = []
                for k, rows in enumerate(parts):
                    with sync_gradients(disc, last=k == len(parts) - 1):
                        with ctx.autocast():
                            d_loss = loss_fn.discriminator_loss(x[rows], recons[k])
                        (d_loss / len(parts)).backward()
                    d_parts.append(d_loss.detach())
                d_loss = torch.stack(d_parts).mean()
                d_norm = torch.nn.utils.get_total_norm(
                    [q.grad for q in loss_fn.discriminator.parameters() if q.grad is not None])
                if guard.ok(step, d_loss.detach(), d_norm, what="discriminator loss or gradient"):
                    opt_d.step()
            if good:
                ema.update(model, step)
            step += 1
            rate.add(x.shape[0] * ctx.world)
            bar.update(1)
            if ctx.is_main and (step % cfg.run.log_every == 0 or step == cfg.optim.steps):
                ips = rate.per_second()
                with torch.no_grad():
                    usage = torch.cat(probs).float().mean(dim=(0, 2, 3))
                row = {"step": step, "loss": losses.loss.item(), "l1": losses.l1.item(),
                       "mse": losses.mse.item(), "g_loss": losses.g_loss.item(),
                       "d_weight": float(losses.d_weight), "d_loss": d_loss.item(),
                       "bit_mean": usage.mean().item(),
                       "bit_usage_min": usage.min().item(), "grad_norm": float(gnorm),
                       "lr": lr, "skipped_steps": guard.total, "images_per_s": ips}
                logger.log(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", l1=f"{row['l1']:.4f}",
                                img_s=f"{ips:.0f}")
            if cfg.run.sample_every and step % cfg.run.sample_every == 0:
                snapshot(step)
            if cfg.run.ckpt_every and step % cfg.run.ckpt_every == 0 and step < cfg.optim.steps:
                _save(run_dir, "autoencoder", cfg, step, model, ema, trainer_state(), ctx,
                      cfg.run.keep_checkpoints)
        bar.close()
        snapshot(step)
        _save(run_dir, "autoencoder", cfg, step, model, ema, trainer_state(), ctx,
              cfg.run.keep_checkpoints, metadata={"dataset": cfg.data.source,
                                                  "classes": list(getattr(data, "classes", ())),
                                                  "skipped_images": skipped_images(data)})
        if ctx.is_main:
            plot_metrics(run_dir / "metrics.csv", run_dir / "loss_curves.png",
                         ["loss", "l1", "bit_mean"], title="autoencoder training")
        return ckpt.find_latest(run_dir) or run_dir
    finally:
        teardown(ctx)


# ------------------------------------------------------------------------- prior loop
def resolve_prior_config(cfg: PriorTrainConfig, ae_cfg: AutoencoderConfig,
                         num_classes: int) -> PriorTrainConfig:
    """Fill bits / grid / num_classes from the autoencoder and data; apply the preset."""
    import dataclasses
    m = cfg.model
    if cfg.preset:
        if cfg.preset not in PRESETS:
            raise ConfigError(f"unknown preset {cfg.preset!r}; choose one of {sorted(PRESETS)}")
        w, d, h = PRESETS[cfg.preset]
        m = dataclasses.replace(m, width=w, depth=d, heads=h)
    bits, grid = ae_cfg.bits, ae_cfg.grid
    nc = num_classes if cfg.class_conditional else 0
    m = dataclasses.replace(m, bits=bits, grid=grid, num_classes=nc)
    return dataclasses.replace(cfg, model=m, preset="")


def train_prior(cfg: PriorTrainConfig, run_dir: str | Path, resume: bool = False,
                allow_config_change: bool = False) -> Path:
    """Train the Bernoulli diffusion prior on binary latents; returns the final checkpoint."""
    from .plots import image_grid, plot_metrics, save_image, write_snapshot_index

    run_dir = Path(run_dir)
    ctx = setup_context(cfg.run)
    try:
        if not cfg.autoencoder:
            raise ConfigError("train-prior needs the trained autoencoder: set autoencoder=PATH "
                              "(the run or checkpoint folder written by `bld train-ae`)")
        ae = load_autoencoder(cfg.autoencoder, ctx.device)
        if cfg.latents:
            data = load_latent_cache(cfg.latents)
            if data.shape != ae.config.latent_shape:
                raise ConfigError(f"latent cache {cfg.latents} holds latents {data.shape} but the "
                                  f"autoencoder makes {ae.config.latent_shape}; re-run bld encode")
            made_by = data.metadata.get("autoencoder_id")
            if made_by is not None and made_by != ckpt.weights_fingerprint(ae.state_dict()):
                raise ConfigError(f"latent cache {cfg.latents} was made by a different autoencoder "
                                  f"than {cfg.autoencoder} (weights differ); encode with this one: "
                                  f"bld encode --autoencoder {cfg.autoencoder} --out FILE")
            encode_on_the_fly = False
        else:
            data = load_data(cfg.data, "train", ae.config.image_size, ae.config.in_channels)
            encode_on_the_fly = True
        classes = tuple(getattr(data, "classes", ()))
        cfg = resolve_prior_config(cfg, ae.config, len(classes))
        torch.manual_seed(cfg.run.seed)
        model = Denoiser(cfg.model).to(ctx.device)
        diffusion = BernoulliDiffusion(cfg.diffusion).to(ctx.device)
        ema = EMA(model, cfg.optim.ema_decay)
        opt = make_optimizer(model.parameters(), cfg.optim)
        gen, start, state = _start_run(run_dir, "prior", cfg, model, ema, opt, ctx, resume,
                                       allow_config_change)
        guard = NonFiniteGuard(cfg.run.max_bad_steps, ctx, state)
        if ctx.is_main:
            log.info("prior: %.2fM parameters (width %d, depth %d), latents %s, %d classes, "
                     "%d training items", sum(p.numel() for p in model.parameters()) / 1e6,
                     cfg.model.width, cfg.model.depth, ae.config.latent_shape,
                     cfg.model.num_classes, len(data))
        net = (torch.nn.parallel.DistributedDataParallel(model) if ctx.distributed else model)
        logger = CSVLogger(run_dir / "metrics.csv", start) if ctx.is_main else None
        loader = make_loader(data, cfg.optim, cfg.run, ctx, start, cfg.data.num_workers)
        bar = _progress(ctx, start, cfg.optim.steps, "train-prior")
        rate = RateMeter()
        null = model.null_label
        n_rows = max(1, min(cfg.model.num_classes, 10))

        def trainer_state() -> dict[str, Any]:
            return {"optimizer": opt.state_dict(), "generators": _gather_generator_states(gen, ctx),
                    **guard.state()}

        def snapshot(step: int) -> None:
            if not ctx.is_main:
                return
            y = (torch.arange(n_rows, device=ctx.device).repeat_interleave(8)
                 if null is not None else None)
            g = torch.Generator(ctx.device).manual_seed(1234)
            with ctx.autocast():
                z = sample(ema.model, diffusion, (8 * n_rows, *ae.config.latent_shape),
                           steps=min(cfg.sample_steps, diffusion.T), y=y,
                           guidance=cfg.sample_guidance if null is not None else 0.0,
                           null_label=null, generator=g, device=ctx.device).z0
                imgs = ae.decode(z).float().clamp(-1, 1)
            save_image(image_grid(imgs, nrow=8), run_dir / "samples" / f"samples_{step:06d}.png")
            write_snapshot_index(run_dir / "samples", "prior: samples, one row per class")

        step = start
        for batch, labels in loader:
            batch = batch.to(ctx.device, non_blocking=True)
            labels = labels.to(ctx.device)
            parts = micro_batches(batch.shape[0], cfg.optim)
            if encode_on_the_fly:
                with torch.no_grad(), ctx.autocast():
                    z0 = torch.cat([ae.encode(batch[rows], deterministic=True).float()
                                    for rows in parts])
            else:
                z0 = batch.float()
            y = None
            if null is not None:
                drop = torch.rand(labels.shape, generator=gen, device=ctx.device) < cfg.cond_drop
                y = torch.where(drop, torch.full_like(labels, null), labels)  # per-sample drop
            lr = lr_at(step, cfg.optim)
            for group in opt.param_groups:
                group["lr"] = lr
            # t, z_t (and self-conditioning) drawn for the whole step batch, then split, so
            # accumulating K micro-batches trains on the same draws as one batch of K times
            # the size; the balanced loss shares the whole batch's normaliser.
            draw = diffusion.draw_training(z0, generator=gen,
                                           self_condition=cfg.model.self_condition)
            norm = diffusion.weight_sum(z0, draw) if len(parts) > 1 else None
            opt.zero_grad(set_to_none=True)
            step_out = []
            for k, rows in enumerate(parts):
                with sync_gradients(net, last=k == len(parts) - 1):
                    with ctx.autocast():
                        out = diffusion.training_losses(
                            net, z0[rows], None if y is None else y[rows], draw=draw.part(rows),
                            weight_sum=None if norm is None else norm / len(parts))
                    (out.loss / len(parts)).backward()
                step_out.append(out)
            out = mean_over(step_out)
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            if guard.ok(step, out.loss.detach(), gnorm):
                opt.step()
                ema.update(model, step)
            step += 1
            rate.add(z0.shape[0] * ctx.world)
            bar.update(1)
            if ctx.is_main and (step % cfg.run.log_every == 0 or step == cfg.optim.steps):
                ips = rate.per_second()
                row = {"step": step, "loss": out.loss.item(), "bce": out.bce.item(),
                       "aux": out.aux.item(), "bit_accuracy": out.accuracy.item(),
                       "grad_norm": float(gnorm), "lr": lr, "skipped_steps": guard.total,
                       "latents_per_s": ips}
                logger.log(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['bit_accuracy']:.3f}",
                                lat_s=f"{ips:.0f}")
            if cfg.run.sample_every and step % cfg.run.sample_every == 0:
                snapshot(step)
            if cfg.run.ckpt_every and step % cfg.run.ckpt_every == 0 and step < cfg.optim.steps:
                _save(run_dir, "prior", cfg, step, model, ema, trainer_state(), ctx,
                      cfg.run.keep_checkpoints, metadata={"classes": list(classes)})
        bar.close()
        snapshot(step)
        _save(run_dir, "prior", cfg, step, model, ema, trainer_state(), ctx,
              cfg.run.keep_checkpoints, metadata={"classes": list(classes),
                                                  "autoencoder": str(cfg.autoencoder)})
        if ctx.is_main:
            plot_metrics(run_dir / "metrics.csv", run_dir / "loss_curves.png",
                         ["loss", "bit_accuracy"], title="prior training")
        return ckpt.find_latest(run_dir) or run_dir
    finally:
        teardown(ctx)
