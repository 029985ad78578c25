"""The evaluation suites: well formed, and scored exactly (their own targets 100%, each broken constraint 0%)."""

import dataclasses
from collections import Counter

import numpy as np
import pytest

from eval import faithfulness as F
from eval import suites
from train.data import grammar as G
from train.data import shapes as S
from train.data.shapes import Obj, Scene

GRIDS = (3, 4)
ALL = {g: suites.get_suites(list(suites.SUITES), g) for g in GRIDS}
PROMPTS = {g: [(name, p) for name, ps in ALL[g].items() for p in ps] for g in GRIDS}


def res(grid: int) -> int:
    return 8 * grid  # the smallest resolution parse reads: 24 px at 3x3, 32 px at 4x4


@pytest.mark.parametrize("grid", GRIDS)
def test_suites_are_fixed_and_well_formed(grid):
    assert suites.get_suites(list(suites.SUITES), grid) == ALL[grid]  # a pure function of the code
    for name, ps in ALL[grid].items():
        assert len(ps) >= 12, name
        assert len({p.text for p in ps}) == len(ps), name
        if name != "demo":
            assert {p.category for p in ps} == {name}
        for p in ps:
            assert p.grid == grid and not p.target.crowded()
            heldout = any(S.is_heldout(o, grid) for o in p.target.objects)
            assert heldout == (name == "heldout" or p.category == F.SINGLE_HELDOUT), p.text
            assert len(p.objects) == len(p.target.objects)
            # the text is the grammar's phrasing of the prompt's meaning, in a training form but for `phrasings`
            desc = G.Description(p.objects, p.relations, grid, p.texts)
            forms = [f for f in _forms() if G.realise(desc, f) == p.text]
            assert forms, p.text
            held = [G.heldout_form(f, desc) is not None for f in forms]
            assert all(held) if name == "phrasings" else not all(held), p.text  # never / also said in training
    counts = Counter(len(p.objects) for p in ALL[grid]["counting"])
    assert counts == {n: 4 for n in range(1, min(10, grid * grid - 1) + 1)}
    assert {p.group for p in ALL[grid]["counting"]} == {f"n={n}" for n in counts}
    assert Counter(r.kind for p in ALL[grid]["relation"] for r in p.relations) == {k: 4 for k in G.RELATIONS}
    many = [len(p.objects) for p in ALL[grid]["many_objects"]]
    assert min(many) == grid * grid - 6 and max(many) == grid * grid
    assert {p.group for p in ALL[grid]["phrasings"]} == set(G.HELDOUT_FORMS)


def _forms():
    return [G.Form(frame, place_first, word, copula, text_word, text_first) for frame in G.FRAMES
            for place_first in (False, True) for word in (0, 1) for copula in (False, True)
            for text_word in range(len(G.TEXT_WORDS)) for text_first in (False, True)]


def test_4x4_suites_reach_counts_of_10_and_16_objects():
    assert max(len(p.objects) for p in ALL[4]["counting"]) == 10
    assert [len(p.objects) for p in ALL[4]["many_objects"]].count(16) >= 1
    assert min(len(p.objects) for p in ALL[4]["many_objects"]) == 10


def test_unknown_suite_is_named():
    with pytest.raises(ValueError, match="unknown suite 'colours'.*colour"):
        suites.get_suites(["colours"])
    assert list(suites.get_suites(None)) == list(suites.DEFAULT_SUITES)
    with pytest.raises(ValueError, match="grid must be one of 3, 4"):
        suites.get_suites(["colour"], grid=5)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("size", S.SIZES)
def test_rendered_targets_score_100_percent(grid, size):
    specs = [p for _, p in PROMPTS[grid]]
    resized = [Scene(tuple(dataclasses.replace(o, size=size) if p.objects[0].size is None else o
                           for o in p.target.objects), grid, p.target.texts) for p in specs]
    report = F.score_images([S.render(s, res(grid)) for s in resized], specs)
    assert report.failures == [] and report.accuracy == 1.0
    assert all(c["accuracy"] == 1.0 and (c["object_accuracy"] == 1.0 or not c["objects"])
               for c in report.categories.values())
    assert all(c["rate"] == 1.0 for c in report.constraints.values())
    assert set(report.groups["counting"]) == {p.group for p in specs if p.category == "counting"}
    assert all(c["exact_rate"] == 1.0 and c["char_accuracy"] == 1.0 for c in report.categories.values()
               if c.get("strings"))


