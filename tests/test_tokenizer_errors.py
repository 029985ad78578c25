"""benchmarks/tokenizer_errors.py: which objects a tokenizer's round trip changes."""

import importlib.util
from dataclasses import replace
from pathlib import Path

import torch

from train.data import shapes

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "tokenizer_errors.py"
_SPEC = importlib.util.spec_from_file_location("tokenizer_errors", _PATH)
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


def test_changes_names_each_wrong_missing_and_extra_object():
    scene = shapes.Scene((shapes.Obj("circle", "green", "small", 0, 0), shapes.Obj("square", "red", "large", 1, 2)),
                         grid=4)
    assert bench.changes(scene, scene) == []
    a, b = scene.objects
    squared = shapes.Scene((replace(a, shape="square"), b), grid=4)
    assert bench.changes(scene, squared) == [("green", "circle", "small", "->", "green", "square", "small")]
    dimmed = shapes.Scene((a, replace(b, tone="dim")), grid=4)
    assert bench.changes(scene, dimmed) == [("red", "square", "large", "->", "red", "square", "large", "bright", "->",
                                             "dim")]
    gone = shapes.Scene((b,), grid=4)
    assert bench.changes(scene, gone) == [("missing", "green", "circle", "small")]
    more = shapes.Scene((a, b, replace(b, row=3)), grid=4)
    assert bench.changes(scene, more) == [("extra", "red", "square", "large")]


def test_the_benchmark_runs_on_a_tokenizer_it_is_given(tmp_path, capsys):
    from vqtok import VQConfig, VQTokenizer, save_tokenizer

    torch.manual_seed(0)
    save_tokenizer(VQTokenizer(VQConfig(resolution=32, base_channels=8, channel_mult=(1, 2, 2, 2), latent_dim=8,
                                        norm_groups=4, codebook_size=64)), tmp_path / "tok")
    assert bench.main(["--tokenizer", str(tmp_path / "tok"), "--n", "20", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "20 held-out scenes at 32 px" in out and "scenes kept 0.0%" in out  # an untrained tokenizer keeps none
    assert len(out.strip().splitlines()) == 5  # the summary, the object counts, the 3 commonest changes


def test_char_changes_names_each_character_read_otherwise_in_its_cell():
    from train.data.glyphs import Text

    scene = shapes.Scene((), grid=4, texts=(Text(1, 0, "AB7"), Text(3, 1, "OK", sign=True)))
    assert bench.char_changes(scene, scene) == {}
    misread = shapes.Scene((), grid=4, texts=(Text(1, 0, "AP7"), Text(3, 1, "OK", sign=True)))
    assert bench.char_changes(scene, misread) == {(1, 1): ("B", "P", False)}
    shifted = shapes.Scene((), grid=4, texts=(Text(1, 0, "AB7"), Text(3, 2, "OK", sign=True)))  # one cell right
    assert bench.char_changes(scene, shifted) == {(3, 1): ("O", None, True), (3, 2): ("K", "O", True)}


def test_the_text_report_counts_characters_plain_and_on_signs(tmp_path, capsys):
    from vqtok import VQConfig, VQTokenizer, save_tokenizer

    torch.manual_seed(0)
    save_tokenizer(VQTokenizer(VQConfig(resolution=32, base_channels=8, channel_mult=(1, 2, 2, 2), latent_dim=8,
                                        norm_groups=4, codebook_size=64)), tmp_path / "tok")
    assert bench.main(["--tokenizer", str(tmp_path / "tok"), "--n", "20", "--top", "2", "--text", "1.0",
                       "--max-objects", "2"]) == 0
    out = capsys.readouterr().out
    plain = next(line for line in out.splitlines() if line.startswith("characters plain:"))
    signed = next(line for line in out.splitlines() if line.startswith("characters on a sign:"))
    n_plain, n_sign = (int(line.split(":")[1].split(",")[0]) for line in (plain, signed))
    assert n_plain + n_sign >= 20  # every scene holds a string of 1-4 characters
    assert f"read otherwise {n_plain} (100.0%)" in plain  # an untrained tokenizer reads none back
    assert "one code a cell:" in out  # 32 px, 8x down: a code a cell, so the code sharing is reported
