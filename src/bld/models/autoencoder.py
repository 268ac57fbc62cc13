"""Binary autoencoder: encoder, Bernoulli quantizer, decoder, and its training losses. method.md §1.

An image x in [-1, 1] (B, c, H, W) maps to bits z in {0,1} (B, C, h, w): an h x w grid of
C-bit vectors. No codebook: bit probabilities p = sigmoid(logits), z_b ~ B(p) in training
(or [p > 0.5] when deterministic), straight-through gradients z = z_b + p - stopgrad(p).

Imports no bld module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch.utils.checkpoint import checkpoint


@dataclass
class AutoencoderConfig:
    in_channels: int = 1
    image_size: int = 28
    padded_size: int = 0  # 0 = image_size; images are padded to this before encoding
    channels: int = 64  # width of the first level
    channel_mult: tuple[int, ...] = (1, 2, 2)  # downsampling factor = patch * 2 ** (levels - 1)
    # pixel-unshuffle: each patch x patch block of pixels becomes patch**2 channels before
    # the first conv (and the decoder's last conv is pixel-shuffled back), so the full
    # resolution has no convolutions at all
    patch: int = 1
    num_res_blocks: int = 1
    attention: bool = True  # self-attention at the lowest resolution
    hidden: int = 128  # width before the 1x1 conv to bit logits
    bits: int = 32  # C, bits per position
    norm_bits: bool = True  # decoder sees 2z - 1 scaled by 1/sqrt(C) instead of raw bits
    # how bits are drawn in training mode: "bernoulli" z ~ B(p) (docs/method.md §1) or "threshold"
    # [p > 0.5]; both pass gradients straight through. Evaluation is always [p > 0.5].
    train_bits: str = "bernoulli"
    # activation checkpointing: in training, keep only each resolution stage's input and
    # recompute its activations in the backward pass (less memory, more compute)
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.train_bits not in ("bernoulli", "threshold"):
            raise ValueError(f"train_bits must be 'bernoulli' or 'threshold', got {self.train_bits!r}")
        if self.patch < 1:
            raise ValueError(f"patch must be >= 1 (1: no pixel-unshuffle), got {self.patch}")
        if not 1 <= self.bits <= 1024:
            raise ValueError(f"bits must be in 1..1024, got {self.bits}")
        size = self.padded_size or self.image_size
        if size < self.image_size:
            raise ValueError(f"padded_size {size} < image_size {self.image_size}")
        if size % self.factor:
            raise ValueError(f"padded size {size} is not divisible by the downsampling factor "
                             f"{self.factor} (patch {self.patch}, channel_mult has "
                             f"{len(self.channel_mult)} levels); "
                             f"set padded_size to a multiple of {self.factor}")

    @property
    def factor(self) -> int:
        return self.patch * 2 ** (len(self.channel_mult) - 1)

    @property
    def grid(self) -> int:
        return (self.padded_size or self.image_size) // self.factor

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of one image's bits."""
        return (self.bits, self.grid, self.grid)


def run_stages(body: nn.Sequential, ends: list[int], h: torch.Tensor, checkpointed: bool
               ) -> torch.Tensor:
    """``body(h)``; with ``checkpointed``, each stage ``body[start:end]`` (one resolution, up
    to ``ends``) is run under activation checkpointing."""
    if not checkpointed:
        return body(h)
    start = 0
    for end in ends:
        h = checkpoint(body[start:end], h, use_reentrant=False)
        start = end
    return h


def _groups(ch: int) -> int:
    return max(g for g in (32, 16, 8, 4, 2, 1) if ch % g == 0)


def Norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(_groups(ch), ch, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = Norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = Norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, cin, H, W) -> (B, cout, H, W)
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm = Norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        B, C, H, W = x.shape
        q, k, v = rearrange(self.qkv(self.norm(x)), "b (three c) h w -> three b 1 (h w) c", three=3)
        a = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(rearrange(a, "b 1 (h w) c -> b c h w", h=H, w=W))


