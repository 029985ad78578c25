"""Invariants of the shapes world: parse inverts render, captions are true, splits hold."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dataclasses
import re
from collections import Counter

import numpy as np
import pytest
from scipy import ndimage

from train.data import grammar as G
from train.data import shapes as S
from train.data.shapes import Obj, Scene


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    out = ndimage.gaussian_filter(img.astype(np.float32), sigma=(sigma, sigma, 0))  # per channel
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def speckle(img: np.ndarray, frac: float, rng: np.random.Generator) -> np.ndarray:
    img = img.copy()
    hit = rng.random(img.shape[:2]) < frac
    img[hit] = rng.integers(0, 256, size=(int(hit.sum()), 3))  # random colours, palette or not
    return img


def recovered(scenes, images) -> float:
    return float(np.mean([S.parse(im) == s for s, im in zip(scenes, images)]))


# ---------------------------------------------------------------- parse


@pytest.mark.parametrize("resolution", [24, 32, 64])  # 24: the cpu tokenizer preset
def test_parse_inverts_render_on_10000_scenes(resolution):
    scenes = S.sample_scenes(10_000, seed=123, split="all")
    wrong = [i for i, s in enumerate(scenes) if S.parse(S.render(s, resolution)) != s]
    assert wrong == [], f"{len(wrong)} scenes misparsed, e.g. {scenes[wrong[0]]}"


@pytest.mark.parametrize("resolution", [33, 36, 48, 128])
def test_parse_inverts_render_at_other_resolutions(resolution):
    scenes = S.sample_scenes(300, seed=7, split="all", max_objects=9)  # up to a full grid
    assert all(S.parse(S.render(s, resolution)) == s for s in scenes)


def test_parse_tolerates_mild_blur():
    scenes = S.sample_scenes(500, seed=11, split="all")
    assert recovered(scenes, [blur(S.render(s, 32), 0.7) for s in scenes]) >= 0.99
    assert recovered(scenes, [blur(S.render(s, 64), 1.4) for s in scenes]) >= 0.99  # the same blur at 64 px


def test_parse_tolerates_speckle():
    rng = np.random.default_rng(0)
    scenes = S.sample_scenes(500, seed=12, split="all")
    assert recovered(scenes, [speckle(S.render(s, 32), 0.01, rng) for s in scenes]) >= 0.99
    assert recovered(scenes, [speckle(S.render(s, 64), 0.01, rng) for s in scenes]) >= 0.99


def _edits(scene: Scene, rng: np.random.Generator) -> dict[str, Scene]:
    """One scene per kind of error a generator can make, each differing from `scene`."""
    objs = list(scene.objects)
    i = int(rng.integers(len(objs)))
    o = objs[i]
    free = [k for k in range(9) if (k // 3, k % 3) not in {(p.row, p.col) for p in objs}]
    k = free[int(rng.integers(len(free)))]

    def swap(**kw) -> Scene:
        return Scene(tuple(objs[:i] + [dataclasses.replace(o, **kw)] + objs[i + 1 :]))

    return {
        "colour": swap(colour=next(c for c in S.COLOURS if c != o.colour)),
        "shape": swap(shape=next(s for s in S.SHAPES if s != o.shape)),
        "size": swap(size=next(z for z in S.SIZES if z != o.size)),
        "cell": swap(row=k // 3, col=k % 3),
        "missing": Scene(tuple(objs[:i] + objs[i + 1 :])),
        "extra": Scene(tuple(objs) + (Obj("circle", "red", "small", k // 3, k % 3),)),
    }


@pytest.mark.parametrize("sigma", [0.0, 0.7])
def test_parse_detects_every_kind_of_error(sigma):
    rng = np.random.default_rng(3)
    for scene in S.sample_scenes(200, seed=13, split="all"):
        img = S.render(scene, 32)
        parsed = S.parse(blur(img, sigma) if sigma else img)
        for kind, wrong in _edits(scene, rng).items():
            assert wrong != scene, kind
            assert parsed != wrong, f"{kind}: {wrong} read from an image of {scene}"


def test_parse_empty_image_and_input_types():
    import torch

    scene = S.sample_scenes(1, seed=4)[0]
    img = S.render(scene, 32)
    assert S.parse(np.full_like(img, S.BACKGROUND)) == Scene(())
    assert S.parse(torch.from_numpy(img)) == scene
    for s in S.sample_scenes(100, seed=4):
        for a, b in zip(S.parse(S.render(s, 64)).objects, s.objects):  # jitter estimates: within ~0.6 px
            assert abs(a.dx - b.dx) < 0.03 and abs(a.dy - b.dy) < 0.03
    with pytest.raises(ValueError):
        S.parse(img.astype(np.float32))


@pytest.mark.parametrize("resolution", [24, 32, 64])  # 24: the cpu tokenizer preset
def test_neighbours_keep_a_gap(resolution):
    """Large squares in adjacent cells, jittered towards each other, leave >= 2 px of background at 32 px."""
    j = S.JITTER
    pairs = {
        0: (Obj("square", "red", "large", 1, 0, j, 0), Obj("square", "red", "large", 1, 1, -j, 0)),  # side by side
        1: (Obj("square", "red", "large", 0, 2, 0, j), Obj("square", "red", "large", 1, 2, 0, -j)),  # stacked
    }
    for axis, pair in pairs.items():
        fg = (S.render(Scene(pair), resolution) != S.BACKGROUND).any(-1)  # (R, R)
        edges = np.flatnonzero(np.diff(fg.any(axis).astype(int)))  # [start - 1, end, start - 1, end]
        assert edges[2] - edges[1] >= 2 * resolution // 32  # background lines between the two


# ---------------------------------------------------------------- scenes and splits


def test_scene_is_canonical_and_round_trips_json():
    a = Obj("circle", "red", "large", 2, 1, 0.01, -0.02)
    b = Obj("square", "blue", "small", 0, 2)
    s = Scene((a, b))
    assert s.objects == (b, a)  # sorted by (row, col)
    t = Scene.from_json(s.to_json())
    assert t == s and [(o.dx, o.dy) for o in t.objects] == [(0.0, 0.0), (0.01, -0.02)]
    assert Scene((Obj("circle", "red", "large", 2, 1, 0.03),)) == Scene((a,))  # jitter ignored
    crowded = Scene((a, Obj("square", "blue", "small", 2, 1)))  # parse may report two objects in one cell
    assert crowded.crowded() and not s.crowded() and Scene.from_json(crowded.to_json()) == crowded
    with pytest.raises(ValueError, match="out of the 3x3 grid"):
        Scene((Obj("circle", "red", "large", 3, 0),))
    assert Scene.from_json(Scene((Obj("circle", "red", "large", 3, 0),), grid=4).to_json()).grid == 4


def test_sampling_is_deterministic():
    a, b = S.sample_scenes(50, seed=7), S.sample_scenes(50, seed=7)
    assert [s.to_json() for s in a] == [s.to_json() for s in b]  # jitter included
    assert np.array_equal(S.render_batch(a, 32), S.render_batch(b, 32))
    assert [s.to_json() for s in S.sample_scenes(80, seed=7)[:50]] == [s.to_json() for s in a]  # prefix
    c = S.sample_scenes(50, seed=8)
    assert a != c and not np.array_equal(S.render_batch(c, 32), S.render_batch(a, 32))
    counts = Counter(len(s.objects) for s in S.sample_scenes(600, seed=9))
    assert set(counts) == {1, 2, 3}


def test_object_counts_min_max_and_weights():
    counts = lambda scenes: sorted({len(s.objects) for s in scenes})  # noqa: E731
    assert counts(S.sample_scenes(300, seed=3, min_objects=2, max_objects=3)) == [2, 3]
    assert counts(S.sample_scenes(300, seed=3, max_objects=3, count_weights=(0, 1, 0))) == [2]
    weighted = [len(s.objects) for s in S.sample_scenes(4000, seed=3, max_objects=2, count_weights=(1, 3))]
    assert 0.70 < weighted.count(2) / len(weighted) < 0.80  # 3:1 for two objects
    with pytest.raises(ValueError, match="count_weights"):
        S.sample_scenes(5, seed=3, max_objects=3, count_weights=(1, 1))


@pytest.mark.parametrize("grid", S.GRIDS)
def test_heldout_split_is_balanced(grid):
    held = S.heldout_cells(grid)
    assert set(held) == {(c, s) for c in S.COLOURS for s in S.SHAPES}
    per_cell = Counter(held.values())
    assert set(per_cell) == set(range(grid * grid)) and max(per_cell.values()) - min(per_cell.values()) <= 1
    for c in S.COLOURS:  # a colour's three pairs, and a shape's six, are held out in distinct cells
        assert len({held[(c, s)] for s in S.SHAPES}) == 3
    for s in S.SHAPES:
        assert len({held[(c, s)] for c in S.COLOURS}) == 6
    assert S.heldout_cells(grid) == held  # fixed by HELDOUT_SEED
    train = S.sample_scenes(3000, seed=1, split="train", max_objects=grid * grid, grid=grid, uniform=0.3)
    assert not any(S.is_heldout(o, grid) for s in train for o in s.objects)
    seen = {(o.colour, o.shape, o.row, o.col) for s in train for o in s.objects}
    assert len(seen) == 6 * 3 * (grid * grid - 1)  # every pair is seen in every other cell
    assert all(any(S.is_heldout(o, grid) for o in s.objects)
               for s in S.sample_scenes(500, seed=2, split="heldout", grid=grid))
    assert S.HELDOUT == S.heldout_set(3)


def test_uniform_scenes_share_a_colour_or_a_shape():
    scenes = S.sample_scenes(600, seed=4, max_objects=16, min_objects=3, grid=4, uniform=1.0)
    kinds = Counter()
    for sc in scenes:
        colours, kinds_ = {o.colour for o in sc.objects}, {o.shape for o in sc.objects}
        assert len(colours) == 1 or len(kinds_) == 1, sc
        kinds[(len(colours) == 1, len(kinds_) == 1)] += 1
    assert kinds[(True, True)] > 150 and kinds[(True, False)] > 100 and kinds[(False, True)] > 100
    assert S.sample_scenes(50, seed=4) == S.sample_scenes(50, seed=4, uniform=0.0)  # off: the same scenes as before


def test_parse_sees_every_object():
    big = Obj("square", "red", "small", 1, 1)
    img = S.render(Scene((big,)), 96)  # 32 px a cell: the small square spans the middle 16 px
    img[32:39, 32:39] = S.COLOURS["blue"]  # a second object in the same cell, in its corner
    found = S.parse(img)
    assert len(found.objects) == 2 and found.crowded() and {o.colour for o in found.objects} == {"red", "blue"}
    straddling = S.parse(S.render(Scene((Obj("circle", "green", "large", 0, 0, dx=0.45),)), 48))
    (o,) = straddling.objects
    assert o.shape == "circle" and not S.placed(o) and abs(o.dx) > S.PLACE_TOLERANCE
    assert all(S.placed(o) for s in S.sample_scenes(300, seed=9) for o in S.parse(S.render(s, 24)).objects)
    blob = np.zeros((48, 48, 3), np.uint8)
    blob[2:14, 2:4] = blob[2:4, 2:14] = S.COLOURS["yellow"]  # an L: no template fits it
    (b,) = S.parse(blob).objects
    assert b.shape == S.BLOB and b.colour == "yellow" and (b.row, b.col) == (0, 0)
    with pytest.raises(ValueError, match="cannot be rendered"):
        S.render(Scene((b,)), 48)


@pytest.mark.parametrize("grid", S.GRIDS)
def test_parse_inverts_render_on_every_grid(grid):
    scenes = S.sample_scenes(1500, seed=21, split="all", max_objects=grid * grid, grid=grid)
    for res in (8 * grid, 12 * grid):
        assert [s for s in scenes if S.parse(S.render(s, res), grid) != s] == []
    with pytest.raises(ValueError, match="needs images of >= 32 px"):
        S.parse(np.zeros((24, 24, 3), np.uint8), grid=4)


# ---------------------------------------------------------------- captions

_NUM = {w: i for i, w in enumerate(("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"))}
_CELL = {"center": (1, 1)} | {
    f"{r} {c}": (i, j)
    for i, r in enumerate(("top", "middle", "bottom"))
    for j, c in enumerate(("left", "center", "right"))
}
_OBJ = re.compile(r"an? (small|large) (\w+) (circle|square|triangle) in the (center|\w+ \w+)$")


def read_description(text: str) -> Scene:
    """Inverse of describe(): proves the canonical caption determines the scene."""
    parts = re.split(r", | and ", text)
    objs = []
    for p in parts:
        size, colour, shape, where = _OBJ.match(p).groups()
        objs.append(Obj(shape, colour, size, *_CELL[where]))
    return Scene(tuple(objs))


def test_describe_is_complete():
    s = Scene((Obj("circle", "red", "large", 0, 0), Obj("square", "blue", "small", 1, 1)))
    assert G.describe(s) == "a large red circle in the top left and a small blue square in the center"
    for scene in S.sample_scenes(2000, seed=5, split="all", max_objects=9):
        assert read_description(G.describe(scene)) == scene


def test_complete_captions_name_every_object_colour_shape_and_cell():
    obj = re.compile(r"an? (?:(?:small|large) )?(\w+) (circle|square|triangle) in the (center|\w+ \w+)$")
    rng = np.random.default_rng(0)
    for scene in S.sample_scenes(500, seed=8, split="all", max_objects=4):
        want = sorted((o.colour, o.shape, (o.row, o.col)) for o in scene.objects)
        caps = G.complete_captions(scene)
        assert len(caps) == 2
        for cap in caps:
            assert sorted((c, s, _CELL[w]) for c, s, w in (obj.match(p).groups() for p in re.split(r", | and ", cap))) == want
        assert G.caption(scene, rng, "complete") in caps
    with pytest.raises(ValueError, match="'some'"):
        G.caption(scene, rng, "some")
    ds = S.shapes_dataset(20, resolution=24, seed=3, captions="complete")
    assert all(t in G.complete_captions(Scene.from_json(j)) for t, j in zip(ds["text"], ds["scene"]))


@pytest.mark.parametrize("grid", S.GRIDS)
def test_random_descriptions_are_true_of_their_scene(grid):
    """Every caption the grammar draws is true of its scene, by the judge that scores prompts (eval.faithfulness)."""
    from eval.faithfulness import PromptSpec, score_image

    rng = np.random.default_rng(grid)
    kinds = Counter()
    for scene in S.sample_scenes(1500, seed=6, split="all", max_objects=grid * grid, grid=grid):
        desc = G.sample_description(scene, rng)
        form = G.sample_form(desc, rng)
        assert G.heldout_form(form, desc) is None  # training never uses a held-out phrasing
        kinds[desc.kind()] += 1
        text = G.realise(desc, form)
        spec = PromptSpec(text, scene, "x", desc.mentions, desc.relations)
        v = score_image(S.render(scene, 8 * grid), spec)
        assert v.ok, (text, scene, v.reason)
    assert set(kinds) == set(G.DESCRIPTION_KINDS) and min(kinds.values()) >= 5, kinds  # relation: 2 objects only


def test_caption_kinds_reweigh_the_mix_and_stay_true():
    """`kinds` draws only the kinds given, in about their weights; a scene no given kind fits is described
    completely; every caption is still true of its scene; bad weights are refused."""
    from eval.faithfulness import PromptSpec, score_image

    rng = np.random.default_rng(0)
    scenes = S.sample_scenes(600, seed=8, split="all", max_objects=4, grid=4)
    related = Counter()
    for scene in scenes:
        desc = G.sample_description(scene, rng, {"relation": 3.0, "partial": 1.0, "count": 0.0})
        if len(scene.objects) == 2:
            related[bool(desc.relations)] += 1
        else:  # relation needs two objects: partial is the only kind left
            assert not desc.relations
        spec = PromptSpec(G.realise(desc), scene, "x", desc.mentions, desc.relations)
        assert score_image(S.render(scene, 32), spec).ok
        assert G.sample_description(scene, rng, {"complete": 1.0}).kind() == "complete"
    assert related[True] > 2 * related[False] > 0, related  # 3 : 1 drawn
    one = Scene((Obj("circle", "red", "large", 0, 0),), grid=4)
    assert G.sample_description(one, rng, {"relation": 1.0}) == G.complete(one)  # nothing else fits one object
    again = S.shapes_dataset(30, resolution=32, seed=3, grid=4, caption_kinds={"binding": 1.0})
    assert again["text"] != S.shapes_dataset(30, resolution=32, seed=3, grid=4)["text"]
    for bad, match in [({"pose": 1.0}, "unknown description kind"), ({"count": -1.0}, ">= 0"),
                       ({"count": 0.0}, "above 0"), ({}, "non-empty"), ({"count": True}, ">= 0")]:
        with pytest.raises(ValueError, match=match):
            G.caption(one, rng, "all", bad)
    with pytest.raises(ValueError, match="all"):
        G.caption(one, rng, "complete", {"count": 1.0})


def test_grammar_phrasings():
    red = Obj("circle", "red", "large", 0, 0)
    blue = Obj("square", "blue", "small", 0, 1)
    two = Scene((red, blue))
    m = G.Mention.of
    rel = G.Description((m(red, position="none"), m(blue, position="none")), (G.Relation(0, "next_to", 1),))
    assert G.realise(rel) == "a red circle next to a blue square"
    assert G.realise(rel, G.Form(frame="picture", word=1, copula=True)) == "a picture of a red circle is beside a blue square"
    assert G.heldout_form(G.Form(frame="picture"), rel) == "picture_relation"
    count = G.Description((m(red, position="none"),) * 3 + (G.Mention(shape="square"),) * 2)
    assert G.realise(count, G.Form(frame="there")) == "there are three red circles and two squares"
    assert G.realise(G.Description((m(red, size=True),)), G.Form(frame="there", place_first=False)) == (
        "there is a large red circle in the top left")
    assert G.realise(G.Description((m(blue, colour=False, position="row"), G.Mention(colour="red"))),
                     G.Form(place_first=True)) == "in the top row, a square and a red shape"
    assert G.realise(G.complete(Scene((Obj("circle", "red", "large", 1, 2),), grid=4))) == (
        "a red circle in the upper center right")
    assert G.realise(G.Description(())) == "nothing"
    assert G.complete_captions(two)[1] == "a red circle in the top left and a blue square in the top center"


# ---------------------------------------------------------------- dataset


def test_shapes_dataset():
    import datasets

    ds = S.shapes_dataset(40, resolution=48, split="train", seed=3)
    assert isinstance(ds, datasets.Dataset) and len(ds) == 40
    assert set(ds.column_names) == {"image", "text", "scene", "n_objects"}
    assert isinstance(ds.features["image"], datasets.Image)
    again = S.shapes_dataset(40, resolution=48, split="train", seed=3)
    assert ds["text"] == again["text"] and ds["scene"] == again["scene"]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(ds["image"], again["image"]))
    for row in ds:
        img, scene = row["image"], Scene.from_json(row["scene"])
        assert img.mode == "RGB" and img.size == (48, 48)
        assert S.parse(np.asarray(img)) == scene and len(scene.objects) == row["n_objects"]
        assert not any(S.is_heldout(o) for o in scene.objects)
    assert S.shapes_dataset(40, resolution=48, seed=4)["scene"] != ds["scene"]
