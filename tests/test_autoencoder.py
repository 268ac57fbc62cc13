"""Binary autoencoder (docs/method.md §1) and bit packing."""

import pytest
import torch

from bld.models.autoencoder import (AutoencoderConfig, AutoencoderLoss, AutoencoderLossConfig,
                                    BinaryAutoencoder)
from bld.models.packing import pack_bits, unpack_bits


def small_config(**kw):
    base = dict(channels=16, channel_mult=(1, 2, 2), hidden=32, bits=16, padded_size=32)
    base.update(kw)
    return AutoencoderConfig(**base)


@pytest.mark.parametrize("cfg,grid", [
    (dict(), 8),  # 28 px padded to 32, factor 4 -> 8x8
    (dict(in_channels=3, image_size=64, padded_size=0, channel_mult=(1, 2, 2, 2)), 8),
    (dict(in_channels=3, image_size=64, padded_size=0, channel_mult=(1, 2, 2)), 16),
    (dict(in_channels=3, image_size=256, padded_size=0, channel_mult=(1, 1, 1, 1, 1),
          channels=8, num_res_blocks=1), 16),
    (dict(patch=2, channel_mult=(1, 2)), 8),  # pixel-unshuffle 2 x one 2x level: factor 4
    (dict(in_channels=3, image_size=64, padded_size=0, patch=4, channel_mult=(1, 2)), 8),
])
def test_shapes_and_bits_are_binary(cfg, grid):
    c = small_config(**cfg)
    ae = BinaryAutoencoder(c)
    x = torch.rand(2, c.in_channels, c.image_size, c.image_size) * 2 - 1
    out = ae(x)
    assert out.recon.shape == x.shape
    assert out.bits.shape == (2, c.bits, grid, grid) == (2, *c.latent_shape)
    assert set(out.bits.detach().unique().tolist()) <= {0.0, 1.0}
    assert torch.all((out.probs >= 0) & (out.probs <= 1))


def test_1024px_configures_to_32x32_grid():
    c = AutoencoderConfig(in_channels=3, image_size=1024, channels=8,
                          channel_mult=(1, 1, 2, 2, 4, 4), bits=32)
    assert c.factor == 32 and c.latent_shape == (32, 32, 32)


def test_bad_padding_is_clear():
    with pytest.raises(ValueError, match="padded_size to a multiple of 8"):
        AutoencoderConfig(image_size=28, channel_mult=(1, 2, 2, 2))


def test_patch_folds_pixels_into_channels():
    c = small_config(patch=2, channel_mult=(1, 2))
    assert c.factor == 4 and c.latent_shape == (16, 8, 8)
    ae = BinaryAutoencoder(c)
    # no convolution runs at full resolution: the first sees 2 x 2 blocks as 4 channels at
    # half the size, the last makes 4 channels that are unfolded into the 2 x 2 blocks
    assert ae.encoder.conv_in.in_channels == 4 and ae.decoder.conv_out.out_channels == 4
    seen = {}
    ae.encoder.conv_in.register_forward_hook(lambda m, i, o: seen.update(shape=i[0].shape))
    x = torch.arange(32 * 32.0).reshape(1, 1, 32, 32)
    ae.encode_logits(x[..., 2:30, 2:30])  # 28 px, padded to 32
    assert seen["shape"] == (1, 4, 16, 16)
    with pytest.raises(ValueError, match="patch must be >= 1"):
        small_config(patch=0)
    with pytest.raises(ValueError, match="patch 2, channel_mult has 3 levels"):
        small_config(patch=2, padded_size=0)  # 28 px is not a multiple of 2 * 4


def test_gradients_reach_encoder_through_quantizer():
    torch.manual_seed(0)
    ae = BinaryAutoencoder(small_config())
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    out = ae(x)
    (out.recon - x).abs().mean().backward()
    g = ae.encoder.to_logits.weight.grad
    assert g is not None and g.abs().sum() > 0
    assert ae.encoder.conv_in.weight.grad.abs().sum() > 0


def test_deterministic_encoding_is_deterministic_and_training_is_stochastic():
    torch.manual_seed(0)
    ae = BinaryAutoencoder(small_config())
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    assert torch.equal(ae.encode(x), ae.encode(x))
    ae.train()
    a = ae(x).bits
    b = ae(x).bits
    assert not torch.equal(a, b)
    ae.eval()
    assert torch.equal(ae(x).bits, ae.encode(x))


def test_latent_mask_keeps_only_fully_known_patches():
    ae = BinaryAutoencoder(small_config())
    m = torch.ones(1, 1, 28, 28)
    m[:, :, 10:14, 10:14] = 0  # a hole in padded pixels 12..15 -> position (3, 3)
    lm = ae.latent_mask(m)
    assert lm.shape == (1, 16, 8, 8)
    assert lm[0, 0, 3, 3] == 0 and lm.sum() == 16 * 63


