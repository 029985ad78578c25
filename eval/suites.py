"""Versioned prompt suites on the shapes world, in the categories GenEval uses (adapted).

Each suite is one category; each prompt carries its constraints (`faithfulness.PromptSpec`:
object specs with the attributes the prompt names, relations) and one target scene that
satisfies them. Prompts are phrased the way the world's captions phrase them
(`shapes.captions`), so a model trained on `data.captions=all` has seen every form;
a model trained on complete captions only (the cpu preset) has seen the forms of
`position`, `heldout` and `demo` alone.

    single_object  "a red circle"                      1 object: colour and shape, anywhere
    colour         "a red shape in the top left"       1 object: colour and cell, any shape
    shape          "a circle in the top left"          1 object: shape and cell, any colour
    counting       "two green triangles"               n = 1..3 objects, each that colour and shape
    position       "a red circle in the top left"      1 object: colour, shape and a cell seen in training
    relation       "a red circle above a blue square"  2 objects and where one is relative to the other
    binding        "a red circle and a blue square"    2 objects, two colours, two shapes, anywhere
    heldout        "a red circle in the center"        colour x shape x cell never seen in training,
                                                       alone or beside a seen object
    demo           the 48 prompts of `tessera demo`    (faithfulness.demo_prompts)

Every target object avoids its pair's held-out cell, except in `heldout` (where one
object is held out) and `demo`'s single_heldout. Prompts and targets are a pure
function of SUITE_VERSION: change it whenever a suite changes, so results stay comparable.
"""

from __future__ import annotations

from collections.abc import Callable

from eval.faithfulness import (
    HELDOUT_CELL,
    PAIRS,
    ObjectSpec,
    PromptSpec,
    Relation,
    demo_prompts,
    make_obj,
    prompt_text,
    seen_cell,
)
from train.data import shapes

SUITE_VERSION = 1
_G = shapes.GRID
_CELLS = _G * _G
_COLOURS = tuple(shapes.COLOURS)


def _scene(*objs: shapes.Obj) -> shapes.Scene:
    return shapes.Scene(tuple(objs))


def single_object() -> list[PromptSpec]:
    """18: every (colour, shape) pair once, as 'a red circle'."""
    out = []
    for i, pair in enumerate(PAIRS):
        target = _scene(make_obj(pair, seen_cell(pair, i % _CELLS)))
        out.append(PromptSpec(shapes.count_phrase(1, *pair), target, "single_object", (ObjectSpec(*pair),)))
    return out


def colour() -> list[PromptSpec]:
    """18: each colour in 3 cells, as 'a red shape in the top left'."""
    out = []
    for i, c in enumerate(_COLOURS):
        for j in range(3):
            cell = (i + 3 * j) % _CELLS  # 3 distinct cells per colour; all 9 cells over the colours
            shape = shapes.SHAPES[(i + j) % 3]
            o = make_obj((c, shape), seen_cell((c, shape), cell))
            text = f"{shapes.with_article(c)} shape {shapes.cell_phrase(o)}"
            out.append(PromptSpec(text, _scene(o), "colour", (ObjectSpec(colour=c, cell=(o.row, o.col)),)))
    return out


def shape() -> list[PromptSpec]:
    """18: each shape in 6 cells, as 'a circle in the top left'."""
    out = []
    for i, s in enumerate(shapes.SHAPES):
        for j in range(6):
            cell = (3 * i + j) % _CELLS
            c = _COLOURS[(i + 2 * j) % len(_COLOURS)]
            o = make_obj((c, s), seen_cell((c, s), cell))
            text = f"{shapes.with_article(s)} {shapes.cell_phrase(o)}"
            out.append(PromptSpec(text, _scene(o), "shape", (ObjectSpec(shape=s, cell=(o.row, o.col)),)))
    return out


def counting() -> list[PromptSpec]:
    """18: n = 1, 2, 3 of six pairs, as 'two green triangles'."""
    out = []
    for n in range(1, shapes.MAX_OBJECTS + 1):
        for j in range(6):
            pair = PAIRS[(7 * j + n) % len(PAIRS)]
            cells: list[int] = []
            for k in range(n):
                cells.append(seen_cell(pair, (2 * j + 3 * k) % _CELLS, taken=tuple(cells)))
            target = _scene(*(make_obj(pair, c) for c in cells))
            out.append(PromptSpec(shapes.count_phrase(n, *pair), target, "counting", (ObjectSpec(*pair),) * n))
    return out


