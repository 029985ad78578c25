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

Every target object avoids its pair's held-out cell, except in `heldout` (where one object
is held out) and `demo`'s single_heldout; every prompt but `phrasings`' is in a phrasing
training uses. Prompts and targets are a pure function of SUITE_VERSION and the grid:
change the version whenever a suite changes, so results stay comparable.
"""

from __future__ import annotations

from collections.abc import Callable

from eval.faithfulness import PAIRS, PromptSpec, demo_prompts, heldout_cell, make_obj, seen_cell
from train.data import grammar, shapes
from train.data.grammar import Description, Form, Mention, Relation

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
}
DEFAULT_SUITES: tuple[str, ...] = tuple(s for s in SUITES if s != "demo")  # the demo's prompts overlap position/heldout


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


__all__ = ["DEFAULT_SUITES", "SUITES", "SUITE_VERSION", "get_suites"]
