"""A user's mistakes through the real entry point: one line on stderr and exit status 2, before any work;
valid but unusual input gives the right result."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from ar_model import encode_text, load_generator
from tessera.cli import main as _main
from tiny import GEN, TOK, set_args

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("bad") / "run"
    assert main(["train-tokenizer", "--run", str(path), "--no-progress", *set_args(TOK)]) == 0
    assert main(["train", "--run", str(path), "--no-progress", *set_args(GEN)]) == 0
    return path


def main(argv: list[str]) -> int:
    """The exit status the `tessera` command would have: main's return value, or argparse's SystemExit code."""
    try:
        return _main(argv)
    except SystemExit as e:
        return e.code


def one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.mark.parametrize("flags, needle", [
    (["--n", "0"], "--n"), (["--n", "-1"], "--n"), (["--batch-size", "0"], "--batch-size"),
    (["--cfg", "-5"], "--cfg"), (["--cfg", "nan"], "--cfg"), (["--temperature", "-1"], "--temperature"),
    (["--top-p", "0"], "--top-p"), (["--min-p", "1"], "--min-p"), (["--top-k", "-3"], "--top-k"),
    (["--seed", "-1"], "--seed"),
    (["--device", "banana"], "banana"), (["--device", "cuda:99"], "cuda:99"),
])
def test_bad_sampling_arguments_fail_before_loading(run, tmp_path, capsys, flags, needle):
    assert main(["sample", "--run", str(run), "--prompt", "x", "--out", str(tmp_path / "o"), *flags]) == 2
    one_line_error(capsys, needle)
    assert not (tmp_path / "o").exists()  # nothing was sampled


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without CUDA")
def test_cuda_on_a_cpu_only_torch_names_what_is_available(run, capsys):
    assert main(["sample", "--run", str(run), "--prompt", "x", "--device", "cuda"]) == 2
    one_line_error(capsys, "'cuda' is not available", "available here: cpu")
    assert main(["train", "--run", str(run), "--device", "cuda"]) == 2
    one_line_error(capsys, "'cuda' is not available")


def test_an_output_that_is_a_file_is_refused_up_front(run, tmp_path, capsys):
    existing = tmp_path / "a-file"
    existing.write_text("x")
    for out in (existing, existing / "sub"):
        assert main(["sample", "--run", str(run), "--prompt", "x", "--out", str(out)]) == 2
        one_line_error(capsys, "is a file")
    assert main(["eval", "--run", str(run), "--out", str(existing)]) == 2
    one_line_error(capsys, "is a file")
    assert main(["reconstruct", "--run", str(run), str(existing), "--out", str(tmp_path)]) == 2
    one_line_error(capsys, "is a directory")


def test_nothing_to_sample_is_exit_2(run, capsys):
    assert main(["sample", "--run", str(run)]) == 2
    one_line_error(capsys, "--prompt")


def test_odd_guidance_is_legal_with_a_warning(run, tmp_path, capsys):
    assert main(["sample", "--run", str(run), "--prompt", "a red circle", "--n", "1", "--cfg", "0.5",
                 "--out", str(tmp_path / "o")]) == 0
    assert "warning: guidance 0.5 is below 1" in capsys.readouterr().err
    used = json.loads(Image.open(tmp_path / "o" / "a-red-circle_000.png").text["tessera"])
    assert used["cfg_scale"] == 0.5


def test_a_whitespace_prompt_is_truly_unconditional(run, tmp_path):
    generator = load_generator(run / "generator")
    ids = encode_text(generator.tokenizer, ["   ", "\t\n", ""], generator.layout).ids
    assert (ids == generator.layout.pad_id).all()
    for name, prompt in (("blank", "  "), ("empty", "")):
        assert main(["sample", "--run", str(run), "--prompt", prompt, "--n", "2", "--out", str(tmp_path / name)]) == 0
    blank = [np.asarray(Image.open(p)) for p in sorted((tmp_path / "blank").glob("*_00*.png"))]
    empty = [np.asarray(Image.open(p)) for p in sorted((tmp_path / "empty").glob("*_00*.png"))]
    assert len(blank) == len(empty) == 2 and all(np.array_equal(a, b) for a, b in zip(blank, empty))


def test_prompts_in_any_script_get_distinct_safe_file_names(run, tmp_path):
    prompts = ["赤い円", "دائرة حمراء", "a red circle", "A red circle!", ""]
    many = tmp_path / "many"
    argv = ["sample", "--run", str(run), "--n", "1", "--out", str(many)]
    for p in prompts:
        argv += ["--prompt", p]
    assert main(argv) == 0
    files = sorted(many.glob("*.png"))
    names = [f.name for f in files if f.name != "grid.png"]
    assert len(names) == len(prompts) == len(set(names))
    assert all(n.isascii() and "/" not in n for n in names)
    assert sorted(Image.open(many / n).text["prompt"] for n in names) == sorted(prompts)
    assert "unconditional_000.png" in names and not any(n.startswith("unconditional") and n != "unconditional_000.png"
                                                        for n in names)


def test_garbled_generator_weights_are_named_at_load(run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    weights = copy / "generator" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-200:-100] = os.urandom(100)  # the header intact, some weights garbled
    weights.write_bytes(bytes(data))
    assert main(["sample", "--run", str(copy), "--prompt", "a red circle", "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, "model.safetensors")


def test_no_progress_silences_datasets_for_own_data(tmp_path, capsys):
    from test_own_data import write_images

    images = write_images(tmp_path / "imgs")
    run = tmp_path / "own"
    data = {"data.source": str(images)}
    assert main(["train-tokenizer", "--run", str(run), "--no-progress", *set_args({**TOK, **data})]) == 0
    assert main(["tokenize", "--run", str(run), "--no-progress", *set_args({**GEN, **data})]) == 0
    err = capsys.readouterr().err
    for bar in ("Generating train split", "Downloading data", "Resolving data files", "Map", "it/s]"):
        assert bar not in err, (bar, err[-400:])


def test_a_16_bit_grey_png_is_scaled_not_clipped(run, tmp_path):
    value = 16384  # a quarter of the 16-bit range: 64 in 8 bits, not 255
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((40, 40), value, np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    assert main(["reconstruct", "--run", str(run), str(path), "--out", str(tmp_path / "grid.png")]) == 0
    res = json.loads((run / "tokenizer" / "config.json").read_text())["config"]["resolution"]
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    original = grid[2 * 4 : (2 + res) * 4, 2 * 4 : (2 + res) * 4]  # the top-left tile (pad 2, scale 4)
    assert np.all(np.abs(original.astype(int) - value // 256) <= 1)


def test_a_damaged_latest_checkpoint_names_the_intact_one_and_can_resume_from_it(run, tmp_path, capsys, caplog):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    state = copy / "state" / "generator"
    previous, latest = sorted(p for p in state.iterdir() if p.name.startswith("step-"))[-2:]
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-50])  # truncated, as by a full disk
    argv = ["train", "--run", str(copy), "--no-progress", *set_args(GEN), "--steps", "6"]
    assert main(argv) == 2
    one_line_error(capsys, latest.name, previous.name, "resume_intact")
    assert main([*argv, "--resume-intact"]) == 0
    assert "resuming from the newest intact checkpoint" in caplog.text
    assert (state / "step-00000006").is_dir()


def test_a_prompts_file_that_is_not_text_is_one_line(run, tmp_path, capsys):
    bad = tmp_path / "prompts.txt"
    bad.write_bytes(b"a red circle\n\xff\xfe\x00garbage\n")
    assert main(["sample", "--run", str(run), "--prompts-file", str(bad)]) == 2
    one_line_error(capsys, "not UTF-8")
    assert main(["sample", "--run", str(run), "--prompts-file", str(tmp_path / "missing.txt")]) == 2
    one_line_error(capsys, "missing.txt")


@pytest.mark.parametrize("command, key", [("train", "model.bogus"), ("train", "model.hidden_size"),
                                          ("train-baseline", "model.block_out_channels")])
def test_a_bad_model_setting_fails_before_any_data_work(tmp_path, capsys, command, key):
    value = {"model.bogus": "1", "model.hidden_size": '"wide"', "model.block_out_channels": "[30]"}[key]
    assert main([command, "--run", str(tmp_path / "r"), "--set", f"{key}={value}"]) == 2
    one_line_error(capsys, key.split(".")[1])
    assert not (tmp_path / "r").exists()  # nothing was prepared or recorded