def position() -> list[PromptSpec]:
    """18: every pair once at a seen cell, two pairs per cell, as 'a red circle in the top left'."""
    out = []
    for pair in PAIRS:
        scene = _scene(make_obj(pair, (HELDOUT_CELL[pair] + 4) % _CELLS))  # never the held-out cell; 2 per cell
        out.append(PromptSpec.from_scene(scene, "position"))
    return out


def relation() -> list[PromptSpec]:
    """16: 8 vertical (above / below) and 8 horizontal (left of / right of), as 'a red circle above a blue square'."""
    out = []
    for j in range(16):
        a, b = PAIRS[(5 * j) % 18], PAIRS[(5 * j + 7) % 18]  # distinct pairs
        kind = ("above", "below", "left_of", "right_of")[j // 4]
        near, far = ((0, 2), (0, 1), (1, 2), (0, 2))[j % 4]  # the two rows (or columns), near < far
        first, second = (near, far) if kind in ("above", "left_of") else (far, near)
        for shift in range(_G):  # the shared column (or row): the first that keeps both objects seen
            line = (j + shift) % _G
            if kind in ("above", "below"):
                cell_a, cell_b = first * _G + line, second * _G + line
            else:
                cell_a, cell_b = line * _G + first, line * _G + second
            if cell_a != HELDOUT_CELL[a] and cell_b != HELDOUT_CELL[b]:
                break
        oa, ob = make_obj(a, cell_a), make_obj(b, cell_b)
        text = shapes.relation_phrase(oa, kind, ob)
        objects = (ObjectSpec(*a), ObjectSpec(*b))
        out.append(PromptSpec(text, _scene(oa, ob), "relation", objects, (Relation(0, kind, 1),)))
    return out


def binding() -> list[PromptSpec]:
    """12: two objects of different colours and shapes, as 'a red circle and a blue square'."""
    out = []
    for j in range(12):
        a = PAIRS[(5 * j) % 18]
        b = next(p for k in range(1, 18) if (p := PAIRS[(5 * j + 4 * k) % 18])[0] != a[0] and p[1] != a[1])
        cell_a = seen_cell(a, (2 * j) % _CELLS)
        cell_b = seen_cell(b, (2 * j + 4) % _CELLS, taken=(cell_a,))
        target = _scene(make_obj(a, cell_a), make_obj(b, cell_b))  # captions name objects in (row, col) order
        text = shapes.join_phrases([shapes.count_phrase(1, o.colour, o.shape) for o in target.objects])
        out.append(PromptSpec(text, target, "binding", tuple(ObjectSpec(o.colour, o.shape) for o in target.objects)))
    return out


def heldout() -> list[PromptSpec]:
    """24: each of the 18 held-out (colour, shape, cell) alone, and 6 of them beside a seen object."""
    out = []
    for pair in PAIRS:
        out.append(PromptSpec.from_scene(_scene(make_obj(pair, HELDOUT_CELL[pair])), "heldout"))
    for j in range(6):
        pair = PAIRS[3 * j + 1]
        other = PAIRS[(3 * j + 8) % 18]
        cell = HELDOUT_CELL[pair]
        scene = _scene(make_obj(pair, cell), make_obj(other, seen_cell(other, (cell + 5) % _CELLS, taken=(cell,))))
        out.append(PromptSpec(prompt_text(scene), scene, "heldout"))
    return out


SUITES: dict[str, Callable[[], list[PromptSpec]]] = {
    "single_object": single_object,
    "colour": colour,
    "shape": shape,
    "counting": counting,
    "position": position,
    "relation": relation,
    "binding": binding,
    "heldout": heldout,
    "demo": demo_prompts,
}
DEFAULT_SUITES: tuple[str, ...] = tuple(s for s in SUITES if s != "demo")  # the demo's prompts overlap position/heldout


def get_suites(names: list[str] | tuple[str, ...] | None = None) -> dict[str, list[PromptSpec]]:
    """{suite: prompts} for `names` (default: DEFAULT_SUITES); unknown names raise ValueError listing the known ones."""
    names = list(names or DEFAULT_SUITES)
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        raise ValueError(f"unknown suite {unknown[0]!r} (known: {', '.join(SUITES)})")
    return {n: SUITES[n]() for n in dict.fromkeys(names)}


__all__ = ["DEFAULT_SUITES", "SUITES", "SUITE_VERSION", "get_suites"]