class Encoder(nn.Module):
    def __init__(self, c: AutoencoderConfig) -> None:
        super().__init__()
        chs = [c.channels * m for m in c.channel_mult]
        self.patch = c.patch
        self.conv_in = nn.Conv2d(c.in_channels * c.patch ** 2, chs[0], 3, padding=1)
        layers: list[nn.Module] = []
        self.stage_ends: list[int] = []  # one stage per resolution (for checkpointing)
        self.checkpointed = c.grad_checkpointing
        cin = chs[0]
        for i, ch in enumerate(chs):
            for _ in range(c.num_res_blocks):
                layers.append(ResBlock(cin, ch))
                cin = ch
            if i < len(chs) - 1:
                layers.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))  # downsample x2
                self.stage_ends.append(len(layers))
        layers.append(ResBlock(cin, cin))
        if c.attention:
            layers.append(AttnBlock(cin))
        layers.append(ResBlock(cin, cin))
        self.stage_ends.append(len(layers))
        self.body = nn.Sequential(*layers)
        self.norm_out = Norm(cin)
        self.conv_out = nn.Conv2d(cin, c.hidden, 3, padding=1)
        self.to_logits = nn.Conv2d(c.hidden, c.bits, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, c, H, W) -> (B, C, h, w) logits
        if self.patch > 1:
            x = F.pixel_unshuffle(x, self.patch)
        h = run_stages(self.body, self.stage_ends, self.conv_in(x),
                       self.checkpointed and self.training and torch.is_grad_enabled())
        return self.to_logits(self.conv_out(F.silu(self.norm_out(h))))


class Decoder(nn.Module):
    def __init__(self, c: AutoencoderConfig) -> None:
        super().__init__()
        chs = [c.channels * m for m in c.channel_mult]
        self.norm_bits = c.norm_bits
        self.bits = c.bits
        self.from_bits = nn.Conv2d(c.bits, c.hidden, 1, bias=False)  # bias-free C -> hidden
        cin = chs[-1]
        self.conv_in = nn.Conv2d(c.hidden, cin, 3, padding=1)
        layers: list[nn.Module] = [ResBlock(cin, cin)]
        if c.attention:
            layers.append(AttnBlock(cin))
        layers.append(ResBlock(cin, cin))
        self.stage_ends: list[int] = []  # one stage per resolution (for checkpointing)
        self.checkpointed = c.grad_checkpointing
        for i, ch in reversed(list(enumerate(chs))):
            for _ in range(c.num_res_blocks + 1):
                layers.append(ResBlock(cin, ch))
                cin = ch
            if i > 0:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                           nn.Conv2d(ch, ch, 3, padding=1)]
            self.stage_ends.append(len(layers))
        self.body = nn.Sequential(*layers)
        self.norm_out = Norm(cin)
        self.patch = c.patch
        self.conv_out = nn.Conv2d(cin, c.in_channels * c.patch ** 2, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) bits -> (B, c, H, W)
        if self.norm_bits:
            z = (2 * z - 1) / math.sqrt(self.bits)
        h = run_stages(self.body, self.stage_ends, self.conv_in(self.from_bits(z)),
                       self.checkpointed and self.training and torch.is_grad_enabled())
        x = self.conv_out(F.silu(self.norm_out(h)))
        return F.pixel_shuffle(x, self.patch) if self.patch > 1 else x


class QuantizerOutput(NamedTuple):
    bits: torch.Tensor  # (B, C, h, w) values in {0,1}, straight-through gradient to probs
    probs: torch.Tensor  # (B, C, h, w) P(bit = 1)
    logits: torch.Tensor  # (B, C, h, w)


class BernoulliQuantizer(nn.Module):
    """Bits from logits: z_b ~ B(p) (or [p > 0.5]); z = z_b + p - stopgrad(p). method.md §1."""

    def forward(self, logits: torch.Tensor, deterministic: bool = False,
                generator: torch.Generator | None = None) -> QuantizerOutput:
        probs = torch.sigmoid(logits.float())
        if deterministic:
            hard = (probs > 0.5).to(probs.dtype)
        else:
            u = torch.rand(probs.shape, generator=generator, device=probs.device, dtype=probs.dtype)
            hard = (u < probs).to(probs.dtype)
        bits = hard + (probs - probs.detach())  # straight-through; exactly 0/1 in value
        return QuantizerOutput(bits, probs, logits)


class AutoencoderOutput(NamedTuple):
    recon: torch.Tensor  # (B, c, H, W) reconstruction in image range
    probs: torch.Tensor  # (B, C, h, w) bit probabilities
    bits: torch.Tensor  # (B, C, h, w) bits in {0,1} (straight-through)
    logits: torch.Tensor  # (B, C, h, w)


