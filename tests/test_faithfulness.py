"""Prompt faithfulness scoring: the demo prompts' split, exact scoring of rendered targets, each failure caught."""

import dataclasses
import json
from collections import Counter

import numpy as np
import pytest

from eval import faithfulness as F
from train.data import grammar as G
from train.data import shapes as S
from train.data.shapes import Obj, Scene

PROMPTS = F.demo_prompts()
RES = 32


def free_cell(scene: Scene) -> tuple[int, int]:
    """The first cell no object of `scene` occupies."""
    taken = {(o.row, o.col) for o in scene.objects}
    return next((r, c) for r in range(S.GRID) for c in range(S.GRID) if (r, c) not in taken)


def other(values, v):
    """The value after v in values, cyclically: always different from v."""
    values = list(values)
    return values[(values.index(v) + 1) % len(values)]


# ---------------------------------------------------------------- demo prompts


def test_demo_prompt_counts_and_uniqueness():
    counts = Counter(p.category for p in PROMPTS)
    assert counts == {F.SINGLE_HELDOUT: 18, F.SINGLE_SEEN: 18, F.TWO_OBJECT: 12}
    assert len({p.text for p in PROMPTS}) == len(PROMPTS)
    assert F.demo_prompts() == PROMPTS  # deterministic


@pytest.mark.parametrize("category", [F.SINGLE_HELDOUT, F.SINGLE_SEEN])
def test_single_prompts_cover_every_pair_once(category):
    specs = [p for p in PROMPTS if p.category == category]
    assert all(len(p.target.objects) == 1 for p in specs)
    pairs = Counter((p.target.objects[0].colour, p.target.objects[0].shape) for p in specs)
    assert pairs == Counter({(c, s): 1 for c in S.COLOURS for s in S.SHAPES})


def test_heldout_split_of_the_prompts():
    for p in PROMPTS:
        heldout = [S.is_heldout(o) for o in p.target.objects]
        assert all(heldout) if p.category == F.SINGLE_HELDOUT else not any(heldout), p.text


def test_seen_prompts_spread_over_cells():
    cells = Counter((p.target.objects[0].row, p.target.objects[0].col) for p in PROMPTS if p.category == F.SINGLE_SEEN)
    assert len(cells) == S.GRID * S.GRID and set(cells.values()) == {2}


def test_two_object_prompts_are_varied():
    specs = [p for p in PROMPTS if p.category == F.TWO_OBJECT]
    assert all(len(p.target.objects) == 2 for p in specs)  # Scene already forbids two objects in one cell
    objs = [o for p in specs for o in p.target.objects]
    assert {o.colour for o in objs} == set(S.COLOURS) and {o.shape for o in objs} == set(S.SHAPES)
    assert len({(o.row, o.col) for o in objs}) == S.GRID * S.GRID
    assert len({tuple((o.row, o.col) for o in p.target.objects) for p in specs}) >= 10  # cell pairs vary
    assert any(a.row == b.row for a, b in (p.target.objects for p in specs))  # "and" order within a row
    assert any(a.row != b.row for a, b in (p.target.objects for p in specs))


def test_prompt_text_is_the_trained_caption_form():
    for p in PROMPTS:
        assert p.text == G.complete_captions(p.target)[1], p.text  # the complete form without sizes
        assert p.text.startswith(("a ", "an ")) and "large" not in p.text
    assert F.prompt_text(Scene((Obj("circle", "orange", "small", 1, 1),))) == "an orange circle in the center"


# ---------------------------------------------------------------- scoring


@pytest.mark.parametrize("size", S.SIZES)
def test_rendered_targets_score_100_percent(size):
    scenes = [Scene(tuple(dataclasses.replace(o, size=size) for o in p.target.objects)) for p in PROMPTS]
    verdicts = [F.score_image(S.render(s, RES), p) for s, p in zip(scenes, PROMPTS)]
    assert [v.reason for v in verdicts if not v.ok] == []
    assert all(v.ok and v.reason == "" and v.failed == () and v.checked == p.kinds() for v, p in zip(verdicts, PROMPTS))


VIOLATIONS = ["recolour", "reshape", "move", "remove_all", "remove_one", "extra"]


def violate(p: F.PromptSpec, kind: str) -> tuple[Scene, str]:
    """A scene breaking one of p's constraints, and the start of the reason expected."""
    first, rest = p.target.objects[0], p.target.objects[1:]
    want = f"{first.colour} {first.shape}"
    at = f"({first.row},{first.col})"
    if kind == "recolour":
        recoloured = dataclasses.replace(first, colour=other(S.COLOURS, first.colour))
        return Scene((recoloured, *rest)), f"wrong colour at {at}"
    if kind == "reshape":
        reshaped = dataclasses.replace(first, shape=other(S.SHAPES, first.shape))
        return Scene((reshaped, *rest)), f"wrong shape at {at}"
    if kind == "move":
        row, col = free_cell(p.target)
        moved = dataclasses.replace(first, row=row, col=col)
        return Scene((moved, *rest)), f"wrong position: want {want} at {at}, got ({row},{col})"
    if kind == "remove_all":
        return Scene(()), f"missing {want} at {at}"
    if kind == "remove_one":
        return Scene(rest), f"missing {want} at {at}"
    row, col = free_cell(p.target)  # extra
    extra = Obj("square", "green", "small", row, col)
    return Scene((*p.target.objects, extra)), f"extra object green square at ({row},{col})"


