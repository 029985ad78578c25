"""Edits of shapes-world scenes: an instruction and its exact result, single or in chains.

An `Edit` is a meaning (what changes), `apply(scene)` its exact result and `instruction`
its text, one of several phrasings. Every kind names only what it changes and refers to
the objects it touches by a description that picks them out in the scene:

    move      "move the red circle to the top left", "move the red circle one cell up"
    recolour  "make the red circle blue", "the same scene with the red circle blue"
    reshape   "turn the red circle into a square"
    resize    "make the red circle large", "make the red circle bigger"
    add       "add a small blue square in the center", "the same scene with ... too"
    remove    "remove the red circle", "the same scene without the red circle"
    swap      "swap the red circle and the blue square"

An object keeps everything an instruction does not name: its size, its cell, and its
tone (shapes.TONES, an identity detail no text ever names), so keeping an object means
keeping all of them. A moved or swapped object keeps its jitter too; an added object is
bright (the tone text-to-image draws) with the size the instruction names.

Editing scenes come from the whole world (split "all"): the compositional held-out split
of the text-to-image suites does not apply to edits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from train.data.grammar import cell_words, with_article
from train.data.shapes import COLOURS, SHAPES, SIZES, Obj, Scene, _random_obj, render, sample_scene

if TYPE_CHECKING:
    import datasets

MAX_TURNS = 5  # the longest chain editing data and the edit suite use

EDIT_KINDS: tuple[str, ...] = ("move", "recolour", "reshape", "resize", "add", "remove", "swap")
DIRECTIONS: dict[str, tuple[int, int]] = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}


@dataclass(frozen=True)
class Edit:
    """One change to a scene. `target` is the object acted on (None for add); `other` the second
    object of a swap; `value` the new colour / shape / size, the new cell (row, col) of a move, or
    the added object."""

    kind: str
    target: Obj | None = None
    other: Obj | None = None
    value: object = None
    direction: str | None = None  # a move given as a direction ("one cell up") rather than a cell

    def apply(self, scene: Scene) -> Scene:
        """The scene after this edit, exactly; raises ValueError if it does not apply to `scene`."""
        objs = list(scene.objects)
        for o in (self.target, self.other):
            if o is not None and o not in objs:
                raise ValueError(f"{self.kind}: {o} is not in the scene")
        if self.kind == "add":
            new = self.value
            if not isinstance(new, Obj) or (new.row, new.col) in _cells(scene):
                raise ValueError(f"add: needs an object for an empty cell, got {new!r}")
            return Scene((*objs, new), scene.grid)
        objs.remove(self.target)
        if self.kind == "remove":
            return Scene(tuple(objs), scene.grid)
        if self.kind == "swap":
            objs.remove(self.other)
            a, b = self.target, self.other
            return Scene((*objs, replace(a, row=b.row, col=b.col), replace(b, row=a.row, col=a.col)), scene.grid)
        field = {"move": None, "recolour": "colour", "reshape": "shape", "resize": "size"}[self.kind]
        if field is None:
            row, col = self.value
            if (row, col) in _cells(scene) or not (0 <= row < scene.grid and 0 <= col < scene.grid):
                raise ValueError(f"move: cell {(row, col)} is taken or outside the grid")
            return Scene((*objs, replace(self.target, row=row, col=col)), scene.grid)
        if getattr(self.target, field) == self.value:
            raise ValueError(f"{self.kind}: the object already has {field} {self.value}")
        return Scene((*objs, replace(self.target, **{field: self.value})), scene.grid)

    def touched(self) -> tuple[Obj, ...]:
        """The source objects this edit changes or removes (everything else must be kept exactly)."""
        return tuple(o for o in (self.target, self.other) if o is not None)

    def instruction(self, scene: Scene, rng: np.random.Generator) -> str:
        """A phrasing of this edit for `scene` (the scene before it)."""
        g = scene.grid
        if self.kind == "add":
            o = self.value
            thing = f"{with_article(f'{o.size} {o.colour} {o.shape}')} in the {cell_words(o.row, o.col, g)}"
            return _pick(rng, [f"add {thing}", f"put {thing}", f"the same scene with {thing} too"])
        a = refer(self.target, scene, rng)
        if self.kind == "remove":
            return _pick(rng, [f"remove {a}", f"delete {a}", f"take away {a}", f"the same scene without {a}"])
        if self.kind == "swap":
            b = refer(self.other, scene, rng)
            return _pick(rng, [f"swap {a} and {b}", f"swap the places of {a} and {b}", f"exchange {a} and {b}"])
        if self.kind == "move":
            if self.direction is not None:
                return _pick(rng, [f"move {a} one cell {self.direction}", f"shift {a} {self.direction}"])
            where = f"the {cell_words(*self.value, g)}"
            return _pick(rng, [f"move {a} to {where}", f"put {a} in {where}", f"move {a} into {where}"])
        if self.kind == "recolour":
            v = self.value
            return _pick(rng, [f"make {a} {v}", f"turn {a} {v}", f"paint {a} {v}", f"the same scene with {a} {v}"])
        if self.kind == "reshape":
            v = with_article(str(self.value))
            return _pick(rng, [f"turn {a} into {v}", f"make {a} {v}", f"change {a} into {v}"])
        if self.kind == "resize":
            word = {"large": "bigger", "small": "smaller"}[str(self.value)]
            return _pick(rng, [f"make {a} {self.value}", f"make {a} {word}", f"the same scene with {a} {self.value}"])
        raise ValueError(f"unknown edit kind {self.kind!r}")


def _cells(scene: Scene) -> set[tuple[int, int]]:
    return {(o.row, o.col) for o in scene.objects}


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def refer(o: Obj, scene: Scene, rng: np.random.Generator | None = None) -> str:
    """A definite description that picks `o` out of `scene`: "the red circle" when it is the only
    red circle (sometimes with its cell anyway, when `rng` is given), else "the red circle in the top left"."""
    unique = sum(p.colour == o.colour and p.shape == o.shape for p in scene.objects) == 1
    bare = f"the {o.colour} {o.shape}"
    if unique and (rng is None or rng.random() < 0.7):
        return bare
    return f"{bare} in the {cell_words(o.row, o.col, scene.grid)}"


def possible_kinds(scene: Scene, max_objects: int) -> list[str]:
    """The kinds of edit that apply to `scene` (add needs an empty cell and room under max_objects)."""
    n, free = len(scene.objects), scene.grid**2 - len(scene.objects)
    kinds = []
    for kind in EDIT_KINDS:
        if kind == "add" and (free == 0 or n >= max_objects):
            continue
        if kind in ("move",) and (n == 0 or free == 0):
            continue
        if kind in ("recolour", "reshape", "resize", "remove") and n == 0:
            continue
        if kind == "swap" and n < 2:
            continue
        kinds.append(kind)
    return kinds


def sample_edit(scene: Scene, rng: np.random.Generator, max_objects: int = 5, kind: str | None = None) -> Edit:
    """A random edit that applies to `scene` (of `kind`, or of any kind that applies, uniformly)."""
    kinds = possible_kinds(scene, max_objects)
    if kind is None:
        if not kinds:
            raise ValueError("no edit applies to this scene")
        kind = _pick(rng, kinds)
    elif kind not in kinds:
        raise ValueError(f"a {kind} edit does not apply to this scene of {len(scene.objects)} objects")
    g, objs = scene.grid, scene.objects
    free = sorted(set(np.ndindex(g, g)) - _cells(scene))
    if kind == "add":
        row, col = free[int(rng.integers(len(free)))]
        new = _random_obj(rng, row * g + col, False, g)  # tones=False: an added object is bright
        return Edit("add", value=new)
    target = objs[int(rng.integers(len(objs)))]
    if kind == "remove":
        return Edit("remove", target)
    if kind == "swap":
        i, j = rng.choice(len(objs), size=2, replace=False)
        return Edit("swap", objs[int(i)], objs[int(j)])
    if kind == "move":
        steps = [d for d, (dr, dc) in DIRECTIONS.items() if (target.row + dr, target.col + dc) in set(free)]
        if steps and rng.random() < 0.3:
            d = _pick(rng, steps)
            dr, dc = DIRECTIONS[d]
            return Edit("move", target, value=(target.row + dr, target.col + dc), direction=d)
        return Edit("move", target, value=free[int(rng.integers(len(free)))])
    options = {"recolour": list(COLOURS), "reshape": list(SHAPES), "resize": list(SIZES)}[kind]
    current = getattr(target, {"recolour": "colour", "reshape": "shape", "resize": "size"}[kind])
    choices = [v for v in options if v != current]
    return Edit(kind, target, value=_pick(rng, choices))


@dataclass(frozen=True)
class Step:
    """One turn of a chain: the instruction, its meaning, and the scenes before and after."""

    instruction: str
    edit: Edit
    before: Scene
    after: Scene


def sample_chain(scene: Scene, rng: np.random.Generator, turns: int, max_objects: int = 5) -> list[Step]:
    """`turns` edits in a row from `scene`, each applied to the result of the one before."""
    steps = []
    for _ in range(turns):
        edit = sample_edit(scene, rng, max_objects)
        after = edit.apply(scene)
        steps.append(Step(edit.instruction(scene, rng), edit, scene, after))
        scene = after
    return steps


def sample_edit_scene(rng: np.random.Generator, grid: int = 3, max_objects: int = 5, min_objects: int = 1) -> Scene:
    """A starting scene for editing: min..max objects of random tones, anywhere (split "all")."""
    return sample_scene(rng, "all", max_objects, min_objects, grid=grid, tones=True)


def preserved(before: Scene, after: Scene, edit: Edit) -> tuple[int, int]:
    """(kept, untouched): how many of the objects `edit` leaves alone appear in `after` exactly
    (shape, colour, size, cell and tone)."""
    untouched = [o for o in before.objects if o not in edit.touched()]
    present = set(after.objects)
    return sum(o in present for o in untouched), len(untouched)


def sample_edit_rows(
    n: int, seed: int = 0, grid: int = 3, max_objects: int = 5, min_objects: int = 1, max_turns: int = MAX_TURNS,
) -> list[Step]:
    """n single edits, deterministic in seed: the turns of chains of 1..max_turns edits from random
    scenes, in order, so a model sees scenes that earlier edits made as well as fresh ones."""
    rng = np.random.default_rng([seed, 18])
    steps: list[Step] = []
    while len(steps) < n:
        start = sample_edit_scene(rng, grid, max_objects, min_objects)
        steps += sample_chain(start, rng, int(rng.integers(1, max_turns + 1)), max_objects)
    return steps[:n]


def edits_dataset(
    n: int, resolution: int = 24, seed: int = 0, grid: int = 3, max_objects: int = 5, min_objects: int = 1,
    max_turns: int = MAX_TURNS,
) -> datasets.Dataset:
    """A datasets.Dataset of n edits with columns source (image before), text (the instruction), image
    (after), source_scene and scene (JSON) and kind: the layout of public instruction-editing sets."""
    import datasets  # heavy import, only needed here
    from PIL import Image

    steps = sample_edit_rows(n, seed, grid, max_objects, min_objects, max_turns)
    features = datasets.Features({
        "source": datasets.Image(), "text": datasets.Value("string"), "image": datasets.Image(),
        "source_scene": datasets.Value("string"), "scene": datasets.Value("string"), "kind": datasets.Value("string"),
    })
    picture = lambda s: Image.fromarray(render(s, resolution), "RGB")  # noqa: E731
    return datasets.Dataset.from_dict({
        "source": [picture(st.before) for st in steps],
        "text": [st.instruction for st in steps],
        "image": [picture(st.after) for st in steps],
        "source_scene": [st.before.to_json() for st in steps],
        "scene": [st.after.to_json() for st in steps],
        "kind": [st.edit.kind for st in steps],
    }, features=features)


def edit_scenes_dataset(
    n: int, resolution: int = 24, seed: int = 0, grid: int = 3, max_objects: int = 5, min_objects: int = 1,
    max_turns: int = MAX_TURNS,
) -> datasets.Dataset:
    """The results of `edits_dataset`'s n edits (same seed, same rows) as text-to-image rows: columns
    image, text (grammar.describe: every object's size, colour, shape and cell; never its tone) and
    scene. What the baselines that regenerate a scene from its description train on."""
    import datasets  # heavy import, only needed here
    from PIL import Image

    from train.data.grammar import describe

    steps = sample_edit_rows(n, seed, grid, max_objects, min_objects, max_turns)
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string"),
                                  "scene": datasets.Value("string")})
    return datasets.Dataset.from_dict({
        "image": [Image.fromarray(render(st.after, resolution), "RGB") for st in steps],
        "text": [describe(st.after) for st in steps],
        "scene": [st.after.to_json() for st in steps],
    }, features=features)


__all__ = ["DIRECTIONS", "EDIT_KINDS", "MAX_TURNS", "Edit", "Step", "edit_scenes_dataset", "edits_dataset", "possible_kinds", "preserved",
           "refer", "sample_chain", "sample_edit", "sample_edit_rows", "sample_edit_scene"]
