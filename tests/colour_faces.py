"""A small DiceBear-like colour folder for the benchmark tests (test code: drawn shapes, one
colour and size range per class, so a classifier and an autoencoder have something to learn)."""

from __future__ import annotations

import csv
from pathlib import Path

import torch


def write_colour_faces(root: Path, classes: int = 3, per_class: int = 16) -> None:
    """A DiceBear-like folder: one subfolder per class, a manifest with 1 in 4 as test."""
    from PIL import Image, ImageDraw
    g = torch.Generator().manual_seed(0)
    rows = []
    for c in range(classes):
        (root / f"style{c}").mkdir(parents=True)
        for i in range(per_class):
            bg = tuple(int(v) for v in torch.randint(0, 256, (3,), generator=g))
            img = Image.new("RGB", (64, 64), bg)
            r = 12 + 6 * c + int(torch.randint(0, 6, (1,), generator=g))
            ImageDraw.Draw(img).ellipse((32 - r, 32 - r, 32 + r, 32 + r),
                                        fill=(255 * (c == 0), 255 * (c == 1), 255 * (c == 2)))
            rel = f"style{c}/style{c}-{i:04d}.png"
            img.save(root / rel)
            rows.append({"path": rel, "class": f"style{c}",
                         "split": "test" if i % 4 == 0 else "train"})
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "class", "split"])
        w.writeheader()
        w.writerows(rows)
