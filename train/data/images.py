"""Turning user images (files or `datasets` rows) into the uint8 RGB arrays the tokenizer takes.

Every image goes through `to_rgb`: grayscale, palette and RGBA images are
converted (RGBA composited over white), square images of another size are
resized, and anything that cannot be used (unreadable, not square) raises an
`ImageError` that names the file or row.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


class ImageError(ValueError):
    """An image that cannot be used; the message names it."""


def to_rgb(img: Image.Image, resolution: int, name: str) -> np.ndarray:
    """A PIL image as uint8 (resolution, resolution, 3); converts or refuses, naming `name`."""
    if img.mode != "RGB":
        mode = img.mode
        if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, rgba).convert("RGB")
        else:
            img = img.convert("RGB")  # L, P, CMYK, I;16 ... -> RGB
        log.info("%s: converted from %s to RGB", name, mode)
    w, h = img.size
    if w != h:
        raise ImageError(
            f"{name}: image is {w}x{h}, not square; crop it to a square first "
            f"(the tokenizer takes {resolution}x{resolution})"
        )
    if w != resolution:
        log.info("%s: resized from %dx%d to %dx%d", name, w, h, resolution, resolution)
        img = img.resize((resolution, resolution), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def load_image_file(path: str | Path, resolution: int) -> np.ndarray:
    """Read one image file as uint8 (resolution, resolution, 3), or raise ImageError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img, resolution, str(path))
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ImageError(f"{path}: cannot read image ({e})") from e


def dataset_images(ds, resolution: int, column: str = "image", progress: bool = True) -> torch.Tensor:
    """All images of a `datasets.Dataset` column as one uint8 tensor (N, H, W, 3).

    Holding the whole set in memory suits the tokenizer's data (tens of
    thousands of small images); large real data sets are pre-tokenized instead.
    """
    out = np.empty((len(ds), resolution, resolution, 3), dtype=np.uint8)
    for i, row in enumerate(tqdm(ds, desc="loading images", disable=not progress, leave=False)):
        out[i] = to_rgb(row[column], resolution, f"row {i}")
    return torch.from_numpy(out)
