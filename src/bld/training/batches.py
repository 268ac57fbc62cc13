"""What the training loop reads: the training set a DataConfig names, and each step's batch.

Resumable: the batch of a step is a pure function of (seed, step, rank), so a run that is
killed and resumed reads the same batches as one that was not. Imports only torch,
bld.core.config and bld.data, and the Context of `context.py`.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..core.config import ConfigError, DataConfig, OptimConfig, RunConfig
from ..data import DATASET_SOURCES, LimitedDataset, ShardDataset, build_dataset
from .context import Context


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
