"""Own data end to end on tiny settings: docs/DATA.md's example, the layouts, bad rows, resumable parallel tokenize."""

import json
import os
import re
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from tessera.cli import main
from train import pretokenize
from train.data import grammar, own, shapes
import tiny
from tiny import doc_commands, set_args
from train.data.images import to_rgb
from train.errors import TrainConfigError
from train.generator_stage import GeneratorStageConfig, prepare_codes, preset_config
from train.pretokenize import load_codes, read_manifest
from train.config import check_run_config
from train.tokenizer_stage import train_tokenizer
from train.tokenizer_stage import preset_config as tokenizer_preset

torch.set_num_threads(1)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "DATA.md"
# the tiny settings without the shapes world's data.train_images: own data use every row
TOK, GEN = ({k: v for k, v in d.items() if k != "data.train_images"} for d in (tiny.TOK, tiny.GEN))
# (file name, width, height, mode): several sizes and aspect ratios, grayscale, palette, alpha, JPEG, a subfolder
IMAGES = [
    ("img_00.png", 32, 32, "RGB"), ("img_01.png", 48, 32, "RGB"), ("img_02.jpg", 24, 40, "RGB"),
    ("img_03.jpg", 64, 64, "RGB"), ("img_04.png", 40, 30, "L"), ("img_05.png", 50, 50, "RGBA"),
    ("img_06.jpg", 36, 20, "RGB"), ("img_07.png", 28, 28, "P"), ("img_08.png", 60, 45, "RGB"),
    ("img_09.jpg", 33, 33, "L"), ("more/img_10.png", 20, 44, "RGB"), ("more/img_11.png", 45, 45, "RGB"),
]
EMPTY_CAPTION = "img_04.png"
BROKEN = "broken.png"
KEPT = len(IMAGES) - 1  # all but the empty caption's; the broken file is a 13th row


def write_images(folder: Path) -> Path:
    """An imagefolder: a dozen images with captions in metadata.jsonl, one empty caption, one corrupt file."""
    scenes = shapes.sample_scenes(len(IMAGES), seed=5, max_objects=2)
    rng = np.random.default_rng(0)
    lines = []
    for (name, w, h, mode), scene in zip(IMAGES, scenes):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(shapes.render(scene, max(w, h))).crop((0, 0, w, h)).convert(mode).save(path)
        text = "" if name == EMPTY_CAPTION else grammar.caption(scene, rng, "complete")
        lines.append({"file_name": name, "text": text})
    (folder / BROKEN).write_bytes(np.random.default_rng(1).bytes(300))  # random bytes under a .png name
    lines.append({"file_name": BROKEN, "text": "a picture that will not open"})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder


def gen_cfg(**extra) -> GeneratorStageConfig:
    return preset_config("cpu").override({**GEN, "loop.progress": False, **extra})


def docs_example() -> list[list[str]]:
    """The `tessera ...` lines between docs/DATA.md's own-data-example markers, as argv lists."""
    commands = doc_commands(DOCS, "own-data-example")
    assert [c[0] for c in commands] == ["train-tokenizer", "tokenize", "train", "sample"]
    return commands


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_images(tmp_path_factory.mktemp("own") / "my_images")


@pytest.fixture(scope="module")
def tok_dir(images, tmp_path_factory) -> Path:
    """A tiny tokenizer trained on the images, shared by the tests that compare codes."""
    cfg = tokenizer_preset("cpu").override({**TOK, "loop.progress": False, "data.source": str(images)})
    run = tmp_path_factory.mktemp("tok")
    return train_tokenizer(cfg, run)


