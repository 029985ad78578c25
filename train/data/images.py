"""Turning user images (files or `datasets` rows) into the uint8 RGB arrays the tokenizer takes.

Every image goes through `to_rgb`: turned upright as its EXIF orientation says,
converted to 8-bit RGB whatever its mode (16-bit and float grey scaled by their
depth, alpha composited over white), the shorter side centre-cropped to a
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
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from train.errors import ImageError

log = logging.getLogger(__name__)


# What PIL raises for truncated, corrupt or hostile files (DecompressionBombError is no OSError)
_READ_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


# One-band modes of more than 8 bits a sample: PIL's convert("L"/"RGB") clips them at 255 instead of scaling,
# which turns a 16-bit grey photo almost all white (Pillow issue #3011)
_DEEP_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def upright(img: Image.Image, name: str) -> Image.Image:
    """`img` turned as its EXIF orientation tag says (as phones and viewers show it), else `img` itself."""
    try:
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
        if orientation == 1:
            return img  # no copy: the common case stays free
        turned = ImageOps.exif_transpose(img)  # drops the tag, so turning twice (`datasets` also does) is safe
    except Exception as e:  # struct.error, KeyError, ... from a broken EXIF block: the pixels are still good
        log.warning("%s: EXIF orientation unreadable (%s); image used as stored", name, e)
        return img
    log.info("%s: turned upright by its EXIF orientation %s", name, orientation)
    return turned


def grey_bits(img: Image.Image, values: np.ndarray) -> int:
    """How many bits the integer grey `values` of `img` (mode I;16* or I) use: what maps to 0..255 by a shift."""
    if img.mode.startswith("I;16"):
        return 16
    # Mode "I" (signed 32-bit) does not say: older Pillow opens a 16-bit grey PNG as "I" (this one, 13.0, as
    # "I;16"), and `datasets` stores an int32/int64 array of 8-bit values as an "I" TIFF; so read the data
    if img.format == "PNG":
        return 16  # PNG holds at most 16 bits a sample
    top = int(values.max()) if values.size else 0
    return 8 if top <= 0xFF else 16 if top <= 0xFFFF else 31  # 31: the non-negative range of "I"


def deep_grey_to_8bit(img: Image.Image) -> Image.Image:
    """A grey image of 16-bit, 32-bit int or float samples (`_DEEP_GREY`) as "L", or "LA" if a grey is transparent.

    Hand-written because PIL clips these to 255 rather than scaling them: integers are shifted down by their bit
    depth (`grey_bits`; 16-bit: value >> 8), floats taken as 0..1 when none exceeds 1, else as 0..255, and clipped.
    """
    values = np.asarray(img)
    if img.mode == "F":
        v = np.nan_to_num(values.astype(np.float64))  # NaN -> 0, +-inf -> clipped below
        scale = 255.0 if v.size and v.max() <= 1.0 else 1.0
        grey = np.clip(np.rint(v * scale), 0, 255).astype(np.uint8)
    else:
        v = values.astype(np.int64)
        bits = grey_bits(img, v)
        grey = (np.clip(v, 0, (1 << bits) - 1) >> (bits - 8)).astype(np.uint8)
    key = img.info.get("transparency")  # a PNG's tRNS: the one (16-bit) grey value that is transparent
    if isinstance(key, (int, float)) and not isinstance(key, bool):
        alpha = np.where(values == key, 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([grey, alpha], axis=-1), "LA")
    return Image.fromarray(grey, "L")


def has_alpha(img: Image.Image) -> bool:
    """Whether `img` holds any transparency (alpha band, alpha palette, or a transparent colour in its info).

    `Image.has_transparency_data` from Pillow 10.1; the project allows 10.0.
    """
    if img.mode in ("LA", "La", "PA", "RGBA", "RGBa") or "transparency" in img.info:
        return True
    return img.mode == "P" and img.palette is not None and img.palette.mode.endswith("A")


def to_rgb(img: Image.Image, resolution: int | None, name: str) -> np.ndarray:
    """A PIL image of any mode as uint8 (resolution, resolution, 3): upright, RGB, centre-cropped, resized
    (resolution None: at its own size, (H, W, 3), neither cropped nor resized).

    The image is first turned as its EXIF orientation says. 16-bit, 32-bit and float grey (I;16*, I, F) are
    scaled to 8 bits by their depth (`deep_grey_to_8bit`), not clipped. Transparency (RGBA, LA, PA, a palette or
    grey with transparent entries) is composited onto a white background rather than dropped, so that what was
    invisible does not come back as whatever colour it happened to hold. Every other mode (L, 1, P, CMYK,
    YCbCr ...) goes through PIL's convert("RGB"), which is exact for them; RGB is used as it is.
    """
    img = upright(img, name)
    mode = img.mode
    if mode in _DEEP_GREY:
        img = deep_grey_to_8bit(img)
    if has_alpha(img):
        rgba = img.convert("RGBA")  # applies a palette's or a transparent colour's alpha
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
        log.info("%s: converted from %s to RGB over white", name, mode)
    elif img.mode != "RGB":
        img = img.convert("RGB")  # L, 1, P, CMYK (naive, no ICC profile), YCbCr ... -> RGB
        log.info("%s: converted from %s to RGB", name, mode)
    if resolution is None:
        return np.asarray(img, dtype=np.uint8)
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


def decode_image(value: Any, resolution: int | None, name: str) -> np.ndarray:
    """One image as uint8 (resolution, resolution, 3) (None: at its own size, to_rgb), or ImageError naming `name`.

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


def load_image_file(path: str | Path, resolution: int | None) -> np.ndarray:
    """Read one image file as uint8 (resolution, resolution, 3) (None: at its own size), or raise ImageError naming
    it."""
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
