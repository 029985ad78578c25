"""The shapes world: Tessera's default dataset and its exact evaluator.

A scene is a set of flat-coloured shapes on a plain background, laid out on a grid of
`grid` x `grid` cells (a setting: 3 for the CPU demo, 4 for scenes of up to 16 objects;
GRIDS lists the sizes with cell names). Every object has four discrete attributes, a
shape (circle, square, triangle), a colour (six palette colours), a size (small, large)
and a cell (row 0 = top, col 0 = left), plus a small continuous jitter (dx, dy) of its
centre inside the cell that equality ignores. For editing, an object also carries a tone
(bright or dim: the colour at full or 75% strength) that no caption or instruction names:
an identity detail that an edit must keep, large enough to survive tokenization (parse
reads it back). Text-to-image scenes are all bright. Sampled scenes hold at most one object per
cell; a parsed scene may hold more (two objects in one cell, an object straddling cells,
or a blob no shape fits are all reported, so a judge sees everything).

    sample_scenes -> render -> image -> parse -> Scene    (parse(render(s)) == s)
    Scene -> describe / captions -> text                  (describe fully determines s)

Rendering is crisp and defined in continuous coordinates, so any resolution works:
the pixel (x, y) has centre ((x + 0.5) / R, (y + 0.5) / R). parse() inverts it and
tolerates the blur and speckle of decoded or generated images (see parse()).

Held-out split (heldout_cells): for every (colour, shape) pair exactly one cell is never
seen in training (split="train"); split="heldout" scenes contain at least one such object,
which tests compositional generalisation. The design is balanced like a Latin square:
every cell is held out for 18 / cells pairs (rounded), every colour in three distinct
cells, every shape in six; a fixed seed shuffles which.

Captions are a grammar over scenes (train.data.grammar): every true description is a prompt.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage
from scipy.special import ndtr

from train.data.glyphs import MAX_CHARS, Text, draw_texts, read_texts, sample_string

if TYPE_CHECKING:
    import datasets

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Saturated colours: >= 127 apart pairwise, >= 200 from the background (RGB distance).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 200, 0),
    "blue": (0, 64, 255),
    "yellow": (255, 255, 0),
    "purple": (128, 0, 255),
    "orange": (255, 128, 0),
}
BACKGROUND: tuple[int, int, int] = (0, 0, 0)
SIZES: tuple[str, ...] = ("small", "large")
# The tone of an object: how far from the background towards its colour it is painted. Never named in
# text; sampled only for editing scenes (sample_scene's `tones`). 0.75 keeps a dim object well above
# MIN_ALPHA (so it is found and fitted like a bright one) and 0.25 below bright (so parse tells them apart
# in decoded images, at TONE_SPLIT).
TONES: tuple[str, ...] = ("bright", "dim")
TONE_ALPHA: dict[str, float] = {"bright": 1.0, "dim": 0.75}
TONE_SPLIT = 0.875  # parse: a component whose brightest pixels reach this alpha is bright
TONE_QUANTILE = 90  # ... measured at this percentile of its pixels' alpha (robust to a stray pixel)
GRID: int = 3  # the default grid: 3x3 cells
GRIDS: tuple[int, ...] = (3, 4)  # grid sizes the world names cells for (see cell_phrase)
MAX_OBJECTS: int = 3  # default maximum objects per scene
BLOB = "blob"  # the shape parse() reports for a component no template fits: it counts, but never matches
HELDOUT_SEED = 20240601  # fixed: the split is part of the dataset's definition

# Object width (= height) as a fraction of the cell width. small = 0.5 puts the small
# disc's radius at 32 px (2.67 px) between the radii whose raster can equal a square's
# (2.12-2.5, 2.83-3.0 px): parse is exact at R = 24, 30-33 and >= 36 (tested to 256), not
# at 27-29 or 34-35. large = 0.74 keeps a blurred large triangle apart from a small disc.
SIZE_FRACTION: dict[str, float] = {"small": 0.5, "large": 0.74}
# Max |dx|, |dy| in cell units: 0.37 + 0.035 < 0.5 keeps each object inside its
# cell, with >= 2 px between neighbours at 32 px (1 - 0.74 - 2 * 0.035 = 0.19 cell).
JITTER: float = 0.035

# parse() thresholds
MIN_ALPHA = 0.5  # a pixel belongs to a colour when it is >= 50% of the way from background to it
MAX_RESIDUAL = 45.0  # RGB distance off the background->colour segment; half the closest segments' gap
MIN_AREA = 0.3  # components under 30% of a small triangle's area are speckle
MIN_IOU = 0.5  # components no template matches this well are not objects
EDGE_STEPS = 1.2  # pixel-grid steps per unit of edge length, averaged over orientations
# Templates are blurred by 0.7x the edge blur measured: the estimate runs high at 32 px,
# and under-rounded templates fail more gently than over-rounded ones (tuned on sigma 0.5-1.3).
TEMPLATE_BLUR = 0.7
MIN_BLUR = 0.3  # px; below this, crisp templates
MIN_CELL_PX = 8  # parse needs >= 8 px per cell (24 px at 3x3, 32 px at 4x4)
# An object is placed in a cell when its centre is within this many cell widths of the cell's centre
# (sampled jitter is <= 0.035; parse estimates it to ~0.06 at 8 px a cell). Beyond, it straddles cells.
PLACE_TOLERANCE = 0.2
_SHIFTS = (0.0, -0.25, 0.25)  # sub-pixel search around the centroid, px; unshifted first wins ties

# Cell names per grid size: rows top to bottom, columns left to right.
ROW_NAMES: dict[int, tuple[str, ...]] = {3: ("top", "middle", "bottom"), 4: ("top", "upper", "lower", "bottom")}
COL_NAMES: dict[int, tuple[str, ...]] = {3: ("left", "center", "right"), 4: ("left", "center left", "center right", "right")}
NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
           "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen")
_NAMES = list(COLOURS)  # colour names by palette index


@dataclass(frozen=True, order=True)
class Obj:
    shape: str
    colour: str
    size: str
    row: int
    col: int
    dx: float = field(default=0.0, compare=False)  # jitter of the centre in cell units, not part of equality
    dy: float = field(default=0.0, compare=False)
    tone: str = "bright"  # an identity detail for editing (TONES); part of equality


def check_grid(grid: int) -> int:
    if isinstance(grid, bool) or not isinstance(grid, int) or grid not in GRIDS:
        raise ValueError(f"grid must be one of {', '.join(map(str, GRIDS))}, got {grid!r}")
    return grid


def placed(o: Obj) -> bool:
    """Is the object's centre near its cell's centre (not straddling two cells)? See PLACE_TOLERANCE."""
    return max(abs(o.dx), abs(o.dy)) <= PLACE_TOLERANCE


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]  # canonical order: sorted by (row, col), then by attributes
    grid: int = GRID  # the scene's grid is grid x grid cells
    texts: tuple[Text, ...] = ()  # strings written along rows (train.data.glyphs), sorted by (row, col)

    def __post_init__(self):
        check_grid(self.grid)
        objs = tuple(sorted(self.objects, key=lambda o: (o.row, o.col, o)))
        for o in objs:
            if o.shape not in (*SHAPES, BLOB) or o.colour not in COLOURS or o.size not in SIZES or o.tone not in TONES:
                raise ValueError(f"unknown attribute in {o}")
            if not (0 <= o.row < self.grid and 0 <= o.col < self.grid):
                raise ValueError(f"cell out of the {self.grid}x{self.grid} grid in {o}")
        texts = tuple(sorted(self.texts))
        for t in texts:
            t.check(self.grid, readable=False)  # parse may read an unreadable character; render refuses it
        object.__setattr__(self, "objects", objs)  # frozen: canonicalise in place once
        object.__setattr__(self, "texts", texts)

    def crowded(self) -> bool:
        """Two objects in one cell (only parse() makes such scenes)."""
        return len({(o.row, o.col) for o in self.objects}) != len(self.objects)

    def to_dict(self) -> dict:
        # the grid and tone only when not the default, so scenes recorded before they existed read back equal
        objects = [{k: v for k, v in asdict(o).items() if k != "tone" or v != "bright"} for o in self.objects]
        return {"objects": objects, **({"grid": self.grid} if self.grid != GRID else {}),
                **({"texts": [t.to_dict() for t in self.texts]} if self.texts else {})}

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        return cls(tuple(Obj(**o) for o in d["objects"]), int(d.get("grid", GRID)),
                   tuple(Text(**t) for t in d.get("texts", ())))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, s: str) -> Scene:
        return cls.from_dict(json.loads(s))


@functools.cache
def heldout_cells(grid: int = GRID) -> dict[tuple[str, str], int]:
    """The held-out cell (row * grid + col) of every (colour, shape) pair: a balanced design fixed by HELDOUT_SEED.

    Pairs are listed shape-major (shapes and colours in seeded orders) and pair i takes cell
    perm[i mod cells] of a seeded permutation of the cells. So every cell is held out for
    floor or ceil of 18 / cells pairs (exactly 2 at 3x3; 1 or 2 at 4x4), a shape's six pairs
    take six distinct cells, and a colour's three pairs (i, i + 6, i + 12) three distinct ones.
    """
    n = check_grid(grid) ** 2
    rng = np.random.default_rng([HELDOUT_SEED, grid])
    colours, kinds, cells = rng.permutation(len(_NAMES)), rng.permutation(len(SHAPES)), rng.permutation(n)
    out = {}
    for i, (si, ci) in enumerate((si, ci) for si in kinds for ci in colours):
        out[(_NAMES[ci], SHAPES[si])] = int(cells[i % n])
    return dict(sorted(out.items()))


def heldout_set(grid: int = GRID) -> frozenset[tuple[str, str, int, int]]:
    """heldout_cells as (colour, shape, row, col) tuples."""
    return frozenset((c, s, k // grid, k % grid) for (c, s), k in heldout_cells(grid).items())


HELDOUT: frozenset[tuple[str, str, int, int]] = heldout_set(GRID)


def is_heldout(obj: Obj, grid: int = GRID) -> bool:
    return heldout_cells(grid).get((obj.colour, obj.shape)) == obj.row * grid + obj.col


# ---------------------------------------------------------------- sampling


def _random_obj(
    rng: np.random.Generator, cell: int, avoid_heldout: bool, grid: int = GRID, colour: str | None = None,
    shape: str | None = None, tones: bool = False,
) -> Obj:
    """A random object in `cell`; `colour` / `shape` fix that attribute (the pair must be allowed in the cell).

    With `tones` the tone is drawn too (after everything else, so scenes without tones keep their stream)."""
    row, col = divmod(int(cell), grid)
    held = heldout_cells(grid)
    fixed_colour, fixed_shape = colour, shape
    while True:  # rejection: at most 2 of 18 (colour, shape) pairs are held out in each cell
        colour = fixed_colour or _NAMES[rng.integers(len(_NAMES))]
        shape = fixed_shape or SHAPES[rng.integers(len(SHAPES))]
        if not (avoid_heldout and held[(colour, shape)] == cell):
            break
    size = SIZES[rng.integers(len(SIZES))]
    dx, dy = rng.uniform(-JITTER, JITTER, size=2)
    tone = TONES[rng.integers(len(TONES))] if tones else TONES[0]
    return Obj(shape, colour, size, row, col, float(dx), float(dy), tone)


def check_counts(
    min_objects: int, max_objects: int, count_weights: Sequence[float] | None = None, grid: int = GRID
) -> None:
    """Raise ValueError unless 0 <= min <= max <= grid^2 and count_weights is None or one weight >= 0 per count."""
    cells = check_grid(grid) ** 2
    if not 0 <= min_objects <= max_objects <= cells:
        raise ValueError(f"need 0 <= min_objects <= max_objects <= {cells} (a {grid}x{grid} grid), "
                         f"got {min_objects} / {max_objects}")
    w = count_weights
    if w is not None and not (
        len(w) == max_objects - min_objects + 1 and sum(w) > 0
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in w)
    ):
        raise ValueError(f"count_weights needs one weight >= 0 per count {min_objects}..{max_objects}, not all 0; "
                         f"got {list(w)}")


def sample_scene(
    rng: np.random.Generator, split: str = "train", max_objects: int = MAX_OBJECTS, min_objects: int = 1,
    count_weights: tuple[float, ...] | None = None, grid: int = GRID, uniform: float = 0.0, tones: bool = False,
    text: float = 0.0,
) -> Scene:
    """A random scene of min_objects..max_objects objects in distinct cells of a grid x grid grid.

    The count is uniform, or drawn with `count_weights` (one weight per count min..max, normalised).
    With probability `uniform` (splits train and all) every object shares one colour and shape,
    or one colour, or one shape (a third each): the scenes "seven red circles" or "five squares"
    describe, which independent objects almost never make. `tones`: objects get a random tone (editing).
    With probability `text` the scene holds one string (train.data.glyphs; split "train" never a held-out
    string) and its objects (as many as fit) take the other cells.
    """
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be train, heldout or all, not {split!r}")
    check_counts(min_objects, max_objects, count_weights, grid)
    cells_n = grid * grid
    if split == "heldout":
        min_objects = max(min_objects, 1)
    if count_weights is None:
        n = int(rng.integers(min_objects, max_objects + 1))
    else:
        p = np.asarray(count_weights, dtype=float)
        n = min_objects + int(rng.choice(len(p), p=p / p.sum()))
    if text > 0 and rng.random() < text:
        return _text_scene(rng, split, n, grid, tones)
    if split != "heldout" and uniform > 0 and rng.random() < uniform:
        return _uniform_scene(rng, n, split == "train", grid, tones)
    if split != "heldout":
        cells = rng.choice(cells_n, size=n, replace=False)
        return Scene(tuple(_random_obj(rng, k, split == "train", grid, tones=tones) for k in cells), grid)
    # heldout: one held-out (colour, shape, cell), the others anything in other cells
    held = sorted(heldout_cells(grid).items())  # indexable in a fixed order
    (colour, shape), cell = held[rng.integers(len(held))]
    first = _random_obj(rng, cell, False, grid, tones=tones)
    first = Obj(shape, colour, first.size, first.row, first.col, first.dx, first.dy, first.tone)
    others = [k for k in range(cells_n) if k != cell]
    cells = rng.choice(others, size=n - 1, replace=False)
    return Scene((first, *(_random_obj(rng, k, False, grid, tones=tones) for k in cells)), grid)


SIGN_P = 0.3  # share of sampled strings written on a sign


def _text_scene(rng: np.random.Generator, split: str, n: int, grid: int, tones: bool = False) -> Scene:
    """One string (train split: never a held-out one) along a row, and n objects (as many as fit) in other cells."""
    string = sample_string(rng, min(MAX_CHARS, grid), "train" if split == "train" else "all")
    row, col = int(rng.integers(grid)), int(rng.integers(grid - len(string) + 1))
    t = Text(row, col, string, bool(rng.random() < SIGN_P))
    free = [k for k in range(grid * grid) if divmod(k, grid) not in t.cells()]
    cells = rng.choice(free, size=min(n, len(free)), replace=False)
    objs = tuple(_random_obj(rng, k, split != "all", grid, tones=tones) for k in cells)
    return Scene(objs, grid, (t,))


def _uniform_scene(rng: np.random.Generator, n: int, avoid_heldout: bool, grid: int, tones: bool = False) -> Scene:
    """n objects sharing a colour and shape, a colour, or a shape (a pair's held-out cell avoided in training)."""
    colour, shape = _NAMES[rng.integers(len(_NAMES))], SHAPES[rng.integers(len(SHAPES))]
    mode = int(rng.integers(3))  # 0: both shared, 1: the colour, 2: the shape
    colour, shape = (colour if mode < 2 else None), (shape if mode != 1 else None)
    cells = np.arange(grid * grid)
    if mode == 0 and avoid_heldout:
        cells = cells[cells != heldout_cells(grid)[(colour, shape)]]
    chosen = rng.choice(cells, size=min(n, len(cells)), replace=False)
    return Scene(tuple(_random_obj(rng, k, avoid_heldout, grid, colour, shape, tones) for k in chosen), grid)


def sample_scenes(
    n: int, seed: int = 0, split: str = "train", max_objects: int = MAX_OBJECTS, min_objects: int = 1,
    count_weights: tuple[float, ...] | None = None, grid: int = GRID, uniform: float = 0.0, tones: bool = False,
    text: float = 0.0,
) -> list[Scene]:
    """n scenes, deterministic in seed; sample_scenes(n, s) is a prefix of sample_scenes(n + k, s)."""
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, split, max_objects, min_objects, count_weights, grid, uniform, tones, text)
            for _ in range(n)]


