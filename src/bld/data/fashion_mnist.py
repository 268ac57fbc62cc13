"""Fashion-MNIST from its IDX files (Debian's dataset-fashion-mnist package), and the
in-memory dataset that serves it (or any uint8 image tensors).

Imports only `images.py` of this package.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .images import DatasetNotFoundError, check_channels, check_image_size, to_model_range

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)



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



class TensorImageDataset(Dataset):
    """uint8 images held in memory, served as (float image in [-1, 1] (C, H, W), int label).

    images_uint8: (N, H, W) or (N, C, H, W) uint8. Kept at their size unless `image_size` is
    given, then resized per item to (image_size, image_size) with antialiased bicubic
    interpolation (clamped back to [-1, 1]). `channels=3` repeats a greyscale channel,
    `channels=1` averages RGB; None keeps the stored channels.
    """

    def __init__(self, images_uint8: torch.Tensor, labels: torch.Tensor, image_size: int | None = None,
                 channels: int | None = None, classes: Sequence[str] | None = None):
        if images_uint8.dtype != torch.uint8 or images_uint8.dim() not in (3, 4):
            raise ValueError("images_uint8 must be a uint8 tensor of shape (N, H, W) or (N, C, H, W), "
                             f"got {images_uint8.dtype} {tuple(images_uint8.shape)}")
        labels = torch.as_tensor(labels, dtype=torch.long)
        if labels.shape != (images_uint8.shape[0],):
            raise ValueError(f"labels must have shape ({images_uint8.shape[0]},), got {tuple(labels.shape)}")
        check_image_size(image_size)
        check_channels(channels)
        self.images = images_uint8 if images_uint8.dim() == 4 else images_uint8.unsqueeze(1)  # (N, C, H, W)
        self.labels = labels
        self.image_size = image_size
        self.channels = channels if channels is not None else self.images.shape[1]
        if self.channels != self.images.shape[1] and self.images.shape[1] not in (1, 3):
            raise ValueError(f"cannot convert {self.images.shape[1]}-channel images to {self.channels} channels")
        if classes is None:
            n = int(labels.max()) + 1 if len(labels) else 0
            classes = [str(i) for i in range(n)]
        self.classes: tuple[str, ...] = tuple(classes)
        if len(labels) and int(labels.max()) >= len(self.classes):
            raise ValueError(f"label {int(labels.max())} out of range for {len(self.classes)} classes")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        index = range(len(self))[index]  # negative indices; IndexError past the end
        x = to_model_range(self.images[index : index + 1])  # (1, C, H, W)
        if x.shape[1] != self.channels:
            x = x.expand(-1, 3, -1, -1) if self.channels == 3 else x.mean(dim=1, keepdim=True)
        if self.image_size is not None and x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic",
                              align_corners=False, antialias=True).clamp_(-1.0, 1.0)
        return x[0].contiguous(), int(self.labels[index])

