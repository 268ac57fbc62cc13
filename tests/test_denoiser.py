"""The denoiser's conditioning (SPEC 3): adaLN-Zero starts every block at the identity, and
time and class reach the output through either route."""

import pytest
import torch

from bld.denoiser import Denoiser, DenoiserConfig


def _net(conditioning: str, **kw) -> Denoiser:
    torch.manual_seed(0)
    return Denoiser(DenoiserConfig(bits=8, grid=3, width=32, depth=2, heads=2, num_classes=4,
                                   conditioning=conditioning, **kw))


def test_adaln_zero_blocks_start_as_the_identity():
    net = _net("adaln")
    x = torch.randn(5, 9, 32)
    c = torch.randn(5, 32)
    for blk in net.blocks:
        assert torch.equal(blk(x, c), x)
    assert all(not blk.norm1.elementwise_affine for blk in net.blocks)


@pytest.mark.parametrize("conditioning", ["tokens", "adaln"])
def test_time_and_class_change_the_output(conditioning):
    net = _net(conditioning)
    with torch.no_grad():  # leave the zero init: any trained network has moved off it
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    z = (torch.rand(4, 8, 3, 3, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    t = torch.full((4,), 0.5)
    y = torch.tensor([0, 1, 2, 3])
    base = net(z, t, y)
    assert base.shape == z.shape
    assert not torch.allclose(base, net(z, torch.full((4,), 0.9), y))
    assert not torch.allclose(base, net(z, t, torch.tensor([1, 2, 3, 0])))
    assert torch.allclose(net(z, t, None), net(z, t, torch.full((4,), net.null_label)))


def test_class_embedding_init_scale():
    assert _net("adaln", class_embed_std=1.0).class_embed.weight.std() > 0.5
    assert _net("adaln").class_embed.weight.std() < 0.05


def test_bad_conditioning_is_clear():
    with pytest.raises(ValueError, match="conditioning"):
        DenoiserConfig(conditioning="film")