# ---------------------------------------------------------------- rendering


def _mask(shape: str, s: float, cx, cy, u, v) -> np.ndarray:
    """Inside-test of a shape of width s centred at (cx, cy); all in cell units, broadcasting."""
    h = s / 2
    if shape == "circle":  # disc of diameter s
        return (u - cx) ** 2 + (v - cy) ** 2 <= h * h
    if shape == "square":  # axis-aligned, side s
        return (np.abs(u - cx) <= h) & (np.abs(v - cy) <= h)
    # isoceles triangle pointing up in the s x s box: apex (cx, cy - h), base at v = cy + h
    return (v <= cy + h) & (2 * np.abs(u - cx) <= v - (cy - h))


def _centres(n: int, grid: int = GRID) -> np.ndarray:
    return (np.arange(n) + 0.5) * grid / n  # pixel centres in cell units, (n,)


def _paint(o: Obj) -> np.ndarray:
    """The RGB an object is painted in: TONE_ALPHA of the way from the background to its colour."""
    bg = np.array(BACKGROUND, np.float32)
    return np.round(bg + TONE_ALPHA[o.tone] * (np.array(COLOURS[o.colour], np.float32) - bg)).astype(np.uint8)


def render(scene: Scene, resolution: int = 32) -> np.ndarray:
    """The scene as a crisp uint8 (R, R, 3) image."""
    img = np.empty((resolution, resolution, 3), np.uint8)
    img[:] = BACKGROUND
    c = _centres(resolution, scene.grid)
    u, v = c[None, :], c[:, None]  # (1, R) and (R, 1)
    for o in scene.objects:
        if o.shape == BLOB:
            raise ValueError(f"a {BLOB} (what parse reports for an unreadable component) cannot be rendered")
        m = _mask(o.shape, SIZE_FRACTION[o.size], o.col + 0.5 + o.dx, o.row + 0.5 + o.dy, u, v)  # (R, R)
        img[m] = _paint(o)
    draw_texts(img, scene.texts, scene.grid)
    return img


