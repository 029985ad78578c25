"""The diffusion baseline's model, loss, samplers and checkpoints, on a tiny config."""

import json
import re
from pathlib import Path

import pytest
import torch

from baseline import (
    SAMPLERS,
    BaselineError,
    DiffusionBaseline,
    DiffusionConfig,
    DiffusionSampleConfig,
    diffusion_loss,
    load_baseline,
    sample,
    save_baseline,
    to_uint8,
    train_scheduler,
)

torch.set_num_threads(1)
TINY = dict(text_vocab=40, pad_id=0, text_len=6, resolution=8, block_out_channels=[8, 16], norm_num_groups=4,
            attention_head_dim=4, text_dim=16, text_layers=1, text_heads=2)


def tiny(seed: int = 0) -> DiffusionBaseline:
    torch.manual_seed(seed)
    return DiffusionBaseline(DiffusionConfig(**TINY))


def ids(b: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, TINY["text_vocab"], (b, TINY["text_len"]), generator=torch.Generator().manual_seed(seed))


def test_config_is_checked_and_round_trips():
    cfg = DiffusionConfig(**TINY)
    assert DiffusionConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(BaselineError, match="not divisible"):
        DiffusionConfig(**{**TINY, "resolution": 10, "block_out_channels": [8, 16, 16]})
    with pytest.raises(BaselineError, match="unknown baseline config key 'chanels'"):
        DiffusionConfig.from_dict({**TINY, "chanels": 3})
    with pytest.raises(BaselineError, match="cond_dropout"):
        DiffusionConfig(**TINY, cond_dropout=1.0)
    with pytest.raises(BaselineError, match="unknown sampler"):
        DiffusionSampleConfig(sampler="euler")