class BinaryAutoencoder(nn.Module):
    """Images in [-1, 1] <-> binary latents. ``encode`` / ``decode`` / ``forward``."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quantizer = BernoulliQuantizer()
        self.decoder = Decoder(config)

    # padding: images are padded (replicating the border) up to padded_size and cropped back
    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        if x.shape[1:] != (c.in_channels, c.image_size, c.image_size):
            raise ValueError(f"autoencoder expects images (B, {c.in_channels}, {c.image_size}, "
                             f"{c.image_size}), got {tuple(x.shape)}")
        extra = (c.padded_size or c.image_size) - c.image_size
        if extra == 0:
            return x
        lo = extra // 2
        return F.pad(x, (lo, extra - lo, lo, extra - lo), mode="replicate")

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        extra = (c.padded_size or c.image_size) - c.image_size
        lo = extra // 2
        return x[..., lo:lo + c.image_size, lo:lo + c.image_size]

    def encode_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, c, H, W) images -> (B, C, h, w) bit logits."""
        return self.encoder(self._pad(x))

    def encode(self, x: torch.Tensor, deterministic: bool = True,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, c, H, W) images -> (B, C, h, w) bits in {0,1} (no gradient path kept)."""
        q = self.quantizer(self.encode_logits(x), deterministic, generator)
        return q.bits.detach()

    def decode(self, bits: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) bits -> (B, c, H, W) images (unclamped)."""
        c = self.config
        if tuple(bits.shape[1:]) != c.latent_shape:
            raise ValueError(f"decoder expects bits (B, {c.bits}, {c.grid}, {c.grid}), "
                             f"got {tuple(bits.shape)}")
        return self._crop(self.decoder(bits.to(self.decoder.from_bits.weight.dtype)))

    def forward(self, x: torch.Tensor, deterministic: bool | None = None,
                generator: torch.Generator | None = None) -> AutoencoderOutput:
        """Bits drawn as ``config.train_bits`` says in training mode, [p > 0.5] in eval mode,
        unless ``deterministic`` says otherwise."""
        if deterministic is None:
            deterministic = not self.training or self.config.train_bits == "threshold"
        q = self.quantizer(self.encode_logits(x), deterministic, generator)
        return AutoencoderOutput(self.decode(q.bits), q.probs, q.bits, q.logits)

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the decoder's last conv (for the adaptive GAN weight)."""
        return self.decoder.conv_out.weight

    def latent_mask(self, pixel_mask: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) pixel mask (1 = keep) -> (B, C, h, w) latent mask. method.md §2, inpainting.

        A latent position is kept only when its whole patch of (padded) pixels is kept;
        the padding border counts as kept.
        """
        c = self.config
        m = pixel_mask.float()
        extra = (c.padded_size or c.image_size) - c.image_size
        lo = extra // 2
        m = F.pad(m, (lo, extra - lo, lo, extra - lo), value=1.0)
        m = -F.max_pool2d(-m, c.factor)  # min-pool: kept only if all kept
        return (m > 0.5).float().expand(-1, c.bits, -1, -1)


# ---------------------------------------------------------------------------- losses
@dataclass
class AutoencoderLossConfig:
    l1_weight: float = 1.0
    mse_weight: float = 0.0
    # squared error of the images' horizontal and vertical pixel differences (a gradient
    # loss): adds weight to errors at edges and thin outlines, none to smooth offsets
    edge_weight: float = 0.0
    perceptual_weight: float = 0.0  # needs a feature network (see AutoencoderLoss)
    disc_weight: float = 0.5  # scales the adaptive weight; 0 turns the GAN off
    disc_start: int = 2000  # generator/discriminator GAN terms start at this step
    disc_channels: int = 64
    disc_layers: int = 3
    entropy_weight: float = 0.0  # optional bit-usage regulariser: pushes mean bit usage to 0.5
    saturation_weight: float = 0.0  # mean p(1 - p) (the original's "codebook loss"): pushes
    # bit probabilities to 0 or 1, so that training's draws match evaluation's [p > 0.5]


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (as in pix2pix / VQGAN): one realness logit per patch."""

    def __init__(self, in_channels: int, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = channels
        for i in range(1, layers + 1):
            nxt = channels * min(2 ** i, 8)
            stride = 2 if i < layers else 1
            mods += [nn.Conv2d(ch, nxt, 4, stride, 1, bias=False), Norm(nxt), nn.LeakyReLU(0.2)]
            ch = nxt
        mods.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, c, H, W) -> (B, 1, h', w')
        return self.net(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean())


