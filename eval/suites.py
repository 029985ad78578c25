"""Versioned prompt suites on the shapes world, in the categories GenEval uses (extended).

Each suite is one category; each prompt carries its constraints (the meaning of its
description in the world's caption grammar, train.data.grammar: `faithfulness.PromptSpec`)
and one target scene that satisfies them. Suites are built for a world's grid size
(`get_suites(names, grid)`): 3x3 for the CPU demo's runs, 4x4 for scenes of up to 16 objects.

    single_object  "a red circle", "a red shape", "a large circle"   1 object, partly named, anywhere
    colour         "a red shape in the top left"                    1 object: colour and cell
    shape          "a circle in the top left"                       1 object: shape and cell
    counting       "three red circles", "five squares"              n = 1..min(10, cells - 1) objects, each as
                                                                    named (accuracy per n: the groups)
    position       "a red circle in the top left"                   colour, shape and a seen cell
    relation       "a red circle above a blue square"               2 objects: above, below, left of,
                                                                    right of, next to
    binding        "a red circle and a blue square"                 2-3 objects, distinct colours and shapes
    many_objects   10-16 objects, each colour, shape and cell       (4x4; cells-6..cells on other grids)
    heldout        "a red circle in the center"                     a (colour, shape, cell) never seen in
                                                                    training, alone or beside a seen object
    phrasings      "a picture of a red circle above a blue square"  phrasings training never uses
                                                                    (grammar.HELDOUT_FORMS), all known words
    demo           the 48 prompts of `tessera demo`                 (faithfulness.demo_prompts)
    text           'the word "K7QD" starting in the top left'       20 strings held out of training (spelling,
                   'a sign that reads "XJ" in the bottom row'       not recall): start cell, row, sign, numbers
    text_objects   'a red circle left of the word "XJ"'             16: held-out strings beside objects, and
                                                                    relations between an object and a string

Every target object avoids its pair's held-out cell, except in `heldout` (where one object
is held out) and `demo`'s single_heldout; every prompt but `phrasings`' is in a phrasing
training uses. The text suites (TEXT_SUITES) are not among the defaults but for runs trained on text. Prompts and targets are a pure function of SUITE_VERSION and the grid:
change the version whenever a suite changes, so results stay comparable.
"""

from __future__ import annotations

from collections.abc import Callable

from eval.faithfulness import PAIRS, PromptSpec, demo_prompts, heldout_cell, make_obj, seen_cell
import numpy as np

from train.data import glyphs, grammar, shapes
from train.data.grammar import Description, Form, Mention, Relation, TextMention

SUITE_VERSION = 2
_COLOURS = tuple(shapes.COLOURS)


class _World:
    """Helpers for one grid size."""

    def __init__(self, grid: int):
        self.grid, self.cells, self.held = grid, grid * grid, heldout_cell(grid)

    def obj(self, pair: tuple[str, str], cell: int) -> shapes.Obj:
        return make_obj(pair, cell, self.grid)

    def scene(self, *objs: shapes.Obj) -> shapes.Scene:
        return shapes.Scene(tuple(objs), self.grid)

    def scene_with(self, *texts: glyphs.Text) -> shapes.Scene:
        return shapes.Scene((), self.grid, tuple(texts))

    def seen(self, pair: tuple[str, str], start: int, taken: tuple[int, ...] = ()) -> int:
        return seen_cell(pair, start % self.cells, taken, self.grid)

    def spec(self, mentions, target: shapes.Scene, category: str, relations=(), form: Form = Form(),
             group: str = "") -> PromptSpec:
        return PromptSpec.of(Description(tuple(mentions), tuple(relations), self.grid), target, category, form, group)


def single_object(w: _World) -> list[PromptSpec]:
    """27 partial prompts: every (colour, shape) pair as 'a red circle', 6 'a red shape', 3 'a large circle'."""
    out = []
    for i, pair in enumerate(PAIRS):
        o = w.obj(pair, w.seen(pair, 5 * i))
        out.append(w.spec([Mention(*pair)], w.scene(o), "single_object"))
    for i, c in enumerate(_COLOURS):
        pair = (c, shapes.SHAPES[i % 3])
        o = w.obj(pair, w.seen(pair, 3 * i + 1))
        out.append(w.spec([Mention(colour=c)], w.scene(o), "single_object"))
    for i, s in enumerate(shapes.SHAPES):
        pair = (_COLOURS[2 * i + 1], s)
        o = w.obj(pair, w.seen(pair, 4 * i + 2))
        out.append(w.spec([Mention(shape=s, size=o.size)], w.scene(o), "single_object"))
    return out


