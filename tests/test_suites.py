"""The evaluation suites: well formed, and scored exactly (their own targets 100%, each broken constraint 0%)."""

import dataclasses
from collections import Counter

import pytest

from eval import faithfulness as F
from eval import suites
from train.data import shapes as S
from train.data.shapes import Obj, Scene

RES = 32
ALL = suites.get_suites(list(suites.SUITES))
PROMPTS = [(name, p) for name, ps in ALL.items() for p in ps]


def test_suites_are_fixed_and_well_formed():
    assert suites.get_suites(list(suites.SUITES)) == ALL  # a pure function of the code
    for name, ps in ALL.items():
        assert len(ps) >= 12, name
        assert len({p.text for p in ps}) == len(ps), name
        if name != "demo":
            assert {p.category for p in ps} == {name}
        for p in ps:
            heldout = any(S.is_heldout(o) for o in p.target.objects)
            assert heldout == (name == "heldout" or p.category == F.SINGLE_HELDOUT), p.text
            assert len(p.objects) == len(p.target.objects) and p.text.startswith(("a ", "an ", "two ", "three "))
    counts = Counter(len(p.objects) for p in ALL["counting"])
    assert counts == {n: 6 for n in range(1, S.MAX_OBJECTS + 1)}
    assert {r.kind for p in ALL["relation"] for r in p.relations} == set(S.RELATIONS)
    assert all(p.text in S.captions(p.target) for name, p in PROMPTS), "every prompt is a phrasing the world uses"


def test_unknown_suite_is_named():
    with pytest.raises(ValueError, match="unknown suite 'colours'.*colour"):
        suites.get_suites(["colours"])
    assert list(suites.get_suites(None)) == list(suites.DEFAULT_SUITES)


@pytest.mark.parametrize("size", S.SIZES)
@pytest.mark.parametrize("res", [24, RES])
def test_rendered_targets_score_100_percent(size, res):
    specs = [p for _, p in PROMPTS]
    images = [S.render(Scene(tuple(dataclasses.replace(o, size=size) for o in p.target.objects)), res) for p in specs]
    report = F.score_images(images, specs)
    assert report.failures == [] and report.accuracy == 1.0
    assert all(c["accuracy"] == 1.0 for c in report.categories.values())
    assert all(c["rate"] == 1.0 for c in report.constraints.values())


def _free_cell(scene: Scene) -> tuple[int, int]:
    taken = {(o.row, o.col) for o in scene.objects}
    return next((r, c) for r in range(S.GRID) for c in range(S.GRID) if (r, c) not in taken)


def _next(values, v):
    values = list(values)
    return values[(values.index(v) + 1) % len(values)]


def violate(p: F.PromptSpec, kind: str) -> Scene | None:
    """p's target with one constraint of `kind` broken, or None when p states no such constraint."""
    objs = list(p.target.objects)
    first = objs[0]
    if kind == "colour" and p.objects[0].colour:
        return Scene((dataclasses.replace(first, colour=_next(S.COLOURS, first.colour)), *objs[1:]))
    if kind == "shape" and p.objects[0].shape:
        return Scene((dataclasses.replace(first, shape=_next(S.SHAPES, first.shape)), *objs[1:]))
    if kind == "position" and p.objects[0].cell:
        row, col = _free_cell(p.target)
        return Scene((dataclasses.replace(first, row=row, col=col), *objs[1:]))
    if kind == "relation" and p.relations:  # swap the two objects' cells
        a, b = objs
        return Scene((dataclasses.replace(a, row=b.row, col=b.col), dataclasses.replace(b, row=a.row, col=a.col)))
    if kind == "missing":
        return Scene(tuple(objs[1:]))
    if kind == "extra":
        row, col = _free_cell(p.target)
        return Scene((*objs, Obj("square", "green", "small", row, col)))
    return None


@pytest.mark.parametrize("kind", ["colour", "shape", "position", "relation", "missing", "extra"])
def test_each_broken_constraint_scores_0_percent(kind):
    constraint = "count" if kind in ("missing", "extra") else kind
    broken = [(p, s) for _, p in PROMPTS if (s := violate(p, kind)) is not None]
    assert len(broken) >= 16, kind  # every suite that states the constraint contributes (relation: 16)
    specs = [p for p, _ in broken]
    report = F.score_images([S.render(s, RES) for _, s in broken], specs)
    assert report.correct == 0 and report.constraints[constraint]["rate"] == 0.0, report.failures[:3]
    for (p, s), v in zip(broken, F.score_all([S.render(s, RES) for _, s in broken], specs)):
        assert constraint in v.failed, (p.text, v.reason)
        if kind not in ("missing",):  # the scorer pins the failure: nothing else is blamed
            assert v.failed == (constraint,), (p.text, v.reason)
