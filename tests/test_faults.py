"""Faults during training: a NaN / inf step is skipped and never checkpointed, a damaged latest
checkpoint is skipped on --resume, a changed config is refused, a run folder is locked, and a
full disk is a clear error that leaves the previous checkpoint intact.

Faults are injected in-process (a poisoned loss, a write that fails with ENOSPC, a truncated
file), then the run goes on through ``bld.app.cli.main`` as a user's would.
"""

from __future__ import annotations

import csv
import errno
import importlib.util
import logging
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

import bld.training.loop
from bld.app.cli import main
from bld.core import checkpoint as ckpt
from bld.core import runfolder
from bld.models.diffusion import BernoulliDiffusion

pytestmark = pytest.mark.usefixtures("one_thread")


def run(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture()
def prior_argv(runs, tiny_prior_args):
    """A 6-step fp32 prior run on the shared tiny autoencoder's latents, checkpoints at 3, 6."""
    return ["train-prior", "--autoencoder", runs.ae, "--latents", runs.latents, *tiny_prior_args,
            "--no-bf16", "--seed", "5", "--set", "run.log_every=1"]


def poison_prior_loss(monkeypatch, bad_calls: set[int]) -> list[int]:
    """Make the prior's loss NaN on the given (1-based) training steps; returns the call log."""
    real, calls = BernoulliDiffusion.training_losses, []

    def poisoned(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        calls.append(len(calls) + 1)
        if calls[-1] in bad_calls:
            out = out._replace(loss=out.loss * float("nan"))
        return out

    monkeypatch.setattr(BernoulliDiffusion, "training_losses", poisoned)
    return calls


def error_lines(stderr: str) -> list[str]:
    """The lines `bld` printed on stderr, without the progress bars' carriage-return lines."""
    return re.findall(r"bld [\w-]+: error: [^\r\n]*", stderr)


def metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def all_finite(state: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())


# ------------------------------------------------------------------------------- NaN / inf
def test_nan_steps_are_skipped_and_counted(prior_argv, tmp_path, monkeypatch, caplog):
    out = tmp_path / "prior"
    poison_prior_loss(monkeypatch, {2, 5})
    with caplog.at_level(logging.WARNING, logger="bld"):
        assert run(*prior_argv, "--out", out) == 0
    assert "step 2: non-finite loss or gradient; step skipped" in caplog.text
    rows = metrics(out)
    assert [int(r["skipped_steps"]) for r in rows] == [0, 1, 1, 1, 2, 2]
    assert rows[1]["loss"] == "nan"  # the skipped step's loss is logged as it was
    ck = ckpt.load_checkpoint(out, "prior")
    assert all_finite(ck.model_state) and all_finite(ck.ema_state)
    state = ck.trainer_state()
    assert state["skipped_steps"] == 2
    # AdamW counts the steps it took: 4 of 6
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {4}


def test_nan_in_a_row_stops_and_keeps_last_good_checkpoint(prior_argv, tmp_path, monkeypatch,
                                                           capsys):
    out = tmp_path / "prior"
    poison_prior_loss(monkeypatch, set(range(4, 100)))
    code = run(*prior_argv, "--out", out, "--steps", "12", "--set", "run.ckpt_every=2",
               "--set", "run.keep_checkpoints=1", "--set", "run.max_bad_steps=3")
    err = capsys.readouterr().err
    assert code == 1
    assert len(error_lines(err)) == 1 and "stopped at step 6" in err and "--resume" in err
    # step 4's checkpoint holds the weights of step 3 (step 4 was skipped); steps 5 and 6 were
    # never saved, and pruning (keep 1) left the checkpoint `latest` names
    latest = runfolder.find_latest(out)
    assert latest.name == "step_000004"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000004"]
    ck = ckpt.load_checkpoint(latest, "prior")
    assert all_finite(ck.model_state) and ck.trainer_state()["bad_in_a_row"] == 1


def test_weights_with_nan_are_never_checkpointed(runs, tmp_path):
    """The last line of defence: _save refuses weights holding NaN; `latest` stays."""
    run_dir = tmp_path / "run"
    ckpt.save_checkpoint(runfolder.checkpoint_dir(run_dir, 3), kind="prior", config={}, model={
        "w": torch.ones(2)}, step=3)
    runfolder.write_latest(run_dir, runfolder.checkpoint_dir(run_dir, 3))
    model = torch.nn.Linear(2, 2)
    ema = bld.training.optim.EMA(model, 0.9)
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    ctx = bld.training.context.Context(torch.device("cpu"))
    with pytest.raises(bld.training.context.TrainingError, match="step 4: the weights hold NaN / inf"):
        bld.training.loop._save(run_dir, "prior", bld.core.config.PriorTrainConfig(), 4, model, ema, {}, ctx, 1)
    assert runfolder.find_latest(run_dir).name == "step_000003"
    assert not runfolder.checkpoint_dir(run_dir, 4).exists()


# ------------------------------------------------------------------ damaged checkpoints
def damage(path: Path) -> None:
    """Truncate a file to half its size, as a crash or a full disk might leave it."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.mark.parametrize("name", [ckpt.MODEL_FILE, ckpt.TRAINER_STATE_FILE, runfolder.CONFIG_FILE])
def test_resume_falls_back_past_a_damaged_checkpoint(name, prior_argv, tmp_path, caplog, capsys):
    a, b = tmp_path / "unbroken", tmp_path / "damaged"
    assert run(*prior_argv, "--out", a) == 0  # checkpoints at steps 3 and 6
    shutil.copytree(a, b)
    damage(runfolder.checkpoint_dir(b, 6) / name)

    # sampling names the damaged file and stops (it does not read the trainer state)
    code = run("sample", "--prior", b, "--autoencoder", prior_argv[2], "-n", "2",
               "--out", tmp_path / "s.png", "--device", "cpu")
    err = capsys.readouterr().err
    if name != ckpt.TRAINER_STATE_FILE:
        assert code == 2 and len(error_lines(err)) == 1 and name in err

    with caplog.at_level(logging.WARNING, logger="bld"):
        assert run(*prior_argv, "--out", b, "--resume") == 0
    assert f"skipping checkpoint {runfolder.checkpoint_dir(b, 6)}" in caplog.text and name in caplog.text
    assert "resuming from" in caplog.text and "step_000003 (step 3)" in caplog.text
    ca, cb = ckpt.load_checkpoint(a, "prior"), ckpt.load_checkpoint(b, "prior")
    assert cb.step == 6
    for k in ca.model_state:  # steps 4..6 redone from step 3 match the unbroken run bitwise
        assert torch.equal(ca.model_state[k], cb.model_state[k]), k


# ------------------------------------------------------------------------ config changes
def test_resume_with_changed_config_is_refused_listing_differences(prior_argv, tmp_path, capsys):
    out = tmp_path / "prior"
    assert run(*prior_argv, "--out", out, "--steps", "3") == 0
    capsys.readouterr()
    assert run(*prior_argv, "--out", out, "--resume", "--batch-size", "16", "--seed", "6",
               "--set", "model.dropout=0.2", "--set", "run.log_every=2") == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1
    for diff in ["optim.batch_size: 32 -> 16", "run.seed: 5 -> 6", "model.dropout: 0.0 -> 0.2",
                 "optim.steps: 3 -> 6", "--allow-config-change"]:
        assert diff in err
    assert "log_every" not in err  # settings that do not change the result may change
    assert run(*prior_argv, "--out", out, "--resume", "--allow-config-change") == 0
    assert ckpt.load_checkpoint(out, "prior").step == 6


# ------------------------------------------------------------------------------ the lock
def test_second_run_into_a_locked_folder_is_refused(prior_argv, tmp_path, capsys):
    out = tmp_path / "prior"
    with runfolder.RunLock(out):
        assert run(*prior_argv, "--out", out) == 1
        err = capsys.readouterr().err
        assert f"pid {os.getpid()}" in err and "in use by another run" in err
    assert not (out / "checkpoints").exists()  # the refused run wrote nothing
    assert run(*prior_argv, "--out", out) == 0  # released: the folder is free again
    assert not (out / runfolder.LOCK_FILE).exists()


def test_lock_left_by_a_killed_process_is_taken_over(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    tmp_path.joinpath(runfolder.LOCK_FILE).write_text(f"{dead} somehost\n")
    with caplog.at_level(logging.WARNING), runfolder.RunLock(tmp_path) as lock:
        assert lock.path.read_text().split()[0] == str(os.getpid())
        with pytest.raises(runfolder.RunLockedError, match=f"pid {os.getpid()}"):
            runfolder.RunLock(tmp_path).acquire()
    assert f"left by pid {dead}" in caplog.text


# ----------------------------------------------------------------------------- disk full
def enospc_on_call(monkeypatch, module, name: str, n: int, error) -> None:
    """The n-th call of module.name raises ``error`` (what the library raises on ENOSPC)."""
    real, calls = getattr(module, name), []

    def maybe_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, maybe_fail)


# what safetensors raises on a full disk (seen on a 64 KiB tmpfs)
SAFETENSORS_ENOSPC = SafetensorError("Error while serializing: I/O error: No space left on device "
                                     "(os error 28)")


def test_disk_full_during_checkpoint(prior_argv, tmp_path, monkeypatch, capsys):
    out = tmp_path / "prior"
    # the step-6 checkpoint's first file (weights of step 3: model, ema = calls 1, 2)
    enospc_on_call(monkeypatch, ckpt, "save_file", 3, SAFETENSORS_ENOSPC)
    assert run(*prior_argv, "--out", out) == 1
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1
    assert "No space left on device" in err and "--resume" in err and "step_000006" in err
    assert runfolder.find_latest(out).name == "step_000003"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000003"]
    monkeypatch.undo()
    assert run(*prior_argv, "--out", out, "--resume") == 0


def test_disk_full_while_appending_metrics(prior_argv, tmp_path, monkeypatch, capsys):
    out = tmp_path / "prior"
    real_open = open

    def full_open(path, mode="r", *args, **kwargs):
        if str(path).endswith("metrics.csv") and "a" in mode and Path(path).exists() \
                and len(metrics(out)) >= 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(bld.training.loop, "open", full_open, raising=False)
    assert run(*prior_argv, "--out", out) == 1
    err = capsys.readouterr().err
    assert "metrics.csv (No space left on device" in err and len(error_lines(err)) == 1
    assert runfolder.find_latest(out).name == "step_000003" and len(metrics(out)) == 4


def test_disk_full_during_encode(runs, tmp_path, monkeypatch, capsys):
    import safetensors.torch
    out = tmp_path / "latents.safetensors"
    argv = ["encode", "--autoencoder", runs.ae, "--out", out, "--limit", "64", "--device", "cpu"]
    assert run(*argv) == 0
    before = out.read_bytes()
    enospc_on_call(monkeypatch, safetensors.torch, "save_file", 1, SAFETENSORS_ENOSPC)
    assert run(*argv, "--batch-size", "16") == 1
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and "No space left on device" in err and str(out) in err
    assert out.read_bytes() == before  # the earlier cache is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no temporary file left


# -------------------------------------------------------------------------------- kill -9
def test_kill_9_at_random_moments_then_resume_is_bitwise_equal(fashion_mnist, tmp_path,
                                                              monkeypatch):
    """A few rounds of benchmarks/faults.py (which runs >= 20 per job): `bld train-ae` with
    the GAN on, checkpointing every step, SIGKILLed 3 times (some mid-write), resumed each
    time across an epoch boundary, ends bitwise equal to an unbroken run."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "faults.py"
    monkeypatch.syspath_prepend(str(path.parent))  # for its `import common`
    spec = importlib.util.spec_from_file_location("bld_fault_matrix", path)
    faults = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, faults)  # dataclasses look their module up
    spec.loader.exec_module(faults)
    jobs, _ = faults.make_jobs(tmp_path, steps_ae=12, steps_prior=12)
    job = next(j for j in jobs if j.name.startswith("train-ae"))
    o = faults.run_job(job, tmp_path, kills=3, rng=random.Random(1), log=lambda *a: None)
    assert o.kills >= 3 and o.finished and o.folder_loadable_after_every_kill, o.problems
    assert o.bitwise_equal, f"final weights differ from the unbroken run (max |diff| {o.max_abs_diff})"