def colour(w: _World) -> list[PromptSpec]:
    """18: each colour in 3 cells, as 'a red shape in the top left'."""
    out = []
    for i, c in enumerate(_COLOURS):
        taken: list[int] = []
        for j in range(3):
            pair = (c, shapes.SHAPES[(i + j) % 3])
            taken.append(w.seen(pair, i + w.grid * j + j, tuple(taken)))
            o = w.obj(pair, taken[-1])
            out.append(w.spec([Mention(colour=c, cell=(o.row, o.col))], w.scene(o), "colour"))
    return out


def shape(w: _World) -> list[PromptSpec]:
    """18: each shape in 6 cells, as 'a circle in the top left'."""
    out = []
    for i, s in enumerate(shapes.SHAPES):
        taken: list[int] = []
        for j in range(6):
            pair = (_COLOURS[(i + 2 * j) % len(_COLOURS)], s)
            taken.append(w.seen(pair, 3 * i + j * (w.cells // 6 + 1), tuple(taken)))
            o = w.obj(pair, taken[-1])
            out.append(w.spec([Mention(shape=s, cell=(o.row, o.col))], w.scene(o), "shape"))
    return out


def counting(w: _World) -> list[PromptSpec]:
    """4 per count n = 1..min(10, cells - 1): 'three red circles' (twice), 'three squares', 'three red shapes'."""
    out = []
    for n in range(1, min(10, w.cells - 1) + 1):  # a pair is seen in all cells but one
        for j in range(4):
            pair = PAIRS[(7 * j + 5 * n) % len(PAIRS)]
            cells: list[int] = []
            for k in range(n):
                cells.append(w.seen(pair, 2 * j + 3 * k + n, taken=tuple(cells)))
            mention = Mention(*pair) if j < 2 else Mention(shape=pair[1]) if j == 2 else Mention(colour=pair[0])
            target = w.scene(*(w.obj(pair, c) for c in cells))
            out.append(w.spec([mention] * n, target, "counting", group=f"n={n}"))
    return out


def position(w: _World) -> list[PromptSpec]:
    """18: every pair once at a seen cell, as 'a red circle in the top left'."""
    return [PromptSpec.from_scene(w.scene(w.obj(pair, (w.held[pair] + 4 + i % 2) % w.cells)), "position")
            for i, pair in enumerate(PAIRS)]


def relation(w: _World) -> list[PromptSpec]:
    """20: 4 each of above, below, left of, right of and next to, as 'a red circle above a blue square'."""
    out, g = [], w.grid
    for j in range(20):
        a, b = PAIRS[(5 * j) % 18], PAIRS[(5 * j + 7) % 18]  # distinct pairs
        kind = ("above", "below", "left_of", "right_of", "next_to")[j // 4]
        for shift in range(w.cells):  # the first placement that keeps both objects at seen cells
            line, near = (j + shift) % g, (j // 2 + shift // g) % (g - 1)  # near < far
            far = near + 1 if kind == "next_to" or j % 2 else g - 1
            first, second = (far, near) if kind in ("below", "right_of") else (near, far)
            if kind in ("above", "below"):
                cell_a, cell_b = first * g + line, second * g + line
            else:  # left of, right of, next to: along a row
                cell_a, cell_b = line * g + first, line * g + second
            if cell_a != w.held[a] and cell_b != w.held[b]:
                break
        oa, ob = w.obj(a, cell_a), w.obj(b, cell_b)
        out.append(w.spec([Mention(*a), Mention(*b)], w.scene(oa, ob), "relation", [Relation(0, kind, 1)]))
    return out


def _distinct(j: int, k: int) -> list[tuple[str, str]]:
    """k pairs of distinct colours and distinct shapes (k <= 3)."""
    out = [PAIRS[(5 * j) % 18]]
    for step in range(1, 18 * 3):
        p = PAIRS[(5 * j + 4 * step) % 18]
        if len(out) < k and all(p[0] != q[0] and p[1] != q[1] for q in out):
            out.append(p)
    return out


def binding(w: _World) -> list[PromptSpec]:
    """18: 12 of two and 6 of three objects of distinct colours and shapes, as 'a red circle and a blue square'."""
    out = []
    for j in range(18):
        pairs = _distinct(j, 2 if j < 12 else 3)
        cells: list[int] = []
        for k, p in enumerate(pairs):
            cells.append(w.seen(p, 2 * j + 4 * k, taken=tuple(cells)))
        target = w.scene(*(w.obj(p, c) for p, c in zip(pairs, cells)))
        out.append(w.spec([Mention(*p) for p in pairs], target, "binding"))
    return out


def many_objects(w: _World) -> list[PromptSpec]:
    """12 fully specified scenes of cells-6..cells objects (10..16 at 4x4), every object at a seen cell."""
    out = []
    counts = list(range(max(2, w.cells - 6), w.cells + 1))
    for j in range(12):
        n = counts[j % len(counts)]
        cells = [(7 * j + 5 * k) % w.cells for k in range(w.cells)]  # 5 is coprime to 9 and 16: every cell once
        objs = []
        for k, cell in enumerate(cells[:n]):
            pair = next(p for t in range(18) if w.held[p := PAIRS[(5 * j + 11 * k + t) % 18]] != cell)
            objs.append(w.obj(pair, cell))
        out.append(PromptSpec.from_scene(w.scene(*objs), "many_objects", group=f"n={n}"))
    return out


def heldout(w: _World) -> list[PromptSpec]:
    """24: each of the 18 held-out (colour, shape, cell) alone, and 6 of them beside a seen object."""
    out = [PromptSpec.from_scene(w.scene(w.obj(pair, w.held[pair])), "heldout") for pair in PAIRS]
    for j in range(6):
        pair, other = PAIRS[3 * j + 1], PAIRS[(3 * j + 8) % 18]
        cell = w.held[pair]
        scene = w.scene(w.obj(pair, cell), w.obj(other, w.seen(other, cell + 5, taken=(cell,))))
        out.append(PromptSpec.from_scene(scene, "heldout"))
    return out


def phrasings(w: _World) -> list[PromptSpec]:
    """20: 4 prompts in each held-out phrasing (grammar.HELDOUT_FORMS), on seen compositions."""
    rel, count, bind, pos = relation(w), counting(w), binding(w), position(w)
    cases = [  # (held-out form name, form, the suite prompts it rephrases)
        ("picture_relation", Form(frame="picture"), rel[::5]),
        ("copula_second_word", Form(word=1, copula=True), rel[2::5]),
        ("there_place_first", Form(frame="there", place_first=True), pos[1::5]),
        ("image_count", Form(frame="image"), [p for p in count if len(p.objects) > 1][1::7]),
        ("background_binding", Form(frame="background"), bind[3::4]),
    ]
    out = []
    for name, form, prompts in cases:
        for p in prompts[:4]:
            desc = Description(p.objects, p.relations, w.grid)
            if grammar.heldout_form(form, desc) != name:
                raise AssertionError(f"{name}: {p.text!r} in {form} is not that held-out phrasing")
            out.append(PromptSpec.of(desc, p.target, "phrasings", form, group=name))
    return out


def _heldout_strings(w: _World, lengths: list[int], digits: bool = False, stream: int = 0) -> list[str]:
    """Held-out strings (glyphs.heldout_string) of the given lengths, fixed by SUITE_VERSION, the grid and stream."""
    rng = np.random.default_rng([SUITE_VERSION, 21, w.grid, int(digits), stream])
    alphabet = "0123456789" if digits else glyphs.ALPHABET
    out: list[str] = []
    for n in lengths:
        while True:
            s = "".join(alphabet[i] for i in rng.integers(len(alphabet), size=n))
            if glyphs.heldout_string(s) and s not in out and not (s.isdigit() and not digits):
                out.append(s)
                break
    return out


def _text_lengths(w: _World, k: int) -> list[int]:
    top = min(glyphs.MAX_CHARS, w.grid)
    return [2 + i % (top - 1) for i in range(k)]  # 2..top in turn


def text(w: _World) -> list[PromptSpec]:
    """20 strings held out of training: 8 at a start cell, 8 in a row (4 of them on a sign), 4 numbers."""
    out, g = [], w.grid
    words = _heldout_strings(w, _text_lengths(w, 16))
    for j, s in enumerate(words):
        row, col = j % g, (3 * j) % (g - len(s) + 1)
        sign = j >= 12
        t = glyphs.Text(row, col, s, sign)
        mention = TextMention.of(t, "cell" if j < 8 else "row", sign=sign)
        out.append(PromptSpec.of(Description((), (), g, (mention,)), w.scene_with(t), "text",
                                 group="cell" if j < 8 else "sign" if sign else "row"))
    for j, s in enumerate(_heldout_strings(w, _text_lengths(w, 4), digits=True)):
        t = glyphs.Text((j + 1) % g, j % (g - len(s) + 1), s)
        out.append(PromptSpec.of(Description((), (), g, (TextMention.of(t, "row"),)), w.scene_with(t), "text",
                                 group="number"))
    return out


def text_objects(w: _World) -> list[PromptSpec]:
    """16: 8 held-out strings at a start cell beside 1-2 objects at seen cells, and 8 relations between an
    object and a held-out string ('a red circle left of the word "XJ"', 'the word "XJ" above a blue square')."""
    out, g = [], w.grid
    beside = _heldout_strings(w, _text_lengths(w, 8), stream=1)
    related = _heldout_strings(w, [2 + i % (g - 2) for i in range(8)], stream=2)  # a free cell beside them
    for j, s in enumerate(beside + related):
        row = (j + 2) % g
        if j < 8:  # objects and a string, each fully placed
            t = glyphs.Text(row, (j % 2) * (g - len(s)), s)
            cells: list[int] = [r * g + c for r, c in t.cells()]
            objs = []
            for k in range(1 + j % 2):
                pair = PAIRS[(5 * j + 7 * k) % 18]
                cell = w.seen(pair, 3 * j + 5 * k + 1, taken=tuple(cells))
                cells.append(cell)
                objs.append(w.obj(pair, cell))
            desc = Description(tuple(Mention.exact(o) for o in objs), (), g, (TextMention.of(t, "cell"),))
            target = shapes.Scene(tuple(objs), g, (t,))
            out.append(PromptSpec.of(desc, target, "text_objects", Form(text_first=bool(j % 3 == 0)), group="and"))
            continue
        kind = ("above", "below", "left_of", "right_of")[j % 4]
        if kind in ("above", "below"):  # the object above (below) a string in the bottom (top) row
            t = glyphs.Text(g - 1 if kind == "above" else 0, 0, s)
            cell = (0 if kind == "above" else g - 1) * g + (j % g)
        else:  # the object left of the string; the string right of the object
            t, cell = glyphs.Text(row, 1, s), row * g
        pair = next(p for k in range(18) if w.held[p := PAIRS[(5 * j + k) % 18]] != cell)
        o = w.obj(pair, cell)
        a, b = (t, o) if kind == "right_of" else (o, t)
        if not grammar.RELATIONS[kind][1](a, b):
            raise AssertionError(f"text_objects: {kind} does not hold for {a} and {b}")
        first_text = kind == "right_of"  # 'the word "XJ" right of a red circle'
        rel = Relation(1, kind, 0) if first_text else Relation(0, kind, 1)
        desc = Description((Mention(*pair),), (rel,), g, (TextMention(s),))
        out.append(PromptSpec.of(desc, shapes.Scene((o,), g, (t,)), "text_objects", group="relation"))
    return out


SUITES: dict[str, Callable[[_World], list[PromptSpec]]] = {
    "single_object": single_object,
    "colour": colour,
    "shape": shape,
    "counting": counting,
    "position": position,
    "relation": relation,
    "binding": binding,
    "many_objects": many_objects,
    "heldout": heldout,
    "phrasings": phrasings,
    "demo": lambda w: demo_prompts(w.grid),
    "text": text,
    "text_objects": text_objects,
}
TEXT_SUITES: tuple[str, ...] = ("text", "text_objects")  # for runs trained on text (data.text > 0)
# the demo's prompts overlap position / heldout; the text suites ask for what only a text run learns
DEFAULT_SUITES: tuple[str, ...] = tuple(s for s in SUITES if s != "demo" and s not in TEXT_SUITES)


def get_suites(names: list[str] | tuple[str, ...] | None = None, grid: int = shapes.GRID) -> dict[str, list[PromptSpec]]:
    """{suite: prompts} for `names` (default: DEFAULT_SUITES) on a grid x grid world.

    Unknown names raise ValueError listing the known ones.
    """
    names = list(names or DEFAULT_SUITES)
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        raise ValueError(f"unknown suite {unknown[0]!r} (known: {', '.join(SUITES)})")
    w = _World(shapes.check_grid(grid))
    return {n: SUITES[n](w) for n in dict.fromkeys(names)}


__all__ = ["DEFAULT_SUITES", "SUITES", "SUITE_VERSION", "TEXT_SUITES", "get_suites"]
