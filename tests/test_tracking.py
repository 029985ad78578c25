"""Logging and the loop's optional execution flags: wandb (offline), sample grids, compile, activation checkpointing."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import dist_toy  # noqa: E402
from tiny import GEN, TOK, set_args  # noqa: E402

from train.errors import TrainConfigError  # noqa
from train.loop import LoopConfig, train_loop  # noqa: E402


class PreviewToy(dist_toy.ToyTask):
    """The toy task with a `preview`: a 2x2 grid of flat images whose grey level follows the loss."""

    def preview(self, step):
        x, y = self.batch(0, 0, 4)
        with torch.no_grad():
            err = (self.model(x) - y).abs().clamp(max=1).flatten()  # (4,)
        images = np.repeat((err.numpy() * 255).astype(np.uint8)[:, None, None, None], 8, axis=1)
        return np.repeat(np.repeat(images, 8, axis=2), 3, axis=3), ["p0", "p0", "p1", "p1"]


def test_wandb_offline_gets_metrics_and_sample_grids_and_resumes_its_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = dist_toy.config(steps=4)
    cfg.log, cfg.sample_every = "wandb", 2
    train_loop(PreviewToy(), cfg, tmp_path, stage="toy")
    rows = [json.loads(x) for x in (tmp_path / "metrics" / "toy.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # the jsonl log is kept with wandb on
    assert sorted(p.name for p in (tmp_path / "samples" / "toy").glob("*.png")) == ["step-00000002.png", "step-00000004.png"]
    assert (tmp_path / "samples" / "toy" / "step-00000004.txt").read_text().split() == ["p0", "p0", "p1", "p1"]
    run_id = (tmp_path / "metrics" / "toy.wandb_id.txt").read_text().strip()
    runs = list((tmp_path / "metrics" / "wandb").glob(f"offline-run-*-{run_id}"))
    assert runs and (runs[0] / f"run-{run_id}.wandb").stat().st_size > 0
    assert len(list(runs[0].glob("files/media/images/samples_*.png"))) == 2
    cfg.steps = 6  # resuming continues the same wandb run
    train_loop(PreviewToy(), cfg, tmp_path, stage="toy")
    assert (tmp_path / "metrics" / "toy.wandb_id.txt").read_text().strip() == run_id


def test_bad_log_and_flags_are_refused():
    with pytest.raises(TrainConfigError, match="log must be one of"):
        LoopConfig(log="tensorboard")
    with pytest.raises(TrainConfigError, match="parallel must be one of"):
        LoopConfig(parallel="zero3")
    with pytest.raises(TrainConfigError, match="compile must be true or false"):
        LoopConfig(compile="yes")


def test_activation_checkpointing_changes_memory_not_the_result(tmp_path):
    """A tiny Llama generator: the same losses with and without recomputation."""
    from ar_model import GeneratorConfig, SequenceLayout, build_model, image_loss
    from ar_model.layout import build_sequences
    from train.loop import LossOutput

    layout = SequenceLayout(text_len=4, text_vocab=40, codebook_size=16, grid=(3, 3))

    class Tiny:
        def __init__(self):
            cfg = GeneratorConfig(layout=layout, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                                  intermediate_size=64)
            self.model = build_model(cfg, seed=0)

        def batch(self, step, micro, b):
            g = torch.Generator().manual_seed(step * 10 + micro)
            text = torch.randint(1, 40, (b, 4), generator=g)
            return build_sequences(text, torch.randint(0, 16, (b, 3, 3), generator=g), layout)

        def loss(self, batch, step):
            loss = image_loss(self.model, batch, layout)
            return LossOutput(loss, {"loss": loss.item()})

        def items(self, batch):
            return len(batch)

    losses = {}
    for flag in (False, True):
        cfg = LoopConfig(steps=3, batch_size=4, lr=1e-3, warmup_steps=1, log_every=1, progress=False, device="cpu",
                         activation_checkpointing=flag)
        run = tmp_path / str(flag)
        task = Tiny()
        train_loop(task, cfg, run)
        losses[flag] = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert task.model.is_activation_checkpointing == flag
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5)


def test_activation_checkpointing_needs_a_model_that_supports_it(tmp_path):
    cfg = dist_toy.config(steps=1)
    cfg.activation_checkpointing = True
    with pytest.raises(TrainConfigError, match="activation_checkpointing"):
        train_loop(dist_toy.ToyTask(), cfg, tmp_path)


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile on the CPU (inductor) needs a C++ compiler")
def test_compile_flag_trains_the_same_model(tmp_path):
    ref, comp = dist_toy.ToyTask(), dist_toy.ToyTask()
    train_loop(ref, dist_toy.config(steps=3), tmp_path / "ref")
    cfg = dist_toy.config(steps=3)
    cfg.compile = True
    train_loop(comp, cfg, tmp_path / "comp")
    assert not hasattr(comp.model, "_orig_mod")  # the task gets its plain module back
    for a, b in zip(ref.model.state_dict().values(), comp.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert (tmp_path / "comp" / "state" / "step-00000003" / "model.safetensors").is_file()


def test_a_resume_may_change_execution_settings_and_the_batch_split_not_the_global_batch(tmp_path):
    from train.config import check_run_config
    from train.tokenizer_stage import preset_config

    cfg = preset_config("cpu").override({"loop.batch_size": 8, "loop.grad_accum": 2})
    check_run_config(tmp_path, cfg)
    # another process count needs another split: the same 16 images a step is the same run
    check_run_config(tmp_path, cfg.override({"loop.batch_size": 4, "loop.grad_accum": 4, "loop.compile": True,
                                             "loop.log": "wandb", "loop.parallel": "fsdp", "loop.device": "cpu"}))
    with pytest.raises(TrainConfigError, match="loop.batch_size"):
        check_run_config(tmp_path, cfg.override({"loop.batch_size": 2, "loop.grad_accum": 4}))  # 8 a step: another run
    with pytest.raises(TrainConfigError, match="loop.lr"):
        check_run_config(tmp_path, cfg.override({"loop.lr": 1.0}))


def test_generator_training_saves_sample_grids_from_training_captions(tmp_path):
    from tessera.cli import main

    tok = {**TOK, "loop.steps": 2, "data.train_images": 32}
    gen = {**GEN, "data.train_images": 32, "loop.sample_every": 2}
    assert main(["train-tokenizer", "--run", str(tmp_path), "--no-progress", *set_args(tok)]) == 0
    assert main(["train", "--run", str(tmp_path), "--no-progress", *set_args(gen)]) == 0
    grids = sorted((tmp_path / "samples" / "generator").glob("*.png"))
    assert [p.name for p in grids] == ["step-00000002.png", "step-00000004.png"]
    from PIL import Image

    res = 24  # the cpu tokenizer preset's resolution: 4 prompts x 4 samples
    assert Image.open(grids[-1]).size == (4 * res, 4 * res)
    captions = (tmp_path / "samples" / "generator" / "step-00000004.txt").read_text().splitlines()
    assert len(captions) == 16 and len(set(captions)) == 4 and all(c.strip() for c in captions)
