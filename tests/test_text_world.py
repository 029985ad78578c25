"""Text in the shapes world: the font, parse(render) with strings, held-out strings, captions and the text scorer."""

import dataclasses
import itertools

import numpy as np
import pytest

from eval import faithfulness as F
from eval import suites
from train.data import glyphs, grammar, shapes
from train.data.glyphs import Text


def test_the_font_has_every_character_and_they_differ():
    assert set(glyphs.FONT) == set(glyphs.ALPHABET)
    assert all(g.shape == (7, 5) and g.any() for g in glyphs.FONT.values())
    worst = min(int((glyphs.FONT[a] != glyphs.FONT[b]).sum()) for a, b in itertools.combinations(glyphs.ALPHABET, 2))
    assert worst >= 3  # B and 8 are the closest pair


@pytest.mark.parametrize("grid,resolution,n", [(3, 24, 1000), (4, 32, 1000), (4, 48, 500), (3, 40, 500)])
def test_parse_reads_back_scenes_with_text_exactly(grid, resolution, n):
    scenes = shapes.sample_scenes(n, seed=resolution, grid=grid, max_objects=grid * grid - 2, text=0.8)
    assert sum(bool(s.texts) for s in scenes) > 0.7 * n and any(t.sign for s in scenes for t in s.texts)
    for s in scenes:
        assert shapes.parse(shapes.render(s, resolution), grid) == s, s


