"""`tessera eval` end to end on a tiny run: the report's parts, repeatability, clear errors."""

import dataclasses
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from baseline import BaselineError
from eval import fid
from eval.harness import EvalConfig, evaluate_run
from tessera.cli import main
from tiny import GEN, TOK, set_args  # the same tiny tokenizer and generator as the other tests

torch.set_num_threads(1)


def mean_colour(images: np.ndarray) -> np.ndarray:
    """A cheap feature callable for the library path: per-image mean RGB and its spread."""
    x = images.astype(np.float64) / 255
    return np.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2))], axis=1)  # (N, 6)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "run"
    assert main(["train-tokenizer", "--run", str(path), "--no-progress", *set_args(TOK)]) == 0
    assert main(["train", "--run", str(path), "--no-progress", *set_args(GEN)]) == 0
    return path


@pytest.fixture
def quick_classifier(tmp_path, monkeypatch):
    """The CLI's default classifier features, trained for a few steps into a private cache."""
    monkeypatch.setenv("TESSERA_CACHE", str(tmp_path / "cache"))
    train = fid.train_shapes_classifier
    monkeypatch.setattr(fid, "train_shapes_classifier",
                        lambda cfg, progress=True: train(dataclasses.replace(cfg, steps=3), progress))
    return tmp_path / "cache"


