"""Every image mode a user's own data may hold comes out as the uint8 RGB its pixels mean.

Each case builds a small image of known values in one mode, saves it in a format that keeps that mode (or passes
it in memory, as a decoded `datasets` column does, where no format can), loads it through the own-data path
(`load_image_file` / `decode_image`) and compares with a reference computed here with numpy from the known values.
The images are `RES` pixels square, so no resizing blurs the comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image, ImageOps

from train.data.images import decode_image, load_image_file
from train.errors import ImageError

RES = 8
rng = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def fresh_rng():
    """The same known values whichever tests run, and in whatever order."""
    global rng
    rng = np.random.default_rng(0)


@dataclass
class Case:
    image: Image.Image
    expected: np.ndarray  # (RES, RES, 3) uint8, from numpy arithmetic on the known values
    fmt: str | None  # file format to save as; None: pass the image in memory to decode_image
    opens_as: str = ""  # the mode the saved file reopens in (default: the image's own)
    save: dict[str, Any] = field(default_factory=dict)
    tolerance: int = 0


def grey3(grey: np.ndarray) -> np.ndarray:
    """(H, W) uint8 grey -> (H, W, 3)."""
    return np.repeat(grey[..., None], 3, axis=-1).astype(np.uint8)


def over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Straight-alpha colours composited onto white."""
    a = alpha[..., None].astype(np.float64) / 255
    return np.rint(rgb * a + 255 * (1 - a)).astype(np.uint8)


def u16() -> np.ndarray:
    v = rng.integers(0, 65536, (RES, RES), dtype=np.uint16)
    v[0, :4] = [0, 255, 65535, 40000]  # black, below one 8-bit step, white, the 98%-white bug's range
    return v


def case_i16() -> Case:
    v = u16()
    return Case(Image.fromarray(v), grey3(v >> 8), "PNG")  # a 16-bit grey PNG opens as I;16


def case_i16b() -> Case:
    v = u16()
    return Case(Image.fromarray(v.astype(">u2")), grey3(v >> 8), "TIFF")


def case_i16l() -> Case:
    v = u16()
    img = Image.frombytes("I;16L", (RES, RES), v.astype("<u2").tobytes())
    return Case(img, grey3(v >> 8), None)  # in memory: a TIFF of it reopens as I;16


def case_i16_transparent() -> Case:
    v = u16()
    key = int(v[3, 3])
    expected = grey3(v >> 8)
    expected[v == key] = 255  # the PNG's tRNS grey becomes the white background
    return Case(Image.fromarray(v), expected, "PNG", opens_as="I;16", save={"transparency": key})


def case_i_16bit_tiff() -> Case:
    v = u16().astype(np.int32)
    return Case(Image.fromarray(v), grey3(v >> 8), "TIFF")


def case_i_16bit_memory() -> Case:
    v = u16().astype(np.int32)
    return Case(Image.fromarray(v), grey3(v >> 8), None)


def case_i_8bit_values() -> Case:
    # what `datasets` makes of an int32/int64 grey array of 0..255: an "I" TIFF of 8-bit data, kept as it is
    v = rng.integers(0, 256, (RES, RES)).astype(np.int32)
    return Case(Image.fromarray(v), grey3(v), "TIFF")


def case_i_16bit_png_of_older_pillow() -> Case:
    # older Pillow opens a 16-bit grey PNG as "I": dark 16-bit values stay dark, not stretched as 8-bit data
    v = rng.integers(0, 256, (RES, RES)).astype(np.int32)
    img = Image.fromarray(v)
    img.format = "PNG"
    return Case(img, grey3(v >> 8), None)


def case_f_unit() -> Case:
    v = rng.random((RES, RES), dtype=np.float32)
    v[0, :3] = [0.0, 1.0, 0.5]
    return Case(Image.fromarray(v), grey3(np.rint(v.astype(np.float64) * 255)), "TIFF")


def case_f_255() -> Case:
    v = rng.uniform(-20, 280, (RES, RES)).astype(np.float32)
    v[0, 0] = 200.0  # at least one above 1: read as 0..255
    return Case(Image.fromarray(v), grey3(np.clip(np.rint(v.astype(np.float64)), 0, 255)), "TIFF")


