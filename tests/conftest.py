"""Shared fixtures for the end-to-end tests (test_cli, test_resume, test_ddp)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from bld.data import DatasetNotFoundError, find_fashion_mnist

if os.environ.get("PYTEST_XDIST_WORKER"):
    # two workers share the machine's cores (pyproject's addopts -n 2): one thread each, for
    # torch here and for the subprocesses the tests start (OpenMP threads that compete for
    # cores make small models many times slower)
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

# A ~70k-parameter autoencoder (8 bits on a 7x7 grid) on the first 256 training images.
TINY_AE = ["--set", "model.channels=8", "--set", "model.hidden=16", "--set", "model.bits=8",
           "--set", "data.limit=256", "--steps", "6", "--batch-size", "16",
           "--set", "run.log_every=2", "--set", "run.ckpt_every=3", "--set", "run.sample_every=0",
           "--set", "run.threads=1", "--device", "cpu"]
# The 'tiny' denoiser preset (width 64, depth 2).
TINY_PRIOR = ["--preset", "tiny", "--steps", "6", "--batch-size", "32",
              "--set", "run.log_every=2", "--set", "run.ckpt_every=3",
              "--set", "run.sample_every=0", "--set", "run.threads=1", "--device", "cpu"]


NO_DATA = "Fashion-MNIST is not installed"
SETUP = "bash scripts/setup.sh --test  (installs the Debian package dataset-fashion-mnist)"


@pytest.fixture(scope="session")
def fashion_mnist() -> Path:
    """The Fashion-MNIST folder, or skip the test (loudly: see pytest_terminal_summary), or
    fail when BLD_REQUIRE_DATA=1 (as CI, where a skip would hide ~30 tests)."""
    try:
        return find_fashion_mnist()
    except DatasetNotFoundError as e:
        if os.environ.get("BLD_REQUIRE_DATA") == "1":
            pytest.fail(f"{NO_DATA} and BLD_REQUIRE_DATA=1: run {SETUP}. ({e})")
        pytest.skip(f"{NO_DATA}: run {SETUP}")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """A banner when tests were skipped for want of Fashion-MNIST: they are most of the
    end-to-end tests, and a quiet 's' would read as a pass."""
    skipped = [r for r in terminalreporter.stats.get("skipped", [])
               if NO_DATA in str(getattr(r, "longrepr", ""))]
    if skipped:
        terminalreporter.write_sep("!", f"{len(skipped)} TESTS DID NOT RUN: {NO_DATA}", red=True)
        terminalreporter.write_line(f"Install it and run them: {SETUP}", red=True, bold=True)
        terminalreporter.write_line("(set BLD_REQUIRE_DATA=1 to make a missing dataset fail the run)")


@pytest.fixture(scope="module")
def one_thread():
    """Run torch on one thread: on a shared 2-core machine two OpenMP threads that compete
    with other processes make tiny models ~100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_ae_args() -> list[str]:
    return list(TINY_AE)


@pytest.fixture(scope="session")
def tiny_prior_args() -> list[str]:
    return list(TINY_PRIOR)


class Runs(NamedTuple):
    ae: Path  # autoencoder run folder (6 steps, checkpoints at 3 and 6)
    latents: Path  # `bld encode --limit 256` of the training split
    prior: Path  # class-conditional 'tiny' prior run folder trained on those latents


@pytest.fixture(scope="session")
def runs(tmp_path_factory, fashion_mnist) -> Runs:
    """train-ae -> encode (first 256 training images) -> train-prior --latents, through the
    CLI, once per session. Tests must not write into these folders."""
    from bld.app.cli import main
    root = tmp_path_factory.mktemp("runs")
    ae, latents, prior = root / "ae", root / "latents.safetensors", root / "prior"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train-ae", "--out", str(ae), *TINY_AE]) == 0
        assert main(["encode", "--autoencoder", str(ae), "--out", str(latents), "--limit", "256",
                     "--device", "cpu", "--batch-size", "128"]) == 0
        assert main(["train-prior", "--out", str(prior), "--autoencoder", str(ae),
                     "--latents", str(latents), *TINY_PRIOR]) == 0
    finally:
        torch.set_num_threads(before)
    return Runs(ae, latents, prior)


@pytest.fixture(scope="session")
def shards(tmp_path_factory, fashion_mnist) -> Path:
    """The first 100 Fashion-MNIST training images as tar shards of 32, 32, 32 and 4 samples
    (`bld shard`), once per session. Tests must not write into the folder."""
    from bld.app.cli import main
    out = tmp_path_factory.mktemp("shards") / "fmnist"
    assert main(["shard", "fashion-mnist", str(out), "--shard-size", "32", "--limit", "100"]) == 0
    return out


@pytest.fixture
def killed_after_checkpoint(monkeypatch):
    """``fit(task, run_dir)`` that dies (KeyboardInterrupt) right after writing the
    checkpoint of ``step``, as a killed training process would: returns nothing, raises
    nothing past the kill."""
    import contextlib

    import bld.training.loop

    def run(task, run_dir, step: int) -> None:
        save = bld.training.loop._save

        def save_then_die(run_dir, kind, cfg, at, *args, **kwargs):
            save(run_dir, kind, cfg, at, *args, **kwargs)
            if at == step:
                raise KeyboardInterrupt

        with monkeypatch.context() as m, contextlib.suppress(KeyboardInterrupt):
            m.setattr(bld.training.loop, "_save", save_then_die)
            bld.training.loop.fit(task, run_dir)
            raise AssertionError(f"the run ended without a checkpoint at step {step}")
    return run