@pytest.mark.parametrize("kind", VIOLATIONS)
def test_each_violation_fails_with_its_reason(kind):
    for p in PROMPTS:
        scene, reason = violate(p, kind)
        v = F.score_image(S.render(scene, RES), p)
        assert not v.ok and v.reason.startswith(reason), (p.text, kind, v.reason)
        if kind in ("recolour", "reshape", "move", "remove_one", "extra"):  # the other object stays right
            assert v.reason.count("; ") == 0, v.reason
    report = F.score_images([S.render(violate(p, kind)[0], RES) for p in PROMPTS], PROMPTS)
    assert report.correct == 0 and report.accuracy == 0.0


def test_reasons_name_what_was_found():
    p = F.PromptSpec.from_scene(Scene((Obj("circle", "red", "large", 0, 2),)), "x")
    blue = F.score_image(S.render(Scene((Obj("circle", "blue", "large", 0, 2),)), RES), p)
    assert blue.reason == "wrong colour at (0,2): want red circle, got blue"
    square = F.score_image(S.render(Scene((Obj("square", "red", "small", 0, 2),)), RES), p)
    assert square.reason == "wrong shape at (0,2): want red circle, got square"
    both = F.score_image(S.render(Scene((Obj("square", "blue", "large", 0, 2),)), RES), p)
    assert both.reason == "wrong colour at (0,2): want red circle, got blue; wrong shape at (0,2): want red circle, got square"
    assert both.failed == ("colour", "shape")
    blank = F.score_image(np.zeros((RES, RES, 3), np.uint8), p)
    assert blank == F.Verdict(False, "missing red circle at (0,2)", ("count",), ("count",), objects=1, objects_right=0)
    far = F.score_image(S.render(Scene((Obj("square", "blue", "large", 2, 0),)), RES), p)  # nothing in common
    assert far.reason == "missing red circle at (0,2); extra object blue square at (2,0)" and far.failed == ("count",)


def test_jitter_and_higher_resolution_still_score():
    target = Scene((Obj("triangle", "purple", "large", 2, 0), Obj("circle", "yellow", "small", 2, 1)))
    p = F.PromptSpec.from_scene(target, "x")
    jittered = Scene(tuple(dataclasses.replace(o, dx=S.JITTER, dy=-S.JITTER) for o in p.target.objects))
    assert F.score_image(S.render(jittered, RES), p).ok
    assert F.score_image(S.render(p.target, 64), p).ok


# ---------------------------------------------------------------- report


def test_report_aggregates_a_handmade_mix():
    a, b, c = PROMPTS[0], PROMPTS[18], PROMPTS[36]  # one per category
    blank = np.zeros((RES, RES, 3), np.uint8)
    images = [S.render(a.target, RES), blank, S.render(b.target, RES), S.render(b.target, RES), blank, blank,
              S.render(c.target, RES)]
    specs = [a, a, b, b, b, c, c]
    report = F.score_images(images, specs)
    assert {c: (v["n"], v["correct"], v["accuracy"]) for c, v in report.categories.items()} == {
        F.SINGLE_HELDOUT: (2, 1, 0.5),
        F.SINGLE_SEEN: (3, 2, pytest.approx(2 / 3)),
        F.TWO_OBJECT: (2, 1, 0.5),
    }
    assert all(v["failed"] == {"count": 1} for v in report.categories.values())  # one blank image each
    lo, hi = report.categories[F.SINGLE_SEEN]["ci95"]
    assert 0.2 < lo < 2 / 3 < hi < 0.95  # Wilson interval of 2 / 3
    assert report.constraints["count"] == {"n": 7, "held": 4, "rate": pytest.approx(4 / 7)}
    assert report.constraints["colour"] == {"n": 4, "held": 4, "rate": 1.0}  # not checked on the 3 blank images
    assert (report.n, report.correct, report.accuracy) == (7, 4, pytest.approx(4 / 7))
    assert [(f["prompt"], f["sample"]) for f in report.failures] == [(a.text, 1), (b.text, 2), (c.text, 0)]
    assert all(f["reason"].startswith("missing") for f in report.failures)

    explicit = F.score_images(images, specs, sample_index=[10, 11, 12, 13, 14, 15, 16])
    assert [f["sample"] for f in explicit.failures] == [11, 14, 15]

    d = report.to_dict()
    assert json.loads(json.dumps(d)) == d and d["categories"][F.SINGLE_SEEN]["correct"] == 2
    md = report.to_markdown()
    for name in (*F.CATEGORIES, "all"):
        assert f"| {name} |" in md
    assert "| single_seen | 3 | 2 | 66.7% |" in md and "| all | 7 | 4 | 57.1% |" in md
    assert "| count | 7 | 4 | 57.1% |" in report.constraints_markdown()


def test_failures_are_capped_but_counted():
    blank = np.zeros((RES, RES, 3), np.uint8)
    report = F.score_images([blank] * (F.MAX_FAILURES + 10), [PROMPTS[0]] * (F.MAX_FAILURES + 10))
    assert len(report.failures) == F.MAX_FAILURES and report.n == F.MAX_FAILURES + 10 and report.correct == 0
    assert report.failures[-1]["sample"] == F.MAX_FAILURES - 1


def test_misaligned_inputs_raise():
    blank = np.zeros((RES, RES, 3), np.uint8)
    with pytest.raises(ValueError):
        F.score_images([blank], PROMPTS[:2])
    with pytest.raises(ValueError):
        F.score_images([blank], PROMPTS[:1], sample_index=[0, 1])
    empty = F.score_images([], [])
    assert (empty.n, empty.accuracy, empty.categories) == (0, 0.0, {})


def test_wilson_interval_known_values():
    assert F.wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert F.wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert F.wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert F.wilson(0, 0) == (0.0, 1.0)