def _free_cell(scene: Scene) -> tuple[int, int]:
    taken = {(o.row, o.col) for o in scene.objects} | {cell for t in scene.texts for cell in t.cells()}
    return next((r, c) for r in range(scene.grid) for c in range(scene.grid) if (r, c) not in taken)


def _next(values, v):
    values = list(values)
    return values[(values.index(v) + 1) % len(values)]


def violate(p: F.PromptSpec, kind: str) -> Scene | None:
    """p's target with one constraint of `kind` broken, or None when p states no such constraint (the text
    suites' strings stay as they are: tests/test_text_world.py breaks those)."""
    objs, g, texts = list(p.target.objects), p.grid, p.target.texts
    scene = lambda *o: Scene(o, g, texts)  # noqa: E731
    if kind == "extra" and len(objs) + sum(len(t.string) for t in texts) < g * g:
        row, col = _free_cell(p.target)
        return scene(*objs, Obj("square", "green", "small", row, col))
    if not objs:
        return None
    first, want = objs[0], p.objects[0]
    if kind == "colour" and want.colour:
        return scene(dataclasses.replace(first, colour=_next(S.COLOURS, first.colour)), *objs[1:])
    if kind == "shape" and want.shape:
        return scene(dataclasses.replace(first, shape=_next(S.SHAPES, first.shape)), *objs[1:])
    if kind == "size" and want.size:
        return scene(dataclasses.replace(first, size=_next(S.SIZES, first.size)), *objs[1:])
    if kind == "position" and want.positioned() and len(objs) < g * g:
        row, col = _free_cell(p.target)
        return scene(dataclasses.replace(first, row=row, col=col), *objs[1:])
    if kind == "relation" and p.relations and p.texts:  # between an object and a string: test_text_world
        return None
    if kind == "relation" and p.relations and p.relations[0].kind == "next_to":  # b to another row
        a, b = objs
        row = (a.row + 1) % g
        return scene(a, dataclasses.replace(b, row=row))
    if kind == "relation" and p.relations:  # swap the two objects' cells
        a, b = objs
        return scene(dataclasses.replace(a, row=b.row, col=b.col), dataclasses.replace(b, row=a.row, col=a.col))
    if kind == "missing":
        return scene(*objs[1:])
    return None


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("kind", ["colour", "shape", "size", "position", "relation", "missing", "extra"])
def test_each_broken_constraint_scores_0_percent(grid, kind):
    constraint = "count" if kind in ("missing", "extra") else kind
    broken = [(p, s) for _, p in PROMPTS[grid] if (s := violate(p, kind)) is not None]
    assert len(broken) >= 3, kind  # every suite that states the constraint contributes (size: single_object)
    specs = [p for p, _ in broken]
    images = [S.render(s, res(grid)) for _, s in broken]
    report = F.score_images(images, specs)
    assert report.correct == 0 and report.constraints[constraint]["rate"] == 0.0, report.failures[:3]
    for (p, s), v in zip(broken, F.score_all(images, specs)):
        assert constraint in v.failed, (p.text, v.reason)
        if kind not in ("missing",):  # the scorer pins the failure: nothing else is blamed
            assert v.failed == (constraint,), (p.text, v.reason)


@pytest.mark.parametrize("grid", GRIDS)
def test_an_extra_object_in_an_occupied_cell_fails_the_count(grid):
    """parse sees a second object inside an occupied cell (earlier, the smaller one was invisible)."""
    specs, images = [], []
    for _, p in PROMPTS[grid][::5]:
        if not p.objects or p.objects[0].size is not None or p.texts:
            continue
        first = dataclasses.replace(p.target.objects[0], size="small")  # leaves a quarter of the cell free around it
        r = 4 * res(grid)  # 32 px a cell: the small object keeps 8 px from the cell's edges
        img = S.render(Scene((first, *p.target.objects[1:]), grid), r)
        y0, x0 = first.row * 32, first.col * 32
        img[y0: y0 + 7, x0: x0 + 7] = S.COLOURS[_next(S.COLOURS, first.colour)]  # a 7 px square in the corner
        specs.append(p)
        images.append(img)
    assert len(specs) >= 20
    for p, img, v in zip(specs, images, F.score_all(images, specs)):
        assert v.failed == ("count",) and "extra object" in v.reason, (p.text, v.reason)
