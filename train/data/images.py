"""Turning user images (files or `datasets` rows) into the uint8 RGB arrays the tokenizer takes.

Every image goes through `to_rgb`: grayscale, palette and RGBA images are
converted (RGBA composited over white), the shorter side is centre-cropped to a
square and the square resized to the tokenizer's resolution. An image that
cannot be read raises an `ImageError` that names the file (or the row, when the
image came as bytes without a file name); `dataset_images` skips such images,
counting and naming them, rather than stopping a long run on one bad file.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from train.errors import ImageError

log = logging.getLogger(__name__)


# What PIL raises for truncated, corrupt or hostile files (DecompressionBombError is no OSError)
_READ_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def to_rgb(img: Image.Image, resolution: int, name: str) -> np.ndarray:
    """A PIL image as uint8 (resolution, resolution, 3): converted to RGB, centre-cropped, resized."""
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
        # the centre keeps the subject of most photos; padding would teach the tokenizer borders
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
        log.info("%s: centre-cropped from %dx%d to %dx%d", name, w, h, side, side)
    if img.size[0] != resolution:
        log.info("%s: resized from %dx%d to %dx%d", name, *img.size, resolution, resolution)
        img = img.resize((resolution, resolution), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def image_name(value: Any, index: int) -> str:
    """How to name a `datasets` image value in messages: its file path when known, else its row."""
    path = value.get("path") if isinstance(value, dict) else value if isinstance(value, (str, Path)) else None
    return str(path) if path else f"row {index}"


def decode_image(value: Any, resolution: int, name: str) -> np.ndarray:
    """One image as uint8 (resolution, resolution, 3), or ImageError naming `name`.

    `value` is what a `datasets` image column holds: a PIL image (decoded
    column), a {"bytes", "path"} dict (`datasets.Image(decode=False)`), a file
    path, or encoded bytes.
    """
    try:
        if isinstance(value, Image.Image):
            return to_rgb(value, resolution, name)
        if isinstance(value, dict):  # bytes win: parquet / Arrow rows keep only the file's name as path
            data, path = value.get("bytes"), value.get("path")
            source = io.BytesIO(data) if data is not None else path
        elif isinstance(value, (bytes, bytearray)):
            source = io.BytesIO(value)
        else:
            source = value
        if source is None:
            raise ImageError(f"{name}: the row holds no image")
        with Image.open(source) as img:
            img.load()  # decode now, inside the try: Image.open only reads the header
            return to_rgb(img, resolution, name)
    except ImageError:
        raise
    except _READ_ERRORS as e:
        raise ImageError(f"{name}: cannot read image ({e})") from e


def load_image_file(path: str | Path, resolution: int) -> np.ndarray:
    """Read one image file as uint8 (resolution, resolution, 3), or raise ImageError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    return decode_image(str(path), resolution, str(path))


def undecoded(ds: Any, column: str) -> Any:
    """`ds` with an image column left encoded, so that a corrupt file is ours to skip, not a crash in `datasets`."""
    import datasets

    feature = ds.features[column]
    if isinstance(feature, datasets.Image) and feature.decode:
        return ds.cast_column(column, datasets.Image(decode=False))
    return ds


def decode_rows(ds: Any, resolution: int, column: str = "image", progress: bool = True,
                rows: list[int] | None = None) -> tuple[torch.Tensor, list[int]]:
    """The readable images of a `datasets.Dataset` column (N, H, W, 3) uint8, and the rows they came from.

    `rows` limits the decoding to those row indices (default: every row); the
    returned indices are the ones of `ds`, in order, so that another column (the
    captions) can be taken from the same rows. Unreadable images are skipped as
    in `dataset_images`, each named by its file path or its row of `ds`.
    """
    values = undecoded(ds, column).select_columns([column])
    if rows is not None:
        values = values.select(rows)
    index = list(rows) if rows is not None else range(len(values))
    out = np.empty((len(values), resolution, resolution, 3), dtype=np.uint8)
    kept: list[int] = []
    for i, row in zip(index, tqdm(values, desc="loading images", disable=not progress, leave=False)):
        try:
            out[len(kept)] = decode_image(row[column], resolution, image_name(row[column], i))
        except ImageError as e:
            log.warning("loading images: skipped %s", e)
            continue
        kept.append(i)
    if len(kept) < len(values):
        log.warning("loading images: %d of %d images skipped as unreadable (named above)", len(values) - len(kept),
                    len(values))
    if not kept:
        raise ImageError(f"none of the {len(values)} images could be read (see the warnings above)")
    return torch.from_numpy(out[:len(kept)]), kept


def dataset_images(ds: Any, resolution: int, column: str = "image", progress: bool = True) -> torch.Tensor:
    """The readable images of a `datasets.Dataset` column as one uint8 tensor (N, H, W, 3).

    Unreadable images are skipped, each named in a warning, and counted in a
    last one. Holding the whole set in memory suits the tokenizer's data (tens
    of thousands of small images); large real data sets are pre-tokenized instead.
    `decode_rows` also returns which rows the images came from.
    """
    return decode_rows(ds, resolution, column, progress)[0]