def render_batch(scenes, resolution: int = 32) -> np.ndarray:
    """uint8 (N, R, R, 3)."""
    out = np.empty((len(scenes), resolution, resolution, 3), np.uint8)
    for i, s in enumerate(scenes):
        out[i] = render(s, resolution)
    return out


# ---------------------------------------------------------------- parsing

_BG = np.array(BACKGROUND, np.float32)
_DIRS = np.array(list(COLOURS.values()), np.float32) - _BG  # (K, 3) background -> colour
_PLANES = np.zeros((3, 3, 3), bool)
_PLANES[1] = True  # label within each colour plane, 8-connected, never across planes


def _classify_rgb(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P, 3) RGB -> palette index (P,) int8, -1 for background / unknown, and alpha (P,).

    A blurred edge pixel is a mix of background and one colour, so it lies on the
    segment background -> colour. A pixel's alpha is how far it is along the nearest
    segment (0 when within MAX_RESIDUAL of none), and it takes that colour when
    alpha >= MIN_ALPHA. Unlike nearest-palette-colour, this never turns a yellow rim
    orange, and it keeps the 50% contour of a blurred shape.
    """
    d = rgb.astype(np.float32) - _BG  # (P, 3)
    dot = d @ _DIRS.T  # (P, K)
    alpha = dot / (_DIRS**2).sum(1)  # (P, K) position along each segment
    resid2 = (d**2).sum(1, keepdims=True) - dot * alpha  # (P, K) squared distance to each line
    near = (alpha >= 0) & (alpha <= 1.5) & (resid2 <= MAX_RESIDUAL**2)  # (P, K)
    k = np.where(near, resid2, np.inf).argmin(1)  # (P,) nearest segment
    a = np.where(near.any(1), alpha[np.arange(len(k)), k], 0.0)  # (P,)
    return np.where(a >= MIN_ALPHA, k, -1).astype(np.int8), a


@functools.cache
def _lut() -> tuple[np.ndarray, np.ndarray]:
    """_classify_rgb on a 128^3 grid of bin centres (7 bits a channel), built once (~0.6 s, 4 MB).

    Flat tables indexed by (r >> 1) << 14 | (g >> 1) << 7 | b >> 1: palette index (int8)
    and alpha in percent (uint8). Looking up is ~20x faster than the arithmetic.
    """
    c = np.arange(128, dtype=np.float32) * 2 + 0.5  # centre of the bin {2i, 2i + 1}
    g, b = (a.ravel() for a in np.meshgrid(c, c, indexing="ij"))
    parts = [_classify_rgb(np.stack([np.full_like(g, r), g, b], 1)) for r in c]
    cls = np.concatenate([k for k, _ in parts])
    alpha = np.concatenate([np.clip(np.round(a * 100), 0, 255).astype(np.uint8) for _, a in parts])
    return cls, alpha


def _edge_blur(alpha: np.ndarray, fg: np.ndarray) -> float:
    """How blurred the image's edges are: the std in px of a matching Gaussian blur, 0 if crisp.

    An edge blurred by a Gaussian of std sigma has a band 2.07 sigma wide where
    alpha is in (15%, 85%); the edges' length is estimated by the foreground's
    4-neighbour transitions (1 to 1.41 per unit length, EDGE_STEPS on average).
    """
    soft = np.count_nonzero((alpha > 15) & (alpha < 85))
    steps = np.count_nonzero(fg[1:] != fg[:-1]) + np.count_nonzero(fg[:, 1:] != fg[:, :-1])
    return soft / (2.07 * steps / EDGE_STEPS) if steps else 0.0


def _template(shape: str, s: float, cx, cy, u, v, blur: float) -> np.ndarray:
    """_mask blurred by a Gaussian of std `blur` (cell units), cut at 50%: corners round like the image's."""
    if blur <= 0 or shape == "circle":  # a disc's 50% contour barely moves under blur
        return _mask(shape, s, cx, cy, u, v)
    h, x, y = s / 2, u - cx, v - cy
    if shape == "square":  # separable: a blurred interval in x times one in y
        p = (ndtr((h - x) / blur) + ndtr((h + x) / blur) - 1) * (ndtr((h - y) / blur) + ndtr((h + y) / blur) - 1)
    else:  # triangle: product of its three blurred half-planes (approximate near the corners)
        rise, side = y + h, np.sqrt(5) * blur  # rise: height below the apex; sides have slope 2
        p = ndtr((h - y) / blur) * ndtr((rise - 2 * x) / side) * ndtr((rise + 2 * x) / side)
    return p >= 0.5


