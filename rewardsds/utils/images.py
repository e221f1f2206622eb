"""Reading input images: an RGB file as a [1, 3, H, W] tensor, fitted to the square size a prior encodes.

Used wherever a run starts from a user's image (``representation.init_image`` of the latent image, DDS's
``loss.image``), so both read and resize it the same way and name the same kind of problem.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from rewardsds.errors import ConfigError


def load_image(path: str | Path, key: str = "representation.init_image") -> Tensor:
    """Read an RGB image file.

    Args:
        path: a PNG or JPEG file (``~`` expanded); other modes are converted to RGB.
        key: the config key that named the file, for error messages.

    Returns:
        [1, 3, H, W] float32 in [0, 1]. A missing or unreadable file is a :class:`ConfigError` naming ``key``.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(key, str(path), "is not a file", "give the path of an existing RGB image (PNG/JPEG)")
    try:
        with Image.open(p) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as err:
        raise ConfigError(key, str(path), f"could not be read as an image ({err})", "give a PNG or JPEG file") from err
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def fit_image(image: Tensor, size: int, key: str = "representation.init_image") -> Tensor:
    """Resize an image to ``size x size``: a square one is resized; others are centre-cropped first, with a warning.

    Args:
        image: [1, 3, H, W] in [0, 1].
        size: the side the result must have (the prior's image size).
        key: the config key that named the image, for warnings and errors.

    Returns:
        [1, 3, size, size] in [0, 1] (bicubic with antialiasing; the input itself when it already has that size).
    """
    _, _, h, w = image.shape
    if min(h, w) < 8:
        raise ConfigError(key, f"{w}x{h}", "is too small to encode", f"use an image of at least {size}x{size} pixels")
    if (h, w) == (size, size):
        return image
    if h != w:
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        image = image[:, :, top : top + s, left : left + s]
        warnings.warn(f"{key}: {w}x{h} image centre-cropped to {s}x{s} and resized to {size}x{size}", stacklevel=2)
    elif h != size:
        warnings.warn(f"{key}: {w}x{h} image resized to {size}x{size}", stacklevel=2)
    return F.interpolate(image, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
