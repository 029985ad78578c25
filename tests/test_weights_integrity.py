"""Weights that prove themselves: saved weights carry their sha256, loads check it and refuse
non-finite values, and a damaged training checkpoint names the intact one before it."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from test_loop import Interrupt, ToyTask, _cfg, _weights
from train.checkpoint import DamagedCheckpointError, latest_checkpoint, newest_intact_checkpoint
from train.errors import ResumeError, TrainConfigError
from train.loop import LoopConfig, train_loop

SHA_MISMATCH = "does not match the sha256 recorded when it was written"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second intra-op thread on a shared machine; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- the three libraries


@dataclass
class Library:
    """One library's save / load / error, so each test runs over all three."""

    save: Callable[[Path], Path]  # writes tiny weights to the directory, returns it
    load: Callable[..., Any]  # load(directory, **kw)
    meta_name: str  # the JSON file holding the recorded sha256
    error: type[Exception]


def _vqtok() -> Library:
    from vqtok import CheckpointError, VQConfig, VQTokenizer, load_tokenizer, save_tokenizer

    cfg = VQConfig(resolution=16, base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1, latent_dim=16,
                   quantizer="vq", codebook_size=64, codebook_dim=8)
    torch.manual_seed(0)
    model = VQTokenizer(cfg)
    return Library(lambda d: save_tokenizer(model, d), load_tokenizer, "config.json", CheckpointError)


def _ar_model() -> Library:
    from ar_model import (CheckpointError, GeneratorConfig, SequenceLayout, build_model, load_generator,
                          save_generator, train_text_tokenizer)

    tok = train_text_tokenizer(["a red circle", "a blue square left of a green triangle"], vocab_size=300)
    layout = SequenceLayout.for_tokenizer(tok, codebook_size=16, grid=(2, 2), text_len=6)
    cfg = GeneratorConfig(layout, size="custom", hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                          intermediate_size=64)
    model = build_model(cfg, seed=0)
    return Library(lambda d: save_generator(model, cfg, tok, d, progress=False),
                   lambda d, **kw: load_generator(d, progress=False, **kw).model, "tessera_layout.json",
                   CheckpointError)


def _baseline() -> Library:
    pytest.importorskip("diffusers")
    from baseline import BaselineError, DiffusionBaseline, DiffusionConfig, load_baseline, save_baseline

    torch.manual_seed(0)
    model = DiffusionBaseline(DiffusionConfig(text_vocab=40, pad_id=0, text_len=6, resolution=8,
                                              block_out_channels=[8, 16], norm_num_groups=4, attention_head_dim=4,
                                              text_dim=16, text_layers=1, text_heads=2))
    return Library(lambda d: save_baseline(model, d), load_baseline, "config.json", BaselineError)


LIBRARIES = {"vqtok": _vqtok, "ar_model": _ar_model, "baseline": _baseline}


@pytest.fixture(params=list(LIBRARIES))
def lib(request) -> Library:
    return LIBRARIES[request.param]()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _garble(weights: Path, fill: bytes) -> None:
    """Overwrite 16 bytes 100 bytes before the end: tensor data, the header intact."""
    data = bytearray(weights.read_bytes())
    data[-100:-84] = fill * (16 // len(fill))
    weights.write_bytes(bytes(data))


def _state(lib: Library, directory: Path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in lib.load(directory).state_dict().items()}


def test_save_records_the_sha256_of_the_weights(lib, tmp_path):
    out = lib.save(tmp_path / "w")
    meta = json.loads((out / lib.meta_name).read_text())
    assert meta["sha256"] == {"model.safetensors": _sha256(out / "model.safetensors")}
    lib.load(out)  # and it loads


def test_garbled_weights_are_refused_at_load_naming_the_file(lib, tmp_path):
    out = lib.save(tmp_path / "w")
    _garble(out / "model.safetensors", b"\x00")  # finite values: only the sha256 can tell
    with pytest.raises(lib.error, match=SHA_MISMATCH) as info:
        lib.load(out)
    message = str(info.value)
    assert str(out / "model.safetensors") in message and "damaged or was replaced" in message
    assert "\n" not in message  # one line for the command line


def test_verify_false_or_the_environment_skips_the_sha256(lib, tmp_path, monkeypatch):
    out = lib.save(tmp_path / "w")
    _garble(out / "model.safetensors", b"\x00")
    lib.load(out, verify=False)
    monkeypatch.setenv("TESSERA_VERIFY_WEIGHTS", "0")
    lib.load(out)
    with pytest.raises(lib.error, match=SHA_MISMATCH):
        lib.load(out, verify=True)  # an explicit verify=True wins over the environment


def test_nan_bytes_are_refused_even_unverified(lib, tmp_path):
    out = lib.save(tmp_path / "w")
    _garble(out / "model.safetensors", b"\xff")  # 0xffffffff is a float32 NaN
    with pytest.raises(lib.error, match=r"holds non-finite values \(NaN or inf\)") as info:
        lib.load(out, verify=False)
    assert "model.safetensors" in str(info.value)


def test_a_nan_weight_is_named_even_with_a_matching_sha256(lib, tmp_path):
    out = lib.save(tmp_path / "w")
    weights = out / "model.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(weights))
    name = max((k for k, v in tensors.items() if v.is_floating_point()), key=lambda k: tensors[k].numel())
    tensors[name].view(-1)[3] = float("nan")
    save_file(tensors, str(weights), metadata=metadata)
    meta = json.loads((out / lib.meta_name).read_text())
    meta["sha256"]["model.safetensors"] = _sha256(weights)  # as if it had been saved so
    (out / lib.meta_name).write_text(json.dumps(meta))
    with pytest.raises(lib.error, match="non-finite") as info:
        lib.load(out)
    message = str(info.value)
    assert str(weights) in message and f"'{name}'" in message and "\n" not in message


def test_a_directory_without_a_recorded_sha256_loads_as_before(lib, tmp_path):
    out = lib.save(tmp_path / "w")
    expected = _state(lib, out)
    meta = json.loads((out / lib.meta_name).read_text())
    del meta["sha256"]
    (out / lib.meta_name).write_text(json.dumps(meta))
    got = _state(lib, out)
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)


