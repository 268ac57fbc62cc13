"""Two-process DistributedDataParallel training on CPU (gloo) through torchrun: the same code
path as one process, with rank 0 alone writing checkpoints, metrics and plots."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from bld.app.cli import main
from bld.core import checkpoint as ckpt
from bld.core import runfolder

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                       reason="torch.distributed with the gloo backend is not available"),
]


def torchrun(*argv, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 -m bld.app.cli ARGV`; fails with its output
    (unless ``check`` is False)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "bld.app.cli", *map(str, argv)]
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240,
                         check=False)
    if not check:
        return res
    assert res.returncode == 0, (f"torchrun exited {res.returncode}\n"
                                 f"--- stdout\n{res.stdout[-4000:]}\n"
                                 f"--- stderr\n{res.stderr[-8000:]}")
    return res


def check_run_folder(run_dir: Path, kind: str) -> None:
    """One checkpoint set, written once (rank 0), each holding both ranks' generator states."""
    folder = run_dir / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["step_000003", "step_000006"], \
        "leftover temporary folders: two ranks wrote checkpoints?"
    assert (run_dir / "latest").read_text().strip() == "checkpoints/step_000006"
    for step in (3, 6):
        c = ckpt.load_checkpoint(runfolder.checkpoint_dir(run_dir, step), kind)
        assert c.step == step and c.ema_state is not None
        gens = c.trainer_state()["generators"]
        assert len(gens) == 2 and not torch.equal(gens[0], gens[1])  # per-rank streams
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [2, 4, 6], "metrics logged by more than rank 0?"
    assert (run_dir / "loss_curves.png").is_file()
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "checkpoints", "latest", "loss_curves.png", "metrics.csv", "samples"]


@pytest.fixture(scope="module")
def ddp_autoencoder(tmp_path_factory, fashion_mnist, tiny_ae_args) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    torchrun("train-ae", "--out", root / "ae", *tiny_ae_args, "--no-bf16", cwd=root)
    return root / "ae"


def test_ddp_train_autoencoder(ddp_autoencoder):
    check_run_folder(ddp_autoencoder, "autoencoder")
    header = json.loads((runfolder.checkpoint_dir(ddp_autoencoder, 6) / "config.json").read_text())
    assert header["config"]["optim"]["batch_size"] == 16  # per process


def test_ddp_train_prior_from_latents(ddp_autoencoder, tmp_path, tiny_prior_args):
    latents = tmp_path / "latents.safetensors"
    assert main(["encode", "--autoencoder", str(ddp_autoencoder), "--out", str(latents),
                 "--limit", "256", "--device", "cpu"]) == 0
    torchrun("train-prior", "--out", tmp_path / "prior", "--autoencoder", ddp_autoencoder,
             "--latents", latents, *tiny_prior_args, cwd=tmp_path)
    check_run_folder(tmp_path / "prior", "prior")


def test_ddp_resume_is_bitwise_equal(ddp_autoencoder, tmp_path, tiny_ae_args):
    """Drop the last checkpoint of the 2-process run, resume from step 3 with 2 processes:
    step 6 comes out bitwise equal (each rank's generator state is restored)."""
    run_dir = tmp_path / "ae"
    shutil.copytree(ddp_autoencoder, run_dir)
    shutil.rmtree(runfolder.checkpoint_dir(run_dir, 6))
    runfolder.write_latest(run_dir, runfolder.checkpoint_dir(run_dir, 3))
    torchrun("train-ae", "--out", run_dir, *tiny_ae_args, "--no-bf16", "--resume", cwd=tmp_path)
    check_run_folder(run_dir, "autoencoder")
    a = ckpt.load_checkpoint(ddp_autoencoder, "autoencoder")
    b = ckpt.load_checkpoint(run_dir, "autoencoder")
    assert a.step == b.step == 6
    for what, sa, sb in [("model", a.model_state, b.model_state),
                         ("ema", a.ema_state, b.ema_state)]:
        differ = [k for k in sa if not torch.equal(sa[k], sb[k])]
        assert not differ, f"{what}: {len(differ)} tensors differ after a DDP resume"