def test_every_character_reads_back_in_every_cell_and_on_a_sign():
    for grid, sign in ((4, False), (4, True), (3, False)):
        for k, ch in enumerate(glyphs.ALPHABET):
            t = Text(k % grid, (k // grid) % grid, ch, sign)
            scene = shapes.Scene((), grid, (t,))
            assert shapes.parse(shapes.render(scene, 8 * grid), grid) == scene


def test_a_scene_checks_its_text_and_round_trips_through_json():
    s = shapes.Scene((shapes.Obj("circle", "red", "small", 0, 0),), 4, (Text(2, 1, "K7", True),))
    assert shapes.Scene.from_json(s.to_json()) == s
    assert "texts" not in shapes.Scene((), 3).to_dict()  # scenes recorded before text existed read back equal
    with pytest.raises(ValueError, match="leaves the 4x4 grid"):
        shapes.Scene((), 4, (Text(0, 2, "TAXI"),))
    with pytest.raises(ValueError, match="1 or more characters"):
        shapes.Scene((), 4, (Text(0, 0, "ok"),))  # lower case is not in the font
    with pytest.raises(ValueError, match="1 or more characters"):
        shapes.render(shapes.Scene((), 4, (Text(0, 0, "A?"),)), 32)  # parse's unreadable mark cannot be drawn


def test_a_smudged_glyph_reads_as_unreadable_and_a_faint_one_as_nothing():
    img = shapes.render(shapes.Scene((), 4, (Text(1, 0, "AB"),)), 32)
    img[8:16, 8:16] = 255 * (np.indices((8, 8)).sum(0) % 2 == 0)[..., None]  # a checkerboard over the B
    assert shapes.parse(img, 4).texts == (Text(1, 0, "A" + glyphs.UNREADABLE),)
    faint = shapes.render(shapes.Scene((), 4, (Text(1, 0, "AB"),)), 32) // 8  # 1/8 of white: not a glyph
    assert shapes.parse(faint, 4).texts == ()


def test_held_out_strings_never_reach_training():
    rng = np.random.default_rng(0)
    train = [glyphs.sample_string(rng) for _ in range(3000)]
    held = [glyphs.sample_string(rng, split="heldout") for _ in range(300)]
    assert not any(glyphs.heldout_string(s) for s in train)
    assert all(glyphs.heldout_string(s) and len(s) >= 2 for s in held)
    assert all(not glyphs.heldout_string(c) for c in glyphs.ALPHABET)  # every character alone is seen
    share = np.mean([glyphs.heldout_string(glyphs.sample_string(rng, split="all", lexicon=0)) for _ in range(4000)])
    assert 0.1 < share < 0.25  # HELDOUT_SHARE of the strings of 2+ characters
    scenes = shapes.sample_scenes(3000, seed=5, grid=4, max_objects=3, text=1.0)
    assert not any(glyphs.heldout_string(t.string) for s in scenes for t in s.texts)
    for name, specs in suites.get_suites(list(suites.TEXT_SUITES), 4).items():
        assert all(glyphs.heldout_string(t.string) for p in specs for t in p.texts), name


def test_every_caption_of_a_text_scene_is_true_of_it():
    rng = np.random.default_rng(1)
    kinds = set()
    for scene in shapes.sample_scenes(400, seed=2, grid=4, max_objects=3, text=1.0):
        desc = grammar.sample_description(scene, rng)
        form = grammar.sample_form(desc, rng)
        spec = F.PromptSpec.of(desc, scene, "text")
        verdict = F.score_scene(scene, spec)
        assert verdict.ok, (spec.text, verdict.reason)
        kinds.add("relation" if desc.relations else "plain")
        text = grammar.realise(desc, form)
        assert all(f'"{t.string}"' in text or f"number {t.string}" in text for t in desc.texts), text
    assert kinds == {"relation", "plain"}


def test_the_text_tokenizer_spells_strings_a_character_at_a_time():
    from ar_model.text import train_text_tokenizer

    tok = train_text_tokenizer(['the word "taxi" in the top row'] * 50 + ["the number 42 in the top row"] * 50)
    pieces = tok.convert_ids_to_tokens(tok('a sign that reads "TAXI" and the number 427')["input_ids"])
    assert ["t", "a", "x", "i"] == pieces[pieces.index('Ġ"') + 1 : pieces.index('Ġ"') + 5]
    assert pieces[-3:] == ["4", "2", "7"]
    assert "Ġthe" in pieces  # words still merge


def _free(scene: shapes.Scene, row: int, cols: range) -> bool:
    taken = {(o.row, o.col) for o in scene.objects} | {c for t in scene.texts for c in t.cells()}
    return all((row, c) not in taken for c in cols)


def _broken(p: F.PromptSpec, kind: str) -> shapes.Scene | None:
    """p's target with its string broken one way, or None where that cannot be done in the grid."""
    (t,), g, objs = p.target.texts, p.grid, p.target.objects
    rest = shapes.Scene(objs, g)
    with_text = lambda *ts: shapes.Scene(objs, g, ts)  # noqa: E731
    if kind == "wrong_char":
        k = len(t.string) // 2
        other = glyphs.ALPHABET[(glyphs.ALPHABET.index(t.string[k]) + 1) % len(glyphs.ALPHABET)]
        return with_text(dataclasses.replace(t, string=t.string[:k] + other + t.string[k + 1 :]))
    if kind == "missing_char":
        return with_text(dataclasses.replace(t, string=t.string[:-1]))
    if kind == "extra_char" and t.end + 1 < g and _free(rest, t.row, range(t.end + 1, t.end + 2)):
        return with_text(dataclasses.replace(t, string=t.string + "Q"))
    if kind == "wrong_place" and p.texts[0].row is not None:
        for row in range(g):
            if row != t.row and _free(rest, row, range(t.col, t.end + 1)):
                return with_text(dataclasses.replace(t, row=row))
    if kind == "missing_text":
        return rest
    if kind == "extra_text":
        for row in range(g):
            if _free(p.target, row, range(0, 2)):
                return with_text(t, Text(row, 0, "ZZ"))
    return None


@pytest.mark.parametrize("grid", (3, 4))
@pytest.mark.parametrize("kind", ["wrong_char", "missing_char", "extra_char", "wrong_place", "missing_text",
                                  "extra_text"])
def test_each_broken_string_fails_the_text_constraint_and_nothing_else(grid, kind):
    specs = [p for ps in suites.get_suites(list(suites.TEXT_SUITES), grid).values() for p in ps]
    broken = [(p, s) for p in specs if (s := _broken(p, kind)) is not None]
    assert len(broken) >= 8, kind
    for p, scene in broken:
        v = F.score_image(shapes.render(scene, 8 * grid), p)
        assert "text" in v.failed, (p.text, scene)
        if not (p.relations and kind == "missing_text"):  # a missing string also leaves its relation unmet
            assert v.failed == ("text",), (p.text, v.reason)
    report = F.score_images([shapes.render(s, 8 * grid) for _, s in broken], [p for p, _ in broken])
    assert report.correct == 0 and report.constraints["text"]["rate"] == 0.0
    exact = [c["exact_rate"] for c in report.categories.values()]
    assert (max(exact) == 0.0) == (kind in ("wrong_char", "missing_char", "extra_char", "missing_text"))


def test_character_accuracy_counts_characters_in_their_place():
    p = suites.get_suites(["text"], 4)["text"][0]
    (t,) = p.target.texts
    shift = "".join(glyphs.ALPHABET[(glyphs.ALPHABET.index(ch) + 1) % len(glyphs.ALPHABET)] for ch in t.string)
    wrong = dataclasses.replace(t, string=shift)  # every character wrong
    one_off = dataclasses.replace(t, string=shift[0] + t.string[1:])
    report = F.score_images([shapes.render(shapes.Scene((), 4, (x,)), 32) for x in (t, wrong, one_off)], [p] * 3)
    c = report.categories["text"]
    n = len(t.string)
    assert c["chars"] == 3 * n and c["chars_right"] == n + (n - 1)
    assert c["strings_exact"] == 1 and c["strings_placed"] == 3


@pytest.mark.parametrize("sign", [False, True])
def test_cpu_text_tokenizer_gives_a_cell_one_code_of_its_own_pixels(sign):
    """The cpu-text tokenizer preset: one code a cell of the 4x4 world, each made from its cell alone, so a
    character is one code whatever stands beside it (session 28: with codes of the whole image, conv nets
    merged sign characters; docs/RESULTS.md "Issue 21"). Checked on the encoder's output before quantizing."""
    import torch

    from train.tokenizer_stage import preset_config
    from vqtok import VQTokenizer, images_to_tensor

    cfg = preset_config("cpu-text")
    torch.manual_seed(0)
    tok = VQTokenizer(cfg.vq).eval()
    a = shapes.Scene((), cfg.data.grid, (Text(1, 0, "AB7", sign=sign),))
    b = shapes.Scene((), cfg.data.grid, (Text(1, 0, "AQ7", sign=sign),))  # one character changed, cell (1, 1)
    imgs = images_to_tensor(np.stack([shapes.render(s, cfg.vq.resolution) for s in (a, b)]))
    with torch.no_grad():
        z = tok.encoder(imgs)  # (2, D, h, w)
    assert z.shape[-2:] == (cfg.data.grid, cfg.data.grid)
    changed = (z[0] - z[1]).abs().amax(dim=0) > 1e-5  # (h, w)
    assert changed.nonzero().tolist() == [[1, 1]]