def case_cmyk() -> Case:
    cmyk = rng.integers(0, 256, (RES, RES, 4), dtype=np.uint8)
    c, k = cmyk[..., :3].astype(np.float64), cmyk[..., 3:].astype(np.float64)
    expected = np.rint((255 - c) * (255 - k) / 255).astype(np.uint8)
    return Case(Image.fromarray(cmyk, "CMYK"), expected, "TIFF", tolerance=1)


def palette_image() -> tuple[Image.Image, np.ndarray, np.ndarray]:
    colours = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    index = rng.integers(0, 16, (RES, RES), dtype=np.uint8)
    img = Image.fromarray(index, "P")
    img.putpalette(colours.tobytes())
    return img, colours, index


def case_p() -> Case:
    img, colours, index = palette_image()
    return Case(img, colours[index], "PNG")


def case_p_transparent_index() -> Case:
    img, colours, index = palette_image()
    expected = colours[index].copy()
    expected[index == 5] = 255
    return Case(img, expected, "PNG", save={"transparency": 5})


def case_p_alpha_per_entry() -> Case:
    img, colours, index = palette_image()
    alpha = rng.integers(0, 256, 16, dtype=np.uint8)
    return Case(img, over_white(colours[index], alpha[index]), "PNG", save={"transparency": alpha.tobytes()},
                tolerance=1)


def case_pa() -> Case:
    img, colours, index = palette_image()
    alpha = rng.integers(0, 256, (RES, RES), dtype=np.uint8)
    pa = Image.merge("PA", [img, Image.fromarray(alpha)])
    pa.putpalette(colours.tobytes())
    return Case(pa, over_white(colours[index], alpha), None, tolerance=1)  # PNG cannot hold PA


def case_la() -> Case:
    la = rng.integers(0, 256, (RES, RES, 2), dtype=np.uint8)
    la[0, :2, 1] = [0, 255]  # fully transparent, fully opaque
    return Case(Image.fromarray(la, "LA"), over_white(grey3(la[..., 0]), la[..., 1]), "PNG", tolerance=1)


def case_rgba() -> Case:
    rgba = rng.integers(0, 256, (RES, RES, 4), dtype=np.uint8)
    rgba[0, :2, 3] = [0, 255]
    return Case(Image.fromarray(rgba, "RGBA"), over_white(rgba[..., :3], rgba[..., 3]), "PNG", tolerance=1)


def case_1bit() -> Case:
    bits = rng.random((RES, RES)) < 0.5
    return Case(Image.fromarray(bits), grey3(bits.astype(np.uint8) * 255), "PNG")


def case_l() -> Case:
    v = rng.integers(0, 256, (RES, RES), dtype=np.uint8)
    return Case(Image.fromarray(v), grey3(v), "PNG")


def case_l_transparent() -> Case:
    v = rng.integers(0, 256, (RES, RES), dtype=np.uint8)
    expected = grey3(v)
    expected[v == v[2, 2]] = 255
    return Case(Image.fromarray(v), expected, "PNG", save={"transparency": int(v[2, 2])})


def case_rgb() -> Case:
    v = rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8)
    return Case(Image.fromarray(v), v, "PNG")


