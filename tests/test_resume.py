"""A run killed after its step-4 checkpoint and resumed to step 8 ends bitwise equal to one
that ran 8 steps without a break (CPU, fixed seed): model, EMA and optimizer state. Promised
for fp32 and, on CPU with the same thread count, for bf16 autocast too (what precision auto
picks on a CPU with native bf16; benchmarks/faults.py measures it under kill -9).

The kill is a KeyboardInterrupt raised right after the step-4 checkpoint is written, so the
process keeps nothing of the first half but what is on disk. Also with gradient accumulation,
and from a shard folder (whose 100 samples make 6 steps an epoch, so the run crosses into a
reshuffled second epoch after the resume).
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

import bld.training.loop
from bld.app.cli import main
from bld.core import checkpoint as ckpt
from bld.core import runfolder

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS, KILL_AT = 8, 4
# Short warm-up so the lr schedule changes on both sides of the break, a checkpoint only at
# the kill step.
COMMON = ["--steps", str(STEPS), "--seed", "3", "--set", "optim.warmup=2",
          "--set", f"run.ckpt_every={KILL_AT}", "--set", "run.log_every=1"]


def run(*argv) -> int:
    return main([str(a) for a in argv])


def _argv(kind: str, request, tiny_ae_args, tiny_prior_args) -> list:
    precision = ["--precision", "bf16" if kind.endswith("bf16") else "fp32"]
    if kind == "autoencoder":
        return ["train-ae", *tiny_ae_args, *COMMON, *precision]
    if kind == "autoencoder-shards-accum":
        shards = request.getfixturevalue("shards")  # 100 images in 4 shards (conftest)
        return ["train-ae", *tiny_ae_args, *COMMON, *precision, "--data", shards,
                "--set", "data.limit=0", "--batch-size", "8", "--grad-accum", "2"]
    runs = request.getfixturevalue("runs")  # a tiny autoencoder and 256 latents (conftest)
    ae, latents = runs.ae, runs.latents
    # dropout draws from the global RNG, which a resume must restore exactly
    accum = ["--batch-size", "16", "--grad-accum", "2"] if kind == "prior-accum" else []
    return ["train-prior", "--autoencoder", ae, "--latents", latents, *tiny_prior_args, *COMMON,
            *precision, "--set", "model.dropout=0.1", *accum]


def _tensors(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a nested optimizer state dict, by path."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_tensors(v, f"{prefix}/{k}"))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_tensors(v, f"{prefix}/{i}"))
    return out


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if not k.endswith("_per_s")}  # timing differs
                for r in csv.DictReader(f)]


@pytest.mark.parametrize("variant", ["autoencoder", "prior", "prior-bf16",
                                     "autoencoder-shards-accum", "prior-accum"])
def test_killed_and_resumed_run_is_bitwise_equal(variant, request, tmp_path, monkeypatch, fashion_mnist,
                                                 tiny_ae_args, tiny_prior_args):
    argv = _argv(variant, request, tiny_ae_args, tiny_prior_args)
    kind = variant
    a, b = tmp_path / "unbroken", tmp_path / "killed"
    assert run(*argv, "--out", a) == 0

    save = bld.training.loop._save

    def save_then_die(run_dir, kind_, cfg, step, *args, **kwargs):
        save(run_dir, kind_, cfg, step, *args, **kwargs)
        if step == KILL_AT:
            raise KeyboardInterrupt  # killed right after the checkpoint is on disk

    with monkeypatch.context() as m:
        m.setattr(bld.training.loop, "_save", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            run(*argv, "--out", b)
    assert runfolder.find_latest(b).name == f"step_{KILL_AT:06d}"
    assert not runfolder.checkpoint_dir(b, STEPS).exists()

    assert run(*argv, "--out", b, "--resume") == 0

    ca, cb = (ckpt.load_checkpoint(d, kind.split("-")[0]) for d in (a, b))
    assert ca.step == cb.step == STEPS
    for what, sa, sb in [("model", ca.model_state, cb.model_state),
                         ("ema", ca.ema_state, cb.ema_state),
                         ("optimizer", _tensors(ca.trainer_state()["optimizer"]),
                          _tensors(cb.trainer_state()["optimizer"]))]:
        assert sa.keys() == sb.keys()
        differ = [k for k in sa if not torch.equal(sa[k], sb[k])]
        assert not differ, (f"{kind} {what}: {len(differ)} tensors differ after resume, "
                            f"e.g. {differ[:3]}")
    assert _metrics(a) == _metrics(b)
