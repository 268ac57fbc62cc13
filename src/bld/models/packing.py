"""Pack binary latents to uint8 (8 bits per byte) and back, for latent caches. docs/method.md §1.

Imports no bld module.
"""

from __future__ import annotations

import torch

_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """(B, ...) tensor of 0/1 -> (B, ceil(n / 8)) uint8, n = elements per sample.

    Values other than exactly 0 or 1 are an error (a latent cache must be lossless).
    """
    flat = bits.reshape(bits.shape[0], -1)
    if not bool(((flat == 0) | (flat == 1)).all()):
        raise ValueError("pack_bits takes tensors of 0/1 only")
    flat = flat.to(torch.uint8)
    n = flat.shape[1]
    pad = (-n) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(flat.shape[0], pad)], dim=1)
    groups = flat.reshape(flat.shape[0], -1, 8)
    return (groups * _WEIGHTS.to(groups.device)).sum(dim=-1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: tuple[int, ...],
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, ceil(n / 8)) uint8 -> (B, *shape) bits of ``dtype``; ``shape`` is one sample's."""
    if packed.dtype != torch.uint8:
        raise ValueError(f"unpack_bits takes uint8, got {packed.dtype}")
    n = 1
    for s in shape:
        n *= s
    if packed.shape[1] != (n + 7) // 8:
        raise ValueError(f"packed width {packed.shape[1]} does not fit a sample shape {shape} "
                         f"({(n + 7) // 8} bytes expected)")
    w = _WEIGHTS.to(packed.device)
    bits = (packed[..., None] & w) != 0  # (B, bytes, 8)
    return bits.reshape(packed.shape[0], -1)[:, :n].reshape(packed.shape[0], *shape).to(dtype)
