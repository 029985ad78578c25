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
