"""Checkpoints: one directory per checkpoint, written atomically, loaded strictly.

Layout (after HF `save_pretrained` and k-diffusion's `save()`):

    <checkpoint>/
        config.json          {"format": 1, "kind": ..., "config": {...}, "step": int,
                              "bld_version": ..., "torch_version": ..., "created": ..., "metadata": {...}}
        model.safetensors    the model's state dict
        ema.safetensors      optional: the EMA weights
        trainer_state.pt     optional: optimizer / scheduler / ... state, step, RNG states

A training run's folder holds them as `checkpoints/step_000123/`, with a `latest` pointer
and the run's lock: `bld.core.runfolder`, whose names this module exports too.

`trainer_state.pt` holds tensors, numbers, strings and plain containers only, and is read with
`torch.load(weights_only=True)`, so no file a user passes in is unpickled into arbitrary objects.

Imports bld's runfolder (and `__version__` from the package root).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import pickle
import random
import re
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import __version__
from .runfolder import (CHECKPOINTS_SUBDIR, CONFIG_FILE, LATEST_FILE, find_latest, fsync_dir,
                        recover_interrupted)

__all__ = [
    "CheckpointError", "WriteError", "Checkpoint", "capture_rng_state",
    "restore_rng_state", "save_checkpoint", "load_checkpoint", "load_state_strict",
    "weights_fingerprint", "write_failure", "FORMAT_VERSION", "MODEL_FILE", "EMA_FILE",
    "TRAINER_STATE_FILE",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
TRAINER_STATE_FILE = "trainer_state.pt"


class CheckpointError(ValueError):
    """A checkpoint is missing, of the wrong kind, damaged, or does not fit the model."""


class WriteError(OSError):
    """Writing a file failed (disk full, no permission, ...); what was there before is intact."""



# --------------------------------------------------------------------------------------
# RNG state
# --------------------------------------------------------------------------------------

def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and (if available) all CUDA generators' global states."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        # plain types and a tensor (not an ndarray), so torch.load(weights_only=True) reads it
        "numpy": (str(name), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                  float(cached)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of capture_rng_state. CUDA states are restored only onto as many devices."""
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state((name, keys.astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None:
        if torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
            torch.cuda.set_rng_state_all(cuda)
        else:
            logger.warning("checkpoint holds CUDA RNG states for %d device(s), this process sees %d; "
                           "CUDA RNG not restored", len(cuda),
                           torch.cuda.device_count() if torch.cuda.is_available() else 0)


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------

def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)



def _state_dict_of(obj: torch.nn.Module | Mapping[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """A module's or mapping's tensors as CPU, contiguous, unshared copies (what safetensors needs)."""
    state = obj.state_dict() if isinstance(obj, torch.nn.Module) else obj
    if not isinstance(state, Mapping):
        raise TypeError(f"{what} must be an nn.Module or a state dict, got {type(obj).__name__}")
    out = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{what} state entry {k!r} is a {type(v).__name__}, not a tensor; "
                            "safetensors stores tensors only (put other state in trainer_state)")
        out[k] = v.detach().to("cpu", copy=True).contiguous()  # copy: breaks tied/shared storage
    return out


def _write_safetensors(state: dict[str, torch.Tensor], path: Path) -> None:
    save_file(state, str(path), metadata={"format": "pt"})
    _fsync_file(path)


def _write_trainer_state(state: dict[str, Any], path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())


def _write_json(obj: Any, path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _rename(src: Path, dst: Path) -> None:
    os.rename(src, dst)



def write_failure(path: Path, e: BaseException) -> str:
    """One line on a failed write: what, why, how much room is left, and what to do."""
    detail = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
    try:
        free = f"; {shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free there"
    except OSError:
        free = ""
    full = (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or \
        "No space left" in str(e) or "unexpected pos" in str(e)  # torch.save on a full disk
    hint = "free disk space" if full else "check the folder is writable and has room"
    return (f"could not write {path} ({detail}{free}); the files written before are intact. "
            f"{hint[0].upper()}{hint[1:]}, then run again (training: add --resume).")


def save_checkpoint(path: str | os.PathLike, *, kind: str, config: Mapping[str, Any] | Any,
                    model: torch.nn.Module | Mapping[str, torch.Tensor],
                    ema: torch.nn.Module | Mapping[str, torch.Tensor] | None = None,
                    trainer_state: Mapping[str, Any] | None = None, step: int = 0,
                    metadata: Mapping[str, Any] | None = None) -> Path:
    """Write a checkpoint folder at `path` atomically; return `path`.

    kind: what the weights are ("autoencoder", "prior", "classifier", ...), checked on load.
    config: the dict (or dataclass) the model is built from; must be JSON-serialisable.
    model / ema: modules or state dicts (tensors only).
    trainer_state: picklable dict (e.g. {"optimizer": opt.state_dict(), "scheduler": ...});
        "step" and "rng" (capture_rng_state(), unless given) are added.
    metadata: extra JSON-serialisable facts (dataset, metrics, ...), stored under "metadata".

    Everything is written into a hidden sibling folder, fsynced, then renamed into place. An
    existing checkpoint under the same name is first renamed away and deleted only after the
    new one is in place, so a crash at any point leaves either the old or the new checkpoint
    under `path` (a crash between the two renames is undone by the next save or load).
    """
    path = Path(path)
    if not isinstance(kind, str) or not re.fullmatch(r"[A-Za-z0-9_\-]+", kind):
        raise ValueError(f"kind must be a short name such as 'autoencoder', got {kind!r}")
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict or a dataclass instance, got {type(config).__name__}")
    header = {
        "format": FORMAT_VERSION,
        "kind": kind,
        "config": dict(config),
        "step": int(step),
        "bld_version": __version__,
        "torch_version": torch.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "metadata": dict(metadata or {}),
    }
    try:
        json.dumps(header)
    except (TypeError, ValueError) as e:
        raise TypeError(f"config and metadata must be JSON-serialisable (numbers, strings, lists, "
                        f"dicts): {e}") from e

    path.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    old: Path | None = None
    try:
        _write_safetensors(_state_dict_of(model, "model"), tmp / MODEL_FILE)
        if ema is not None:
            _write_safetensors(_state_dict_of(ema, "ema"), tmp / EMA_FILE)
        if trainer_state is not None:
            state = {"step": int(step), "rng": capture_rng_state(), **trainer_state}
            _write_trainer_state(state, tmp / TRAINER_STATE_FILE)
        _write_json(header, tmp / CONFIG_FILE)  # last: a folder with config.json is complete
        fsync_dir(tmp)
        if path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            _rename(path, old)
        _rename(tmp, path)
        fsync_dir(path.parent)
    except BaseException as e:
        if old is not None and not path.exists():
            _rename(old, path)  # put the previous checkpoint back
            old = None
        shutil.rmtree(tmp, ignore_errors=True)
        # safetensors reports a full disk as a SafetensorError, torch.save as a RuntimeError
        if isinstance(e, (OSError, SafetensorError, RuntimeError)):
            raise WriteError(write_failure(path, e)) from e
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------

@dataclass
class Checkpoint:
    path: Path
    kind: str
    config: dict[str, Any]
    step: int
    metadata: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    ema_state: dict[str, torch.Tensor] | None = None
    bld_version: str | None = None
    header: dict[str, Any] = field(default_factory=dict, repr=False)  # config.json as read

    @property
    def has_trainer_state(self) -> bool:
        return (self.path / TRAINER_STATE_FILE).is_file()

    def trainer_state(self, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        """trainer_state.pt (None if absent), read with weights_only=True (tensors and plain data)."""
        p = self.path / TRAINER_STATE_FILE
        if not p.is_file():
            return None
        try:
            return torch.load(p, map_location=map_location, weights_only=True)
        except (OSError, EOFError, RuntimeError, ValueError, ImportError, AttributeError,
                pickle.UnpicklingError) as e:
            raise CheckpointError(f"cannot read {p} ({type(e).__name__}: {e}); the file is damaged or "
                                  "from an incompatible version. Resume from an earlier checkpoint, or "
                                  "load only the weights.") from e


def _resolve(path: Path) -> Path:
    """A checkpoint folder from a checkpoint folder, one of its files, or a run folder."""
    recover_interrupted(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: the path does not exist. Pass a checkpoint folder "
                              f"(holding {CONFIG_FILE} and {MODEL_FILE}) or a run folder.")
    if path.is_file():
        if path.name in (CONFIG_FILE, MODEL_FILE, EMA_FILE, TRAINER_STATE_FILE):
            path = path.parent
        else:
            raise CheckpointError(f"{path} is a file, not a bld checkpoint; pass the checkpoint folder.")
    if (path / CONFIG_FILE).is_file():
        return path
    if (path / LATEST_FILE).exists() or (path / CHECKPOINTS_SUBDIR).is_dir():
        found = find_latest(path)
        if found is None:
            raise CheckpointError(f"run folder {path} holds no complete checkpoint yet; train longer or "
                                  "pass a checkpoint folder.")
        return found
    raise CheckpointError(f"{path} is not a bld checkpoint (no {CONFIG_FILE}) nor a run folder (no "
                          f"{LATEST_FILE}, no {CHECKPOINTS_SUBDIR}/). Pass the folder save_checkpoint wrote.")


def _read_weights(p: Path, map_location: str | torch.device) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(p), device=str(map_location))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot read weights {p} ({type(e).__name__}: {e}); the file is damaged "
                              "or incomplete. Use an earlier checkpoint or re-save this one.") from e


def load_checkpoint(path: str | os.PathLike, kind: str | None = None,
                    map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint folder, or a run folder's latest checkpoint.

    kind: if given, the checkpoint must hold that kind. Weights go to `map_location`; the
    trainer state is read only when Checkpoint.trainer_state() is called.
    """
    folder = _resolve(Path(path).expanduser())
    try:
        header = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {folder / CONFIG_FILE} ({e}); it is damaged. "
                              "Use an earlier checkpoint.") from e
    missing = [k for k in ("kind", "config") if k not in (header if isinstance(header, dict) else {})]
    if missing:
        raise CheckpointError(f"{folder / CONFIG_FILE} lacks {missing}; it was not written by "
                              "bld.core.checkpoint.save_checkpoint.")
    if kind is not None and header["kind"] != kind:
        raise CheckpointError(f"{folder} holds a {header['kind']!r} checkpoint, expected {kind!r}; "
                              f"pass the {kind}'s folder.")
    if not (folder / MODEL_FILE).is_file():
        raise CheckpointError(f"{folder} has no {MODEL_FILE}; the checkpoint is incomplete. "
                              "Use an earlier checkpoint.")
    model_state = _read_weights(folder / MODEL_FILE, map_location)
    ema_state = _read_weights(folder / EMA_FILE, map_location) if (folder / EMA_FILE).is_file() else None
    return Checkpoint(path=folder, kind=header["kind"], config=header["config"],
                      step=int(header.get("step", 0)), metadata=header.get("metadata", {}),
                      model_state=model_state, ema_state=ema_state,
                      bld_version=header.get("bld_version"), header=header)


def load_state_strict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], what: str = "model") -> None:
    """model.load_state_dict(state_dict, strict=True), with a CheckpointError that names the
    missing, unexpected and wrongly-shaped keys when they do not match."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        def few(items: list[str]) -> str:
            return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
        parts = ([f"missing from the checkpoint: {few(missing)}"] if missing else []) + \
                ([f"not in the {what}: {few(unexpected)}"] if unexpected else []) + \
                ([f"shape mismatches: {few(shapes)}"] if shapes else [])
        raise CheckpointError(
            f"{what} does not match the checkpoint; " + "; ".join(parts) + ". The config differs from the "
            "one the checkpoint was trained with: build the model from the checkpoint's config "
            "(Checkpoint.config).")
    model.load_state_dict(state_dict, strict=True)


def weights_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """A short hash of a state dict's names, dtypes, shapes and values (e.g. to tell which
    autoencoder made a latent cache)."""
    import hashlib
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().to("cpu").contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]
