"""Image grids and loss-curve plots (PNG).

Imports no bld module (matplotlib on first use).
"""

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


def labelled_grid(images: torch.Tensor, nrow: int, out_path: str | Path, *,
                  row_labels: list[str] | None = None, col_labels: list[str] | None = None,
                  cell_notes: list[list[str]] | None = None, title: str = "",
                  cell_inches: float = 0.62) -> Path:
    """An image grid with names beside its rows, above its columns and (optionally) a
    short note under every cell, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    B, C, H, W = images.shape
    rows = math.ceil(B / nrow)
    fig, axes = plt.subplots(rows, nrow, figsize=(cell_inches * nrow + 1.4,
                                                  cell_inches * rows * 1.25 + 0.5),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
        if i >= B:
            continue
        r, c = divmod(i, nrow)
        img = ((images[i].detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
        ax.imshow(img[..., 0] if C == 1 else img, cmap="gray" if C == 1 else None,
                  vmin=0, vmax=1, interpolation="nearest")
        if row_labels and c == 0:
            ax.set_ylabel(row_labels[r], rotation=0, ha="right", va="center", fontsize=8)
        if col_labels and r == 0 and col_labels[c]:
            ax.set_title(col_labels[c], fontsize=7)
        if cell_notes:
            ax.set_xlabel(cell_notes[r][c], fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def write_snapshot_index(samples_dir: str | Path, title: str = "") -> Path:
    """An index.html beside a run's snapshot grids (samples_*.png, recon_*.png), newest
    first, so the run folder can be browsed."""
    import html
    import re
    samples_dir = Path(samples_dir)
    pngs = sorted(samples_dir.glob("*.png"), key=lambda p: p.name, reverse=True)
    items = []
    for p in pngs:
        m = re.search(r"(\d+)", p.stem)
        step = f"step {int(m.group(1))}" if m else p.stem
        items.append(f'<figure><img src="{html.escape(p.name)}" alt="{html.escape(p.stem)}">'
                     f"<figcaption>{html.escape(step)} &middot; {html.escape(p.name)}"
                     "</figcaption></figure>")
    page = ("<!doctype html><meta charset=utf-8><title>{t}</title>"
            "<style>body{{font-family:sans-serif}}img{{image-rendering:pixelated;"
            "max-width:100%;min-width:300px}}figure{{margin:1em 0}}</style>"
            "<h1>{t}</h1><p>{n} snapshot grids, newest first.</p>\n{items}\n").format(
        t=html.escape(title or samples_dir.parent.name), n=len(pngs), items="\n".join(items))
    out = samples_dir / "index.html"
    tmp = out.with_name(".index.html.tmp")
    tmp.write_text(page)
    os.replace(tmp, out)
    return out
