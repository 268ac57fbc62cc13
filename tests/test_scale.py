"""What large runs need: gradient accumulation and activation checkpointing.

Accumulation: one optimizer step on a batch of B equals one on K micro-batches of B / K
(fp32, CPU): the gradients the optimizer sees are compared tensor by tensor, since Adam's
update would hide a gradient that is off by a constant factor.
Checkpointing: the loss and every gradient are unchanged, and it does save activations.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bld.autoencoder import AutoencoderConfig, BinaryAutoencoder
from bld.cli import main
from bld.config import load_config_dict
from bld.denoiser import Denoiser, DenoiserConfig
from bld.train import config_from_dict

pytestmark = pytest.mark.usefixtures("one_thread")

FP32 = ["--no-bf16", "--set", "run.log_every=1", "--set", "run.ckpt_every=0", "--seed", "5"]


def step_gradients(monkeypatch, argv: list) -> list[list[torch.Tensor]]:
    """Run the command; return the gradients handed to the optimizer at each step."""
    seen: list[list[torch.Tensor]] = []
    clip = torch.nn.utils.clip_grad_norm_

    def record(params, *args, **kwargs):
        params = list(params)
        seen.append([p.grad.detach().clone() for p in params])
        return clip(params, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(torch.nn.utils, "clip_grad_norm_", record)
        assert main([str(a) for a in argv]) == 0
    return seen


def assert_same_gradients(a: list[list[torch.Tensor]], b: list[list[torch.Tensor]]) -> None:
    assert len(a) == len(b) and len(a) > 0
    for step, (ga, gb) in enumerate(zip(a, b)):
        scale = max(g.abs().max().item() for g in ga)
        assert scale > 0
        for i, (x, y) in enumerate(zip(ga, gb)):
            torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-5 * scale,
                                       msg=lambda m: f"step {step}, parameter {i}: {m}")


@pytest.mark.parametrize("train_bits", ["threshold", "bernoulli"])
def test_autoencoder_grad_accum_equals_one_batch(train_bits, tmp_path, monkeypatch,
                                                 tiny_ae_args, fashion_mnist):
    base = ["train-ae", *tiny_ae_args, *FP32, "--steps", "2",
            "--set", f"model.train_bits={train_bits}"]
    one = step_gradients(monkeypatch, [*base, "--batch-size", "16", "--out", tmp_path / "a"])
    acc = step_gradients(monkeypatch, [*base, "--batch-size", "4", "--grad-accum", "4",
                                       "--out", tmp_path / "b"])
    assert_same_gradients(one, acc)


@pytest.mark.parametrize("extra", [[], ["--set", "diffusion.loss_type=mean",
                                        "--set", "model.self_condition=true"]],
                         ids=["balanced", "mean-selfcond"])
def test_prior_grad_accum_equals_one_batch(extra, runs, tmp_path, monkeypatch,
                                           tiny_prior_args):
    base = ["train-prior", "--autoencoder", runs.ae, "--latents", runs.latents,
            *tiny_prior_args, *FP32, "--steps", "2", *extra]
    one = step_gradients(monkeypatch, [*base, "--batch-size", "32", "--out", tmp_path / "a"])
    acc = step_gradients(monkeypatch, [*base, "--batch-size", "8", "--grad-accum", "4",
                                       "--out", tmp_path / "b"])
    assert_same_gradients(one, acc)


def test_grad_accum_with_gan_is_refused(tmp_path, capsys, tiny_ae_args, fashion_mnist):
    out = tmp_path / "ae"
    assert main(["train-ae", *tiny_ae_args, "--grad-accum", "2", "--set", "loss.disc_weight=0.5",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "grad_accum" in err and "disc_weight=0" in err
    assert not (out / "checkpoints").exists()
    assert main(["train-ae", *tiny_ae_args, "--grad-accum", "0", "--out", str(out)]) == 2
    assert "grad_accum must be 1 or more" in capsys.readouterr().err