# --------------------------------------------------------------------------- training checkpoints


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_checkpoints_record_the_sha256_of_every_file(tmp_path):
    train_loop(ToyTask(), _cfg(steps=4), tmp_path)
    ckpt = latest_checkpoint(tmp_path / "state")
    meta = json.loads((ckpt / "meta.json").read_text())
    assert set(meta["sha256"]) == {"model.safetensors", "ema.safetensors", "train_state.pt"}
    assert all(meta["sha256"][name] == _sha256(ckpt / name) for name in meta["sha256"])


@pytest.mark.parametrize("damage", ["truncate", "garble", "delete"])
def test_a_damaged_latest_checkpoint_names_the_newest_intact_one(tmp_path, damage):
    train_loop(ToyTask(), _cfg(steps=8), tmp_path)  # checkpoints 4 and 8
    state = tmp_path / "state"
    latest = latest_checkpoint(state)
    assert latest.name == "step-00000008"
    weights = latest / "model.safetensors"
    {"truncate": _truncate, "garble": lambda p: _garble(p, b"\x00"), "delete": Path.unlink}[damage](weights)
    with pytest.raises(DamagedCheckpointError) as info:
        train_loop(ToyTask(), _cfg(steps=12), tmp_path)
    message = str(info.value)
    assert message.startswith(f"cannot resume from {latest}: model.safetensors ")
    assert f"the newest intact checkpoint is {state / 'step-00000004'}" in message
    assert "resume_intact=true" in message and "\n" not in message
    assert info.value.intact == state / "step-00000004"
    assert latest_checkpoint(state) == latest  # nothing was changed on disk


def test_resume_intact_resumes_from_the_newest_intact_checkpoint(tmp_path, caplog):
    ref = ToyTask()
    train_loop(ref, _cfg(), tmp_path / "ref")  # 12 steps uninterrupted

    def die(step):
        if step == 9:
            raise Interrupt

    with pytest.raises(Interrupt):  # killed after checkpoint 8 (the same schedule as the reference)
        train_loop(ToyTask(), _cfg(), tmp_path / "run", on_step=die)
    _truncate(tmp_path / "run" / "state" / "step-00000008" / "model.safetensors")
    resumed = ToyTask(seed=99)  # different init: everything must come from the checkpoint
    with caplog.at_level(logging.WARNING, logger="train.loop"):
        res = train_loop(resumed, _cfg(resume_intact=True), tmp_path / "run")
    assert res.resumed_from == 4
    assert any("step-00000008 is damaged" in r.getMessage() and "step-00000004" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)
    a, b = _weights(ref.model), _weights(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)  # steps 5-12 trained again, exactly
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(2, 13, 2))  # the log past step 4 was dropped and written again
    assert newest_intact_checkpoint(tmp_path / "run" / "state").name == "step-00000012"


def test_resume_intact_with_nothing_intact_still_fails(tmp_path):
    train_loop(ToyTask(), _cfg(steps=4, keep_checkpoints=1), tmp_path)
    _truncate(tmp_path / "state" / "step-00000004" / "train_state.pt")
    with pytest.raises(DamagedCheckpointError, match="no intact checkpoint is left"):
        train_loop(ToyTask(), _cfg(steps=8, resume_intact=True), tmp_path)


def test_a_latest_pointer_to_a_missing_checkpoint_names_the_intact_one(tmp_path):
    train_loop(ToyTask(), _cfg(steps=8), tmp_path)
    state = tmp_path / "state"
    shutil.rmtree(state / "step-00000008")
    with pytest.raises(ResumeError, match=r"names step-00000008, which is missing.*newest intact checkpoint is "):
        train_loop(ToyTask(), _cfg(steps=12), tmp_path)
    assert train_loop(ToyTask(), _cfg(steps=12, resume_intact=True), tmp_path).resumed_from == 4


def test_checkpoints_without_recorded_sha256s_resume_as_before(tmp_path):
    train_loop(ToyTask(), _cfg(steps=8), tmp_path)
    for meta_file in (tmp_path / "state").glob("step-*/meta.json"):
        meta = json.loads(meta_file.read_text())
        del meta["sha256"]
        meta_file.write_text(json.dumps(meta))
    assert train_loop(ToyTask(), _cfg(steps=12), tmp_path).resumed_from == 8


def test_resume_intact_must_be_a_bool():
    with pytest.raises(TrainConfigError, match="resume_intact"):
        LoopConfig(resume_intact="yes")
