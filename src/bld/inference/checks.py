"""The pipeline's checks of what a caller passes in: whole numbers, finite numbers, images
and masks. Each answers a bad value with a one-line ValueError that says what to pass.

Imports no bld module.
"""

from __future__ import annotations

import math
import numbers

import torch

# PIL modes an image may come in (others, such as LAB, have no conversion to RGB)
IMAGE_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "I", "F",
               "I;16", "I;16B", "I;16L")


def whole_number(value, what: str) -> int:
    """``value`` as an int if it is a whole number (3 or 3.0; not True, 2.5 or '3')."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) \
            and math.isfinite(value) and float(value).is_integer():
        return int(value)
    raise ValueError(f"{what} must be a whole number, got {value!r}")


def finite(value, what: str) -> float:
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ValueError(f"{what} must be a finite number, got {value!r}")


def check_images(images, one: bool = False) -> None:
    """One-line ValueErrors for what `to_tensor` cannot take: a path, an image mode PIL cannot
    turn into RGB, a uint8 array of the wrong shape, or a tensor outside [-1, 1]."""
    import numpy as np
    from PIL import Image
    items = [images] if one or not isinstance(images, (list, tuple)) else list(images)
    for im in items:
        if isinstance(im, Image.Image):
            if im.mode not in IMAGE_MODES:
                raise ValueError(f"an image in mode {im.mode} cannot be used; convert it to "
                                 "RGB or L first (image.convert('RGB'))")
        elif isinstance(im, np.ndarray) and im.dtype == np.uint8:
            if not (im.ndim == 2 or (im.ndim == 3 and im.shape[2] in (1, 3, 4))):
                raise ValueError("a uint8 image array must be (H, W), (H, W, 3) or (H, W, 4), "
                                 f"got shape {im.shape}")
        elif isinstance(im, (np.ndarray, torch.Tensor)):
            if (im.dtype.kind not in "iuf") if isinstance(im, np.ndarray) else \
                    (im.dtype == torch.bool or im.is_complex()):
                raise ValueError(f"image tensors must be float in [-1, 1], got dtype {im.dtype}")
            x = torch.as_tensor(im).float()
            if x.numel() and not (bool(x.isfinite().all()) and x.min() >= -1 and x.max() <= 1):
                raise ValueError("image tensors must hold values in [-1, 1] (x / 127.5 - 1 for "
                                 f"pixels in 0..255), got {x.min().item():g}..{x.max().item():g}")
        else:
            raise ValueError("images must be PIL images, uint8 arrays or tensors in [-1, 1], "
                             f"got {type(im).__name__} (open files with PIL.Image.open)")


def check_mask(mask, image) -> None:
    """A mask must be 2-D (H, W), boolean or numeric, and the image's size."""
    import numpy as np
    from PIL import Image
    if isinstance(mask, Image.Image):
        size = mask.size[::-1]
    else:
        if not isinstance(mask, (np.ndarray, torch.Tensor)):
            raise ValueError("a mask must be a PIL image, an array or a tensor (H, W), got "
                             f"{type(mask).__name__}")
        m = torch.as_tensor(mask) if isinstance(mask, torch.Tensor) or mask.dtype.kind in "biuf" \
            else None
        if m is None or m.is_complex():
            raise ValueError(f"a mask must be boolean or numeric, got dtype {mask.dtype}")
        if m.dim() != 2:
            raise ValueError(f"a mask must be 2-D (H, W), got shape {tuple(m.shape)}")
        if m.is_floating_point() and not bool(m.isfinite().all()):
            raise ValueError("a mask must not hold NaN or infinity")
        size = tuple(m.shape)
    if isinstance(image, Image.Image):
        image_size = image.size[::-1]
    elif isinstance(image, (np.ndarray, torch.Tensor)):
        image_size = tuple(image.shape[:2] if isinstance(image, np.ndarray)
                           and image.dtype == np.uint8 else image.shape[-2:])
    else:
        return
    if tuple(size) != tuple(image_size):
        raise ValueError(f"the mask is {size[1]}x{size[0]} but the image is {image_size[1]}x"
                         f"{image_size[0]}; make them the same size")
