"""Image grids and loss-curve plots (PNG)."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def image_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 1.0
               ) -> torch.Tensor:
    """(B, C, H, W) images in [-1, 1] -> one (C, H', W') grid with ``nrow`` images per row."""
    images = images.detach().float().cpu().clamp(-1, 1)
    B, C, H, W = images.shape
    ncol = nrow
    nrows = math.ceil(B / ncol)
    grid = torch.full((C, nrows * (H + padding) + padding, ncol * (W + padding) + padding),
                      pad_value)
    for i in range(B):
        r, c = divmod(i, ncol)
        y, x = padding + r * (H + padding), padding + c * (W + padding)
        grid[:, y:y + H, x:x + W] = images[i]
    return grid


def to_pil(image: torch.Tensor) -> Image.Image:
    """(C, H, W) in [-1, 1] -> PIL image (L or RGB)."""
    arr = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte()
    arr = arr.permute(1, 2, 0).numpy()
    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)


def save_image(image: torch.Tensor, path: str | Path, scale: int = 1) -> Path:
    """Write a (C, H, W) image in [-1, 1] as PNG (atomically), optionally upscaled."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = to_pil(image)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def read_csv(path: str | Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


def plot_metrics(csv_path: str | Path, out_path: str | Path, keys: list[str],
                 title: str = "") -> Path | None:
    """One panel per metric against step, from a metrics.csv; returns the PNG path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not Path(csv_path).exists():
        return None
    data = read_csv(csv_path)
    keys = [k for k in keys if k in data]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
    for ax, k in zip(axes[0], keys):
        ax.plot(data["step"], data[k], lw=1.2)
        ax.set_xlabel("step")
        ax.set_title(k)
        ax.grid(alpha=0.3)
        if k.startswith("loss") or k in ("l1", "bce", "mse"):
            ax.set_yscale("log")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_path = Path(out_path)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
