"""Validation splits: held-out rows never trained on, validation that leaves training untouched, the best
checkpoint, the epoch count and the memorisation warning."""

import json
import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from tessera.cli import main
from tiny import GEN, TOK, set_args
from train.data import shapes
from train.errors import TrainConfigError
from train.generator_stage import GeneratorTask
from train.generator_stage import preset_config as generator_preset
from train.loop import EpochOrder, _Overfitting, split_rows, train_loop
from train.tokenizer_stage import TokenizerTask
from train.tokenizer_stage import preset_config as tokenizer_preset

torch.set_num_threads(1)

TINY_TOK = {**TOK, "loop.steps": 6, "loop.ckpt_every": 3, "loop.progress": False}


def test_split_rows_is_disjoint_complete_and_fixed_by_its_seed():
    train, val = split_rows(100, 0.2, seed=3)
    assert len(val) == 20 and len(train) == 80
    assert set(train.tolist()) | set(val.tolist()) == set(range(100)) and not set(train.tolist()) & set(val.tolist())
    assert torch.equal(split_rows(100, 0.2, seed=3)[1], val) and not torch.equal(split_rows(100, 0.2, seed=4)[1], val)
    assert len(split_rows(100, 7, seed=0)[1]) == 7 and len(split_rows(10, 0.01, seed=0)[1]) == 1
    assert len(split_rows(10, 0, seed=0)[1]) == 0
    for bad in (-0.1, 1.5, 10, 12):
        with pytest.raises(TrainConfigError):
            split_rows(10, bad, seed=0)


def test_training_never_reads_a_validation_row():
    train, val = split_rows(50, 0.2, seed=1)
    order = EpochOrder(50, seed=0, grad_accum=2, rows=train)
    seen = torch.cat([order.indices(step, m, 8) for step in range(40) for m in range(2)])  # 640 rows: 16 epochs
    assert not set(seen.tolist()) & set(val.tolist())
    assert set(seen.tolist()) == set(train.tolist())
    lengths = torch.arange(50) % 7  # length bucketing over the training rows only
    bucketed = EpochOrder(50, seed=0, lengths=lengths, block=4, rows=train)
    assert not set(torch.cat([bucketed.indices(s, 0, 4) for s in range(40)]).tolist()) & set(val.tolist())


def _generator_task(extra: dict) -> tuple[GeneratorTask, object]:
    """A generator task over random codes and text ids (40 rows, 10 held out) and its stage config."""
    from ar_model import SequenceLayout

    cfg = generator_preset("cpu").override({**GEN, "data.val_split": 0.25, "loop.progress": False, **extra})
    layout = SequenceLayout(text_len=8, text_vocab=40, codebook_size=32, grid=(4, 4))
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 32, (40, 16), generator=g).to(torch.int16)
    text = torch.randint(1, 38, (40, 8), generator=g).to(torch.int32)
    return GeneratorTask(cfg, cfg.generator_config(layout), codes, text), cfg


def test_validation_leaves_training_bitwise_alone_and_resume_stays_exact(tmp_path):
    images = torch.from_numpy(shapes.render_batch(shapes.sample_scenes(64, seed=0), 24))
    plain_cfg = tokenizer_preset("cpu").override({**TINY_TOK, "data.val_split": 16})
    val_cfg = tokenizer_preset("cpu").override({**TINY_TOK, "data.val_split": 16, "loop.val_every": 1})
    plain = TokenizerTask(plain_cfg, images)
    train_loop(plain, plain_cfg.loop, tmp_path / "plain")
    validated = TokenizerTask(val_cfg, images)
    train_loop(validated, val_cfg.loop, tmp_path / "val")
    a, b = plain.model.state_dict(), validated.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    class Stop(Exception):
        pass

    def die(step):
        if step == 5:
            raise Stop

    with pytest.raises(Stop):
        train_loop(TokenizerTask(val_cfg, images), val_cfg.loop, tmp_path / "killed", on_step=die)
    resumed = TokenizerTask(val_cfg, images)
    assert train_loop(resumed, val_cfg.loop, tmp_path / "killed").resumed_from == 3
    c = resumed.model.state_dict()
    assert all(torch.equal(a[k], c[k]) for k in a)
    rows = [json.loads(x) for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    val_rows = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in val_rows] == [1, 2, 3, 4, 5, 6]  # the killed run's rows past step 3 were dropped
    assert {"val_recon", "val_psnr", "val_usage", "epoch"} <= set(val_rows[-1])
    assert val_rows[-1]["epoch"] == pytest.approx(6 * 8 / 48)  # 48 training images, batch 8
    assert all("epoch" in r for r in rows)


def test_keep_best_exports_the_weights_of_the_lowest_validation_loss(tmp_path):
    task, cfg = _generator_task({"loop.steps": 8, "loop.val_every": 2, "loop.keep_best": True, "loop.lr": 0.5,
                                 "loop.warmup_steps": 1, "loop.ckpt_every": 4})
    train_loop(task, cfg.loop, tmp_path / "run")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    vals = {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}
    assert sorted(vals) == [2, 4, 6, 8]
    meta = json.loads((tmp_path / "run" / "state" / "best" / "meta.json").read_text())
    assert meta["step"] == min(vals, key=vals.get) and meta["val_loss"] == pytest.approx(min(vals.values()))
    task.model.eval()
    with torch.no_grad():
        assert task.validate()["val_loss"] == pytest.approx(meta["val_loss"], rel=1e-5)  # the model is the best one


def test_keep_best_needs_validation():
    with pytest.raises(TrainConfigError, match="keep_best needs validation"):
        generator_preset("cpu").override({"loop.keep_best": True})


def test_the_memorisation_warning_fires_once_after_many_passes(caplog):
    watch = _Overfitting("generator", keep_best=False)
    with caplog.at_level(logging.WARNING, logger="train.loop"):
        watch.see(100, 1.0, 1.0)
        watch.see(200, 1.1, 2.0)  # a rise, but early: no warning
        watch.see(300, 0.9, 3.0)
        watch.see(400, 0.95, 5.0)  # 5.6% above the lowest after 5 passes
        watch.see(500, 1.2, 6.0)
    warnings = [r for r in caplog.records if "memorising" in r.getMessage()]
    assert len(warnings) == 1 and "0.9000 at step 300" in warnings[0].getMessage()
    assert "keep_best" in warnings[0].getMessage()


def test_the_cli_logs_validation_and_epochs_for_the_generator(tmp_path):
    run = tmp_path / "run"
    assert main(["train-tokenizer", "--run", str(run), "--no-progress", *set_args(TOK)]) == 0
    assert main(["train", "--run", str(run), "--no-progress",
                 *set_args({**GEN, "data.val_split": 0.25, "loop.val_every": 2, "loop.keep_best": True})]) == 0
    rows = [json.loads(x) for x in (run / "metrics" / "generator.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in val] == [2, 4] and all(r["epoch"] > 0 for r in val)
    assert (run / "state" / "generator" / "best" / "meta.json").is_file()
