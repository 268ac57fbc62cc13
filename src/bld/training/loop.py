"""The one training loop, and the two things it writes: metrics rows and checkpoints.

``fit(task, run_dir)`` owns a run, read top to bottom (as nanoGPT's ``train.py``): the
process context, the data and model the task makes, rank 0's lock and the resume rules,
precision, the lr schedule, gradient accumulation, clipping, the non-finite guard, the EMA,
metrics.csv, the progress bar, snapshots and checkpoints. What one step computes is the
task's (`bld.training.task.Task`): `AutoencoderTask` (with its GAN) and `PriorTask`.
``train_autoencoder`` / ``train_prior`` are the two runs the CLI starts.

One code path for 1 or N processes (`bld.training.context`). Resumable: batches are a pure
function of (seed, step, rank) and every random draw goes through a per-rank
``torch.Generator`` whose state is checkpointed, so on CPU a run that is killed and resumed
ends with the same weights as one that was not.

Imports this package (the loop's parts and the tasks) and bld.core's checkpoint, config,
plots and runfolder modules. Only the command line (`bld.app.commands`) and the demo import
this module, so sampling never loads training code (tests/test_pipeline.py checks).
"""

from __future__ import annotations

import csv
import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..core import checkpoint as ckpt
from ..core import runfolder
from ..core.config import AutoencoderTrainConfig, PriorTrainConfig, to_dict
from ..core.plots import plot_metrics
from .accumulate import backward_by_parts, mean_over, micro_batches
from .autoencoder import AutoencoderTask
from .batches import make_loader
from .context import (Context, TrainingError, distribute, gather_generator_states, setup_context,
                      teardown)
from .optim import EMA, NonFiniteGuard, lr_at, model_optimizer, set_lr
from .prior import PriorTask
from .resume import start_run
from .task import Task
from .timebox import TimeBox

__all__ = ["fit", "train_autoencoder", "train_prior", "CSVLogger", "RateMeter"]

log = logging.getLogger("bld")


def train_autoencoder(cfg: AutoencoderTrainConfig, run_dir: str | Path, resume: bool = False,
                      allow_config_change: bool = False) -> Path:
    """Train the binary autoencoder; returns the final checkpoint folder."""
    return fit(AutoencoderTask(cfg), run_dir, resume, allow_config_change)


def train_prior(cfg: PriorTrainConfig, run_dir: str | Path, resume: bool = False,
                allow_config_change: bool = False) -> Path:
    """Train the Bernoulli diffusion prior on binary latents; returns the final checkpoint."""
    return fit(PriorTask(cfg), run_dir, resume, allow_config_change)


