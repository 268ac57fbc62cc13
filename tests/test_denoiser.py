"""The denoiser's conditioning (method.md §3): adaLN-Zero starts every block at the identity, and
time and class reach the output through either route."""

import pytest
import torch

from bld.models.denoiser import Denoiser, DenoiserConfig


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


@pytest.mark.parametrize("grid,patch", [(7, 2), (6, 2), (7, 3), (4, 1)])
def test_patch_tokens_hold_their_square_of_the_grid(grid, patch):
    # each token embeds the patch x patch square of positions it covers (every bit of them),
    # the grid padded with 0 = no evidence; outputs come back at the grid's own size
    torch.manual_seed(0)
    net = Denoiser(DenoiserConfig(bits=3, grid=grid, width=32, depth=1, heads=2, patch=patch,
                                  num_classes=2, conditioning="adaln"))
    g = -(-grid // patch)
    assert net.n_pos == g * g and net.pos.shape == (1, g * g, 32)
    for r, c, ch in [(0, 0, 0), (grid - 1, grid - 1, 2), (grid // 2, 1, 1)]:
        signs = torch.zeros(1, 3, grid, grid)
        signs[0, ch, r, c] = 1.0
        tokens = net._tokens(signs)  # (1, N, 3 p p)
        assert tokens.shape == (1, g * g, 3 * patch * patch)
        token, feature = (tokens[0] != 0).nonzero().tolist()[0]
        assert (tokens != 0).sum() == 1
        assert token == (r // patch) * g + c // patch
        assert feature == ((r % patch) * patch + c % patch) * 3 + ch
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    z = (torch.rand(2, 3, grid, grid) < 0.5).float()
    out = net(z, torch.rand(2), torch.tensor([0, 1]))
    assert out.shape == z.shape and torch.isfinite(out).all()


def test_patches_cut_the_work_per_sample():
    cfg = dict(bits=32, grid=7, width=256, depth=6, heads=4, num_classes=10, conditioning="adaln")
    one, two = Denoiser(DenoiserConfig(**cfg)), Denoiser(DenoiserConfig(**cfg, patch=2))
    assert (one.n_pos, two.n_pos) == (49, 16)
    assert two.flops_per_forward() < 0.4 * one.flops_per_forward()
    with pytest.raises(ValueError, match="patch must be in 1..grid"):
        DenoiserConfig(grid=7, patch=8)