def _candidates(shape: str) -> tuple[np.ndarray, ...]:
    """Template width, sub-pixel shift (px) and centroid-to-centre lift (cells), each (C, 1, 1).

    C = sizes x shifts, size-major. A triangle's centroid lies s/6 below its box centre.
    """
    sy, sx = (a.ravel() for a in np.meshgrid(_SHIFTS, _SHIFTS, indexing="ij"))  # (S,) each
    w = np.repeat([SIZE_FRACTION[z] for z in SIZES], len(sx))  # (C,)
    lift = w / 6 if shape == "triangle" else np.zeros_like(w)
    return tuple(a[:, None, None] for a in (w, np.tile(sx, len(SIZES)), np.tile(sy, len(SIZES)), lift))


_CANDIDATES = {shape: _candidates(shape) for shape in SHAPES}


def _fit(
    mask: np.ndarray, y0: int, x0: int, grid: np.ndarray, blur: float, cells: int
) -> tuple[float, str, str, float, float]:
    """Best (iou, shape, size, cx, cy) for one component.

    mask: the component's (h, w) bounding-box crop, at pixel (y0, x0); grid: _centres(R, cells);
    blur: the image's edge blur in px (0: crisp templates); cells: the scene's grid size.
    """
    res = len(grid)
    cell = res / cells  # pixels per cell
    ys, xs = np.nonzero(mask)
    py, px = ys.mean() + y0, xs.mean() + x0  # centroid, pixel index units
    gy, gx = (py + 0.5) / cell, (px + 0.5) / cell  # centroid, cell units
    reach = (SIZE_FRACTION["large"] * 2 / 3) * cell + 1  # px: any template's extent from the centroid
    ya, xa = max(min(y0 - 1, int(py - reach)), 0), max(min(x0 - 1, int(px - reach)), 0)  # window: bbox + 1 px
    yb = min(max(y0 + mask.shape[0] + 1, int(np.ceil(py + reach)) + 1), res)  # and every template
    xb = min(max(x0 + mask.shape[1] + 1, int(np.ceil(px + reach)) + 1), res)
    win = np.zeros((yb - ya, xb - xa), np.float32)  # (h', w')
    win[y0 - ya : y0 - ya + mask.shape[0], x0 - xa : x0 - xa + mask.shape[1]] = mask
    win_ones = np.stack([win.ravel(), np.ones(win.size, np.float32)], 1)  # (h' w', 2)
    u, v = grid[None, xa:xb], grid[ya:yb, None]  # (1, w'), (h', 1)
    best = (-1.0, "", "", 0.0, 0.0)
    for shape in SHAPES:  # all sizes and sub-pixel shifts of one shape at once
        s, sx, sy, lift = _CANDIDATES[shape]  # (C, 1, 1) each
        cx, cy = gx + sx / cell, gy + sy / cell - lift  # (C, 1, 1) template centres, cell units
        t = _template(shape, s, cx, cy, u, v, blur / cell)  # (C, h', w')
        inter, t_area = (t.reshape(len(t), -1).astype(np.float32) @ win_ones).T  # (C,) each, counted by matmul
        iou = inter / (t_area + len(ys) - inter)  # (C,)
        i = int(iou.argmax())
        if iou[i] > best[0]:
            best = (float(iou[i]), shape, SIZES[i // len(_SHIFTS) ** 2], float(cx.flat[i]), float(cy.flat[i]))
    return best


def parse(image, grid: int = GRID) -> Scene:
    """Read an image of a grid x grid world back into a Scene (objects' jitter estimated).

    image: uint8 (R, R, 3), numpy or torch (R / grid >= MIN_CELL_PX; see SIZE_FRACTION). Steps:
    pixels -> palette colour or background (_classify_rgb); connected components per
    colour, each bright or dim by its brightest pixels (TONE_SPLIT); components smaller than MIN_AREA of a small triangle are speckle; each
    component's shape and size is the template (shape, size) of best IoU, placed at
    the component's centroid (searched +-0.25 px) and blurred as much as the image's
    edges are (_edge_blur); the cell is the one holding the fitted centre. Nothing is
    dropped but speckle: a component no template fits to MIN_IOU is a BLOB object, two
    components in one cell are two objects, and an object straddling cells keeps its large
    jitter (placed() is False), so a judge counts each of them.
    """
    if hasattr(image, "detach"):  # torch tensor, without importing torch here
        image = image.detach().cpu().numpy()
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3 or img.shape[0] != img.shape[1]:
        raise ValueError(f"expected a square uint8 (R, R, 3) image, got {img.dtype} {img.shape}")
    res = img.shape[0]
    if res < MIN_CELL_PX * check_grid(grid):
        raise ValueError(f"a {grid}x{grid} world needs images of >= {MIN_CELL_PX * grid} px to parse, got {res}")
    q = (img >> 1).astype(np.int32)  # 7-bit channels
    flat = q[..., 0] << 14 | q[..., 1] << 7 | q[..., 2]  # (R, R) index into the tables
    cls_table, alpha_table = _lut()
    cls = cls_table[flat]  # (R, R) palette index or -1
    alpha = alpha_table[flat]  # (R, R) percent
    blur = TEMPLATE_BLUR * _edge_blur(alpha, cls >= 0)  # px
    blur = blur if blur >= MIN_BLUR else 0.0  # crisp templates for crisp images: keeps parse exact
    texts = read_texts(img, grid)  # white glyphs (and grey plates) lie on no palette segment: cls never sees them
    present = np.flatnonzero(np.bincount(cls.ravel() + 1, minlength=len(COLOURS) + 1)[1:])  # colours seen
    if len(present) == 0:
        return Scene((), grid, texts)
    planes = cls[None] == present[:, None, None]  # (P, R, R), one plane per colour present
    labels, _ = ndimage.label(planes, structure=_PLANES)  # (P, R, R)
    areas = np.bincount(labels.ravel())
    min_area = MIN_AREA * (SIZE_FRACTION["small"] * res / grid) ** 2 / 2
    centres = _centres(res, grid)
    found = []
    for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None or areas[lab] < min_area:
            continue
        k, ys, xs = sl
        mask = labels[k.start, ys, xs] == lab  # (h, w)
        iou, shape, size, cx, cy = _fit(mask, ys.start, xs.start, centres, blur, grid)
        if iou < MIN_IOU:  # not a shape: reported where its centroid is, as a blob
            shape, size = BLOB, SIZES[-1]
            cy, cx = (np.argwhere(mask).mean(0) + (ys.start, xs.start) + 0.5) * grid / res
        row, col = min(max(int(cy), 0), grid - 1), min(max(int(cx), 0), grid - 1)
        dx, dy = round(cx - col - 0.5, 3), round(cy - row - 0.5, 3)  # jitter estimate, ~0.5 px accurate
        strength = np.percentile(alpha[ys, xs][mask], TONE_QUANTILE) / 100  # blur only lowers the rim
        tone = TONES[0] if strength >= TONE_SPLIT else TONES[1]
        found.append(Obj(shape, _NAMES[present[k.start]], size, row, col, float(dx), float(dy), tone))
    return Scene(tuple(found), grid, texts)


# ---------------------------------------------------------------- datasets


def shapes_dataset(
    n: int, resolution: int = 32, split: str = "train", seed: int = 0, max_objects: int = MAX_OBJECTS,
    captions: str = "all", min_objects: int = 1, count_weights: tuple[float, ...] | None = None, grid: int = GRID,
    uniform: float = 0.0, tones: bool = False, text: float = 0.0, caption_kinds: dict[str, float] | None = None,
) -> datasets.Dataset:
    """A datasets.Dataset with columns image (PIL RGB), text, scene (JSON), n_objects; deterministic in seed.

    `captions` names the phrasings the text column draws from (grammar.CAPTION_SETS: "all" or "complete");
    `caption_kinds` reweighs the "all" set's kinds of description (grammar.DESCRIPTION_KINDS).
    """
    import datasets  # heavy import, only needed here
    from PIL import Image

    from train.data.grammar import caption  # the grammar builds on this module

    scenes = sample_scenes(n, seed, split, max_objects, min_objects, count_weights, grid, uniform, tones, text)
    text_rng = np.random.default_rng([seed, 1])  # own stream: captions never shift the scenes
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "text": datasets.Value("string"),
            "scene": datasets.Value("string"),
            "n_objects": datasets.Value("int32"),
        }
    )
    return datasets.Dataset.from_dict(
        {
            "image": [Image.fromarray(render(s, resolution), "RGB") for s in scenes],
            "text": [caption(s, text_rng, captions, caption_kinds) for s in scenes],
            "scene": [s.to_json() for s in scenes],
            "n_objects": [len(s.objects) for s in scenes],
        },
        features=features,
    )