@pytest.mark.parametrize("extra", [{}, {"prediction_type": "v_prediction", "loss_weighting": "min_snr"}])
def test_one_batch_overfits(extra):
    torch.manual_seed(0)
    model = DiffusionBaseline(DiffusionConfig(**TINY, **extra))
    sched = train_scheduler(model.cfg)
    images = torch.rand(4, 3, 8, 8) * 2 - 1
    text = ids(4)
    fixed = lambda: diffusion_loss(model, images, text, sched, torch.Generator().manual_seed(7))  # noqa: E731
    with torch.no_grad():
        before = float(fixed())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(150):
        loss = diffusion_loss(model, images, text, sched, torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(fixed())
    assert after < 0.5 * before, (before, after)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_samplers_are_seeded_and_bounded(sampler):
    model = tiny()
    sc = DiffusionSampleConfig(sampler=sampler, steps=4, cfg_scale=2.0, seed=3)
    a, b = sample(model, ids(), sc), sample(model, ids(), sc)
    assert a.shape == (3, 3, 8, 8) and torch.isfinite(a).all() and a.abs().max() <= 1
    assert torch.equal(a, b)
    other = sample(model, ids(), DiffusionSampleConfig(sampler=sampler, steps=4, cfg_scale=2.0, seed=4))
    assert not torch.equal(a, other)
    u8 = to_uint8(a)
    assert u8.dtype == torch.uint8 and u8.shape == (3, 8, 8, 3)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sdedit_starts_from_the_noised_image(sampler):
    model = tiny()
    init = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    sc = DiffusionSampleConfig(sampler=sampler, steps=10, cfg_scale=1.0, seed=3)
    low = sample(model, ids(), sc, init=init, strength=0.1)
    assert torch.equal(low, sample(model, ids(), sc, init=init, strength=0.1))  # seeded
    far = sample(model, ids(), sc, init=init, strength=1.0)
    # one step from barely noised pixels stays near them; the whole schedule (an untrained model) does not
    assert (low - init).abs().mean() < 0.5 * (far - init).abs().mean()
    with pytest.raises(BaselineError, match="strength"):
        sample(model, ids(), sc, init=init, strength=0.0)


def test_guidance_mixes_the_unconditional_row():
    model = tiny()
    uncond = torch.zeros(2, TINY["text_len"], dtype=torch.long)  # all [PAD]: cond == uncond
    plain = sample(model, uncond, DiffusionSampleConfig(steps=3, cfg_scale=1.0))
    guided = sample(model, uncond, DiffusionSampleConfig(steps=3, cfg_scale=4.0))
    assert torch.allclose(plain, guided, atol=1e-5)  # eps = u + (u - u) * s = u
    text = ids(2)
    assert not torch.allclose(sample(model, text, DiffusionSampleConfig(steps=3, cfg_scale=1.0)),
                              sample(model, text, DiffusionSampleConfig(steps=3, cfg_scale=4.0)))


def test_save_load_is_exact_and_errors_are_named(tmp_path):
    model = tiny()
    out = save_baseline(model, tmp_path / "b")
    loaded = load_baseline(out)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([5, 500])
    with torch.no_grad():
        assert torch.equal(model.eval()(x, t, ids(2)), loaded(x, t, ids(2)))
    assert not (tmp_path / "b.tmp").exists()
    with pytest.raises(BaselineError, match="config.json is missing"):
        load_baseline(tmp_path / "nothing")
    (out / "config.json").write_text(json.dumps({"format": "other", "version": 1}))
    with pytest.raises(BaselineError, match="not a version-1"):
        load_baseline(out)
    save_baseline(model, out)  # overwrites in place
    (out / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(BaselineError, match="cannot load"):
        load_baseline(out)


class Oracle(torch.nn.Module):
    """Knows the clean images: returns the exact noise, velocity or x0 for (x_t, t), per prediction type."""

    def __init__(self, cfg: DiffusionConfig, x0: torch.Tensor):
        super().__init__()
        self.cfg, self.x0 = cfg, x0
        self.abar = train_scheduler(cfg).alphas_cumprod
        self.unused = torch.nn.Parameter(torch.zeros(1))  # sample() asks the model for its device

    def forward(self, noisy, t, text):
        a = self.abar[t].view(-1, 1, 1, 1).float()
        eps = (noisy - a.sqrt() * self.x0) / (1 - a).sqrt()  # x_t = sqrt(abar) x0 + sqrt(1 - abar) eps
        return {"epsilon": eps, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * self.x0,  # Salimans & Ho's v
                "sample": self.x0}[self.cfg.prediction_type]


PREDICTIONS = ("epsilon", "v_prediction", "sample")


@pytest.mark.parametrize("kind", PREDICTIONS)
def test_each_prediction_type_trains_on_its_own_target(kind):
    cfg = DiffusionConfig(**TINY, prediction_type=kind)
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    oracle = Oracle(cfg, x0)
    assert float(diffusion_loss(oracle, x0, ids(4), train_scheduler(cfg), torch.Generator().manual_seed(0))) < 1e-8
    for other in PREDICTIONS:  # the same oracle judged against another type's target is wrong
        if other != kind:
            wrong = train_scheduler(DiffusionConfig(**TINY, prediction_type=other))
            assert float(diffusion_loss(oracle, x0, ids(4), wrong, torch.Generator().manual_seed(0))) > 1e-3


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("kind", PREDICTIONS)
def test_samplers_read_the_prediction_type(kind, sampler):
    """A perfect denoiser of each type walks any start noise to its clean images."""
    cfg = DiffusionConfig(**TINY, prediction_type=kind)
    x0 = torch.rand(2, 3, 8, 8) * 1.6 - 0.8
    out = sample(Oracle(cfg, x0), ids(2), DiffusionSampleConfig(sampler=sampler, steps=5, cfg_scale=1.0, seed=1))
    assert torch.allclose(out, x0, atol=2e-3), (out - x0).abs().max()


def test_min_snr_weights_cap_the_clean_timesteps():
    from baseline import min_snr_weights

    for kind in PREDICTIONS:
        sched = train_scheduler(DiffusionConfig(**TINY, prediction_type=kind))
        t = torch.arange(0, 1000, 37)
        w = min_snr_weights(sched, t, 5.0)
        abar = sched.alphas_cumprod[t]
        snr = abar / (1 - abar)
        assert torch.isfinite(w).all() and (w > 0).all()
        low_noise, high_noise = snr > 5, snr < 5
        if kind == "epsilon":  # 1 where SNR < gamma, gamma / SNR above
            assert torch.allclose(w[high_noise], torch.ones(int(high_noise.sum())))
            assert torch.allclose(w[low_noise], 5 / snr[low_noise])
        elif kind == "v_prediction":
            assert torch.allclose(w, snr.clamp(max=5) / (snr + 1)) and (w <= 1).all()
        else:
            assert torch.allclose(w, snr.clamp(max=5))
    with pytest.raises(BaselineError, match="loss_weighting"):
        DiffusionConfig(**TINY, loss_weighting="p2")
    with pytest.raises(BaselineError, match="prediction_type"):
        DiffusionConfig(**TINY, prediction_type="score")



# --- the stage's own data: rows with an unreadable image or an empty caption are skipped, aligned ---

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
           "magenta": (255, 0, 255), "cyan": (0, 255, 255)}
# (file name, colour, caption): the corrupt file and the empty caption sit between good rows, so that
# images and captions taken from different rows would pair a colour with another colour's caption
OWN_ROWS = [
    ("img_0.png", "red", "a red square"), ("img_1.png", "green", "a green square"),
    ("img_2.png", None, "a cyan square"),  # random bytes under a .png name
    ("img_3.png", "blue", "a blue square"), ("img_4.png", "yellow", ""),
    ("img_5.png", "magenta", "a magenta square"),
]


def write_own_data(folder: Path) -> Path:
    """An imagefolder (as tests/test_own_data.py builds one): solid-colour PNGs captioned with their colour."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    for name, colour, _ in OWN_ROWS:
        if colour is None:
            (folder / name).write_bytes(np.random.default_rng(1).bytes(300))
        else:
            Image.new("RGB", (12, 12), COLOURS[colour]).save(folder / name)
    (folder / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": name, "text": text}) + "\n" for name, _, text in OWN_ROWS))
    return folder


def colour_of(image: torch.Tensor) -> str:
    """The named colour nearest an image's mean (R, R, 3) uint8."""
    mean = image.float().mean(dim=(0, 1))
    return min(COLOURS, key=lambda c: float((mean - torch.tensor(COLOURS[c]).float()).abs().sum()))


def test_own_data_skips_bad_rows_and_keeps_images_and_captions_aligned(tmp_path, monkeypatch, caplog):
    import logging

    from ar_model import encode_text
    from train import diffusion_stage
    from train.data.images import dataset_images, decode_rows
    from train.generator_stage import prepare_text_tokenizer

    source = write_own_data(tmp_path / "own")
    cfg = diffusion_stage.preset_config("cpu").override({
        **{f"model.{k}": v for k, v in TINY.items() if k not in ("text_vocab", "pad_id", "text_len")},
        "loop.steps": 1, "loop.batch_size": 2, "loop.warmup_steps": 0, "loop.log_every": 1, "loop.ckpt_every": 1,
        "loop.device": "cpu", "loop.progress": False, "data.source": str(source), "data.text_len": 6,
    })
    seen = {}
    real_data, real_loop = diffusion_stage.baseline_data, diffusion_stage.train_loop

    def spy_data(*args, **kwargs):
        seen["rows"], seen["data"] = args[0], real_data(*args, **kwargs)
        return seen["data"]

    def spy_loop(task, *args, **kwargs):
        seen["task"] = task
        return real_loop(task, *args, **kwargs)

    monkeypatch.setattr(diffusion_stage, "baseline_data", spy_data)
    monkeypatch.setattr(diffusion_stage, "train_loop", spy_loop)
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        out = diffusion_stage.train_baseline(cfg, run)
    assert (out / "config.json").is_file()

    data, task = seen["data"], seen["task"]
    good = [(name, colour, text) for name, colour, text in OWN_ROWS if colour and text]
    assert data.skipped == {"skipped_empty_text": 1, "skipped_bad_image": 1}
    assert len(data.rows) == len(task.images) == len(task.text_ids) == len(good)
    assert task.images is data.images and task.text_ids is data.text_ids
    # each kept image's caption ids are the ids of the caption naming its colour
    text_tok = prepare_text_tokenizer(cfg, run, [])  # the run's, reloaded
    colours = [colour_of(im) for im in task.images]
    assert sorted(colours) == sorted(colour for _, colour, _ in good)
    expected = encode_text(text_tok, [f"a {c} square" for c in colours], task.layout).ids
    assert torch.equal(task.text_ids, expected)
    rows = seen["rows"]  # the stage's rows (train.generator_stage.training_rows): all six, image undecoded
    assert len(rows) == len(OWN_ROWS)
    assert [rows[i]["text"] for i in data.rows] == [f"a {c} square" for c in colours]
    # each skipped row named by its file, and the skips counted
    log = caplog.text
    assert re.search(r"baseline: \S*img_4\.png skipped: empty caption", log)
    assert re.search(r"loading images: skipped \S*img_2\.png: cannot read image", log)
    assert "4 of 6 rows kept, 2 skipped" in log and "'skipped_bad_image': 1" in log
    # decode_rows is dataset_images' one implementation: the same images, plus their rows
    images, kept = decode_rows(rows, 8, progress=False)
    assert torch.equal(images, dataset_images(rows, 8, progress=False)) and len(kept) == 5


def test_the_baseline_reads_the_same_text_ids_with_glyph_slots():
    """A preset whose generator spells strings into glyph slots gives its baseline the same text ids: the
    slots go into the baseline's config, and its pipeline encodes prompts with them."""
    from ar_model import SequenceLayout, encode_text, train_text_tokenizer
    from pipelines.diffusion import DiffusionPipeline
    from train.diffusion_stage import preset_config, text_layout
    from train.errors import TrainConfigError

    cfg = preset_config("cpu-text")
    assert cfg.data.glyph_slots == 4
    tok = train_text_tokenizer(['the word "ok" in the top row', "a red circle"], vocab_size=300)
    layout = text_layout(tok, cfg.data.text_len, cfg.data.glyph_slots)
    dcfg = cfg.diffusion_config(layout)
    assert dcfg.glyph_slots == 4 and dcfg.text_len == cfg.data.text_len
    model = DiffusionBaseline(DiffusionConfig(**{**TINY, "text_vocab": layout.pad_id + 1, "pad_id": layout.pad_id,
                                                 "text_len": 12, "glyph_slots": 4}))
    pipe = DiffusionPipeline(model, tok, torch.device("cpu"))
    prompt = ['the word "OK" in the top row']
    ids = encode_text(tok, prompt, pipe.text_layout).ids
    assert pipe.text_layout.glyph_slots == 4 and not pipe.text_layout.glyph_end
    ended = DiffusionBaseline(DiffusionConfig(**{**model.cfg.to_dict(), "glyph_end": True}))
    assert DiffusionPipeline(ended, tok, torch.device("cpu")).text_layout.glyph_end
    assert preset_config("cpu-text").override({"data.glyph_end": True}).diffusion_config(
        text_layout(tok, 56, 4, True)).glyph_end
    assert ids[0, :2].tolist() == [tok(c, add_special_tokens=False)["input_ids"][0] for c in "ok"]
    assert torch.equal(ids, encode_text(tok, prompt, SequenceLayout.for_tokenizer(tok, 1, (1, 1), 12,
                                                                                   glyph_slots=4)).ids)
    # a baseline saved before the setting loads without slots; the setting is the data's, not the model's
    old = {k: v for k, v in DiffusionConfig(**TINY).to_dict().items() if k != "glyph_slots"}
    assert DiffusionConfig.from_dict(old).glyph_slots == 0
    with pytest.raises(TrainConfigError, match="glyph_slots"):
        preset_config("cpu-text").override({"model.glyph_slots": 4})
