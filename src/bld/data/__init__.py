"""Datasets, one module per source, behind one entry point: `build_dataset`.

Every dataset yields (image, label): a float image in [-1, 1] of shape (C, H, W) and an int
label, and exposes `.classes` and `.num_classes`.

    images.py         what every source shares: decoding rules, splits, errors
    fashion_mnist.py  Fashion-MNIST's IDX files; TensorImageDataset (images held in memory)
    folder.py         ImageFolderDataset: a folder of image files, classes from subfolders
    install.py        shared by installed sources: npm fetch, tarball index, atomic install
    emoji.py          colour emoji from npm: emoji-datasource and OpenMoji
    dicebear.py       cartoon faces drawn by DiceBear (npm, Node.js), one class per style
    shards.py         webdataset-style tar shards: write_shards, ShardDataset

`LimitedDataset` (the first N items of any of them) and `dataset_tensors` (a dataset as two
tensors) are here, beside `build_dataset`.

This module imports the source modules (and re-exports their public names, so
``from bld.data import X`` keeps working); they import only each other, never this module.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .dicebear import (DICEBEAR_BACKGROUNDS, DICEBEAR_DEFAULT_STYLES, DICEBEAR_PER_STYLE,
                       DICEBEAR_STYLES, DICEBEAR_VERSION, default_dicebear_dir,
                       extract_dicebear_tarballs, prepare_dicebear)
from .emoji import (EMOJI_DATASOURCE_VERSION, EMOJI_VENDORS, OPENMOJI_SIZES, OPENMOJI_VERSION,
                    default_emoji_dir, default_openmoji_dir, extract_emoji_tarball,
                    extract_openmoji_tarball, prepare_emoji, prepare_openmoji, rasterise_svg)
from .fashion_mnist import (FASHION_MNIST_CLASSES, FASHION_MNIST_DIRS, TensorImageDataset,
                            find_fashion_mnist, load_fashion_mnist)
from .folder import IMAGE_EXTENSIONS, MANIFEST, ImageFolderDataset
from .images import (SPLITS, DatasetNotFoundError, ImageReadError, check_channels,
                     check_image_size, image_to_tensor, load_image, open_image, pil_to_mode,
                     to_model_range)
from .install import PreparedEmoji, npm_pack
from .shards import ShardDataset, ShardWriteResult, is_shard_folder, write_shards

__all__ = [
    "DATASET_SOURCES", "SPLITS", "build_dataset", "dataset_tensors", "DatasetNotFoundError",
    "ImageReadError", "check_channels", "check_image_size", "image_to_tensor", "load_image", "open_image",
    "pil_to_mode", "to_model_range",
    "FASHION_MNIST_CLASSES", "FASHION_MNIST_DIRS", "TensorImageDataset", "find_fashion_mnist",
    "load_fashion_mnist",
    "IMAGE_EXTENSIONS", "MANIFEST", "ImageFolderDataset",
    "PreparedEmoji", "npm_pack",
    "EMOJI_DATASOURCE_VERSION", "EMOJI_VENDORS", "OPENMOJI_SIZES", "OPENMOJI_VERSION",
    "default_emoji_dir", "default_openmoji_dir", "extract_emoji_tarball",
    "extract_openmoji_tarball", "prepare_emoji", "prepare_openmoji", "rasterise_svg",
    "DICEBEAR_BACKGROUNDS", "DICEBEAR_DEFAULT_STYLES", "DICEBEAR_PER_STYLE", "DICEBEAR_STYLES",
    "DICEBEAR_VERSION", "default_dicebear_dir",
    "extract_dicebear_tarballs", "prepare_dicebear",
    "ShardDataset", "ShardWriteResult", "is_shard_folder", "write_shards", "LimitedDataset",
]

DATASET_SOURCES = ("fashion-mnist", "emoji-twitter", "emoji-google", "openmoji",
                   "dicebear")  # or any folder path


def build_dataset(source: str, split: str | None = "train", image_size: int | None = None,
                  channels: int | None = None, data_dir: str | os.PathLike | None = None) -> Dataset:
    """The dataset named by `source`; every result has `.num_classes` and `.classes`.

    source:
      * "fashion-mnist": the official train (60000) / test (10000) split; data_dir = folder of
        the IDX files. Native 28x28 greyscale unless image_size / channels say otherwise.
      * "emoji-twitter" / "emoji-google": colour emoji, one class per category; data_dir = the
        prepared folder (default ~/.cache/bld/emoji-<vendor>, fetched with npm if missing).
        Native 64x64 RGB. train/test = 90/10 by a hash of each file's relative path.
      * a folder written by `bld shard` (it holds shards.json): its tar shards, read one
        sample at a time (ShardDataset); split must be the one written, or "all".
      * "openmoji": OpenMoji colour emoji rasterised at image_size (64..1024, default 256),
        one class per group; data_dir = the prepared folder (default
        ~/.cache/bld/openmoji-<size>, fetched with npm and rasterised if missing). Same split.
      * "dicebear": cartoon faces, one class per DiceBear style (six by default), drawn at
        image_size (32..1024, default 64); data_dir = the prepared folder (default
        ~/.cache/bld/dicebear6-<size>, fetched with npm and drawn with Node.js if missing).
        The split is its manifest's (1 in 6 seeds of each style is a test image); the train
        split holds each face twice, the second time mirrored (ImageFolderDataset's hflip).
      * anything else: a folder of images (ImageFolderDataset, classes from subfolders), same
        90/10 hash split unless the folder's manifest.csv gives one; image_size is then
        required.
    split: "train", "test", or "all"/None for everything.
    """
    if split not in (None, *SPLITS):
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    check_image_size(image_size)
    check_channels(channels)
    if source == "fashion-mnist":
        parts = ["train", "test"] if split in (None, "all") else [split]
        loaded = [load_fashion_mnist(s, data_dir) for s in parts]
        images = torch.cat([im for im, _ in loaded])
        labels = torch.cat([lb for _, lb in loaded])
        return TensorImageDataset(images, labels, image_size=image_size, channels=channels,
                                  classes=FASHION_MNIST_CLASSES)
    if source.startswith("emoji-") and source.removeprefix("emoji-") in EMOJI_VENDORS:
        vendor = source.removeprefix("emoji-")
        root = Path(data_dir).expanduser() if data_dir is not None else default_emoji_dir(vendor)
        if not (root.is_dir() and any(root.iterdir())):
            prepare_emoji(vendor, root)
        return ImageFolderDataset(root, image_size or 64, channels or 3, labels="subfolders", split=split)
    if is_shard_folder(source):
        return ShardDataset(source, image_size=image_size, channels=channels, split=split)
    if source == "openmoji":
        size = image_size or 256
        root = Path(data_dir).expanduser() if data_dir is not None else default_openmoji_dir(size)
        if not (root.is_dir() and any(root.iterdir())):
            prepare_openmoji(size, root)
        return ImageFolderDataset(root, size, channels or 3, labels="subfolders", split=split)
    if source == "dicebear":
        size = image_size or 64
        root = Path(data_dir).expanduser() if data_dir is not None else default_dicebear_dir(size)
        if not (root.is_dir() and any(root.iterdir())):
            prepare_dicebear(size, root)
        return ImageFolderDataset(root, size, channels or 3, labels="subfolders", split=split,
                                  hflip=split == "train")
    if not Path(source).expanduser().is_dir():
        raise DatasetNotFoundError(
            f"unknown dataset source {source!r}: not one of {', '.join(DATASET_SOURCES)}, and no folder "
            "of that name exists. Pass one of those names or the path of a folder of images.")
    if image_size is None:
        raise ValueError(f"pass image_size for the image folder {source!r} (its images may differ in size)")
    return ImageFolderDataset(source, image_size, channels or 3, labels="subfolders", split=split)


class LimitedDataset(Dataset):
    """The first ``limit`` items of a dataset (keeps ``classes`` / ``num_classes``)."""

    def __init__(self, base: Dataset, limit: int) -> None:
        self.base, self.limit = base, limit
        self.classes = getattr(base, "classes", ())
        self.num_classes = getattr(base, "num_classes", 0)

    def __len__(self) -> int:
        return self.limit

    def __getitem__(self, i: int):
        if not 0 <= i < self.limit:
            raise IndexError(i)
        return self.base[i]

def dataset_tensors(ds, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All (or the first ``limit``) items of an image dataset as (images, labels) tensors."""
    images = getattr(ds, "images", None)
    n = len(ds) if limit is None else min(limit, len(ds))
    if images is not None and images.dtype == torch.uint8 and getattr(ds, "image_size", None) in (
            None, images.shape[-1]) and getattr(ds, "channels", images.shape[1]) == images.shape[1]:
        return to_model_range(images[:n]), torch.as_tensor(ds.labels[:n]).long()
    items = [ds[i] for i in range(n)]
    return torch.stack([a for a, _ in items]), torch.tensor([b for _, b in items])