def test_ddp_shards_with_grad_accum_resume_is_bitwise_equal(shards, tmp_path, tiny_ae_args):
    """2 processes read distinct shards (4 shards: each takes 2 an epoch), 2 micro-batches a
    step (no_sync on the first), the PatchGAN on (its term's gradient all-reduced apart);
    killed after step 3 and resumed, step 6 is bitwise equal."""
    argv = ["train-ae", *tiny_ae_args, "--no-bf16", "--data", shards, "--set", "data.limit=0",
            "--batch-size", "8", "--grad-accum", "2", "--set", "loss.disc_weight=0.5",
            "--set", "loss.disc_start=2", "--set", "loss.disc_channels=8"]
    unbroken, resumed = tmp_path / "a", tmp_path / "b"
    torchrun(*argv, "--out", unbroken, cwd=tmp_path)
    check_run_folder(unbroken, "autoencoder")
    shutil.copytree(unbroken, resumed)
    shutil.rmtree(runfolder.checkpoint_dir(resumed, 6))
    runfolder.write_latest(resumed, runfolder.checkpoint_dir(resumed, 3))
    torchrun(*argv, "--out", resumed, "--resume", cwd=tmp_path)
    a, b = (ckpt.load_checkpoint(d, "autoencoder") for d in (unbroken, resumed))
    assert a.step == b.step == 6
    differ = [k for k in a.model_state if not torch.equal(a.model_state[k], b.model_state[k])]
    assert not differ, f"{len(differ)} tensors differ after a DDP resume from shards"
    with open(unbroken / "metrics.csv", newline="") as f:
        assert float(list(csv.DictReader(f))[-1]["d_weight"]) > 0  # the GAN was on


def test_ddp_averages_gradients_over_ranks_that_see_different_batches(fashion_mnist, tmp_path,
                                                                       tiny_ae_args):
    """2 processes x 8 images a step against 1 process x 16 (deterministic bits, no GAN): the
    same global batches, so the same gradient norms and weights (to float rounding).
    Ranks that saw the same batch would train on half the data; summed gradients would log
    twice the gradient norm (Adam would hide it in the weights); ranks whose weights drifted
    apart stop the run (every checkpoint checks that they agree)."""
    same = ["train-ae", *tiny_ae_args, "--no-bf16", "--set", "model.train_bits=threshold",
            "--set", "loss.entropy_weight=0", "--set", "loss.saturation_weight=0",
            "--set", "run.log_every=1"]
    torchrun(*same, "--batch-size", "8", "--out", tmp_path / "ddp", cwd=tmp_path)
    assert main([*map(str, same), "--batch-size", "16", "--out", str(tmp_path / "one")]) == 0

    def rows(run_dir):
        with open(run_dir / "metrics.csv", newline="") as f:
            return list(csv.DictReader(f))
    ddp, one = rows(tmp_path / "ddp"), rows(tmp_path / "one")
    assert len(ddp) == len(one) == 6
    for a, b in zip(ddp, one):
        # (the logged loss is rank 0's own half batch; the gradient norm is after the all-reduce)
        assert float(a["grad_norm"]) == pytest.approx(float(b["grad_norm"]), rel=2e-3), a["step"]
    # weights: the two runs' difference (float rounding that Adam's normalisation amplifies
    # where gradients are tiny) is small against how far training moved them from the start
    from bld.core.config import config_from_dict
    from bld.models.autoencoder import BinaryAutoencoder
    a, b = (ckpt.load_checkpoint(tmp_path / d, "autoencoder") for d in ("ddp", "one"))
    cfg = config_from_dict("autoencoder", b.config)
    torch.manual_seed(cfg.run.seed)  # as the training loop builds it
    start = BinaryAutoencoder(cfg.model).state_dict()
    diff = sum((a.model_state[k] - b.model_state[k]).float().pow(2).sum() for k in start) ** 0.5
    moved = sum((b.model_state[k] - start[k]).float().pow(2).sum() for k in start) ** 0.5
    assert diff < 0.05 * moved, (float(diff), float(moved))


def test_ddp_run_into_a_locked_folder_is_refused_on_every_rank(fashion_mnist, tmp_path,
                                                               tiny_ae_args):
    """Rank 0 alone takes run.lock; when another run holds it, every rank stops with the
    message (none waits at a collective for rank 0), and nothing is written."""
    out = tmp_path / "ae"
    with runfolder.RunLock(out):
        res = torchrun("train-ae", "--out", out, *tiny_ae_args, cwd=tmp_path, check=False)
    assert res.returncode != 0
    assert res.stderr.count("is in use by another run") == 2, res.stderr[-3000:]  # both ranks
    assert not (out / "checkpoints").exists()
