"""Checkpoints round-trip exactly, refuse the wrong kind or shape, and survive crashes mid-write."""

from __future__ import annotations

import errno
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

import bld.core.checkpoint as ckpt_mod
from bld.core.checkpoint import (CheckpointError, capture_rng_state, load_checkpoint,
                                 load_state_strict, restore_rng_state, save_checkpoint)
from bld.core.runfolder import checkpoint_dir, find_latest, prune_checkpoints, write_latest


class Tiny(nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.inp = nn.Linear(3, width)
        self.norm = nn.BatchNorm1d(width)  # has buffers, incl. an int64 one
        self.out = nn.Linear(width, 3, bias=False)
        self.out.weight = nn.Parameter(self.inp.weight.t())  # a non-contiguous view of its own
        self.tied = self.inp  # shared storage under two names


def _model(seed=0, width=4):
    torch.manual_seed(seed)
    return Tiny(width)


def _save(path, seed=0, step=1, **kw):
    model = _model(seed)
    kw.setdefault("kind", "autoencoder")
    kw.setdefault("config", {"width": 4, "channels": [1, 2]})
    return save_checkpoint(path, model=model, step=step, **kw), model


def _same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_round_trip_exact(tmp_path):
    model, ema = _model(0), _model(1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(8, 3)
    model.train()
    model.out(model.norm(model.inp(x))).pow(2).mean().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10)

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    rng_before = capture_rng_state()
    path = save_checkpoint(tmp_path / "ck", kind="prior", config={"depth": 2, "name": "tiny"}, model=model,
                           ema=ema, trainer_state={"optimizer": opt.state_dict(), "scheduler": sched.state_dict()},
                           step=123, metadata={"dataset": "fashion-mnist"})
    expected = (random.random(), np.random.rand(), torch.rand(1))

    ck = load_checkpoint(path, kind="prior")
    assert (ck.kind, ck.step, ck.config, ck.metadata) == ("prior", 123, {"depth": 2, "name": "tiny"},
                                                          {"dataset": "fashion-mnist"})
    _same_state(ck.model_state, model.state_dict())
    _same_state(ck.ema_state, ema.state_dict())

    fresh = _model(5)
    load_state_strict(fresh, ck.model_state)
    _same_state(fresh.state_dict(), model.state_dict())

    ts = ck.trainer_state()
    assert ts["step"] == 123
    opt2 = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    opt2.load_state_dict(ts["optimizer"])
    for s1, s2 in zip(opt.state.values(), opt2.state.values(), strict=True):
        for k in s1:
            assert torch.equal(torch.as_tensor(s1[k]), torch.as_tensor(s2[k]))
    assert ts["scheduler"] == sched.state_dict()

    restore_rng_state(ts["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected
    restore_rng_state(rng_before)
    assert torch.equal(torch.rand(1), expected[2])


def test_run_folder_latest_and_prune(tmp_path):
    run = tmp_path / "run"
    assert find_latest(run) is None
    for step in (5, 10, 1000000):
        d, _ = _save(checkpoint_dir(run, step), step=step)
        write_latest(run, d)
    assert checkpoint_dir(run, 5).name == "step_000005"
    assert (run / "latest").read_text().strip() == "checkpoints/step_1000000"
    assert load_checkpoint(run).step == 1000000  # a run folder resolves to latest

    write_latest(run, checkpoint_dir(run, 10))  # latest need not be the highest step
    assert find_latest(run) == checkpoint_dir(run, 10)
    removed = prune_checkpoints(run, keep=1)
    assert removed == [checkpoint_dir(run, 5)]  # step 10 kept: latest names it
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000010", "step_1000000"]

    (run / "latest").write_text("checkpoints/step_000777\n")  # dangling pointer
    assert find_latest(run) == checkpoint_dir(run, 1000000)


def test_kind_mismatch_and_bad_paths(tmp_path):
    path, _ = _save(tmp_path / "prior", kind="prior")
    expected = "holds a 'prior' checkpoint, expected 'autoencoder'; pass the autoencoder's folder"
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(path, kind="autoencoder")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(CheckpointError, match="not a bld checkpoint"):
        load_checkpoint(tmp_path / "plain")
    (tmp_path / "emptyrun" / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_checkpoint(tmp_path / "emptyrun")
    assert load_checkpoint(path / "model.safetensors").path == path  # a file inside is fine

    (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        load_checkpoint(path)


def test_strict_mismatch_names_keys(tmp_path):
    path, _ = _save(tmp_path / "ae")
    ck = load_checkpoint(path, kind="autoencoder")
    with pytest.raises(CheckpointError, match=r"inp\.weight: checkpoint \(4, 3\) vs model \(6, 3\).*config differs"):
        load_state_strict(_model(width=6), ck.model_state)

    class Extra(Tiny):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(3, 3)

    with pytest.raises(CheckpointError, match=r"missing from the checkpoint: head\.weight, head\.bias"):
        load_state_strict(Extra(), ck.model_state, what="autoencoder")
    state = dict(ck.model_state, stray=torch.zeros(1))
    with pytest.raises(CheckpointError, match=r"not in the model: stray"):
        load_state_strict(_model(), state)


class Boom(RuntimeError):
    pass


def test_crash_during_write_keeps_previous(tmp_path, monkeypatch):
    path, model = _save(tmp_path / "final", seed=0, step=1)

    def fail(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt_mod, "_write_trainer_state", fail)  # after the weights, before config.json
    with pytest.raises(ckpt_mod.WriteError, match=r"No space left on device.*Free disk space"):
        _save(tmp_path / "final", seed=9, step=2, ema=_model(3), trainer_state={})
    monkeypatch.undo()

    ck = load_checkpoint(path)
    assert ck.step == 1 and ck.ema_state is None
    _same_state(ck.model_state, model.state_dict())
    assert [p.name for p in tmp_path.iterdir()] == ["final"]  # temp folder cleaned up


def test_error_between_renames_puts_old_back(tmp_path, monkeypatch):
    path, model = _save(tmp_path / "final", seed=0, step=1)
    real_rename, calls = ckpt_mod._rename, []

    def second_rename_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # old moved away, new not yet in
            raise OSError("rename failed")
        real_rename(src, dst)

    monkeypatch.setattr(ckpt_mod, "_rename", second_rename_fails)
    with pytest.raises(OSError):
        _save(tmp_path / "final", seed=9, step=2)
    monkeypatch.undo()
    assert load_checkpoint(path).step == 1
    assert [p.name for p in tmp_path.iterdir()] == ["final"]


def test_kill_between_renames_is_recovered(tmp_path):
    path, model = _save(tmp_path / "final", seed=0, step=1)
    # What a SIGKILL between the two renames leaves: the old checkpoint under a hidden name
    # and the finished new one still under its temp name.
    (tmp_path / "final").rename(tmp_path / ".final.old-deadbeef")
    _save(tmp_path / ".final.tmp-abc123", seed=9, step=2)
    assert not path.exists()

    ck = load_checkpoint(path)  # the old one is put back under its name
    assert ck.step == 1 and path.is_dir() and not (tmp_path / ".final.old-deadbeef").exists()
    _same_state(ck.model_state, model.state_dict())
    assert load_checkpoint(_save(tmp_path / "final", seed=2, step=3)[0]).step == 3


def test_find_latest_ignores_temp_dirs(tmp_path, monkeypatch):
    run = tmp_path / "run"
    d, _ = _save(checkpoint_dir(run, 1), step=1)
    write_latest(run, d)
    (run / "latest").unlink()  # force the scan of step folders

    # A save of step 2 killed mid-write leaves a hidden temp folder with a complete-looking config.
    monkeypatch.setattr(ckpt_mod, "_rename", lambda s, t: (_ for _ in ()).throw(SystemExit("killed")))
    monkeypatch.setattr(ckpt_mod.shutil, "rmtree", lambda *a, **k: None)
    with pytest.raises(SystemExit):
        _save(checkpoint_dir(run, 2), step=2)
    monkeypatch.undo()
    leftovers = [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    assert leftovers and all((p / "config.json").is_file() for p in leftovers)

    assert find_latest(run) == checkpoint_dir(run, 1)
    assert load_checkpoint(run).step == 1
    prune_checkpoints(run, keep=3)  # clears leftovers of killed saves
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_000001"]


def test_save_rejects_bad_inputs(tmp_path):
    with pytest.raises(TypeError, match="JSON-serialisable"):
        save_checkpoint(tmp_path / "x", kind="prior", config={"f": object()}, model=_model())
    with pytest.raises(ValueError, match="kind"):
        save_checkpoint(tmp_path / "x", kind="", config={}, model=_model())
    assert not (tmp_path / "x").exists()


class _Payload:
    """Pickles to a call of os.system: what a malicious trainer_state.pt could hold."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_trainer_state_is_read_without_unpickling_objects(tmp_path):
    path, _ = _save(tmp_path / "ck", trainer_state={"optimizer": {"lr": 1e-3}})
    assert load_checkpoint(path).trainer_state()["optimizer"] == {"lr": 1e-3}  # plain data loads
    marker = tmp_path / "ran"
    torch.save({"optimizer": _Payload(marker)}, path / "trainer_state.pt")
    with pytest.raises(CheckpointError, match="trainer_state.pt"):
        load_checkpoint(path).trainer_state()
    assert not marker.exists(), "torch.load ran code from the file"
