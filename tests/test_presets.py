"""The high-resolution presets load, give the latent the README states, and train at reduced width.

The `256px` and `1024px` presets are built as published (shapes, factors, bits) and run a
forward + backward pass at batch 1 on a real image (a Fashion-MNIST test image resized to
the preset's size in RGB) with the widths cut so the test stays fast: the same levels,
downsampling factor and latent, fewer channels.
"""

from __future__ import annotations

import pytest
import torch

from bld.core.config import config_from_dict, load_config_dict
from bld.data import DatasetNotFoundError, build_dataset
from bld.models.autoencoder import BinaryAutoencoder
from bld.models.denoiser import Denoiser
from bld.models.diffusion import BernoulliDiffusion
from bld.training.prior import resolve_prior_config

REDUCED_AE = ["model.channels=4", "model.hidden=16"]


def _configs(preset: str, ae_over=(), prior_over=()):
    ae = config_from_dict("autoencoder", load_config_dict("autoencoder", preset, list(ae_over)))
    pr = config_from_dict("prior", load_config_dict("prior", preset, list(prior_over)))
    return ae, resolve_prior_config(pr, ae.model, num_classes=0)


@pytest.mark.parametrize("preset,size,grid,factor", [("256px", 256, 16, 16), ("1024px", 1024, 32, 32)])
def test_high_resolution_presets_as_published(preset, size, grid, factor):
    ae, pr = _configs(preset)
    m = ae.model
    assert (m.image_size, m.in_channels, m.factor, m.grid) == (size, 3, factor, grid)
    assert m.latent_shape == (64, grid, grid)
    # one latent, no hierarchy: the prior sees the whole grid as grid * grid tokens of 64 bits
    assert (pr.model.bits, pr.model.grid) == (64, grid)
    assert (pr.model.width, pr.model.depth) == (768, 24)  # the `original` denoiser
    bits = 64 * grid * grid
    assert bits // 8 == {256: 2048, 1024: 8192}[size]  # bytes per image the README quotes


def _real_image(size: int) -> torch.Tensor:
    try:
        ds = build_dataset("fashion-mnist", "test", image_size=size, channels=3)
    except DatasetNotFoundError as e:
        pytest.skip(f"Fashion-MNIST is missing ({e}); run `bash scripts/setup.sh --test`")
    return torch.stack([ds[0][0], ds[1][0]])


@pytest.mark.parametrize("preset,size", [("256px", 256), ("1024px", 1024)])
def test_high_resolution_presets_train_at_reduced_width(preset, size):
    torch.manual_seed(0)
    ae_cfg, pr_cfg = _configs(preset, REDUCED_AE, ["preset=tiny"])
    x = _real_image(size)[:1]
    ae = BinaryAutoencoder(ae_cfg.model)
    out = ae(x)
    assert out.recon.shape == x.shape
    assert out.bits.shape == (1, 64, size // ae_cfg.model.factor, size // ae_cfg.model.factor)
    loss = (out.recon - x).abs().mean()
    loss.backward()
    first = next(p for p in ae.parameters() if p.dim() == 4)  # the first convolution
    assert first.grad is not None and torch.isfinite(first.grad).all() and first.grad.abs().sum() > 0

    model = Denoiser(pr_cfg.model)
    diffusion = BernoulliDiffusion(pr_cfg.diffusion)
    z0 = ae.encode(x).detach()
    assert z0.shape == (1, 64, pr_cfg.model.grid, pr_cfg.model.grid)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    diffusion.training_losses(model, z0).loss.backward()
    opt.step()
    moved = sum(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert moved > len(before) // 2  # the gradient reached most of the network


@pytest.mark.parametrize("kind,key,on", [("prior", "self_condition", True),
                                         ("autoencoder", "refine_channels", 16),
                                         ("autoencoder", "train_flip", 0.1)])
def test_a_config_with_a_removed_option_loads_when_off_and_is_refused_when_on(kind, key, on):
    """Checkpoints written before an option was removed still load where it was off."""
    from bld.core.config import REMOVED_OPTIONS, ConfigError, to_dict
    data = to_dict(config_from_dict(kind, load_config_dict(kind, None, [])))
    assert key not in data["model"]  # removed from today's configs
    off = {**data, "model": {**data["model"], key: REMOVED_OPTIONS[key]}}
    assert to_dict(config_from_dict(kind, off)) == data
    with pytest.raises(ConfigError, match=f"model.{key}, an option removed"):
        config_from_dict(kind, {**data, "model": {**data["model"], key: on}})
