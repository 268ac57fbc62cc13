"""Datasets: Fashion-MNIST from its Debian location, and folders of images."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is missing; the message says how to get it."""


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    if (magic >> 8) != 0x08:  # 0x08 = unsigned byte
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (magic {magic:#x})")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def find_fashion_mnist(root: str | os.PathLike | None = None) -> Path:
    """Folder holding the four Fashion-MNIST IDX files (gzipped or not)."""
    candidates = [Path(root)] if root is not None else [
        *( [Path(os.environ["BLD_FASHION_MNIST"])] if "BLD_FASHION_MNIST" in os.environ else [] ),
        *map(Path, FASHION_MNIST_DIRS),
    ]
    for c in candidates:
        if (c / "train-images-idx3-ubyte.gz").exists() or (c / "train-images-idx3-ubyte").exists():
            return c
    raise DatasetNotFoundError(
        f"Fashion-MNIST not found in {', '.join(str(c) for c in candidates)}. Install it with "
        "`sudo apt-get update && sudo apt-get install dataset-fashion-mnist` (files land in "
        "/usr/share/datasets/fashion-mnist), or point --data-dir / BLD_FASHION_MNIST at a folder "
        "holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz "
        "and t10k-labels-idx1-ubyte.gz."
    )


def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST as (images uint8 (N, 28, 28), labels int64 (N,)); split 'train' or 'test'."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = find_fashion_mnist(root)
    prefix = "train" if split == "train" else "t10k"

    def pick(name: str) -> Path:
        p = folder / f"{name}.gz"
        return p if p.exists() else folder / name

    images = _read_idx(pick(f"{prefix}-images-idx3-ubyte"))
    labels = _read_idx(pick(f"{prefix}-labels-idx1-ubyte"))
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def to_model_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, H, W) or (N, C, H, W) -> float in [-1, 1], shape (N, C, H, W)."""
    x = images_uint8.float() / 127.5 - 1.0
    return x.unsqueeze(1) if x.dim() == 3 else x
