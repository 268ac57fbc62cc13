"""What every data source shares: the model's image range, the decoding rules, the splits
and the errors.

Images reach a model as float tensors in [-1, 1] of shape (C, H, W). A file is decoded the
same way wherever it comes from (a folder, a shard, an upload): EXIF orientation applied,
any mode flattened to greyscale or RGB (transparency on white), the shorter side resized
(Lanczos when shrinking, bicubic when growing), the centre cropped. Imports no bld module.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

SPLITS = ("train", "test", "all")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is missing; the message says how to get it."""



def to_model_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, H, W) or (N, C, H, W) -> float in [-1, 1], shape (N, C, H, W)."""
    x = images_uint8.float() / 127.5 - 1.0
    return x.unsqueeze(1) if x.dim() == 3 else x



def check_channels(channels: int | None) -> None:
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 (greyscale) or 3 (RGB), got {channels!r}")


def check_image_size(image_size: int | None) -> None:
    if image_size is not None and (not isinstance(image_size, int) or image_size <= 0):
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")



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