def fit(task: Task, run_dir: str | Path, resume: bool = False,
        allow_config_change: bool = False) -> Path:
    """Run ``task``'s training into ``run_dir`` (or continue it, ``resume``); returns the
    final checkpoint folder."""
    run_dir = Path(run_dir)
    ctx = setup_context(task.cfg.run)
    try:
        data = task.load_data(ctx)
        cfg = task.cfg  # as the task resolved it (the prior's sizes come from its autoencoder)
        torch.manual_seed(cfg.run.seed)
        model = task.make_model(ctx)
        ema = EMA(model, cfg.optim.ema_decay)
        opt = model_optimizer(model, cfg.optim, bf16=ctx.precision.name == "bf16")
        gen, start, state = start_run(run_dir, task.kind, cfg, model, ema, opt, ctx, resume,
                                      allow_config_change)
        guard = NonFiniteGuard(cfg.run.max_bad_steps, ctx, state)
        timebox = TimeBox(cfg.run.max_seconds, cfg.optim.steps, start, state)
        net = distribute(model, ctx)
        task.start(ctx, gen, state)
        if ctx.is_main:
            log.info("%s", task.summary())
        logger = CSVLogger(run_dir / "metrics.csv", start) if ctx.is_main else None
        loader = make_loader(data, cfg.optim, cfg.run, ctx, start, cfg.data.num_workers)
        bar = tqdm(total=timebox.final, initial=start, desc=task.name, disable=not ctx.is_main,
                   dynamic_ncols=True, mininterval=1.0)
        rate = RateMeter()

        def snapshot(step: int) -> None:
            if ctx.is_main:
                task.snapshot(ema.model, step, run_dir / "samples")

        def checkpoint(step: int, final: bool = False) -> None:
            trainer_state = {"optimizer": opt.state_dict(),
                             "generators": gather_generator_states(gen, ctx),
                             **guard.state(), **timebox.state(), **task.state()}
            _save(run_dir, task.kind, cfg, step, model, ema, trainer_state, ctx,
                  cfg.run.keep_checkpoints,
                  metadata={**task.metadata(final), **({"timebox": timebox.metadata()}
                                                       if timebox.active else {})})

        step = start
        schedule = replace(cfg.optim, steps=timebox.final)  # the lr follows the final count
        for batch in loader:
            if step >= timebox.final:
                break
            lr = lr_at(step, schedule)
            set_lr(opt, lr)
            parts = micro_batches(len(batch[0]), cfg.optim)
            task.prepare(batch, parts, step)
            opt.zero_grad(set_to_none=True)
            losses = mean_over(backward_by_parts(net, parts, lambda k, rows: task.loss(net, rows)))
            losses = task.finish(losses)
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            stepped = guard.ok(step, losses.loss, gnorm)
            if stepped:
                opt.step()
            task.after_step(step, lr, stepped, guard)
            if stepped:
                ema.update(model, step)
            step += 1
            rate.add(len(batch[0]) * ctx.world)
            bar.update(1)
            if timebox.due(step) and _retime(timebox, step, ctx):
                schedule = replace(cfg.optim, steps=timebox.final)
                bar.total = timebox.final
                if ctx.is_main:
                    log.info("%s: %d steps fit run.max_seconds %.0f at the rate measured "
                             "(%.0f s trained at step %d)", task.name, timebox.final,
                             timebox.max_seconds, timebox.elapsed(), step)
            if ctx.is_main and (step % cfg.run.log_every == 0 or step == timebox.final):
                row = {"step": step, **task.row(losses), "grad_norm": float(gnorm), "lr": lr,
                       "skipped_steps": guard.total, task.rate_column: rate.per_second()}
                logger.log(row)
                bar.set_postfix(task.postfix(row))
            if cfg.run.sample_every and step % cfg.run.sample_every == 0:
                snapshot(step)
            if cfg.run.ckpt_every and step % cfg.run.ckpt_every == 0 and step < timebox.final:
                checkpoint(step)
        bar.close()
        snapshot(step)
        checkpoint(step, final=True)
        if ctx.is_main:
            plot_metrics(run_dir / "metrics.csv", run_dir / "loss_curves.png", list(task.curves),
                         title=task.title)
        return runfolder.find_latest(run_dir) or run_dir
    finally:
        teardown(ctx)


def _retime(timebox: TimeBox, step: int, ctx: Context) -> bool:
    """Re-estimate the run's final step count; under torch.distributed every process takes
    rank 0's, so that all of them stop at the same step."""
    changed = timebox.after_step(step)
    if ctx.distributed:
        final = torch.tensor([timebox.final], dtype=torch.long, device=ctx.device)
        dist.broadcast(final, src=0)
        changed = timebox.adopt(step, int(final)) or changed
    return changed


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
                                f"not checkpointed, {runfolder.find_latest(run_dir)} stays the latest. "
                                "Lower optim.lr and continue from it with --resume.")
        d = runfolder.checkpoint_dir(run_dir, step)
        metadata = {**(metadata or {}), **ctx.precision.as_dict()}
        ckpt.save_checkpoint(d, kind=kind, config=to_dict(cfg), model=model, ema=ema.model,
                             trainer_state=trainer_state, step=step, metadata=metadata)
        runfolder.write_latest(run_dir, d)
        runfolder.prune_checkpoints(run_dir, keep)
    ctx.barrier()


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