def adaptive_weight(nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor
                    ) -> torch.Tensor:
    """lambda = clamp(|grad_last(nll)| / (|grad_last(g)| + 1e-4), 0, 1). method.md §1 (VQGAN)."""
    g_nll = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_g = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return weight_from_gradients(g_nll, g_g)


def weight_from_gradients(g_nll: torch.Tensor, g_g: torch.Tensor) -> torch.Tensor:
    """The adaptive weight from the two losses' gradients at the last layer."""
    return (g_nll.norm() / (g_g.norm() + 1e-4)).clamp(0.0, 1.0).detach()


def edge_loss(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the horizontal and vertical neighbour differences of two image
    batches (B, c, H, W): zero for a constant offset, largest where an edge is missed."""
    dx = (recon[..., :, 1:] - recon[..., :, :-1]) - (x[..., :, 1:] - x[..., :, :-1])
    dy = (recon[..., 1:, :] - recon[..., :-1, :]) - (x[..., 1:, :] - x[..., :-1, :])
    return 0.5 * (dx.pow(2).mean() + dy.pow(2).mean())


class AutoencoderLosses(NamedTuple):
    loss: torch.Tensor
    l1: torch.Tensor
    mse: torch.Tensor
    perceptual: torch.Tensor
    g_loss: torch.Tensor
    d_weight: torch.Tensor


class AutoencoderLoss(nn.Module):
    """L1 (+ MSE) (+ perceptual) + adaptive-weight hinge PatchGAN after ``disc_start``.

    ``perceptual``: optional callable images -> features (e.g. the project's own trained
    classifier's ``features``); the perceptual term is the MSE between features of x and its
    reconstruction. No LPIPS weights are needed.
    """

    def __init__(self, config: AutoencoderLossConfig, in_channels: int,
                 perceptual: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        super().__init__()
        self.config = config
        if config.perceptual_weight > 0 and perceptual is None:
            raise ValueError("perceptual_weight > 0 needs a feature network (perceptual=...)")
        self.perceptual = perceptual
        self.discriminator = (PatchDiscriminator(in_channels, config.disc_channels,
                                                 config.disc_layers)
                              if config.disc_weight > 0 else None)

    def gan_active(self, step: int) -> bool:
        return self.discriminator is not None and step >= self.config.disc_start

    def generator_loss(self, x: torch.Tensor, out: AutoencoderOutput, step: int,
                       last_layer: torch.Tensor, adaptive: bool = True) -> AutoencoderLosses:
        """The autoencoder's loss. ``adaptive=False`` leaves the GAN weighting to the caller
        (gradient accumulation weights it by the whole batch's gradients): ``loss`` is then
        the reconstruction part alone and ``g_loss`` keeps its graph."""
        c = self.config
        recon = out.recon.float()
        x = x.float()
        l1 = (recon - x).abs().mean()
        mse = F.mse_loss(recon, x)
        nll = c.l1_weight * l1 + c.mse_weight * mse
        if c.edge_weight > 0:
            nll = nll + c.edge_weight * edge_loss(recon, x)
        perc = torch.zeros((), device=x.device)
        if self.perceptual is not None and c.perceptual_weight > 0:
            perc = F.mse_loss(self.perceptual(recon), self.perceptual(x).detach())
            nll = nll + c.perceptual_weight * perc
        if c.entropy_weight > 0:
            usage = out.probs.float().mean(dim=(0, 2, 3))  # (C,)
            nll = nll + c.entropy_weight * ((usage - 0.5) ** 2).mean()
        if c.saturation_weight > 0:
            p = out.probs.float()
            nll = nll + c.saturation_weight * (p * (1 - p)).mean()
        g_loss = torch.zeros((), device=x.device)
        d_weight = torch.zeros((), device=x.device)
        loss = nll
        if self.gan_active(step):
            g_loss = -self.discriminator(recon).mean()
            if not adaptive:
                return AutoencoderLosses(nll, l1.detach(), mse.detach(), perc.detach(), g_loss,
                                         d_weight)
            if torch.is_grad_enabled():
                d_weight = adaptive_weight(nll, g_loss, last_layer) * c.disc_weight
            loss = nll + d_weight * g_loss
        return AutoencoderLosses(loss, l1.detach(), mse.detach(), perc.detach(),
                                 g_loss.detach(), d_weight)

    def discriminator_loss(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """Hinge loss of the PatchGAN on real x vs detached reconstructions."""
        return hinge_d_loss(self.discriminator(x.float()),
                            self.discriminator(recon.detach().float()))
