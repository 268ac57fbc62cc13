"""Shared fixtures for the end-to-end tests (test_cli, test_resume, test_ddp)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from bld.data import DatasetNotFoundError, find_fashion_mnist

# A ~70k-parameter autoencoder (8 bits on a 7x7 grid) on the first 256 training images.
TINY_AE = ["--set", "model.channels=8", "--set", "model.hidden=16", "--set", "model.bits=8",
           "--set", "data.limit=256", "--steps", "6", "--batch-size", "16",
           "--set", "run.log_every=2", "--set", "run.ckpt_every=3", "--set", "run.sample_every=0",
           "--set", "run.threads=1", "--device", "cpu"]
# The 'tiny' denoiser preset (width 64, depth 2).
TINY_PRIOR = ["--preset", "tiny", "--steps", "6", "--batch-size", "32",
              "--set", "run.log_every=2", "--set", "run.ckpt_every=3",
              "--set", "run.sample_every=0", "--set", "run.threads=1", "--device", "cpu"]


@pytest.fixture(scope="session")
def fashion_mnist() -> Path:
    """The Fashion-MNIST folder, or skip the test."""
    try:
        return find_fashion_mnist()
    except DatasetNotFoundError as e:
        pytest.skip(f"Fashion-MNIST is not installed: {e}")


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
    from bld.cli import main
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
    from bld.cli import main
    out = tmp_path_factory.mktemp("shards") / "fmnist"
    assert main(["shard", "fashion-mnist", str(out), "--shard-size", "32", "--limit", "100"]) == 0
    return out
