"""Text in the shapes world: a bitmap font defined here, strings drawn one character a cell, read back exactly.

A `Text` is a short string (1 to MAX_CHARS characters of ALPHABET: A-Z and 0-9) written along one row of the
world's grid, one character in each cell from its start cell (row, col) rightwards, in white; on a `sign` it
stands on a grey plate that spans its cells. White and grey lie on no background -> palette colour segment,
so the object parser never sees text, and text is read from white pixels alone, so objects never read as text.

Glyphs are 5x7 bitmaps, defined in cell units like the world's shapes (font pixel = 1/8 of a cell, the
glyph's box at (1.25, 0.25) / 8 of the cell: at 8 px a cell every font pixel is exactly one image pixel, and
no pixel centre lies on a font pixel's edge, so rendering is deterministic at every resolution). At 8 px a
cell and a tokenizer's 4 px codes a character is exactly 2x2 codes (the cpu presets' alignment).

`read_texts` matches every cell's white pixels against the font's glyphs and a blank cell (least squares,
against templates rendered by the same code at the image's resolution), so crisp images read back exactly
and blurred ones (decoded, generated) to the nearest glyph; a cell whose white pixels fit no glyph well reads
as UNREADABLE, which matches no character. Runs of consecutive non-blank cells in a row are one Text each.

Held-out strings (`heldout_string`): a fixed, seeded hash of the whole string puts about one string in
HELDOUT_SHARE (of length 2 or more) out of training; single characters are all seen. Training scenes never
hold a held-out string; the eval's text suite asks for them, so a model must spell, not recall.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
MAX_CHARS = 4
UNREADABLE = "?"  # what read_texts reports for a cell of white pixels no glyph fits
WHITE: tuple[int, int, int] = (255, 255, 255)
SIGN_GREY: tuple[int, int, int] = (128, 128, 128)
# Words a caption may ask for; the rest of the strings are random. Never held out, so some words are known whole.
LEXICON: tuple[str, ...] = ("OK", "GO", "NO", "UP", "ON", "HI", "BUS", "CAT", "DOG", "SUN", "TOP", "EXIT",
                            "STOP", "TAXI", "OPEN", "SALE", "CAFE", "ZOO", "BANK", "PARK", "HOME", "GAS", "MAP")
HELDOUT_SHARE = 0.2  # of strings of 2+ characters (by a seeded hash), never drawn for training
HELDOUT_SALT = b"tessera-text-v1"  # fixed: the split is part of the dataset's definition

FONT_PX = 1 / 8  # a font pixel, in cell units
GLYPH_X0, GLYPH_Y0 = 1.25 * FONT_PX, 0.25 * FONT_PX  # the glyph box's top left in its cell
SIGN_INSET = 0.5 * FONT_PX  # the plate's margin inside the run of cells
# read_texts: a glyph is read when its squared error is under this share of its lit pixels (else UNREADABLE)
MAX_ERROR = 0.35
SIGN_SHARE = 0.3  # a cell is on a sign when this share of its pixels is grey

_ROWS = {  # 5x7, '#' lit; a classic LCD-style face, with D, 0 and O kept apart
    "A": ".###. #...# #...# ##### #...# #...# #...#",
    "B": "####. #...# #...# ####. #...# #...# ####.",
    "C": ".###. #...# #.... #.... #.... #...# .###.",
    "D": "###.. #..#. #...# #...# #...# #..#. ###..",
    "E": "##### #.... #.... ####. #.... #.... #####",
    "F": "##### #.... #.... ####. #.... #.... #....",
    "G": ".###. #...# #.... #.### #...# #...# .####",
    "H": "#...# #...# #...# ##### #...# #...# #...#",
    "I": ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",
    "J": "..### ...#. ...#. ...#. ...#. #..#. .##..",
    "K": "#...# #..#. #.#.. ##... #.#.. #..#. #...#",
    "L": "#.... #.... #.... #.... #.... #.... #####",
    "M": "#...# ##.## #.#.# #.#.# #...# #...# #...#",
    "N": "#...# #...# ##..# #.#.# #..## #...# #...#",
    "O": ".###. #...# #...# #...# #...# #...# .###.",
    "P": "####. #...# #...# ####. #.... #.... #....",
    "Q": ".###. #...# #...# #...# #.#.# #..#. .##.#",
    "R": "####. #...# #...# ####. #.#.. #..#. #...#",
    "S": ".#### #.... #.... .###. ....# ....# ####.",
    "T": "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    "U": "#...# #...# #...# #...# #...# #...# .###.",
    "V": "#...# #...# #...# #...# #...# .#.#. ..#..",
    "W": "#...# #...# #...# #.#.# #.#.# #.#.# .#.#.",
    "X": "#...# #...# .#.#. ..#.. .#.#. #...# #...#",
    "Y": "#...# #...# .#.#. ..#.. ..#.. ..#.. ..#..",
    "Z": "##### ....# ...#. ..#.. .#... #.... #####",
    "0": ".###. #...# #..## #.#.# ##..# #...# .###.",
    "1": "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.",
    "2": ".###. #...# ....# ...#. ..#.. .#... #####",
    "3": "##### ...#. ..#.. ...#. ....# #...# .###.",
    "4": "...#. ..##. .#.#. #..#. ##### ...#. ...#.",
    "5": "##### #.... ####. ....# ....# #...# .###.",
    "6": "..##. .#... #.... ####. #...# #...# .###.",
    "7": "##### ....# ...#. ..#.. .#... .#... .#...",
    "8": ".###. #...# #...# .###. #...# #...# .###.",
    "9": ".###. #...# #...# .#### ....# ...#. .##..",
}
FONT: dict[str, np.ndarray] = {c: np.array([[p == "#" for p in row] for row in rows.split()], bool)
                               for c, rows in _ROWS.items()}  # char -> (7, 5) bool


@dataclass(frozen=True, order=True)
class Text:
    """A string written from cell (row, col) rightwards, one character a cell; on a grey plate when `sign`."""

    row: int
    col: int
    string: str
    sign: bool = False

    @property
    def end(self) -> int:
        """The column of its last character."""
        return self.col + len(self.string) - 1

    def cells(self) -> tuple[tuple[int, int], ...]:
        return tuple((self.row, c) for c in range(self.col, self.end + 1))

    def check(self, grid: int, readable: bool = True) -> None:
        """Raise ValueError unless it fits the grid and (`readable`) every character is in ALPHABET."""
        allowed = ALPHABET + ("" if readable else UNREADABLE)
        if not self.string or any(c not in allowed for c in self.string):
            raise ValueError(f"a text needs 1 or more characters of {ALPHABET}, got {self.string!r}")
        if not (0 <= self.row < grid and 0 <= self.col and self.end < grid):
            raise ValueError(f"text {self.string!r} from ({self.row},{self.col}) leaves the {grid}x{grid} grid")

    def to_dict(self) -> dict:
        return {"row": self.row, "col": self.col, "string": self.string, **({"sign": True} if self.sign else {})}


# ---------------------------------------------------------------- strings


def heldout_string(s: str) -> bool:
    """Is `s` held out of training? A fixed hash of the whole string; single characters and LEXICON words never."""
    s = s.upper()
    if len(s) < 2 or s in LEXICON:
        return False
    h = int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8, key=HELDOUT_SALT).digest(), "big")
    return h / 2**64 < HELDOUT_SHARE


def sample_string(rng: np.random.Generator, max_len: int = MAX_CHARS, split: str = "train",
                  lexicon: float = 0.3) -> str:
    """A string of 1..max_len characters: a LEXICON word (probability `lexicon`) or random characters.

    split "train" never returns a held-out string, "heldout" always does (length >= 2), "all" either.
    """
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be train, heldout or all, not {split!r}")
    words = [w for w in LEXICON if len(w) <= max_len]
    for _ in range(10_000):
        if split != "heldout" and words and rng.random() < lexicon:
            s = words[int(rng.integers(len(words)))]
        else:
            n = int(rng.integers(2 if split == "heldout" else 1, max_len + 1))
            s = "".join(ALPHABET[i] for i in rng.integers(len(ALPHABET), size=n))
        if split == "all" or heldout_string(s) == (split == "heldout"):
            return s
    raise ValueError(f"no {split} string of at most {max_len} characters found")


# ---------------------------------------------------------------- drawing


def _centres(n: int, grid: int) -> np.ndarray:
    return (np.arange(n) + 0.5) * grid / n  # pixel centres in cell units (as shapes._centres)


def glyph_mask(ch: str, row: int, col: int, resolution: int, grid: int) -> np.ndarray:
    """Where glyph `ch` in cell (row, col) lights pixels: (R, R) bool."""
    c = _centres(resolution, grid)
    fx = np.floor((c - col - GLYPH_X0) / FONT_PX).astype(int)  # (R,) font column of each pixel column
    fy = np.floor((c - row - GLYPH_Y0) / FONT_PX).astype(int)  # (R,) font row of each pixel row
    inx, iny = (fx >= 0) & (fx < 5), (fy >= 0) & (fy < 7)
    out = np.zeros((resolution, resolution), bool)
    glyph = FONT[ch]
    out[np.ix_(iny, inx)] = glyph[np.ix_(fy[iny], fx[inx])]
    return out


def sign_mask(t: Text, resolution: int, grid: int) -> np.ndarray:
    """The grey plate under a sign: its cells, inset by SIGN_INSET; (R, R) bool."""
    c = _centres(resolution, grid)
    xs = (c >= t.col + SIGN_INSET) & (c <= t.end + 1 - SIGN_INSET)
    ys = (c >= t.row + SIGN_INSET) & (c <= t.row + 1 - SIGN_INSET)
    return ys[:, None] & xs[None, :]


def draw_texts(img: np.ndarray, texts, grid: int) -> None:
    """Paint `texts` (plates first, then glyphs in white) into uint8 (R, R, 3) `img` in place."""
    res = img.shape[0]
    for t in texts:
        t.check(grid)  # an UNREADABLE character (what parse reports) has no glyph to draw
        if t.sign:
            img[sign_mask(t, res, grid)] = SIGN_GREY
        for k, ch in enumerate(t.string):
            img[glyph_mask(ch, t.row, t.col + k, res, grid)] = WHITE


# ---------------------------------------------------------------- reading


def _window(cell: int, resolution: int, grid: int) -> slice:
    """The pixels whose centres lie in cell index `cell` along one axis."""
    c = _centres(resolution, grid)
    idx = np.flatnonzero((c >= cell) & (c < cell + 1))
    return slice(int(idx[0]), int(idx[-1]) + 1)


@functools.cache
def _templates(resolution: int, grid: int, row: int, col: int) -> np.ndarray:
    """(len(ALPHABET), h, w) float32: every glyph in cell (row, col), cut to the cell's window."""
    ys, xs = _window(row, resolution, grid), _window(col, resolution, grid)
    return np.stack([glyph_mask(ch, row, col, resolution, grid)[ys, xs] for ch in ALPHABET]).astype(np.float32)


