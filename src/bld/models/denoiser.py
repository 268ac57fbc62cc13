"""Transformer denoiser over binary-latent grid positions, and its size presets. docs/method.md §3.

Input embedding ``(2z - 1) @ W_in``, learned positional embedding initialised to 2-D
sin-cos, pre-LN blocks (attention + 4x GELU MLP), final LayerNorm, linear head to one logit
per bit (or, with ``bit_group`` g > 1, to 2^g logits per group of g bits: the categorical
of the grouped head, see bld.models.diffusion). Time (sinusoidal -> MLP) and the optional class
enter in one of two ways (``conditioning``):

* ``"adaln"``: adaLN-Zero as in DiT (Peebles & Xie 2023, arXiv 2212.09748): the sum of the
  time and class embeddings regresses a shift, scale and gate for every LayerNorm and
  residual branch, the gates start at zero so every block starts as the identity;
* ``"tokens"``: a time token and a class token are prepended to the sequence.

Imports only bld.models.diffusion (for the grouped head's output size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from .diffusion import MAX_BIT_GROUP, group_outputs


@dataclass
class DenoiserConfig:
    bits: int = 32  # C, bits per position
    grid: int = 8  # H = W of the latent grid
    width: int = 256
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    # positions per token side: each token holds a patch x patch square of the grid (DiT's
    # patch size; the grid is padded with "no evidence" zeros to a multiple), so the
    # transformer sees ceil(grid / patch)^2 tokens of bits * patch^2 bits each
    patch: int = 1
    num_classes: int = 0  # 0 = unconditional; else a learned null label is added
    dropout: float = 0.0
    conditioning: str = "tokens"  # "adaln" (adaLN-Zero, as DiT) or "tokens"
    class_embed_std: float = 0.02  # init scale of the class (and null) embeddings
    # activation checkpointing: in training, keep only each block's input and recompute its
    # activations in the backward pass (less memory for about a third more compute)
    grad_checkpointing: bool = False
    # the head: 1 = one logit per bit; g > 1 = 2^g logits per group of g consecutive bits
    # of a position (set from diffusion.bit_group by resolve_prior_config)
    bit_group: int = 1

    def __post_init__(self) -> None:
        if self.conditioning not in ("adaln", "tokens"):
            raise ValueError(f"conditioning must be 'adaln' or 'tokens', got {self.conditioning!r}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")
        if not 1 <= self.patch <= self.grid:
            raise ValueError(f"patch must be in 1..grid ({self.grid}), got {self.patch}")
        if not 1 <= self.bit_group <= MAX_BIT_GROUP:
            raise ValueError(f"bit_group must be in 1..{MAX_BIT_GROUP}, got {self.bit_group}")
        group_outputs(self.bits, self.bit_group)  # g must divide bits

    @property
    def out_channels(self) -> int:
        """Outputs per grid position: bits, or (bits / g) 2^g with the grouped head."""
        return group_outputs(self.bits, self.bit_group)

    @property
    def token_grid(self) -> int:
        """Tokens per side: ceil(grid / patch)."""
        return -(-self.grid // self.patch)


# name -> (width, depth, heads). 'tiny' trains in seconds on a CPU; 'original' is the
# paper's 768 x 24 (~172M parameters at 16x16x64).
PRESETS: dict[str, tuple[int, int, int]] = {
    "tiny": (64, 2, 2),
    "small": (192, 6, 6),
    "base": (384, 12, 6),
    "large": (512, 16, 8),
    "original": (768, 24, 12),
}


def preset_config(name: str, **kwargs) -> DenoiserConfig:
    """A DenoiserConfig from a named size preset; kwargs set bits, grid, num_classes, ..."""
    if name not in PRESETS:
        raise ValueError(f"unknown denoiser preset {name!r}; choose one of {sorted(PRESETS)}")
    w, d, h = PRESETS[name]
    return replace(DenoiserConfig(width=w, depth=d, heads=h), **kwargs)


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """2-D sine-cosine positional table, shape (grid * grid, dim)."""
    if dim % 4:
        raise ValueError(f"width must be divisible by 4 for 2-D sin-cos, got {dim}")
    q = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(q, dtype=torch.float64) / q))
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64),
                            torch.arange(grid, dtype=torch.float64), indexing="ij")
    out = []
    for pos in (ys.flatten(), xs.flatten()):
        ang = pos[:, None] * omega[None]
        out += [torch.sin(ang), torch.cos(ang)]
    return torch.cat(out, dim=1).float()


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of normalised time t in [0, 1] (scaled by 1000), (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = (t.float() * 1000)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float = 0.0
              ) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over (B, h, N, d). On CPU the explicit form is several
    times faster to train than the fused kernel for the short sequences used here (its
    backward dominated a training step in profiles); elsewhere the fused kernel is used."""
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
    w = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
    w = w.softmax(dim=-1)
    if dropout > 0:
        w = F.dropout(w, dropout)
    return w @ v


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (B, N, D) normalised, then x * (1 + scale) + shift with (B, D) terms."""
    return x * (1 + scale[:, None]) + shift[:, None]


class Block(nn.Module):
    """Pre-LN transformer block; with ``adaln`` its norms and residual gates are modulated
    by the condition c (B, D) (adaLN-Zero: gates start at 0, the block at the identity)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float,
                 adaln: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=not adaln)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=not adaln)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.dropout = dropout
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width)) if adaln else None

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, N, D), c: (B, D) condition (adaLN only) -> (B, N, D)."""
        if self.ada is None:
            h = self.norm1(x)
        else:
            sh1, sc1, g1, sh2, sc2, g2 = self.ada(c).chunk(6, dim=-1)  # each (B, D)
            h = modulate(self.norm1(x), sh1, sc1)
        q, k, v = rearrange(self.qkv(h), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        a = self.proj(rearrange(attention(q, k, v, self.dropout if self.training else 0.0),
                                "b h n d -> b n (h d)"))
        if self.ada is None:
            x = x + a
            return x + self.mlp(self.norm2(x))
        x = x + g1[:, None] * a
        return x + g2[:, None] * self.mlp(modulate(self.norm2(x), sh2, sc2))


class Denoiser(nn.Module):
    """f(z_t, t/T, y) -> one logit per bit (or 2^g per group of g bits, ``bit_group``);
    z_t (B, C, H, W) in {0,1}, t (B,) in [0, 1]."""

    def __init__(self, config: DenoiserConfig) -> None:
        super().__init__()
        self.config = c = config
        self.n_pos = c.token_grid ** 2  # tokens
        token_bits = c.bits * c.patch ** 2
        self.embed = nn.Linear(token_bits, c.width, bias=False)
        self.pos = nn.Parameter(sincos_2d(c.token_grid, c.width)[None])  # (1, N, D), learned
        self.time_mlp = nn.Sequential(nn.Linear(c.width, c.width), nn.SiLU(),
                                      nn.Linear(c.width, c.width))
        # class embedding with one extra row: the learned null condition for CFG
        self.class_embed = nn.Embedding(c.num_classes + 1, c.width) if c.num_classes > 0 else None
        adaln = c.conditioning == "adaln"
        self.blocks = nn.ModuleList(Block(c.width, c.heads, c.mlp_ratio, c.dropout, adaln)
                                    for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.width, elementwise_affine=not adaln)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(c.width, 2 * c.width)) if adaln else None
        self.head = nn.Linear(c.width, c.out_channels * c.patch ** 2)
        self.apply(self._init)
        # start by predicting "no flip" at 50% (grouped head: every pattern at 2^-g)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        if self.class_embed is not None:
            nn.init.normal_(self.class_embed.weight, std=c.class_embed_std)
        if adaln:  # adaLN-Zero: every modulation starts at 0 (blocks are the identity)
            for mod in [blk.ada for blk in self.blocks] + [self.final_ada]:
                nn.init.zeros_(mod[-1].weight)
                nn.init.zeros_(mod[-1].bias)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    @property
    def null_label(self) -> int | None:
        """Index of the learned null condition (for classifier-free guidance)."""
        return self.config.num_classes if self.class_embed is not None else None

    def forward(self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
                ) -> torch.Tensor:
        """z: (B, C, H, W) bits, t: (B,) time / T, y: (B,) labels or None -> (B, C, H, W),
        or (B, (C / g) 2^g, H, W) with the grouped head."""
        c = self.config
        B, C, H, W = z.shape
        if C != c.bits or H != c.grid or W != c.grid:
            raise ValueError(f"denoiser expects latents (B, {c.bits}, {c.grid}, {c.grid}), "
                             f"got {tuple(z.shape)}")
        x = self.embed(self._tokens(2 * z - 1).to(self.embed.weight.dtype))  # (B, N, C p p)
        x = x + self.pos  # (B, N, D)
        conds = [self.time_mlp(timestep_embedding(t, c.width).to(x.dtype))]  # (B, D)
        if self.class_embed is not None:
            if y is None:
                y = torch.full((B,), self.null_label, device=z.device, dtype=torch.long)
            conds.append(self.class_embed(y))  # (B, D)
        if self.final_ada is not None:  # adaLN-Zero: one condition vector modulates every block
            cond = sum(conds)  # (B, D)
            for blk in self.blocks:
                x = self._block(blk, x, cond)
            shift, scale = self.final_ada(cond).chunk(2, dim=-1)
            out = self.head(modulate(self.norm(x), shift, scale))  # (B, N, C)
        else:  # condition tokens prepended to the sequence
            x = torch.cat([*(v[:, None] for v in conds), x], dim=1)  # (B, extra + N, D)
            for blk in self.blocks:
                x = self._block(blk, x)
            out = self.head(self.norm(x[:, len(conds):]))  # (B, N, C)
        p, g = c.patch, c.token_grid
        out = rearrange(out, "b (h w) (p1 p2 c) -> b c (h p1) (w p2)", h=g, p1=p, p2=p)
        return out[:, :, :H, :W]  # (B, out_channels, H, W): the padding's outputs are dropped

    def _tokens(self, signs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) values in [-1, 1] -> (B, N, C p p) tokens; the grid is padded with
        0 (neither bit value: no evidence) up to a multiple of the patch."""
        p, g = self.config.patch, self.config.token_grid
        pad = g * p - signs.shape[-1]
        if pad:
            signs = F.pad(signs, (0, pad, 0, pad))
        return rearrange(signs, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p)

    def _block(self, blk: Block, *args: torch.Tensor) -> torch.Tensor:
        if self.config.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(blk, *args, use_reentrant=False)  # RNG (dropout) replayed
        return blk(*args)

    def flops_per_forward(self) -> int:
        """Matmul FLOPs of one forward for one sample (2 x multiply-adds), for MFU figures."""
        c = self.config
        adaln = self.final_ada is not None
        n = self.n_pos + (0 if adaln else 1 + (self.class_embed is not None))
        d, hidden = c.width, int(c.width * c.mlp_ratio)
        per_block = 2 * n * (3 * d * d + d * d + 2 * d * hidden) + 2 * 2 * n * n * d
        per_block += 2 * d * 6 * d if adaln else 0  # the modulation regression, once per sample
        token_bits, token_out = c.bits * c.patch ** 2, c.out_channels * c.patch ** 2
        return (c.depth * per_block + 2 * self.n_pos * (token_bits * d + d * token_out)
                + (2 * d * 2 * d if adaln else 0))