CASES: dict[str, Callable[[], Case]] = {
    "I;16": case_i16, "I;16B": case_i16b, "I;16L": case_i16l, "I;16 tRNS": case_i16_transparent,
    "I 16-bit TIFF": case_i_16bit_tiff, "I 16-bit in memory": case_i_16bit_memory,
    "I 8-bit values": case_i_8bit_values, "I older-Pillow PNG": case_i_16bit_png_of_older_pillow,
    "F 0..1": case_f_unit, "F 0..255": case_f_255, "CMYK": case_cmyk,
    "P": case_p, "P tRNS index": case_p_transparent_index, "P alpha per entry": case_p_alpha_per_entry,
    "PA": case_pa, "LA": case_la, "RGBA": case_rgba, "1": case_1bit, "L": case_l, "L tRNS": case_l_transparent,
    "RGB": case_rgb,
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_mode_converts_to_the_rgb_its_values_mean(tmp_path, name):
    case = CASES[name]()
    if case.fmt is None:
        got = decode_image(case.image, RES, name)
    else:
        path = tmp_path / f"image.{case.fmt.lower()}"
        case.image.save(path, case.fmt, **case.save)
        with Image.open(path) as reopened:
            assert reopened.mode == (case.opens_as or case.image.mode)  # the file really holds the mode tested
        got = load_image_file(path, RES)
    assert got.dtype == np.uint8 and got.shape == (RES, RES, 3)
    diff = np.abs(got.astype(np.int64) - case.expected.astype(np.int64))
    assert diff.max() <= case.tolerance, f"{name}: off by up to {diff.max()}"


def test_a_16_bit_photo_is_not_clipped_white(tmp_path):
    ramp = np.linspace(0, 65535, 4 * 32, dtype=np.uint16).reshape(4, 32).repeat(8, axis=0)  # (32, 32) dark to light
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    got = load_image_file(tmp_path / "ramp.png", 32)
    assert (got == 255).mean() < 0.05 and got.min() == 0


def old_to_rgb(img: Image.Image, resolution: int) -> np.ndarray:
    """What loading did before modes were handled, for RGB and L: convert, centre-crop, bicubic resize."""
    img = img.convert("RGB")
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if side != resolution:
        img = img.resize((resolution, resolution), Image.Resampling.BICUBIC)
    return np.asarray(img)


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("size, resolution", [((37, 23), 16), ((20, 20), 20), ((24, 40), 32)])
def test_8_bit_rgb_and_l_load_bit_identically_to_before(tmp_path, mode, size, resolution):
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(pixels).convert(mode)
    img.save(tmp_path / "x.png")
    with Image.open(tmp_path / "x.png") as reopened:
        want = old_to_rgb(reopened, resolution)
    assert np.array_equal(load_image_file(tmp_path / "x.png", resolution), want)
    assert np.array_equal(decode_image(img, resolution, "in memory"), want)


@pytest.mark.parametrize("orientation, turn", [(6, -1), (8, 1)])  # 6: turn 90 clockwise to view; 8: anticlockwise
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_is_applied_first(tmp_path, orientation, turn, fmt):
    pixels = np.zeros((RES, 2 * RES, 3), np.uint8)  # wide as stored: red left half, blue right half
    pixels[:, :RES, 0] = 255
    pixels[:, RES:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"turned.{fmt.lower()}"
    Image.fromarray(pixels).save(path, fmt, exif=exif.tobytes())
    got = load_image_file(path, RES)
    with Image.open(path) as stored:
        upright = np.asarray(ImageOps.exif_transpose(stored).convert("RGB"))  # (2 RES, RES, 3): tall
    assert upright.shape == (2 * RES, RES, 3)
    assert np.array_equal(got, upright[RES // 2: RES // 2 + RES])  # the centre square of the tall image
    if fmt == "PNG":  # lossless: also against numpy's own turn
        assert np.array_equal(upright, np.rot90(pixels, k=turn))


def test_exif_orientation_of_an_in_memory_image_is_applied_without_changing_it(tmp_path):
    pixels = rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.fromarray(pixels).save(tmp_path / "t.png", exif=exif.tobytes())
    with Image.open(tmp_path / "t.png") as img:
        img.load()
        got = decode_image(img, RES, "row 0")
        assert img.getexif()[0x0112] == 8  # the caller's image keeps its tag
    assert np.array_equal(got, np.rot90(pixels, k=1))


@pytest.mark.parametrize("mode", ["I;16", "RGB"])
def test_corrupt_files_raise_image_error_naming_them(tmp_path, mode):
    good = tmp_path / "good.png"
    Image.fromarray(u16() if mode == "I;16" else rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8)).save(good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(rng.bytes(200))
    for path in (truncated, garbage):
        with pytest.raises(ImageError, match=f"{path.name}: cannot read image"):
            load_image_file(path, RES)
    with pytest.raises(ImageError, match="missing.png: no such file"):
        load_image_file(tmp_path / "missing.png", RES)


def test_a_broken_exif_block_leaves_the_image_readable(tmp_path, caplog):
    pixels = rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "b.png", exif=b"garbage")  # getexif raises SyntaxError on it
    assert np.array_equal(load_image_file(tmp_path / "b.png", RES), pixels)  # used as stored, as before EXIF
    assert "b.png: EXIF orientation unreadable" in caplog.text
