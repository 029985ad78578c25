"""Property-based fuzzing of the real entry points (hypothesis).

The property everywhere: whatever a user types or points at -- any prompt in any script and of any
length, any value for any flag or setting, random bytes as an image, a weights file or a config --
the command gives an image (or its normal output), a counted skip, or one line on stderr with exit
status 2. Never a traceback.

Example counts are kept small (the whole suite has a 10-minute budget on 2 cores); set
TESSERA_FUZZ_EXAMPLES to run more, e.g. TESSERA_FUZZ_EXAMPLES=500 before a release.
"""

from __future__ import annotations

import json
import os
import shutil
import string
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera.cli import main as _main
from tiny import GEN, TOK, set_args

torch.set_num_threads(1)
EXAMPLES = int(os.environ.get("TESSERA_FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """The exit status `tessera argv` would give, and its stderr; any other exception fails the test."""
    capsys.readouterr()
    try:
        code = _main(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        code = e.code
    return code, capsys.readouterr().err


def assert_clean(code: int, err: str) -> None:
    assert code in (0, 2), (code, err)
    if code == 2:
        lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning:")]
        assert len(lines) == 1 and "Traceback" not in err, err


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fuzz") / "run"
    assert _main(["train-tokenizer", "--run", str(path), "--no-progress", *set_args(TOK)]) == 0
    assert _main(["train", "--run", str(path), "--no-progress", *set_args(GEN)]) == 0
    return path


@FUZZ
@given(prompts=st.lists(st.text(max_size=300), min_size=1, max_size=4))
def test_any_prompt_gives_images(run, tmp_path, capsys, prompts):
    out = tmp_path / "o"
    shutil.rmtree(out, ignore_errors=True)
    argv = ["sample", "--run", str(run), "--n", "1", "--no-progress", "--out", str(out)]
    for p in prompts:
        argv += ["--prompt", p]
    code, err = run_cli(argv, capsys)
    if any("\x00" in p for p in prompts):  # argv cannot carry NUL from a shell; the library still takes it
        assert_clean(code, err)
        return
    assert code == 0, err
    assert len([f for f in out.glob("*.png") if f.name != "grid.png"]) == len(prompts)


SAMPLE_FLAGS = ["--n", "--batch-size", "--cfg", "--temperature", "--top-k", "--top-p", "--min-p", "--seed",
                "--device"]
values = st.one_of(st.integers(-10, 10).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
                   st.text(alphabet=string.printable, max_size=12), st.sampled_from(["cpu", "cuda", "1e400", "", "-"]))


@FUZZ
@given(flags=st.dictionaries(st.sampled_from(SAMPLE_FLAGS), values, max_size=4))
def test_any_sampling_flag_values(run, tmp_path, capsys, flags):
    argv = ["sample", "--run", str(run), "--prompt", "a red circle", "--no-progress", "--out", str(tmp_path / "s")]
    for flag, value in flags.items():
        if flag in ("--n", "--batch-size") and value.lstrip("-").isdigit() and int(value) > 4:
            value = "4"  # a valid count, kept small
        argv += [f"{flag}={value}"]
    assert_clean(*run_cli(argv, capsys))


STAGE_KEYS = {
    "tokenizer": ["vq.resolution", "vq.codebook_size", "vq.quantizer", "vq.latent_dim", "loop.lr", "loop.steps",
                  "loop.batch_size", "loop.precision", "loop.ema_decay", "data.train_images", "data.source"],
    "generator": ["model.size", "model.hidden_size", "loop.lr", "loop.betas", "loop.device", "data.captions",
                  "data.text_len", "data.count_weights", "data.min_objects", "sample.cfg_scale", "sample.top_p"],
    "baseline": ["model.block_out_channels", "model.resolution", "model.prediction_type", "model.text_heads",
                 "loop.grad_clip", "data.max_objects", "sample.steps", "sample.sampler", "sample.cfg_scale"],
}
COMMANDS = {"tokenizer": "train-tokenizer", "generator": "train", "baseline": "train-baseline"}
json_values = st.recursive(st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3), max_leaves=4)


@FUZZ
@given(stage=st.sampled_from(sorted(STAGE_KEYS)), data=st.data())
def test_any_stage_setting_is_a_config_or_one_line(tmp_path, capsys, monkeypatch, stage, data):
    import train.stages

    trained = []
    monkeypatch.setattr(train.stages, "train_stage", lambda *a, **k: trained.append(a) or Path("x"))
    keys = data.draw(st.lists(st.sampled_from(STAGE_KEYS[stage]), min_size=1, max_size=3, unique=True))
    argv = [COMMANDS[stage], "--run", str(tmp_path / "r"), "--no-progress"]
    for key in keys:
        value = data.draw(json_values)
        argv += ["--set", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    code, err = run_cli(argv, capsys)
    assert_clean(code, err)
    assert (code == 0) == bool(trained)  # a config that builds is what training receives


@FUZZ
@given(blob=st.binary(max_size=2000), suffix=st.sampled_from([".png", ".jpg", ".tif", ".gif", ".bmp", ""]))
def test_random_bytes_as_an_image(run, tmp_path, capsys, blob, suffix):
    path = tmp_path / f"img{suffix}"
    path.write_bytes(blob)
    code, err = run_cli(["reconstruct", "--run", str(run), str(path), "--out", str(tmp_path / "r.png")], capsys)
    assert_clean(code, err)
    assert code == 2  # random bytes are not an image


@FUZZ
@given(blob=st.binary(max_size=4000), which=st.sampled_from(["model.safetensors", "config.json"]))
def test_random_bytes_as_tokenizer_files(run, tmp_path, capsys, blob, which):
    copy = tmp_path / "run"
    if not copy.exists():
        shutil.copytree(run / "tokenizer", copy / "tokenizer")
    original = (run / "tokenizer" / which).read_bytes()
    (copy / "tokenizer" / which).write_bytes(blob)
    try:
        code, err = run_cli(["eval-tokenizer", "--run", str(copy), "--n", "2"], capsys)
    finally:
        (copy / "tokenizer" / which).write_bytes(original)
    assert_clean(code, err)
    assert code == 2


@FUZZ
@given(blob=st.binary(max_size=4000), which=st.sampled_from(["model.safetensors", "tessera_layout.json",
                                                             "tessera_sampling.json", "config.json"]))
def test_random_bytes_as_generator_files(run, tmp_path, capsys, blob, which):
    copy = tmp_path / "run"
    if not copy.exists():
        shutil.copytree(run, copy)
    original = (run / "generator" / which).read_bytes()
    (copy / "generator" / which).write_bytes(blob)
    try:
        code, err = run_cli(["sample", "--run", str(copy), "--prompt", "a red circle", "--n", "1", "--no-progress",
                             "--out", str(tmp_path / "o")], capsys)
    finally:
        (copy / "generator" / which).write_bytes(original)
    assert_clean(code, err)