@pytest.fixture(scope="module")
def reference(images, tok_dir, tmp_path_factory) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes and text ids of the imagefolder, made in one process and one shard."""
    prepared = prepare_codes(gen_cfg(**{"data.source": str(images)}), tmp_path_factory.mktemp("ref"), tok_dir)
    return load_codes(prepared.codes_dir)


def assert_same(codes_dir: Path, reference: tuple[torch.Tensor, torch.Tensor]) -> None:
    for got, want in zip(load_codes(codes_dir), reference):
        assert torch.equal(got, want)
    m = read_manifest(codes_dir)
    assert (m.rows, m.skipped_empty_text, m.skipped_bad_image) == (KEPT, 1, 1)


def test_docs_example_runs_on_own_images(tmp_path, monkeypatch, caplog):
    write_images(tmp_path / "my_images")
    monkeypatch.chdir(tmp_path)
    tiny = {"train-tokenizer": [*set_args(TOK), "--no-progress"], "tokenize": [*set_args(GEN), "--no-progress"],
            "train": [*set_args(GEN), "--no-progress"], "sample": []}
    for argv in docs_example():
        assert main([*argv, *tiny[argv[0]]]) == 0, argv
    broken = str((tmp_path / "my_images" / BROKEN).resolve())
    # named by both stages: the tokenizer's image loading and pre-tokenizing
    assert f"loading images: skipped {broken}: cannot read image" in caplog.text
    assert re.search(rf"row \d+ skipped: bad image: {re.escape(broken)}", caplog.text)
    assert re.search(r"row \d+ skipped: empty caption", caplog.text)
    m = read_manifest("runs/mine/codes")
    assert (m.rows, m.skipped_empty_text, m.skipped_bad_image) == (KEPT, 1, 1)
    assert m.source["source"] == str((tmp_path / "my_images").resolve())
    codes, text = load_codes("runs/mine/codes")
    assert codes.shape == (KEPT, 36) and text.shape[0] == KEPT  # cpu preset: 24 px, 6x6 codes
    assert (tmp_path / "runs/mine/generator/config.json").is_file()
    pngs = sorted(p.name for p in (tmp_path / "samples/mine").glob("*.png"))
    assert len(pngs) == 5 and "grid.png" in pngs  # 4 samples + the grid


def test_train_reuses_tokenized_codes_and_refuses_other_data(images, tok_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tok_dir, run / "tokenizer")
    data = {**GEN, "data.source": str(images)}
    assert main(["tokenize", "--run", str(run), "--no-progress", *set_args(data)]) == 0
    stamp = (run / "codes" / pretokenize.MANIFEST).stat().st_mtime_ns
    assert main(["train", "--run", str(run), "--no-progress", *set_args(data)]) == 0
    assert (run / "codes" / pretokenize.MANIFEST).stat().st_mtime_ns == stamp  # not encoded again
    other = write_images(tmp_path / "other")
    capsys.readouterr()
    assert main(["tokenize", "--run", str(run), "--no-progress", *set_args({**data, "data.source": str(other)})]) == 2
    err = capsys.readouterr().err
    assert "were made from" in err and "delete the codes directory" in err


def test_parquet_and_arrow_inputs_give_the_imagefolder_codes(images, tok_dir, reference, tmp_path):
    rows = own.load_rows(str(images), {"image": "image", "text": "text"})
    rows = rows.rename_columns({"image": "img", "text": "caption"})  # other names, set by data.*_column
    (tmp_path / "pq").mkdir()
    rows.to_parquet(str(tmp_path / "pq" / "part-0.parquet"))  # embeds the image bytes
    rows.save_to_disk(str(tmp_path / "saved"))
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    for name, source in [("parquet", tmp_path / "pq"), ("save_to_disk", tmp_path / "saved"), ("arrow", arrow)]:
        cfg = gen_cfg(**{"data.source": str(source), "data.image_column": "img", "data.text_column": "caption"})
        assert_same(prepare_codes(cfg, tmp_path / name, tok_dir).codes_dir, reference)


def test_killed_tokenize_resumes_from_its_last_shard(images, tok_dir, reference, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    args = ["tokenize", "--run", str(run), "--tokenizer", str(tok_dir), "--no-progress",
            *set_args({**GEN, "data.source": str(images), "data.shard_size": 5})]  # 13 rows: shards of 5, 5, 3
    encode_shard = pretokenize.encode_shard
    encoded, kill = [], [True]

    def killed_in_second_shard(ds, *a, **kw):
        encoded.append(len(ds))
        if kill[0] and len(encoded) == 2:
            raise KeyboardInterrupt
        return encode_shard(ds, *a, **kw)

    monkeypatch.setattr(pretokenize, "encode_shard", killed_in_second_shard)
    assert main(args) == 130
    partial = run / "codes.partial"
    assert sorted(p.name for p in partial.iterdir()) == ["shard-00000", pretokenize.PARTIAL_MANIFEST]
    assert not (run / "codes").exists()
    # other settings may not resume into these shards
    capsys.readouterr()
    assert main([*args, "--set", "data.text_len=9"]) == 2
    err = capsys.readouterr().err
    assert f"delete {partial}" in err and "layout" in err
    encoded.clear()
    kill[0] = False
    assert main(args) == 0
    assert encoded == [5, 3]  # the finished shard was not encoded again
    assert not partial.exists()
    assert_same(run / "codes", reference)  # the dataset of the one-shard, uninterrupted run
    assert read_manifest(run / "codes").shards == 3


def test_two_workers_give_the_codes_of_one(images, tok_dir, reference, tmp_path):
    cfg = gen_cfg(**{"data.source": str(images), "data.shard_size": 8})
    # the multi-GPU path (worker r on devices[r % 2]) on CPUs; the docs example covers --num-proc alone
    codes_dir = prepare_codes(cfg, tmp_path / "run", tok_dir, num_proc=2, devices=["cpu", "cpu"]).codes_dir
    assert_same(codes_dir, reference)


@pytest.mark.parametrize(
    "stage, settings, needles",
    [
        ("tokenize", {"data.source": "nowhere"}, ["'nowhere'", "existing path"]),
        ("tokenize", {"data.source": "empty"}, ["holds no images", "metadata.jsonl"]),
        ("tokenize", {"data.source": "notes.txt"}, ["not .parquet or .arrow"]),
        ("tokenize", {"data.text_column": "caption"}, ["no text column 'caption'", "columns found: image, text"]),
        ("train-tokenizer", {"data.image_column": "picture"}, ["no image column 'picture'", "columns found"]),
    ],
)
def test_bad_sources_are_one_line_cli_errors(images, tok_dir, tmp_path, monkeypatch, capsys, stage, settings, needles):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not data")
    args = [stage, "--run", str(tmp_path / "run"), *set_args({"data.source": str(images), **settings})]
    if stage == "tokenize":
        args += ["--tokenizer", str(tok_dir)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data.source") and err.count("\n") == 1 and "Traceback" not in err
    for needle in needles:
        assert needle in err


def test_to_rgb_centre_crops_the_shorter_side_then_resizes():
    wide = np.zeros((10, 30, 3), np.uint8)
    wide[:, 10:20] = 255  # a white centre square between black sides
    assert (to_rgb(Image.fromarray(wide), 20, "wide") == 255).all()
    tall = np.zeros((30, 10), np.uint8)
    tall[10:20] = 200
    out = to_rgb(Image.fromarray(tall, "L"), 10, "tall")
    assert out.shape == (10, 10, 3) and (out == 200).all()


def test_runs_recorded_before_the_own_data_settings_still_resume(tmp_path):
    cfg = gen_cfg()
    old = json.loads(json.dumps(cfg.to_dict()))
    for key in ("image_column", "text_column", "shard_size"):  # added with own data: older runs lack them
        del old["data"][key]
    (tmp_path / "generator_stage.json").write_text(json.dumps(old))
    check_run_config(tmp_path, cfg)  # missing settings count as their defaults
    with pytest.raises(TrainConfigError, match="data.text_column"):
        check_run_config(tmp_path, cfg.override({"data.text_column": "caption"}))


def test_tokenize_has_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["tokenize", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--num-proc" in out and "--devices" in out and "--steps" not in out


def test_own_data_training_stops_after_max_epochs_passes(images, tok_dir, tmp_path):
    from train.generator_stage import OWN_DATA_MAX_EPOCHS
    from train.loop import LoopConfig, capped_steps

    assert capped_steps(LoopConfig(steps=100, batch_size=8), 13, 0) == 100  # 0: no cap
    assert capped_steps(LoopConfig(steps=100, batch_size=8), 13, 2) == 4  # ceil(2 x 13 / 8)
    assert capped_steps(LoopConfig(steps=100, batch_size=4, grad_accum=2), 13, 2) == 4  # the global batch counts
    assert capped_steps(LoopConfig(steps=100, batch_size=8), 10_000, 2) == 100  # never more than loop.steps
    with pytest.raises(TrainConfigError):
        LoopConfig(max_epochs=-1)

    def trained(run: Path, extra: dict) -> tuple[int, int, int]:
        """(recorded steps, last logged step, the capped count for the run's training rows)"""
        if not (run / "tokenizer").exists():
            shutil.copytree(tok_dir, run / "tokenizer")
        args = ["train", "--run", str(run), "--no-progress",
                *set_args({**GEN, "data.source": str(images), "loop.steps": 40, **extra})]
        assert main(args) == 0
        rows = [json.loads(x) for x in (run / "metrics" / "generator.jsonl").read_text().splitlines()]
        cap = capped_steps(LoopConfig(steps=40, batch_size=8), len(load_codes(run / "codes")[0]),
                           extra.get("loop.max_epochs", OWN_DATA_MAX_EPOCHS))
        return json.loads((run / "generator_stage.json").read_text())["loop"]["steps"], rows[-1]["step"], cap

    steps, last, cap = trained(tmp_path / "two", {"loop.max_epochs": 2})
    assert steps == last == cap < 10  # 11 rows (two are bad) in batches of 8: 3 steps
    assert trained(tmp_path / "two", {"loop.max_epochs": 2}) == (cap, cap, cap)  # the same command resumes: done
    steps, last, cap = trained(tmp_path / "default", {})
    assert steps == last == cap < 40
    assert trained(tmp_path / "none", {"loop.max_epochs": 0})[:2] == (40, 40)
    recorded = json.loads((tmp_path / "none" / "generator_stage.json").read_text())
    del recorded["loop"]["max_epochs"]  # as a run begun before the cap existed recorded it
    (tmp_path / "none" / "generator_stage.json").write_text(json.dumps(recorded))
    assert trained(tmp_path / "none", {})[:2] == (40, 40)  # resumes as it began: not cut to the default cap
