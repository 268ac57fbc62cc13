"""Folders of image files: the scan for unreadable files, the split (a manifest's, else a
hash), classes from subfolders, mirrored copies.

Imports only `images.py` of this package.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import struct
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from .images import SPLITS, DatasetNotFoundError, check_channels, check_image_size, load_image

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
# A folder's optional list of its images, one row each; its `path` (relative to the folder,
# with /) and `split` (train or test) columns fix the split. Other columns are the
# preparer's (second labels, seeds) and are not read here.
MANIFEST = "manifest.csv"

# What a broken or unsupported file raises while decoding (UnidentifiedImageError is an OSError;
# PIL raises SyntaxError for some malformed PNG chunks).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)


def _hash_fraction(relative_path: str) -> float:
    """Stable number in [0, 1) from a path string (same on every machine and Python run)."""
    digest = hashlib.sha1(relative_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def read_manifest_splits(root: Path) -> dict[str, str]:
    """{relative path: "train" | "test"} from root/manifest.csv; empty if there is none or
    it has no `path` and `split` columns."""
    path = root / MANIFEST
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not {"path", "split"} <= set(reader.fieldnames or ()):
            return {}
        splits = {}
        for row in reader:
            if row["split"] not in ("train", "test"):
                raise ValueError(f"{path} line {reader.line_num}: split must be train or test, "
                                 f"got {row['split']!r}; fix the file or delete it to split by hash")
            splits[row["path"]] = row["split"]
    return splits


def _in_split(relative_path: str, split: str | None, test_fraction: float,
              listed: dict[str, str] | None = None) -> bool:
    """Whether a file belongs to `split`: the manifest's word where it lists the file, else
    the hash of its path."""
    if split in (None, "all"):
        return True
    if listed and relative_path in listed:
        return listed[relative_path] == split
    is_test = _hash_fraction(relative_path) < test_fraction
    return is_test if split == "test" else not is_test



class ImageFolderDataset(Dataset):
    """Image files under `root` (searched recursively), as (float (C, S, S) in [-1, 1], int label).

    Accepted files: .png .jpg .jpeg .webp, any letter case; names starting with '.' are skipped.

    Labels:
      * labels="subfolders": each first-level subfolder of `root` is a class (`classes` sorted
        by name, label = index). Every image must then sit inside a subfolder; loose images
        directly in `root` raise ValueError. If `root` has no image in any subfolder (all images
        loose), the folder is unlabelled, as with labels="none".
      * labels="none", or unlabelled as above: every label is 0, `classes == ()` and
        `num_classes == 0` (0 means "no class information").

    split: None/"all" keeps every file; "train"/"test" keep a deterministic share chosen by a
    hash of the path relative to `root` (`test_fraction` go to "test"), so the two never overlap
    and the assignment does not change when other files are added. Where `root` holds a
    manifest.csv with `path` and `split` columns (as the prepared sources write), its split
    decides for every file it lists. Classes are found over all files before splitting, so
    labels agree between splits.

    hflip=True holds every file twice, the second time mirrored left to right: index
    len(files) + i is file i mirrored (`files` and `labels` stay one entry per file). For
    training on images whose mirror is as plausible as the image (faces, not text).

    A file that fails to decode is logged once (warning), counted in `skipped` and replaced by
    the next readable index (wrapping round), so an epoch never crashes on one bad file. With
    DataLoader workers each worker keeps its own count; `skipped` in the main process only
    counts what was loaded there.
    """

    def __init__(self, root: str | os.PathLike, image_size: int, channels: int = 3,
                 labels: str = "subfolders", split: str | None = None, test_fraction: float = 0.1,
                 hflip: bool = False):
        check_image_size(image_size)
        if image_size is None:
            raise ValueError("ImageFolderDataset needs an image_size (pixels per side)")
        check_channels(channels)
        if labels not in ("subfolders", "none"):
            raise ValueError(f"labels must be 'subfolders' or 'none', got {labels!r}")
        if split not in (None, *SPLITS):
            raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        self.root = Path(root).expanduser()
        self.image_size, self.channels = image_size, channels
        accepted = " ".join(IMAGE_EXTENSIONS)
        if not self.root.is_dir():
            raise DatasetNotFoundError(
                f"image folder {self.root} does not exist (or is not a folder). Point it at a folder "
                f"holding images ({accepted}, searched recursively, one subfolder per class).")
        files = sorted(
            p.relative_to(self.root) for p in self.root.rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(self.root).parts))
        if not files:
            raise DatasetNotFoundError(
                f"no images found in {self.root} (searched recursively for {accepted}, any letter "
                "case, skipping hidden files). Put image files there, one subfolder per class.")
        loose = [f for f in files if len(f.parts) == 1]
        if labels == "subfolders" and len(loose) < len(files):
            if loose:
                raise ValueError(
                    f"{self.root} has class subfolders but also {len(loose)} image(s) directly inside "
                    f"it (e.g. {loose[0]}), which would have no class. Move them into a subfolder, or "
                    "pass labels='none' to ignore classes.")
            self.classes: tuple[str, ...] = tuple(sorted({f.parts[0] for f in files}))
            index = {c: i for i, c in enumerate(self.classes)}
            file_labels = [index[f.parts[0]] for f in files]
        else:
            self.classes = ()
            file_labels = [0] * len(files)
        listed = read_manifest_splits(self.root) if split in ("train", "test") else {}
        keep = [i for i, f in enumerate(files) if _in_split(f.as_posix(), split, test_fraction, listed)]
        if not keep:
            how = (f"as {MANIFEST} says" if listed else
                   f"{test_fraction:.0%} go to 'test', by a hash of each path")
            raise ValueError(
                f"{self.root} has {len(files)} images but none fell into split {split!r} "
                f"({how}). Add images or use split=None.")
        self.files: list[Path] = [files[i] for i in keep]
        self.labels: list[int] = [file_labels[i] for i in keep]
        self.split, self.hflip = split, hflip
        self._bad: set[int] = set()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def scan(self) -> int:
        """Check every file once before training (header and checksums, no full decode):
        empty, unreadable, truncated and too-large (decompression bomb) files are marked
        skipped and logged in one line. Returns how many were skipped; if none is readable,
        a ValueError (so a run stops before it makes its folder)."""
        import warnings
        bad: dict[str, list[str]] = {}
        for i, rel in enumerate(self.files):
            path = self.root / rel
            try:
                if path.stat().st_size == 0:
                    raise ValueError("empty file")
                with warnings.catch_warnings():
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    with Image.open(path) as img:
                        img.verify()  # reads the whole file: truncation, bad checksums
            except (*_DECODE_ERRORS, Image.DecompressionBombWarning) as e:
                self._bad.add(i)
                bad.setdefault(type(e).__name__, []).append(str(rel))
        if bad:
            kinds = ", ".join(f"{len(v)} {k} (e.g. {v[0]})" for k, v in sorted(bad.items()))
            logger.warning("%s: skipping %d of %d images that cannot be read: %s",
                           self.root, len(self._bad), len(self.files), kinds)
        if len(self._bad) == len(self.files):
            raise ValueError(f"none of the {len(self.files)} images in {self.root} can be read "
                             f"({kinds}); point --data at a folder of PNG / JPEG / WebP images")
        return len(self._bad)

    @property
    def skipped(self) -> int:
        """How many distinct unreadable files this process has met (and replaced) so far."""
        return len(self._bad)

    @property
    def unreadable(self) -> frozenset[int]:
        """Indices of the items found unreadable so far (by scan() or when read); with hflip,
        a bad file's mirrored index too."""
        n = len(self.files)
        return frozenset(self._bad | ({i + n for i in self._bad} if self.hflip else set()))

    def __len__(self) -> int:
        return len(self.files) * (2 if self.hflip else 1)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        n, total = len(self.files), len(self)
        if not -total <= index < total:
            raise IndexError(f"index {index} out of range for {total} images")
        index %= total
        mirrored, index = index >= n, index % n
        for offset in range(n):
            i = (index + offset) % n
            if i in self._bad:
                continue
            path = self.root / self.files[i]
            try:
                x = load_image(path, self.image_size, self.channels)
                return (x.flip(-1) if mirrored else x), self.labels[i]  # (C, H, W), W mirrored
            except _DECODE_ERRORS as e:
                self._bad.add(i)
                logger.warning("skipping unreadable image %s (%s: %s); %d skipped so far",
                               path, type(e).__name__, e, len(self._bad))
        raise RuntimeError(f"none of the {n} images in {self.root} could be read; see the warnings above")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, n={len(self)}, image_size={self.image_size}, "
                f"channels={self.channels}, classes={len(self.classes)}, split={self.split!r}"
                f"{', hflip=True' if self.hflip else ''})")

