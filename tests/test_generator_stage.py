"""The generator stage end to end on tiny settings: pre-tokenizing, training, sampling, the demo, bad input."""

import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from ar_model import SequenceLayout, train_text_tokenizer
from tessera.cli import main
from tiny import GEN, TOK, set_args
from train.data import shapes
from train.generator_stage import GeneratorTask, preset_config
from train.errors import TrainConfigError
from train.pretokenize import check_manifest, load_codes, pretokenize, read_manifest
from vqtok import VQConfig, VQTokenizer, load_tokenizer, save_tokenizer

torch.set_num_threads(1)



@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run with a tiny tokenizer and a tiny generator, trained through the CLI."""
    path = tmp_path_factory.mktemp("gen") / "run"
    assert main(["train-tokenizer", "--run", str(path), "--no-progress", *set_args(TOK)]) == 0
    assert main(["train", "--run", str(path), "--no-progress", *set_args(GEN)]) == 0
    return path


def test_train_writes_codes_manifest_and_a_loadable_generator(run):
    from transformers import AutoModelForCausalLM

    manifest = read_manifest(run / "codes")
    assert manifest.rows == 48 and manifest.skipped_empty_text == manifest.skipped_bad_image == 0
    codes, text = load_codes(run / "codes")
    grid = load_tokenizer(run / "tokenizer").cfg.grid_size
    assert codes.dtype == torch.int16 and codes.shape == (48, grid * grid)
    assert text.shape == (48, preset_config("cpu").data.text_len)
    assert int(codes.min()) >= 0 and int(codes.max()) < 32
    lines = [json.loads(x) for x in (run / "metrics" / "generator.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4] and all(np.isfinite(x["loss"]) for x in lines)
    model = AutoModelForCausalLM.from_pretrained(str(run / "generator"))
    assert model.config.vocab_size == json.loads((run / "generator" / "tessera_layout.json").read_text())[
        "token_ids"]["vocab_size"]


def test_training_refuses_codes_from_another_tokenizer(run, tmp_path):
    other = tmp_path / "other"
    torch.manual_seed(1)
    save_tokenizer(VQTokenizer(load_tokenizer(run / "tokenizer").cfg), other)  # same config, other weights
    layout = SequenceLayout.from_dict(read_manifest(run / "codes").layout)
    with pytest.raises(TrainConfigError, match="another tokenizer"):
        check_manifest(read_manifest(run / "codes"), other, layout)
    check_manifest(read_manifest(run / "codes"), run / "tokenizer", layout)  # and accepts its own


def test_pretokenize_skips_empty_captions_and_bad_images_counting_them(tmp_path, caplog):
    import datasets

    cfg = VQConfig(resolution=32, base_channels=16, channel_mult=(1, 2, 2), latent_dim=16, codebook_size=32,
                   norm_groups=4)
    tok = VQTokenizer(cfg)
    save_tokenizer(tok, tmp_path / "tok")
    good = Image.fromarray(shapes.render(shapes.sample_scene(np.random.default_rng(0)), 32))
    ds = datasets.Dataset.from_dict(
        {"image": [good, good, {"bytes": b"not an image", "path": None}, good],
         "text": ["a red circle", "", "a cat", "x " * 60]},
        features=datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")}),
    )
    text_tok = train_text_tokenizer(["a red circle"], vocab_size=300)
    layout = SequenceLayout.for_tokenizer(text_tok, codebook_size=32, grid=(8, 8), text_len=8)
    m = pretokenize(ds, tok, tmp_path / "tok", text_tok, layout, tmp_path / "codes", progress=False)
    assert (m.rows, m.skipped_empty_text, m.skipped_bad_image, m.truncated_text) == (2, 1, 1, 1)
    assert "row 1 skipped: empty caption" in caplog.text and "row 2" in caplog.text
    assert not (tmp_path / "codes.tmp").exists()


def test_batches_are_a_function_of_the_step(run):
    cfg = preset_config("cpu").override(GEN)
    codes, text = load_codes(run / "codes")
    layout = SequenceLayout.from_dict(read_manifest(run / "codes").layout)
    gcfg = cfg.generator_config(layout)
    a = GeneratorTask(cfg, gcfg, codes, text)
    b = GeneratorTask(cfg, gcfg, codes, text)
    b.batch(0, 0, 8)  # a different history must not change batch (3, 0)
    assert torch.equal(a.batch(3, 0, 8), b.batch(3, 0, 8))
    assert not torch.equal(a.batch(3, 0, 8), a.batch(4, 0, 8))
    # condition dropout: some rows' text is all [PAD] at p = 0.5, on average half
    cfg_drop = cfg.override({"model.cond_dropout": 0.5})
    t = GeneratorTask(cfg_drop, cfg_drop.generator_config(layout), codes, text)
    ids = torch.cat([t.batch(s, 0, 8) for s in range(20)])
    dropped = (ids[:, 1 : 1 + layout.text_len] == layout.pad_id).all(dim=1).float().mean()
    assert 0.3 < float(dropped) < 0.7


def test_sample_cli_handles_bad_prompts_and_is_reproducible(run, tmp_path, caplog):
    long = "a red circle in the top left " * 10
    args = ["sample", "--run", str(run), "--prompt", "a red circle in the top left", "--prompt", "",
            "--prompt", long, "--prompt", "ein roter Kreis \u2764\ufe0f \u00e9\u00e8 \u4e2d\u6587", "--n", "2"]
    assert main([*args, "--out", str(tmp_path / "a"), "--seed", "3"]) == 0
    assert "empty prompt" in caplog.text and "truncated" in caplog.text
    pngs = sorted(p.name for p in (tmp_path / "a").glob("*.png"))
    assert len(pngs) == 9 and "grid.png" in pngs  # 4 prompts x 2 + the grid
    assert main([*args, "--out", str(tmp_path / "b"), "--seed", "3"]) == 0
    for name in pngs:
        assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / name)), np.asarray(Image.open(tmp_path / "b" / name)))
    info = Image.open(next((tmp_path / "a").glob("a-red-circle-in-the-top-left_000.png"))).text
    assert info["prompt"] == "a red circle in the top left" and json.loads(info["tessera"])["seed"] == 3


@pytest.mark.parametrize("key, value", [("data.captions", "some"), ("data.row_tokens", "yes"), ("data.text_len", 0),
                                        ("data.min_objects", 3), ("data.count_weights", [1.0]),
                                        ("data.count_weights", [0, 0])])
def test_data_settings_are_checked_by_name(key, value):
    with pytest.raises(TrainConfigError, match=key.split(".")[1]):
        preset_config("cpu").override({key: value})


def test_sample_cli_errors_are_one_line(run, tmp_path, capsys):
    assert main(["sample", "--run", str(tmp_path / "nowhere"), "--prompt", "x"]) == 2
    assert "is not a trained run" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # refused while parsing, before the run is loaded
        main(["sample", "--run", str(run), "--prompt", "x", "--top-p", "0"])
    assert e.value.code == 2 and "--top-p" in capsys.readouterr().err
    assert main(["train", "--run", str(tmp_path / "notok")]) == 2
    assert "tokenizer" in capsys.readouterr().err


def test_demo_runs_the_whole_pipeline(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--no-progress", "--eval-images", "20", "--samples-per-prompt", "1",
            *set_args(TOK, "tokenizer."), *set_args(GEN, "generator.")]
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "[5/5]" in printed.out
    for bar in ("Writing model shards", "Loading weights", "sampling:", "tokenizer eval"):  # --no-progress
        assert bar not in printed.err, bar
    summary = json.loads((out / "summary.json").read_text())
    cats = summary["faithfulness"]["categories"]
    assert {c: v["n"] for c, v in cats.items()} == {"single_heldout": 18, "single_seen": 18, "two_object": 12}
    assert summary["tokenizer"]["images"] == 20
    for name in ("single_heldout", "single_seen", "two_object", "reconstructions"):
        assert (out / "samples" / f"{name}.png").is_file()
    assert "| single_heldout |" in (out / "summary.md").read_text()
    # a second call on the same directory resumes every finished stage instead of refusing it
    assert main(args) == 0
    assert json.loads((out / "summary.json").read_text())["faithfulness"] == summary["faithfulness"]


def test_faithfulness_sweep_benchmark_scores_each_setting(run, tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "faithfulness_sweep.py"
    spec = importlib.util.spec_from_file_location("faithfulness_sweep", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "sweep.json"
    assert bench.main(["--run", str(run), "--n", "1", "--setting", "1:0:0", "--setting", "2:1:5", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["cfg"], r["temperature"], r["top_k"]) for r in rows] == [(1.0, 0.0, 0), (2.0, 1.0, 5)]
    assert all(0.0 <= r[c] <= 1.0 for r in rows for c in ("single_heldout", "single_seen", "two_object", "all"))
    assert "| 2 | 1 | 5 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="CFG:TEMPERATURE:TOPK"):
        bench.main(["--run", str(run), "--setting", "3"])


def test_sampling_settings_are_recorded_with_the_generator_and_read_by_sample(run, tmp_path):
    from ar_model import SampleConfig
    from pipelines import ImageSampler, open_sampler

    recorded = json.loads((run / "generator" / "tessera_sampling.json").read_text())
    assert recorded == {k: v for k, v in SampleConfig().to_dict().items() if k != "seed"}
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "generator" / "tessera_sampling.json").write_text(json.dumps({"cfg_scale": 2.0, "top_k": 5}))
    pipe = open_sampler(copy, "generator", device="cpu")
    assert isinstance(pipe, ImageSampler) and pipe.settings().cfg_scale == 2.0
    assert main(["sample", "--run", str(copy), "--prompt", "a red circle", "--n", "1", "--out", str(tmp_path / "a")]) == 0
    used = json.loads(Image.open(tmp_path / "a" / "a-red-circle_000.png").text["tessera"])
    assert (used["cfg_scale"], used["top_k"], used["temperature"]) == (2.0, 5, SampleConfig().temperature)
    # a flag overrides the recorded value, zero included
    assert main(["sample", "--run", str(copy), "--prompt", "a red circle", "--n", "1", "--top-k", "0",
                 "--temperature", "0", "--out", str(tmp_path / "b")]) == 0
    used = json.loads(Image.open(tmp_path / "b" / "a-red-circle_000.png").text["tessera"])
    assert (used["cfg_scale"], used["top_k"], used["temperature"]) == (2.0, 0, 0.0)


def test_the_sample_section_is_checked_and_may_change_on_resume(tmp_path):
    from ar_model import ConfigError
    from train.config import check_run_config

    cfg = preset_config("cpu")
    assert cfg.override({"sample.cfg_scale": 3}).recommended_sampling().cfg_scale == 3
    with pytest.raises(ConfigError, match="guidance"):
        cfg.override({"sample.guidance": 3})
    check_run_config(tmp_path, cfg)
    check_run_config(tmp_path, cfg.override({"sample.temperature": 1.0}))  # not part of what trains
    with pytest.raises(TrainConfigError, match="data.text_len"):
        check_run_config(tmp_path, cfg.override({"data.text_len": 20}))


def test_the_world_grid_is_a_checked_setting(caplog):
    from train.generator_stage import GeneratorDataConfig, check_world
    from train.tokenizer_stage import preset_config as tokenizer_preset

    with pytest.raises(TrainConfigError, match="grid must be one of 3, 4"):
        preset_config("cpu").override({"data.grid": 5})
    with pytest.raises(TrainConfigError, match=r"<= 9 \(a 3x3 grid\)"):
        preset_config("cpu").override({"data.max_objects": 12})
    with pytest.raises(TrainConfigError, match="uniform_scenes"):
        preset_config("cpu").override({"data.uniform_scenes": 2})
    for bad in (6, 56, -4):  # 4 slots a string, and room left for the caption
        with pytest.raises(TrainConfigError, match="glyph_slots"):
            preset_config("cpu-text").override({"data.glyph_slots": bad})
    with pytest.raises(TrainConfigError, match="glyph_end"):
        preset_config("cpu-text").override({"data.glyph_slots": 0, "data.glyph_end": True})
    with pytest.raises(TrainConfigError, match="place_tokens"):  # names the shapes world's places: not own data
        preset_config("cpu").override({"data.place_tokens": True, "data.text_tokenizer": "some/dir"})
    with pytest.raises(TrainConfigError, match="place_tokens"):
        preset_config("cpu").override({"data.place_tokens": "yes"})
    with pytest.raises(TrainConfigError, match="grid"):
        tokenizer_preset("cpu").override({"data.grid": 4, "data.max_objects": 17})
    four = GeneratorDataConfig(grid=4, max_objects=16)
    with pytest.raises(TrainConfigError, match=">= 32 px"):
        check_world(four, resolution=24, code_grid=6)  # 6 px a cell: no judge could read it
    with caplog.at_level("WARNING"):
        check_world(four, resolution=48, code_grid=6)
    assert "1.50 codes" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        check_world(four, resolution=32, code_grid=8)  # 2x2 codes a cell
    assert caplog.text == ""
    long = preset_config("cpu-long")
    assert long.data.grid == tokenizer_preset("cpu-long").data.grid == 4 and long.data.captions == "all"
    mix = long.override({"data.caption_kinds": {"relation": 2, "partial": 1}})
    assert mix.data.caption_kinds == {"relation": 2.0, "partial": 1.0}
    from train.generator_stage import data_source
    assert data_source(mix.data)["caption_kinds"] == mix.data.caption_kinds  # codes of another mix are not reused
    assert long.data.caption_kinds == {"complete": 1.0} and long.sample["expand"] is True  # the expander reads the rest
    # tiny's width and depth with a key/value head per query head: with tiny's 2 shared ones the late cells of 10-16
    # object scenes read the next object's colour (docs/RESULTS.md, issue 17, session 26)
    gcfg = long.generator_config(SequenceLayout(text_len=160, text_vocab=64, codebook_size=16, grid=(4, 4)))
    assert (gcfg.hidden_size, gcfg.num_layers, gcfg.num_heads, gcfg.num_kv_heads) == (128, 4, 4, 4)
    plain = long.override({"data.caption_kinds": None})
    assert "caption_kinds" not in data_source(plain.data)  # codes made before the setting existed still match
    for changes in ({"data.caption_kinds": {"pose": 1}}, {"data.caption_kinds": {"count": 0}},
                    {"data.caption_kinds": {"count": 1}, "data.captions": "complete"},
                    {"data.caption_kinds": {"count": 1}, "data.source": "some/folder"}):
        with pytest.raises(TrainConfigError, match="caption_kinds"):
            long.override(changes)


def test_a_minutes_budget_sets_the_steps_and_a_resume_keeps_them(run, tmp_path, monkeypatch, capsys):
    """`--minutes`: a few timed steps set loop.steps (recorded, warmup capped at a tenth); a resume never probes."""
    import train.loop
    from pipelines import Run

    gen = {k: v for k, v in GEN.items() if k != "loop.steps"}
    args = ["--run", str(tmp_path / "r"), "--tokenizer", str(run / "tokenizer"), "--no-progress", *set_args(gen)]
    assert main(["train", *args, "--minutes", "0.005"]) == 0  # 0.3 s: a handful of toy steps
    loop = Run(tmp_path / "r").recorded_config("generator")["loop"]
    logged = [json.loads(x)["step"] for x in (tmp_path / "r" / "metrics" / "generator.jsonl").read_text().splitlines()]
    assert loop["steps"] >= 1 and logged[-1] == loop["steps"] and loop["warmup_steps"] == min(1, loop["steps"] // 10)
    assert f"({loop['steps']} steps, from the --minutes budget the run began with)" in capsys.readouterr().out
    monkeypatch.setattr(train.loop, "steps_for_seconds", lambda *a, **k: pytest.fail("probed again"))
    assert main(["train", *args, "--minutes", "60"]) == 0  # resumed: the recorded count, not an hour's
    assert Run(tmp_path / "r").recorded_config("generator")["loop"]["steps"] == loop["steps"]
    with pytest.raises(SystemExit) as e:
        main(["train", *args, "--minutes", "1", "--steps", "5"])
    assert e.value.code == 2 and "not allowed with" in capsys.readouterr().err
    for bad in ("0", "-1", "nan"):
        with pytest.raises(SystemExit):
            main(["train", *args, "--minutes", bad])
