"""The tokenizer stage end to end on tiny settings: resume is exact, the CLI handles bad input."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from tessera.cli import main
from train.data import shapes
from train.errors import TrainConfigError
from train.loop import train_loop
from train.tokenizer_stage import TokenizerStageConfig, TokenizerTask, preset_config, train_tokenizer
from vqtok import load_tokenizer

TINY = {
    "vq.base_channels": 16, "vq.channel_mult": [1, 2, 2], "vq.latent_dim": 16, "vq.codebook_size": 32,
    "vq.num_res_blocks": 1, "vq.norm_groups": 4,
    "loop.steps": 6, "loop.batch_size": 8, "loop.ckpt_every": 3, "loop.log_every": 1, "loop.warmup_steps": 2,
    "loop.progress": False, "loop.device": "cpu", "data.train_images": 64,
}


def tiny_cfg(**extra) -> TokenizerStageConfig:
    return preset_config("cpu").override({**TINY, **extra})


def _set_args(d: dict) -> list[str]:
    return [a for k, v in d.items() for a in ("--set", f"{k}={json.dumps(v)}")]


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("quantizer", ["vq", "fsq", "lfq"])
def test_tokenizer_resume_is_bitwise(tmp_path, quantizer):
    extra = {"vq.quantizer": quantizer, "vq.codebook_size": 32}
    if quantizer == "fsq":
        extra["vq.fsq_levels"] = [4, 3, 3]
    cfg = tiny_cfg(**extra)
    images = torch.from_numpy(shapes.render_batch(shapes.sample_scenes(64, seed=0), 32))

    ref = TokenizerTask(cfg, images)
    train_loop(ref, cfg.loop, tmp_path / "ref")

    def die(step):
        if step == 5:  # after the step-3 checkpoint; steps 4-5 are lost and redone
            raise Interrupt

    with pytest.raises(Interrupt):
        train_loop(TokenizerTask(cfg, images), cfg.loop, tmp_path / "run", on_step=die)
    resumed = TokenizerTask(cfg, images)
    assert train_loop(resumed, cfg.loop, tmp_path / "run").resumed_from == 3
    a, b = ref.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_cli_trains_evaluates_and_refuses_changed_config(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train-tokenizer", "--run", str(run), *_set_args(TINY)]) == 0
    tok = load_tokenizer(run / "tokenizer")
    assert tok.cfg.codebook_size == 32
    assert (run / "metrics" / "tokenizer.jsonl").read_text().count("\n") == 6
    assert main(["eval-tokenizer", "--run", str(run), "--n", "20", "--out", str(tmp_path / "e.json")]) == 0
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["images"] == 20 and 0 <= report["scene_preservation"] <= 1 and report["psnr"] > 0
    # the same config with more steps continues the run (the stored config is JSON: lists, not tuples)
    assert main(["train-tokenizer", "--run", str(run), *_set_args({**TINY, "loop.steps": 7})]) == 0
    assert (run / "metrics" / "tokenizer.jsonl").read_text().count("\n") == 7
    # resuming under another config is refused, naming what differs
    capsys.readouterr()
    assert main(["train-tokenizer", "--run", str(run), *_set_args({**TINY, "loop.lr": 0.5})]) == 2
    assert "loop.lr" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--set", "vq.codebok_size=12"], "codebok_size"),
        (["--set", "vq.quantizer=\"pq\""], "quantizer"),
        (["--set", "loop.batch_size=0"], "batch_size"),
        (["--set", "optim.lr=1"], "optim.lr"),
        (["--preset", "tpu"], "tpu"),
        (["--preset", "cpu-photo"], "data.source=PATH"),  # a photo preset never trains on the shapes world
    ],
)
def test_cli_config_errors_name_the_setting(tmp_path, capsys, args, needle):
    assert main(["train-tokenizer", "--run", str(tmp_path / "r"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and needle in err and "Traceback" not in err
    assert not (tmp_path / "r" / "state").exists() and not (tmp_path / "r" / "tokenizer_stage.json").exists()


def test_cli_missing_and_foreign_checkpoints(tmp_path, capsys):
    assert main(["eval-tokenizer", "--run", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
    foreign = tmp_path / "foreign" / "tokenizer"
    foreign.mkdir(parents=True)
    (foreign / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (foreign / "model.safetensors").write_bytes(b"")
    assert main(["eval-tokenizer", "--run", str(tmp_path / "foreign")]) == 2
    err = capsys.readouterr().err
    assert "config.json" in err or "tessera" in err.lower()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("tok")
    train_tokenizer(tiny_cfg(), run)
    return run


def test_reconstruct_converts_odd_images(tiny_run, tmp_path):
    rgb = shapes.render(shapes.sample_scenes(1, seed=3)[0], 64)  # square, other size: resized
    Image.fromarray(rgb).save(tmp_path / "big.png")
    Image.fromarray(rgb).convert("L").save(tmp_path / "gray.png")
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 200, np.uint8)], axis=-1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.gif")
    Image.fromarray(rgb).crop((0, 8, 64, 48)).save(tmp_path / "wide.png")  # not square: centre-cropped
    files = [str(tmp_path / n) for n in ("big.png", "gray.png", "alpha.png", "palette.gif", "wide.png")]
    out = tmp_path / "grid.png"
    assert main(["reconstruct", "--run", str(tiny_run), *files, "--out", str(out)]) == 0
    assert Image.open(out).size[0] > 0


@pytest.mark.parametrize("kind", ["corrupt", "missing"])
def test_reconstruct_refuses_bad_files_by_name(tiny_run, tmp_path, capsys, kind):
    path = tmp_path / f"{kind}.png"
    if kind == "corrupt":
        path.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    assert main(["reconstruct", "--run", str(tiny_run), str(path), "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "Traceback" not in err


def test_stage_config_round_trip_and_unknown_section():
    cfg = preset_config("gpu")
    assert TokenizerStageConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(TrainConfigError, match="'optim'"):
        TokenizerStageConfig.from_dict({"optim": {}})


def test_every_command_has_help(capsys):
    for cmd in ([], ["demo"], ["train-tokenizer"], ["eval-tokenizer"], ["reconstruct"]):
        with pytest.raises(SystemExit) as e:
            main([*cmd, "--help"])
        assert e.value.code == 0
        assert "usage: tessera" in capsys.readouterr().out


def test_heldout_images_keep_to_the_tokenizers_world():
    """The tokenizer is measured on scenes like those it was trained on: its data.max_objects, not 16 at 4x4."""
    from eval.tokenizer_metrics import heldout_images
    from train.data import shapes

    def counts(images):
        return [len(shapes.parse(img.numpy(), 4).objects) for img in images]

    few = counts(heldout_images(40, 32, grid=4, max_objects=2))
    assert 1 <= min(few) and max(few) == 2
    assert max(counts(heldout_images(40, 32, grid=4))) > 2  # no max_objects given: up to 16 at 4x4, as before
