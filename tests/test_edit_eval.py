"""The edit suite's scorer: rendered ground truth scores 100%, and each way of breaking an edit scores 0."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dataclasses

import numpy as np
import pytest

from eval import editing
from train.data import edits as E
from train.data import shapes as S
from train.data.shapes import Obj, Scene

RES = 24


def step(edit: E.Edit, before: Scene) -> E.Step:
    return E.Step(edit.instruction(before, np.random.default_rng(0)), edit, before, edit.apply(before))


RED = Obj("circle", "red", "small", 0, 0, tone="dim")
BLUE = Obj("square", "blue", "large", 1, 1)
GREEN = Obj("triangle", "green", "small", 2, 2, tone="dim")
BEFORE = Scene((RED, BLUE, GREEN))


def test_the_suite_is_fixed_and_covers_every_kind():
    cases = editing.edit_cases(per_kind=3, chains=4, turns=3)
    again = editing.edit_cases(per_kind=3, chains=4, turns=3)
    assert [c.instructions for c in cases] == [c.instructions for c in again]
    singles = [c for c in cases if c.group == "single"]
    assert sorted({c.kind for c in singles}) == sorted(E.EDIT_KINDS) and len(singles) == 3 * len(E.EDIT_KINDS)
    assert all(len(c.steps) == 3 for c in cases if c.group == "chain")


def test_rendered_ground_truth_scores_100_percent():
    cases = editing.edit_cases(per_kind=4, chains=6, turns=3)
    n = 2
    outputs = [np.stack([S.render(s.after, RES) for s in cases[i // n].steps]) for i in range(len(cases) * n)]
    report = editing.score_outputs(cases, outputs, n, grid=3)
    for r in (report.single, *report.chains):
        for key in ("success", "objects_preserved", "images_preserved", "right"):
            assert r[key]["rate"] == 1.0, (key, r[key])
    assert all(t["chain_right"]["rate"] == 1.0 for t in report.chains) and report.failures == []


@pytest.mark.parametrize("edit, broken, fails", [
    # the change not made: the source returned as it was (the unchanged object is then one the result lacks)
    (E.Edit("recolour", RED, value="yellow"), lambda st: st.before, {"success", "clean"}),
    # made wrong: another colour than asked
    (E.Edit("recolour", RED, value="yellow"), lambda st: _swap(st.after, dataclasses.replace(RED, colour="orange")),
     {"success", "clean"}),
    # moved to the wrong cell
    (E.Edit("move", BLUE, value=(0, 2)), lambda st: _swap(st.after, dataclasses.replace(BLUE, row=2, col=0)),
     {"success", "clean"}),
    # reshaped, but the object lost its tone (an identity detail the instruction never named)
    (E.Edit("reshape", RED, value="square"),
     lambda st: _swap(st.after, dataclasses.replace(RED, shape="square", tone="bright")), {"success", "clean"}),
    # removed, but the object is still there
    (E.Edit("remove", GREEN), lambda st: Scene((*st.after.objects, GREEN)), {"success", "clean"}),
    # the edit made, but an untouched object changed tone / size / cell
    (E.Edit("resize", RED, value="large"), lambda st: _swap(st.after, dataclasses.replace(BLUE, tone="dim")),
     {"preserved", "clean"}),
    (E.Edit("resize", RED, value="large"), lambda st: _swap(st.after, dataclasses.replace(GREEN, size="large")),
     {"preserved", "clean"}),
    (E.Edit("add", value=Obj("circle", "purple", "large", 0, 2)),
     lambda st: _swap(st.after, dataclasses.replace(GREEN, row=1, col=0)), {"preserved", "clean"}),
    # the edit made, and something else appeared
    (E.Edit("swap", RED, BLUE), lambda st: Scene((*st.after.objects, Obj("circle", "orange", "small", 2, 0))),
     {"clean"}),
    # an untouched object lost
    (E.Edit("remove", GREEN), lambda st: Scene(tuple(o for o in st.after.objects if o != BLUE)), {"preserved"}),
])
def test_each_way_of_breaking_an_edit_fails_its_check(edit, broken, fails):
    st = step(edit, BEFORE)
    out = broken(st)
    parsed = S.parse(S.render(out, RES))
    assert parsed == out  # the broken scene is what the scorer reads back
    score = editing.score_turn(st, parsed)
    assert not score.right
    assert score.success == ("success" not in fails)
    assert (score.kept == score.untouched) == ("preserved" not in fails)
    assert (score.extras == 0) == ("clean" not in fails)
    good = editing.score_turn(st, S.parse(S.render(st.after, RES)))
    assert good.right and good.success and good.preserved


def _swap(scene: Scene, new: Obj) -> Scene:
    """`scene` with the object in new's cell (or new's former self, same colour and shape) replaced by `new`."""
    keep = [o for o in scene.objects if (o.colour, o.shape) != (new.colour, new.shape) and (o.row, o.col) != (new.row, new.col)]
    return Scene((*keep, new))


def test_a_chain_is_right_only_while_every_turn_is():
    chain = E.sample_chain(BEFORE, np.random.default_rng(4), 3)
    case = editing.EditCase(tuple(chain), "chain")
    good = [S.render(s.after, RES) for s in chain]
    bad_first = [S.render(chain[0].before, RES)] + good[1:]  # turn 1 not made; turns 2 and 3 right
    report = editing.score_outputs([case], [np.stack(good), np.stack(bad_first)], 2, grid=3)
    assert [t["chain_right"]["hits"] for t in report.chains] == [1, 1, 1]
    assert [t["right"]["hits"] for t in report.chains] == [1, 2, 2]


class Oracle:
    """An ImageSampler stand-in that draws exactly the scene a prompt describes (tones forgotten unless
    `scenes` maps the prompt to the full scene), and an SDEdit that does the same or returns its input."""

    resolution = RES

    def __init__(self, scenes: dict, keep_input: bool = False):
        self.scenes, self.keep_input = scenes, keep_input

    def sample(self, prompts, n=1, settings=None, batch_size=64, progress=False):
        images = np.stack([S.render(self.scenes[p], RES) for p in prompts for _ in range(n)])
        return type("R", (), {"images": images})

    def sdedit(self, images, prompts, strength, settings=None, batch_size=64):
        return np.asarray(images).copy() if self.keep_input else np.stack([S.render(self.scenes[p], RES) for p in prompts])


def _descriptions(cases, forget_tones: bool) -> dict:
    from train.data.grammar import describe

    bright = lambda s: Scene(tuple(dataclasses.replace(o, tone="bright") for o in s.objects), s.grid)  # noqa: E731
    return {describe(st.after): bright(st.after) if forget_tones else st.after for c in cases for st in c.steps}


def test_baselines_are_scored_the_same_way():
    cases = editing.edit_cases(per_kind=3, chains=4, turns=3)
    settings = type("S", (), {"seed": 0})()
    exact = editing.evaluate_regenerate(Oracle(_descriptions(cases, False)), cases, 2, settings, 3)
    assert exact.single["right"]["rate"] == 1.0 and exact.chains[-1]["chain_right"]["rate"] == 1.0
    # regenerating from words cannot keep what no word names: dim objects come back bright
    words = editing.evaluate_regenerate(Oracle(_descriptions(cases, True)), cases, 2, settings, 3)
    assert words.single["objects_preserved"]["rate"] < 0.8 and words.chains[-1]["chain_right"]["rate"] < 0.5
    import dataclasses as dc

    sd = editing.evaluate_sdedit(Oracle(_descriptions(cases, False)), cases, 2, dc.make_dataclass("C", [("seed", int)])(0),
                                 3, strength=0.5)
    assert sd.single["right"]["rate"] == 1.0 and sd.chains[-1]["chain_right"]["rate"] == 1.0
    # an SDEdit that changes nothing keeps everything and makes no edit
    still = editing.evaluate_sdedit(Oracle({}, keep_input=True), cases, 1, dc.make_dataclass("C", [("seed", int)])(0),
                                    3, strength=0.5)
    assert still.single["objects_preserved"]["rate"] == 1.0 and still.single["success"]["rate"] < 0.2
