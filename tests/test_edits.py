"""Edits of the shapes world: each instruction's result is exact, names what it changes, keeps the rest."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dataclasses
from collections import Counter

import numpy as np
import pytest

from train.data import edits as E
from train.data import shapes as S
from train.data.shapes import Obj, Scene
from test_shapes import blur


def scene(*objs: Obj, grid: int = 3) -> Scene:
    return Scene(objs, grid)


RED = Obj("circle", "red", "small", 0, 0, tone="dim")
BLUE = Obj("square", "blue", "large", 1, 1)


def test_tones_render_and_parse_back_exactly():
    rng = np.random.default_rng(3)
    scenes = [E.sample_edit_scene(rng, max_objects=9) for _ in range(400)]
    assert {o.tone for s in scenes for o in s.objects} == set(S.TONES)
    for res, sigma in ((24, 0), (24, 0.5), (32, 0.5)):
        wrong = [s for s in scenes if S.parse(blur(S.render(s, res), sigma) if sigma else S.render(s, res)) != s]
        assert wrong == [], (res, sigma, len(wrong))
    # a dim object differs from a bright one only in tone, and the scenes differ
    dim = scene(RED)
    bright = scene(dataclasses.replace(RED, tone="bright"))
    assert dim != bright and S.parse(S.render(dim, 24)) == dim and S.parse(S.render(bright, 24)) == bright
    assert S.Scene.from_json(dim.to_json()) == dim
    assert "tone" not in bright.to_json()  # scenes recorded before tones existed read back the same


def test_text_to_image_scenes_are_bright():
    a = S.sample_scenes(50, seed=5, max_objects=5)
    assert all(o.tone == "bright" for s in a for o in s.objects)
    b = S.sample_scenes(50, seed=5, max_objects=5, tones=True)
    assert {o.tone for s in b for o in s.objects} == set(S.TONES)


@pytest.mark.parametrize("edit, expected", [
    (E.Edit("move", RED, value=(2, 2)), scene(dataclasses.replace(RED, row=2, col=2), BLUE)),
    (E.Edit("recolour", RED, value="green"), scene(dataclasses.replace(RED, colour="green"), BLUE)),
    (E.Edit("reshape", BLUE, value="triangle"), scene(RED, dataclasses.replace(BLUE, shape="triangle"))),
    (E.Edit("resize", RED, value="large"), scene(dataclasses.replace(RED, size="large"), BLUE)),
    (E.Edit("add", value=Obj("triangle", "yellow", "small", 2, 0)), scene(RED, BLUE, Obj("triangle", "yellow", "small", 2, 0))),
    (E.Edit("remove", BLUE), scene(RED)),
    (E.Edit("swap", RED, BLUE), scene(dataclasses.replace(RED, row=1, col=1), dataclasses.replace(BLUE, row=0, col=0))),
])
def test_each_kind_changes_exactly_what_it_names(edit, expected):
    before = scene(RED, BLUE)
    after = edit.apply(before)
    assert after == expected
    kept, untouched = E.preserved(before, after, edit)
    assert kept == untouched == 2 - len(edit.touched())
    text = edit.instruction(before, np.random.default_rng(0))
    assert text and text == text.strip()
    for o in edit.touched():  # the instruction names the objects it acts on by colour and shape
        assert f"{o.colour} {o.shape}" in text


def test_edits_that_do_not_apply_are_refused():
    before = scene(RED, BLUE)
    with pytest.raises(ValueError):
        E.Edit("move", RED, value=(1, 1)).apply(before)  # taken
    with pytest.raises(ValueError):
        E.Edit("recolour", RED, value="red").apply(before)  # no change
    with pytest.raises(ValueError):
        E.Edit("remove", Obj("circle", "green", "small", 2, 2)).apply(before)  # not there
    with pytest.raises(ValueError):
        E.sample_edit(scene(RED), np.random.default_rng(0), kind="swap")  # one object


def test_refer_picks_out_the_object():
    twin = dataclasses.replace(RED, row=2, col=1, tone="bright")
    s = scene(RED, BLUE, twin)
    assert E.refer(BLUE, s) == "the blue square"
    assert E.refer(RED, s) == "the red circle in the top left" and E.refer(twin, s) == "the red circle in the bottom center"


def test_chains_cover_every_kind_and_each_turn_keeps_the_rest():
    rng = np.random.default_rng(1)
    kinds = Counter()
    for _ in range(300):
        chain = E.sample_chain(E.sample_edit_scene(rng), rng, turns=int(rng.integers(3, 6)))
        for prev, step in zip(chain, chain[1:]):
            assert step.before == prev.after  # each turn edits the result of the one before
        for step in chain:
            kinds[step.edit.kind] += 1
            assert step.after == step.edit.apply(step.before) and step.after != step.before or step.edit.kind == "swap"
            kept, untouched = E.preserved(step.before, step.after, step.edit)
            assert kept == untouched
            assert len(step.after.objects) <= 5
    assert set(kinds) == set(E.EDIT_KINDS) and min(kinds.values()) > 100