def test_eval_cli_writes_every_part(run, tmp_path, quick_classifier, capsys):
    out = tmp_path / "ev"
    args = ["eval", "--run", str(run), "--out", str(out), "--suite", "position", "--suite", "relation",
            "--suite", "counting", "--n", "2", "--fid-images", "8", "--tokenizer-images", "8",
            "--speed-batch-sizes", "1", "2", "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "wrote" in printed.out
    assert "Loading weights" not in printed.err  # transformers' bar honours --no-progress
    result = json.loads((out / "result.json").read_text())
    f = result["faithfulness"]
    assert {c: v["n"] for c, v in f["categories"].items()} == {"position": 36, "relation": 40, "counting": 64}
    assert f["n"] == 140 and 0 <= f["accuracy"] <= 1 and f["ci95"][0] <= f["accuracy"] <= f["ci95"][1]
    # attributes are checked only on objects found; a 4-step model may draw none
    assert {"count", "relation"} <= set(f["constraints"]) <= {"count", "colour", "shape", "position", "relation"}
    assert f["constraints"]["count"]["n"] == 140
    assert result["fid"]["n_real"] == result["fid"]["n_fake"] == 8 and np.isfinite(result["fid"]["fid"])
    assert result["fid"]["feature_name"].startswith("shapes-classifier-v")
    assert list(quick_classifier.iterdir()), "the classifier was cached"
    tok = result["tokenizer"]
    assert tok["images"] == 8 and -1 <= tok["ssim"] <= 1 and np.isfinite(tok["rfid"]["fid"])
    assert [r["batch_size"] for r in result["speed"]["rows"]] == [1, 2]
    assert all(r["images_per_s"] > 0 and r["peak_memory_mb"] > 0 for r in result["speed"]["rows"])
    assert result["machine"]["device"] == "cpu" and result["suite_version"] >= 1
    report = (out / "report.md").read_text()
    for needle in ("| position |", "| relation |", "| counting |", "| all |", "## Per constraint", "| FID |",
                   "| images | scene preserved | PSNR (dB) | SSIM | rFID |", "## Sampling speed", "## Samples"):
        assert needle in report, needle
    grids = sorted(p.name for p in (out / "grids").iterdir())
    assert grids and all(g.split("_")[0] in ("position", "relation", "counting") for g in grids)
    for g in grids:  # every grid is linked from the report
        assert f"(grids/{g})" in report


def test_same_seed_same_numbers(run, tmp_path):
    cfg = EvalConfig(suites=["heldout", "binding"], n=2, fid_images=6, features=mean_colour, tokenizer=False,
                     speed=False, progress=False)
    a = evaluate_run(run, cfg, tmp_path / "a")
    b = evaluate_run(run, cfg, tmp_path / "b")
    assert a.faithfulness == b.faithfulness and a.fid == b.fid
    assert a.fid["feature_name"] == "mean_colour"
    # a suite's numbers do not depend on the suites run beside it
    alone = evaluate_run(run, dataclasses.replace(cfg, suites=["binding"], fid=False), tmp_path / "c")
    assert alone.faithfulness["categories"]["binding"] == a.faithfulness["categories"]["binding"]


def test_bad_eval_input_is_a_clear_error(run, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--run", str(run), "--suite", "colours"])  # argparse names the choices
    assert "invalid choice" in capsys.readouterr().err
    assert main(["eval", "--run", str(tmp_path / "nope"), "--no-progress"]) == 2
    assert "not a trained run" in capsys.readouterr().err
    assert main(["eval", "--run", str(run), "--fid-images", "2"]) == 2
    assert "fid_images must be >= 5" in capsys.readouterr().err
    assert main(["eval", "--run", str(run), "--features", "clip"]) == 2
    assert "features must be" in capsys.readouterr().err
    assert main(["eval", "--run", str(run), "--features", f"inception:{tmp_path / 'missing.pth'}", "--no-progress"]) == 2
    assert "missing.pth" in capsys.readouterr().err
    torch.save({"w": torch.zeros(2), "note": {"not": "a tensor"}}, tmp_path / "odd.pth")
    assert main(["eval", "--run", str(run), "--features", f"inception:{tmp_path / 'odd.pth'}", "--no-progress"]) == 2
    assert "refusing" in capsys.readouterr().err


BASE = {
    "model.block_out_channels": [8, 16], "model.norm_num_groups": 4, "model.attention_head_dim": 4,
    "model.text_dim": 16, "model.text_layers": 1, "model.text_heads": 2, "loop.steps": 3, "loop.batch_size": 4,
    "loop.log_every": 1, "loop.warmup_steps": 1, "loop.ema_decay": 0.0, "loop.device": "cpu",
    "data.train_images": 32,
}


def test_baseline_trains_and_is_evaluated_by_the_same_harness(run, tmp_path, capsys):
    assert main(["train-baseline", "--run", str(run), "--no-progress", *set_args(BASE)]) == 0
    assert (run / "baseline" / "model.safetensors").is_file() and (run / "metrics" / "baseline.jsonl").is_file()
    out = tmp_path / "evb"
    args = ["eval", "--run", str(run), "--model", "baseline", "--sampler", "dpm++", "--steps", "2", "--out",
            str(out), "--suite", "position", "--n", "1", "--fid-images", "6", "--speed-batch-sizes", "2",
            "--features", "classifier", "--no-progress"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TESSERA_CACHE", str(tmp_path / "cache"))
        train = fid.train_shapes_classifier
        mp.setattr(fid, "train_shapes_classifier", lambda cfg, progress=True: train(dataclasses.replace(cfg, steps=3), progress))
        assert main(args) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["model"] == "baseline" and result["tokenizer"] is None
    assert result["faithfulness"]["categories"]["position"]["n"] == 18
    assert result["fid"]["n_fake"] == 6
    row = result["speed"]["rows"][0]
    assert row["setting"] == "dpm++ 2 steps" and row["nfe_per_image"] == 4  # 2 steps x 2 rows (guidance 1.5)
    assert "sampler dpm++, steps 2" in (out / "report.md").read_text()
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--model", "baseline", "--decoder", "jacobi", "--no-progress"]) == 2
    err = capsys.readouterr().err  # one line naming what the setting belongs to, before anything samples
    assert "'decoder' (a setting of the autoregressive generator's sampler)" in err and len(err.splitlines()) == 1
    # the baseline records its sampling settings, and opens through the same interface as the generator
    from pipelines import ImageSampler, open_sampler

    assert json.loads((run / "baseline" / "tessera_sampling.json").read_text()) == {
        "sampler": "ddim", "steps": 25, "cfg_scale": 1.5, "expand": False}
    pipe = open_sampler(run, "baseline", device="cpu")
    assert isinstance(pipe, ImageSampler) and pipe.tokenizer is None
    assert pipe.settings(steps=3).steps == 3 and pipe.describe(pipe.settings()) == "ddim 25 steps"
    with pytest.raises(BaselineError, match="temperature"):
        pipe.settings(temperature=0.5)
    # a run without a baseline says how to make one
    assert main(["eval", "--run", str(tmp_path / "none"), "--model", "baseline", "--no-progress"]) == 2
    assert "train-baseline" in capsys.readouterr().err


def test_a_4x4_run_is_scored_on_its_own_world(tmp_path, capsys):
    """The grid is read from the run: suites, parse and the report's per-count table follow it."""
    path = tmp_path / "four"
    world = {"data.grid": 4, "data.max_objects": 16}
    assert main(["train-tokenizer", "--run", str(path), "--no-progress",
                 *set_args({**TOK, **world, "vq.resolution": 32})]) == 0  # 8 px a cell, 2x2 codes
    gen = {**GEN, **world, "data.count_weights": None, "data.captions": "all", "data.uniform_scenes": 0.3,
           "data.text_len": 160, "data.mask_padding": True}
    assert main(["train", "--run", str(path), "--no-progress", *set_args(gen)]) == 0
    out = tmp_path / "ev4"
    assert main(["eval", "--run", str(path), "--out", str(out), "--suite", "counting", "--suite", "many_objects",
                 "--n", "1", "--no-fid", "--no-tokenizer", "--no-speed", "--no-progress"]) == 0
    f = json.loads((out / "result.json").read_text())["faithfulness"]
    assert {c: v["n"] for c, v in f["categories"].items()} == {"counting": 40, "many_objects": 12}
    assert list(f["groups"]["counting"]) == [f"n={n}" for n in range(1, 11)]  # counts to 10 on the 4x4 world
    assert set(f["groups"]["many_objects"]) == {f"n={n}" for n in range(10, 17)}
    assert f["categories"]["many_objects"]["objects"] == sum(range(10, 17)) + sum(range(10, 15))
    report = (out / "report.md").read_text()
    assert "## counting by group" in report and "| n=10 |" in report and "objects right" in report


def test_a_text_run_is_scored_on_the_text_suites_first(tmp_path, capsys):
    """A run trained with strings (data.text) is evaluated on the text suites by default; the report and the
    tokenizer's metrics say how the strings and the glyphs fared. (Trained with data.place_tokens: the run's text
    tokenizer names each cell with one token, and sampling from the run reads it.)"""
    path = tmp_path / "text"
    world = {"data.grid": 4, "data.max_objects": 3, "data.text": 0.8}
    assert main(["train-tokenizer", "--run", str(path), "--no-progress",
                 *set_args({**TOK, **world, "vq.resolution": 32})]) == 0
    gen = {**GEN, **world, "data.count_weights": None, "data.captions": "all", "data.text_len": 56,
           "data.glyph_slots": 4, "data.place_tokens": True}
    assert main(["train", "--run", str(path), "--no-progress", *set_args(gen)]) == 0
    saved = json.loads((path / "generator" / "tessera_layout.json").read_text())
    assert saved["generator"]["layout"]["glyph_slots"] == 4
    from ar_model import load_text_tokenizer
    from pipelines import Run

    text_tok = load_text_tokenizer(Run(path).text_tokenizer)
    ids = text_tok("the word \"OK\" starting in the upper center left", add_special_tokens=False)["input_ids"]
    assert text_tok.convert_ids_to_tokens(ids)[-1] == "upper center left"
    out = tmp_path / "evt"
    assert main(["eval", "--run", str(path), "--out", str(out), "--n", "1", "--no-fid", "--no-speed",
                 "--tokenizer-images", "20", "--no-progress"]) == 0
    result = json.loads((out / "result.json").read_text())
    cats = result["faithfulness"]["categories"]
    assert list(cats)[:2] == ["text", "text_objects"] and "single_object" in cats  # then the usual suites
    assert cats["text"]["strings"] == 20 and 0 <= cats["text"]["char_accuracy"] <= 1
    tok = result["tokenizer"]
    assert tok["chars"] > 0 and 0 <= tok["glyph_preservation"] <= 1
    report = (out / "report.md").read_text()
    assert "## Text (the strings prompts asked for)" in report and "Glyphs:" in report