def read_texts(img: np.ndarray, grid: int) -> tuple[Text, ...]:
    """The texts of uint8 (R, R, 3) `img`: each cell read as a glyph, blank or UNREADABLE; runs become Texts."""
    res = img.shape[0]
    lo = img.min(axis=2).astype(np.float32)  # (R, R): white is high in every channel, a palette colour is not
    spread = img.max(axis=2).astype(np.int32) - img.min(axis=2)
    grey = (lo >= 96) & (lo <= 160) & (spread <= 40)
    texts = []
    for row in range(grid):
        ys = _window(row, res, grid)
        chars: list[str] = []
        signs: list[bool] = []
        for col in range(grid):
            xs = _window(col, res, grid)
            on_sign = grey[ys, xs].mean() >= SIGN_SHARE
            base = SIGN_GREY[0] if on_sign else 0.0
            white = np.clip((lo[ys, xs] - base) / (255.0 - base), 0.0, 1.0)  # (h, w) in [0, 1]
            tpl = _templates(res, grid, row, col)  # (G, h, w)
            err = ((tpl - white) ** 2).sum(axis=(1, 2))  # (G,)
            blank = float((white**2).sum())
            k = int(err.argmin())
            if blank <= err[k]:
                chars.append("")
            else:
                lit = float(tpl[k].sum())
                chars.append(ALPHABET[k] if err[k] <= MAX_ERROR * lit else UNREADABLE)
            signs.append(bool(on_sign))
        col = 0
        while col < grid:
            if not chars[col]:
                col += 1
                continue
            end = col
            while end + 1 < grid and chars[end + 1]:
                end += 1
            run = signs[col : end + 1]
            texts.append(Text(row, col, "".join(chars[col : end + 1]), sum(run) * 2 > len(run)))
            col = end + 1
    return tuple(texts)


__all__ = ["ALPHABET", "FONT", "LEXICON", "MAX_CHARS", "Text", "UNREADABLE", "draw_texts", "glyph_mask",
           "heldout_string", "read_texts", "sample_string"]
