"""Editing end to end on tiny settings: training on edits, `tessera edit`, the edit suite, own editing data, bad input."""

import json
import os
import re
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from tessera.cli import main
from tiny import GEN, TOK, doc_commands, set_args
from train.data import edits, shapes
from train.pretokenize import load_codes, load_context, read_manifest

torch.set_num_threads(1)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "EDITING.md"
EDIT = {**GEN, "data.task": "edit"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("edit") / "run"
    assert main(["train-tokenizer", "--run", str(path), "--no-progress", *set_args({**TOK, "data.tones": True})]) == 0
    assert main(["train", "--run", str(path), "--no-progress", *set_args(EDIT)]) == 0
    return path


@pytest.fixture(scope="module")
def t2i_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("t2i") / "run"
    assert main(["train-tokenizer", "--run", str(path), "--no-progress", *set_args(TOK)]) == 0
    assert main(["train", "--run", str(path), "--no-progress", *set_args(GEN)]) == 0
    return path


def test_an_editing_run_keeps_the_source_codes_and_records_its_layout(run):
    m = read_manifest(run / "codes")
    assert m.layout["context_images"] == 1 and m.rows == 48 and m.source["task"] == "edit"
    codes, _ = load_codes(run / "codes")
    context = load_context(run / "codes")
    assert context.shape == codes.shape and int(context.min()) >= 0  # every shapes-world edit has its source
    assert not torch.equal(context, codes)
    layout = json.loads((run / "generator" / "tessera_layout.json").read_text())
    assert layout["generator"]["layout"]["context_images"] == 1


def test_edit_cli_converts_the_image_and_writes_each_turn(run, tmp_path, capsys):
    src = tmp_path / "in.png"
    Image.fromarray(shapes.render(edits.sample_edit_scene(np.random.default_rng(0)), 70)).convert("L").crop(
        (0, 0, 70, 50)).save(src)  # another size and mode: converted
    turns = tmp_path / "turns.txt"
    turns.write_text("remove the red circle\n\nmake the blue square small\n")
    out = tmp_path / "out"
    argv = ["edit", "--run", str(run), "--image", str(src), "--instruction", "add a small red circle in the center",
            "--instructions-file", str(turns), "--n", "2", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    pngs = sorted(p.name for p in out.glob("chain_*.png"))
    assert pngs == [f"chain_{c:03d}_turn_{t}.png" for c in range(2) for t in (1, 2, 3)]
    meta = json.loads(Image.open(out / "chain_001_turn_3.png").text["tessera"])
    assert meta["instructions"] == ["add a small red circle in the center", "remove the red circle",
                                    "make the blue square small"] and meta["chain"] == 1 and meta["seed"] == 0
    grid = Image.open(out / "grid.png")
    assert grid.size[1] > grid.size[0] / 4 * 2 - 1  # two rows of four tiles (source + 3 turns)
    first = [np.asarray(Image.open(out / n)) for n in pngs]
    assert main(argv) == 0  # the same seed gives the same edits
    assert all(np.array_equal(a, np.asarray(Image.open(out / n))) for a, n in zip(first, pngs))
    # provenance: each turn is signed as an edit of the image before it (the source file first)
    import c2pa

    from pipelines.provenance import ASSERTION, verify_file

    for t, parent in ((1, src.name), (2, "chain_001_turn_1.png"), (3, "chain_001_turn_2.png")):
        with c2pa.Reader(str(out / f"chain_001_turn_{t}.png")) as reader:
            m = reader.get_active_manifest()
        labels = {a["label"]: a["data"] for a in m["assertions"]}
        assert [a["action"] for a in labels["c2pa.actions.v2"]["actions"]] == ["c2pa.opened", "c2pa.edited"]
        assert [(i["title"], i["relationship"]) for i in m["ingredients"]] == [(parent, "parentOf")]
        assert len(labels[ASSERTION]["instructions"]) == t
        assert verify_file(out / f"chain_001_turn_{t}.png").ok


@pytest.mark.parametrize("case, message", [
    ("unreadable", "cannot read image"),
    ("missing", "no such file"),
    ("empty", "an --instruction is empty"),
    ("t2i", "trained for text-to-image"),
])
def test_edit_cli_bad_input_is_one_line_exit_2(run, t2i_run, tmp_path, capsys, case, message):
    good = tmp_path / "good.png"
    Image.fromarray(shapes.render(edits.sample_edit_scene(np.random.default_rng(1)), 24)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    image = {"unreadable": bad, "missing": tmp_path / "nope.png"}.get(case, good)
    capsys.readouterr()
    argv = ["edit", "--run", str(t2i_run if case == "t2i" else run), "--image", str(image),
            "--instruction", "" if case == "empty" else "remove the red circle", "--out", str(tmp_path / "o"),
            "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "o").exists()


def test_eval_runs_the_edit_suite_on_an_editor_and_refuses_it_elsewhere(run, t2i_run, tmp_path, capsys):
    assert main(["eval", "--run", str(run), "--n", "1", "--no-tokenizer", "--speed-batch-sizes", "8", "--no-progress",
                 "--image-cfg", "1.5", "--out", str(tmp_path / "e")]) == 0
    result = json.loads((tmp_path / "e" / "result.json").read_text())
    assert result["sampling"]["image_cfg_scale"] == 1.5
    assert result["config"]["suites"] == ["edit"] and result["faithfulness"]["n"] == 0 and result["fid"] is None
    e = result["editing"]
    assert e["single"]["success"]["n"] == 8 * len(edits.EDIT_KINDS) and len(e["chains"]) == 3
    assert e["chains"][0]["chain_right"]["n"] == 24  # --n 1: 24 chains, each sampled once
    row = result["speed"]["rows"][0]  # an editor is timed editing, with the image guided: three rows per image
    assert row["setting"].startswith("one edit turn") and row["nfe_per_image"] == 3 * result["speed"]["steps_per_image"]
    assert "## Editing (the edit suite)" in (tmp_path / "e" / "report.md").read_text()
    assert "edits: success" in capsys.readouterr().out
    assert main(["eval", "--run", str(t2i_run), "--suite", "edit", "--n", "1", "--no-fid", "--no-tokenizer",
                 "--no-speed", "--no-progress", "--out", str(tmp_path / "f")]) == 2
    assert "needs a run trained for editing" in capsys.readouterr().err


def write_edits_parquet(path: Path, n: int = 12) -> Path:
    """Own editing data with InstructPix2Pix's column names, one row with an unreadable source image."""
    import datasets

    ds = edits.edits_dataset(n, resolution=40, seed=3, max_objects=3)
    ds = ds.select_columns(["source", "text", "image"]).rename_columns(
        {"source": "input_image", "text": "edit_prompt", "image": "edited_image"})
    broken = datasets.Dataset.from_dict(
        {"input_image": [{"bytes": b"broken", "path": None}], "edit_prompt": ["remove the red circle"],
         "edited_image": [ds[0]["edited_image"]]}, features=ds.features)
    datasets.concatenate_datasets([ds, broken]).to_parquet(str(path))
    return path


def docs_example() -> list[list[str]]:
    """The `tessera ...` lines between docs/EDITING.md's own-edit-example markers, as argv lists."""
    commands = doc_commands(DOCS, "own-edit-example")
    assert [c[0] for c in commands] == ["train-tokenizer", "train", "edit"]
    return commands


def test_docs_example_runs_on_own_editing_data(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    write_edits_parquet(tmp_path / "my_edits.parquet")
    Image.fromarray(shapes.render(edits.sample_edit_scene(np.random.default_rng(2)), 64)).save(tmp_path / "photo.png")
    own = lambda d: {k: v for k, v in d.items() if k != "data.train_images"}  # noqa: E731 (own data: every row)
    tiny = {"train-tokenizer": [*set_args(own(TOK)), "--no-progress"], "train": [*set_args(own(GEN)), "--no-progress"],
            "edit": ["--no-progress"]}
    for argv in docs_example():
        assert main([*argv, *tiny[argv[0]]]) == 0, argv
    m = read_manifest("runs/my-edits/codes")
    assert (m.rows, m.skipped_bad_image, m.skipped_empty_text) == (12, 1, 0)
    assert re.search(r"row 12 skipped: bad image: source", caplog.text)
    assert m.source["source_column"] == "input_image" and m.layout["context_images"] == 1
    assert (tmp_path / "edits/mine/chain_000_turn_1.png").is_file()


BASE = {
    "model.block_out_channels": [8, 16], "model.norm_num_groups": 4, "model.attention_head_dim": 4,
    "model.text_dim": 16, "model.text_layers": 1, "model.text_heads": 2, "loop.steps": 3, "loop.batch_size": 4,
    "loop.log_every": 1, "loop.warmup_steps": 1, "loop.ema_decay": 0.0, "loop.device": "cpu", "data.train_images": 32,
}


def test_the_baselines_train_on_the_edit_results_and_edit_by_regenerating_or_sdedit(run, tmp_path, capsys):
    import shutil

    from eval import editing
    from pipelines import open_sampler
    from train.data.grammar import describe

    regen = tmp_path / "regen"
    shutil.copytree(run / "tokenizer", regen / "tokenizer")
    scenes = {**GEN, "data.task": "edit-scenes"}
    assert main(["train", "--run", str(regen), "--no-progress", *set_args(scenes)]) == 0
    assert main(["train-baseline", "--run", str(regen), "--no-progress",
                 *set_args({**BASE, "data.task": "edit-scenes"})]) == 0
    m = read_manifest(regen / "codes")
    assert m.source["task"] == "edit-scenes" and m.layout["context_images"] == 0
    rows = edits.edit_scenes_dataset(4, seed=GEN.get("data.seed", 1))
    assert all(t == describe(shapes.Scene.from_json(s)) for t, s in zip(rows["text"], rows["scene"]))
    cases = editing.edit_cases(per_kind=1, chains=1, turns=2)
    ar = open_sampler(regen, "generator", progress=False)
    a = editing.evaluate_regenerate(ar, cases, 1, ar.settings(seed=0), 3)
    diffusion = open_sampler(regen, "baseline", progress=False)
    b = editing.evaluate_sdedit(diffusion, cases, 1, diffusion.settings(seed=0, steps=4), 3, strength=0.5)
    for report in (a, b):
        assert report.single["success"]["n"] == len(edits.EDIT_KINDS) and len(report.chains) == 2
    from pipelines import ImageEditor

    # the sampling interface: the AR pipeline is an ImageEditor (this one trained without editing), diffusion is not
    assert isinstance(ar, ImageEditor) and not ar.edits and not isinstance(diffusion, ImageEditor)
    assert open_sampler(run, "generator", progress=False).edits
    capsys.readouterr()
    assert main(["train-baseline", "--run", str(tmp_path / "x"), "--no-progress",
                 *set_args({**BASE, "data.task": "edit"})]) == 2
    assert "SDEdit" in capsys.readouterr().err


def test_edit_bench_trains_both_baselines_on_the_editors_budget_and_reports(tmp_path, capsys):
    tok = {f"tokenizer.{k}": v for k, v in {**TOK, "data.tones": True, "data.train_images": 32}.items()}
    gen = {f"generator.{k}": v for k, v in {**GEN, "data.max_objects": 3}.items()}
    regen = {f"regenerate.{k}": v for k, v in GEN.items() if k.startswith("model.") or k.startswith("loop.")
             and k != "loop.steps"}
    base = {f"baseline.{k}": v for k, v in BASE.items() if k != "loop.steps"}
    run = tmp_path / "bench"
    argv = ["bench", "--preset", "cpu-edit", "--run", str(run), "--no-progress",
            *set_args({**tok, **gen, **regen, **base, "regenerate.data.train_images": 48,
                       "baseline.data.train_images": 48, "regenerate.data.max_objects": 3,
                       "baseline.data.max_objects": 3, "bench.n": 1, "bench.strengths": [0.5],
                       "baseline.sample.steps": 4})]
    assert main(argv) == 0
    result = json.loads((run / "bench" / "bench.json").read_text())
    assert list(result["methods"]) == ["editor", "regenerate", "sdedit 0.5"]
    t = result["training_seconds"]
    assert t["steps"]["editor"] == GEN["loop.steps"] and t["steps"]["regenerate"] >= 1 and t["steps"]["diffusion"] >= 1
    assert (run / "regenerate" / "generator").is_dir() and (run / "regenerate" / "baseline").is_dir()
    assert read_manifest(run / "regenerate" / "codes").source["task"] == "edit-scenes"
    report = (run / "bench" / "report.md").read_text()
    assert "| editor |" in report and "| sdedit 0.5 |" in report and "**Verdict**" in report
    out = capsys.readouterr().out
    assert "editor: edit success" in out and "regenerate: edit success" in out


def test_tokenizer_locality_benchmark_tells_local_codes_from_global_ones(run, tmp_path, capsys):
    import importlib.util

    from vqtok import VQConfig, VQTokenizer, save_tokenizer

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "tokenizer_locality.py"
    spec = importlib.util.spec_from_file_location("tokenizer_locality", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    torch.manual_seed(0)
    save_tokenizer(VQTokenizer(VQConfig(architecture="patch", resolution=24, base_channels=8, channel_mult=(1, 2, 2),
                                        latent_dim=8, norm_groups=4, codebook_size=64)), tmp_path / "patch")
    assert bench.main([str(tmp_path / "patch"), "--n", "40"]) == 0
    local = capsys.readouterr().out
    assert "untouched patches keeping their code 100.0%" in local and "all-background patches 1;" in local
    assert bench.main([str(run / "tokenizer"), "--n", "40"]) == 0  # the tiny conv tokenizer: global codes
    assert "untouched patches keeping their code 100.0%" not in capsys.readouterr().out
