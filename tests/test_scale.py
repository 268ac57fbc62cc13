"""What large runs need: gradient accumulation and activation checkpointing.

Accumulation: one optimizer step on a batch of B equals one on K micro-batches of B / K
(fp32, CPU): the gradients the optimizer sees are compared tensor by tensor, since Adam's
update would hide a gradient that is off by a constant factor.
Checkpointing: the loss and every gradient are unchanged, and it does save activations.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from bld.app.cli import main
from bld.core.config import config_from_dict, load_config_dict
from bld.models.autoencoder import AutoencoderConfig, BinaryAutoencoder
from bld.models.denoiser import Denoiser, DenoiserConfig

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


@pytest.mark.parametrize("extra", [[], ["--set", "diffusion.loss_type=mean"]],
                         ids=["balanced", "mean"])
def test_prior_grad_accum_equals_one_batch(extra, runs, tmp_path, monkeypatch,
                                           tiny_prior_args):
    base = ["train-prior", "--autoencoder", runs.ae, "--latents", runs.latents,
            *tiny_prior_args, *FP32, "--steps", "2", *extra]
    one = step_gradients(monkeypatch, [*base, "--batch-size", "32", "--out", tmp_path / "a"])
    acc = step_gradients(monkeypatch, [*base, "--batch-size", "8", "--grad-accum", "4",
                                       "--out", tmp_path / "b"])
    assert_same_gradients(one, acc)


def test_autoencoder_grad_accum_with_gan_equals_one_batch(tmp_path, monkeypatch, tiny_ae_args,
                                                         fashion_mnist):
    """With the PatchGAN on from step 0: the adaptive weight comes from the whole batch's
    gradients and the discriminator's step is the whole batch's (step 2 sees both)."""
    base = ["train-ae", *tiny_ae_args, *FP32, "--steps", "2", "--set", "loss.disc_weight=0.5",
            "--set", "loss.disc_start=0", "--set", "loss.disc_channels=8"]
    one = step_gradients(monkeypatch, [*base, "--batch-size", "16", "--out", tmp_path / "a"])
    acc = step_gradients(monkeypatch, [*base, "--batch-size", "4", "--grad-accum", "4",
                                       "--out", tmp_path / "b"])
    assert_same_gradients(one, acc)
    rows = [list(csv.DictReader(open(d / "metrics.csv"))) for d in (tmp_path / "a", tmp_path / "b")]
    for key in ("loss", "d_weight", "d_loss", "g_loss"):
        a, b = (float(r[-1][key]) for r in rows)
        assert a != 0 and b == pytest.approx(a, rel=1e-4), key


def test_grad_accum_must_be_positive(tmp_path, capsys, tiny_ae_args):
    assert main(["train-ae", *tiny_ae_args, "--set", "optim.grad_accum=0",
                 "--out", str(tmp_path)]) == 2
    assert "grad_accum must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["train-ae", *tiny_ae_args, "--grad-accum", "0", "--out", str(tmp_path)])
    assert e.value.code == 2 and "--grad-accum: must be at least 1" in capsys.readouterr().err


# --------------------------------------------------------------- activation checkpointing
def saved_bytes(fn):
    """fn()'s result and the bytes autograd saved for the backward pass outside
    checkpointed regions (checkpointing keeps only each region's inputs)."""
    total = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total[0]


def loss_and_grads(model: torch.nn.Module, loss_fn):
    torch.manual_seed(11)  # the same dropout draws on both sides
    model.train().zero_grad(set_to_none=True)
    loss, saved = saved_bytes(lambda: loss_fn(model))
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()], saved


def assert_checkpointing_changes_nothing(make, loss_fn) -> None:
    """make(checkpointing) -> model; both share weights. Loss and gradients equal (fp32),
    and the checkpointed model saves under half the activations."""
    plain, ckpt = make(False), make(True)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # off the zero-initialised heads and gates, so every weight has a gradient
        for p in plain.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    ckpt.load_state_dict(plain.state_dict())
    la, ga, sa = loss_and_grads(plain, loss_fn)
    lb, gb, sb = loss_and_grads(ckpt, loss_fn)
    torch.testing.assert_close(lb, la, rtol=1e-6, atol=0)
    for x, y in zip(ga, gb):
        assert x.abs().sum() > 0
        torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-7)
    assert sb < 0.5 * sa, f"checkpointing saved {sb} bytes of activations, without it {sa}"


def test_checkpointing_autoencoder_1024px_preset_at_reduced_width(fashion_mnist):
    """The 1024px preset (factor 32, six levels) with checkpointing on, at width 4 and
    64 px: loss and gradients match the model without it."""
    import dataclasses

    from bld.data import build_dataset
    cfg = config_from_dict("autoencoder", load_config_dict("autoencoder", "1024px", [
        "model.channels=4", "model.hidden=8", "model.bits=8", "model.image_size=64"]))
    assert cfg.model.grad_checkpointing and cfg.model.factor == 32
    ds = build_dataset("fashion-mnist", "train", image_size=64, channels=3)
    x = torch.stack([ds[i][0] for i in range(2)])

    def make(on: bool) -> BinaryAutoencoder:
        return BinaryAutoencoder(dataclasses.replace(cfg.model, grad_checkpointing=on))

    assert_checkpointing_changes_nothing(
        make, lambda m: (m(x, generator=torch.Generator().manual_seed(0)).recon - x).abs().mean())


@pytest.mark.parametrize("preset", ["1024px", "256px"])
@pytest.mark.parametrize("conditioning", ["adaln", "tokens"])
def test_checkpointing_prior_preset_at_reduced_width(preset, conditioning):
    """The prior presets on the 'original' size turn checkpointing on; at width 32, depth 3,
    with dropout, the loss and gradients match the model without it."""
    import dataclasses

    from bld.models.diffusion import BernoulliDiffusion
    cfg = config_from_dict("prior", load_config_dict("prior", preset, []))
    assert cfg.preset == "original" and cfg.model.grad_checkpointing
    small = dataclasses.replace(cfg.model, width=32, depth=3, heads=2, bits=8, grid=4,
                                num_classes=3, dropout=0.1, conditioning=conditioning)
    diffusion = BernoulliDiffusion(cfg.diffusion)
    z0 = (torch.rand(4, 8, 4, 4, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    y = torch.tensor([0, 1, 2, 3])  # 3 = the null label

    def make(on: bool) -> Denoiser:
        return Denoiser(dataclasses.replace(small, grad_checkpointing=on))

    assert_checkpointing_changes_nothing(make, lambda m: diffusion.training_losses(
        m, z0, y, generator=torch.Generator().manual_seed(2)).loss)