def test_generator_and_discriminator_losses():
    torch.manual_seed(0)
    ae = BinaryAutoencoder(small_config())
    loss_fn = AutoencoderLoss(AutoencoderLossConfig(disc_start=1, mse_weight=0.1), in_channels=1)
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    out = ae(x)
    before = loss_fn.generator_loss(x, out, step=0, last_layer=ae.last_layer)
    assert before.d_weight == 0 and before.g_loss == 0
    after = loss_fn.generator_loss(x, out, step=1, last_layer=ae.last_layer)
    assert 0 < after.d_weight <= loss_fn.config.disc_weight
    after.loss.backward()
    d = loss_fn.discriminator_loss(x, out.recon)
    assert d.item() > 0
    with pytest.raises(ValueError, match="feature network"):
        AutoencoderLoss(AutoencoderLossConfig(perceptual_weight=1.0), in_channels=1)


@pytest.mark.parametrize("shape", [(3, 32, 8, 8), (2, 5, 3, 3), (1, 1)])
def test_pack_unpack_round_trip(shape):
    bits = (torch.rand(shape, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    packed = pack_bits(bits)
    assert packed.dtype == torch.uint8
    n = bits[0].numel()
    assert packed.shape == (shape[0], (n + 7) // 8)
    assert torch.equal(unpack_bits(packed, tuple(shape[1:])), bits)


def test_pack_rejects_non_binary():
    with pytest.raises(ValueError, match="0/1"):
        pack_bits(torch.tensor([[0.0, 0.5]]))
    with pytest.raises(ValueError, match="bytes expected"):
        unpack_bits(torch.zeros(1, 3, dtype=torch.uint8), (32,))


def test_threshold_training_bits_equal_evaluation_bits():
    # train_bits="threshold": training-mode forward draws nothing, its bits are [p > 0.5]
    # with gradients straight through; "bernoulli" draws (docs/method.md §1)
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    torch.manual_seed(0)
    thr = BinaryAutoencoder(AutoencoderConfig(channels=8, hidden=16, bits=8, train_bits="threshold"))
    thr.train()
    a, b = thr(x), thr(x)
    assert torch.equal(a.bits, b.bits) and torch.equal(a.bits, (a.probs > 0.5).float())
    a.recon.sum().backward()
    assert thr.encoder.to_logits.weight.grad.abs().sum() > 0
    torch.manual_seed(0)
    ber = BinaryAutoencoder(AutoencoderConfig(channels=8, hidden=16, bits=8))
    ber.train()
    g = torch.Generator().manual_seed(0)
    assert not torch.equal(ber(x, generator=g).bits, ber(x, generator=g).bits)
    with pytest.raises(ValueError, match="train_bits"):
        AutoencoderConfig(train_bits="sample")


def test_saturation_term_is_mean_p_times_one_minus_p():
    from bld.models.autoencoder import AutoencoderLoss, AutoencoderLossConfig
    torch.manual_seed(0)
    ae = BinaryAutoencoder(AutoencoderConfig(channels=8, hidden=16, bits=8))
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    out = ae(x, deterministic=True)
    plain = AutoencoderLoss(AutoencoderLossConfig(disc_weight=0.0), 1)
    sat = AutoencoderLoss(AutoencoderLossConfig(disc_weight=0.0, saturation_weight=0.3), 1)
    p = out.probs.float()
    want = 0.3 * (p * (1 - p)).mean()
    got = sat.generator_loss(x, out, 0, ae.last_layer).loss - plain.generator_loss(
        x, out, 0, ae.last_layer).loss
    assert torch.allclose(got, want, atol=1e-6) and want > 0


def test_edge_loss_tells_a_lost_outline_from_a_shift_of_the_same_mse():
    from bld.models.autoencoder import edge_loss
    # a flat face with a 1-pixel dark outline (a drawn image), and two reconstructions with
    # the same pixel MSE: one loses the outline, the other is brighter everywhere
    x = torch.full((1, 3, 32, 32), 0.5)
    x[..., 8, 8:24] = x[..., 23, 8:24] = x[..., 8:24, 8] = x[..., 8:24, 23] = -1.0
    no_outline = torch.full_like(x, 0.5)
    mse = torch.nn.functional.mse_loss(no_outline, x)
    offset = x + mse.sqrt()  # a constant shift with the same pixel MSE
    assert torch.allclose(torch.nn.functional.mse_loss(offset, x), mse)
    assert edge_loss(offset, x) < 1e-10 and edge_loss(x, x) == 0
    assert edge_loss(no_outline, x) > 0.5 * mse  # about the outline's own pixel MSE
    # in the loss: edge_weight adds the term; the default leaves it out
    ae = BinaryAutoencoder(small_config(in_channels=3, image_size=32, padded_size=0))
    out = ae(x, deterministic=True)
    plain = AutoencoderLoss(AutoencoderLossConfig(disc_weight=0.0), 3)
    edged = AutoencoderLoss(AutoencoderLossConfig(disc_weight=0.0, edge_weight=2.0), 3)
    got = edged.generator_loss(x, out, 0, ae.last_layer).loss - plain.generator_loss(
        x, out, 0, ae.last_layer).loss
    assert torch.allclose(got, 2.0 * edge_loss(out.recon.float(), x), atol=1e-6) and got > 0


