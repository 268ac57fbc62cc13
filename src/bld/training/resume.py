"""Starting a run: rank 0's lock on the run folder, the refusal rules, and resuming.

A new run refuses a folder that already holds checkpoints. ``--resume`` loads the newest
readable checkpoint (a damaged one is skipped with a warning), refuses a config that differs
from the checkpoint's unless ``--allow-config-change`` (settings that do not change what is
computed, RESUME_FREE_KEYS, may change freely), warns when this machine resolves another
precision, and restores the weights, the EMA, every random generator and the optimizer.
Imports only torch and bld.core's checkpoint, config and runfolder modules, and `context.py`
and `optim.py` of this package.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..core import checkpoint as ckpt
from ..core import runfolder
from ..core.config import to_dict, upgrade_config_dict
from .context import Context, agree
from .optim import EMA

log = logging.getLogger("bld")

# Settings a resumed run may change freely: they do not change what is computed.
RESUME_FREE_KEYS = ("run.device", "run.threads", "run.log_every", "run.sample_every",
                    "run.ckpt_every", "run.keep_checkpoints", "run.max_bad_steps",
                    "data.num_workers", "data.data_dir", "model.grad_checkpointing")


def start_run(run_dir: Path, kind: str, cfg, model: torch.nn.Module, ema: EMA,
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
            ctx.lock = runfolder.RunLock(run_dir).acquire()
            if not resume and runfolder.find_latest(run_dir) is not None:
                raise ckpt.CheckpointError(f"{run_dir} already holds checkpoints; pass --resume "
                                           "to continue that run, or choose a new --out folder")
        except (runfolder.RunLockedError, ckpt.CheckpointError, OSError) as e:
            error = e
    agree(ctx, error)
    gen = torch.Generator(ctx.device).manual_seed(cfg.run.seed * 7919 + ctx.rank)
    start, state = 0, None
    if resume:
        start, state = _resume(run_dir, kind, cfg, model, ema, gen, ctx, allow_config_change)
        opt.load_state_dict(state["optimizer"])
    if ctx.is_main:
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
    return gen, start, state


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
    candidates = runfolder.resume_candidates(run_dir)
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
