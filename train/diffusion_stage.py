"""The diffusion baseline's training stage: the generator's data, text ids and loop, a UNet instead.

    run/text_tokenizer/      shared with the generator stage (made by whichever stage runs first)
    run/baseline_stage.json  the stage config (a resumed run must keep it)
    run/state/baseline/      the shared loop's checkpoints (resume)
    run/metrics/baseline.jsonl
    run/baseline/            the exported model (baseline) + its text tokenizer

The data section is the generator stage's (`GeneratorDataConfig`): the same scenes,
captions and text length by default, so the two models see the same examples and the
same text ids; images are rendered at `model.resolution` (the tokenizer's 24 px by
default) and scaled to [-1, 1]. As when pre-tokenizing the generator's data, rows with an
empty caption or an unreadable image are skipped, named and counted (`baseline_data`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ar_model import SequenceLayout, condition_dropout, encode_text
from baseline import (
    DiffusionBaseline,
    DiffusionConfig,
    DiffusionSampleConfig,
    diffusion_loss,
    save_baseline,
    train_scheduler,
)
from pipelines import Run, resolve_device, sampling_file
from train import distributed
from train.config import StageConfig, check_run_config, preset
from train.data.images import decode_rows, image_name, undecoded
from train.errors import TrainConfigError
from train.generator_stage import PRESETS as GENERATOR_PRESETS
from train.generator_stage import GeneratorDataConfig, prepare_text_tokenizer, training_rows
from train.loop import EpochOrder, LoopConfig, LossOutput, fit_budget, resume_budget, split_rows, train_loop

log = logging.getLogger(__name__)


@dataclass
class BaselineStageConfig(StageConfig):
    STAGE = "baseline"
    OPEN_SECTIONS = ("model", "sample")
    FREE_SECTIONS = ("sample",)  # what sampling to recommend does not change training: a resume may change it

    model: dict = field(default_factory=dict)  # DiffusionConfig fields but the text ones (set from the tokenizer)
    loop: LoopConfig = field(default_factory=LoopConfig)
    data: GeneratorDataConfig = field(default_factory=GeneratorDataConfig)
    # the sampling settings recorded with the trained baseline (RUN/baseline/tessera_sampling.json):
    # baseline.DiffusionSampleConfig fields, its defaults where unset
    sample: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.data.task == "edit":
            raise TrainConfigError("the diffusion baseline is text-to-image: for editing it trains on the edits' "
                                   "results with data.task=edit-scenes, and edits by SDEdit (docs/EDITING.md)")
        self.recommended_sampling()  # a bad sample.* setting fails here, before any work
        # and so does a bad model.* one: checked with stand-in text sizes (the real ones need the text tokenizer)
        self.diffusion_config(SequenceLayout(text_len=int(self.data.text_len), text_vocab=64, codebook_size=1,
                                             grid=(1, 1), glyph_slots=self.data.glyph_slots,
                                             glyph_end=self.data.glyph_end))

    def recommended_sampling(self) -> DiffusionSampleConfig:
        try:
            return DiffusionSampleConfig(**self.sample)
        except TypeError as e:
            raise TrainConfigError(f"sample: {e}") from None

    def diffusion_config(self, layout: SequenceLayout) -> DiffusionConfig:
        taken = {"text_vocab", "pad_id", "text_len", "glyph_slots", "glyph_end"} & set(self.model)
        if taken:
            raise TrainConfigError(f"model.{sorted(taken)[0]} comes from the text tokenizer and data.text_len / "
                                   "data.glyph_slots / data.glyph_end")
        try:
            return DiffusionConfig.from_dict({**self.model, "text_vocab": layout.pad_id + 1, "pad_id": layout.pad_id,
                                              "text_len": layout.text_len, "glyph_slots": layout.glyph_slots,
                                              "glyph_end": layout.glyph_end})
        except (TypeError, ValueError) as e:
            raise TrainConfigError(f"baseline model config: {e}") from e


# the cpu preset's recipe with more steps and a slower EMA, for the presets whose step count `tessera bench` sets
# from the AR side's training time (cpu-long, cpu-text, cpu-edit); 2,000 when trained on their own
_CPU_LOOP = {"steps": 2000, "batch_size": 32, "lr": 2e-3, "warmup_steps": 50, "weight_decay": 0.0,
             "betas": [0.9, 0.99], "min_lr_ratio": 0.1, "ema_decay": 0.995, "ckpt_every": 250, "log_every": 25}

PRESETS: dict[str, dict] = {
    # the cpu generator preset's data (20,000 scenes, complete captions, 18 text tokens, 1-2 objects, 15% single)
    # at the tokenizer's 24 px; the default UNet (1.16M parameters, the tiny generator's 1.14M).
    # v-prediction with min-SNR weights, batch 32 at lr 2e-3: at ~the generator's wall-clock it
    # scored 15.8% on position + heldout + single_object where DDPM's epsilon at batch 64, lr 1e-3
    # drew noise (0-1%; docs/RESULTS.md). 520 steps (~0.75 s each on 2 AVX2 cores: the
    # generator stage's ~6.5 min) when trained on its own; `tessera bench` sets the count from the
    # AR side's training time.
    "cpu": {
        "model": {"resolution": 24, "prediction_type": "v_prediction", "loss_weighting": "min_snr"},
        "loop": {"steps": 520, "batch_size": 32, "lr": 2e-3, "warmup_steps": 30, "weight_decay": 0.0,
                 "betas": [0.9, 0.99], "min_lr_ratio": 0.1, "ema_decay": 0.99, "ckpt_every": 100,
                 "log_every": 10},
        "data": {"train_images": 20000, "max_objects": 2, "count_weights": [0.15, 0.85], "captions": "complete",
                 "text_len": 18},
    },
    # the cpu-long generator preset's data (the 4x4 world, every kind of caption, 160 text tokens) at
    # the cpu-long tokenizer's 32 px, the cpu preset's UNet and recipe; `tessera bench --preset
    # cpu-long` sets the step count from the AR side's training time.
    "cpu-long": {
        "model": {"resolution": 32, "prediction_type": "v_prediction", "loss_weighting": "min_snr"},
        "loop": _CPU_LOOP,
        "data": GENERATOR_PRESETS["cpu-long"]["data"],
    },
    # the cpu-text generator preset's data (strings and objects in the 4x4 world) at the cpu-text tokenizer's
    # 32 px; the cpu-long recipe; `tessera bench --preset cpu-text` sets the step count from the AR side's time
    "cpu-text": {
        "model": {"resolution": 32, "prediction_type": "v_prediction", "loss_weighting": "min_snr"},
        "loop": _CPU_LOOP,
        "data": GENERATOR_PRESETS["cpu-text"]["data"],
    },
    # the editing baselines' data (`tessera bench --preset cpu-edit`): the cpu-edit generator preset's edits'
    # results, each described completely (data.task edit-scenes), at the cpu-edit tokenizer's 24 px; the cpu
    # preset's UNet and recipe; the bench sets the step count from the editor's training time
    "cpu-edit": {
        "model": {"resolution": 24, "prediction_type": "v_prediction", "loss_weighting": "min_snr"},
        "loop": _CPU_LOOP,
        "data": {**GENERATOR_PRESETS["cpu-edit"]["data"], "task": "edit-scenes", "text_len": 48},  # descriptions: <= 44 tokens
    },
    # the gpu generator preset's data (the 4x4 world, 160 text tokens) at the gpu tokenizer's 48 px;
    # a UNet of ~30M parameters with its text encoder (the S generator's ~29M). `tessera bench` sets
    # the step count from the AR side's training time; 20,000 is the count when trained on its own.
    # Not yet run on a GPU.
    "gpu": {
        "model": {"resolution": 48, "block_out_channels": [128, 256, 256], "layers_per_block": 1,
                  "attention_head_dim": 32, "norm_num_groups": 32, "text_dim": 256, "text_layers": 4,
                  "text_heads": 4, "prediction_type": "v_prediction", "loss_weighting": "min_snr"},
        "loop": {"steps": 20000, "batch_size": 256, "lr": 2e-4, "warmup_steps": 500, "weight_decay": 0.0,
                 "betas": [0.9, 0.99], "min_lr_ratio": 0.1, "ema_decay": 0.999, "ckpt_every": 2000,
                 "log_every": 50},
        "data": GENERATOR_PRESETS["gpu"]["data"],
    },
}


def preset_config(name: str) -> BaselineStageConfig:
    return preset(BaselineStageConfig, PRESETS, name)


def text_layout(text_tok: Any, text_len: int, glyph_slots: int = 0, glyph_end: bool = False) -> SequenceLayout:
    """The generator's text ids for this tokenizer (ar_model.encode_text); the image part is unused."""
    return SequenceLayout.for_tokenizer(text_tok, codebook_size=1, grid=(1, 1), text_len=text_len,
                                        glyph_slots=glyph_slots, glyph_end=glyph_end)


class BaselineData(NamedTuple):
    images: torch.Tensor  # (N, R, R, 3) uint8, the kept rows' images
    text_ids: torch.Tensor  # (N, T) long, the same rows' captions (ar_model.encode_text)
    rows: list[int]  # the kept rows' indices in the stage's rows
    skipped: dict[str, int]  # {"skipped_empty_text": n, "skipped_bad_image": n}, as train.pretokenize counts them


def baseline_data(rows: Any, resolution: int, text_tok: Any, layout: SequenceLayout,
                  progress: bool = True) -> BaselineData:
    """The rows (columns image and text) whose caption is a non-empty string and whose image decodes.

    As when pre-tokenizing the generator's data, a row with an empty caption or an
    unreadable image is skipped, named (its file path when known, else its row) and
    counted; images and caption ids come from the same kept rows, in order.
    """
    texts = rows["text"]
    captioned = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
    if len(captioned) < len(texts):
        values = undecoded(rows, "image").select_columns(["image"])
        keep = set(captioned)
        for i in range(len(texts)):
            if i not in keep:
                log.warning("baseline: %s skipped: empty caption", image_name(values[i]["image"], i))
        if not captioned:
            raise TrainConfigError(f"none of the {len(texts)} rows has a caption (see the warnings above)")
    images, kept = decode_rows(rows, resolution, progress=progress,
                               rows=captioned if len(captioned) < len(texts) else None)
    skipped = {"skipped_empty_text": len(texts) - len(captioned), "skipped_bad_image": len(captioned) - len(kept)}
    if any(skipped.values()):
        log.warning("baseline: %d of %d rows kept, %d skipped (%s; named above)", len(kept), len(texts),
                    sum(skipped.values()), skipped)
    batch = encode_text(text_tok, [texts[i] for i in kept], layout)
    if any(batch.truncated):
        log.warning("baseline: %d of %d captions longer than %d text tokens were truncated",
                    sum(batch.truncated), len(batch.truncated), layout.text_len)
    return BaselineData(images, batch.ids, kept, skipped)


class BaselineTask:
    """The baseline as a `train.loop.Task` over in-memory images and text ids."""

    def __init__(self, cfg: BaselineStageConfig, dcfg: DiffusionConfig, layout: SequenceLayout,
                 images: torch.Tensor, text_ids: torch.Tensor):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.loop.seed)
            self.model = DiffusionBaseline(dcfg)
        self.layout = layout
        self.images = images  # (N, R, R, 3) uint8
        self.text_ids = text_ids  # (N, T) long
        self.scheduler = train_scheduler(dcfg)
        self.cond_dropout = dcfg.cond_dropout
        # rows held out for the validation loss (data.val_split: the generator's rows when the data are the same)
        train_rows, self.val_rows = split_rows(len(images), cfg.data.val_split, cfg.data.seed)
        self.train_rows, self.val_batch = len(train_rows), cfg.loop.batch_size
        if not len(self.val_rows):
            self.validate = None  # train.loop: no rows held out
        self.order = EpochOrder(len(images), cfg.loop.seed, cfg.loop.grad_accum,
                                rows=train_rows if len(self.val_rows) else None)
        self.seed = cfg.loop.seed

    def _batch(self, idx: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, int]:
        text = condition_dropout(self.text_ids[idx], self.cond_dropout, self.layout, generator=g)  # (B, T)
        x = self.images[idx].permute(0, 3, 1, 2).float() / 127.5 - 1  # (B, 3, R, R) in [-1, 1]
        device = next(self.model.parameters()).device
        noise_seed = int(torch.randint(0, 2**62, (1,), generator=g))  # the loss's noise and timesteps
        return x.to(device), text.to(device), noise_seed

    def batch(self, step: int, micro: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        idx = self.order.indices(step, micro, batch_size)  # (B,)
        # a function of (step, micro)
        return self._batch(idx, torch.Generator().manual_seed((self.seed * 1_000_003 + step) * 64 + micro))

    def validate(self) -> dict[str, float]:
        """The training loss on the held-out rows with fixed noise, timesteps and dropped captions: the same
        draws every time, so the curve moves only with the weights."""
        total, n = 0.0, 0
        for b, idx in enumerate(self.val_rows.split(self.val_batch)):
            x, text, noise_seed = self._batch(idx, torch.Generator().manual_seed(self.seed * 7_000_003 + b))
            loss = diffusion_loss(self.model, x, text, self.scheduler, torch.Generator().manual_seed(noise_seed))
            total += float(loss) * len(idx)
            n += len(idx)
        return {"val_loss": total / n}

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor, int], step: int) -> LossOutput:
        x, text, noise_seed = batch
        loss = diffusion_loss(self.model, x, text, self.scheduler, torch.Generator().manual_seed(noise_seed))
        return LossOutput(loss, {"loss": float(loss.detach())})

    def items(self, batch: tuple[torch.Tensor, torch.Tensor, int]) -> int:
        return batch[0].shape[0]


def train_baseline(cfg: BaselineStageConfig, run_dir: str | Path, seconds: float | None = None) -> Path:
    """Train (or resume) the diffusion baseline of `run_dir`; returns the exported model directory.

    With `seconds`, the step count is the one that fills that much training wall-clock on this
    machine (train.loop.steps_for_seconds, measured before training; the lr schedule follows it);
    a resumed run keeps the count its stage config recorded.
    """
    run = Run(run_dir)
    world = distributed.init(resolve_device(cfg.loop.device).type)  # under torchrun: join the group first
    if seconds is not None and world.distributed:
        raise TrainConfigError("a wall-clock budget (seconds=) is measured in one process; give loop.steps instead")
    recorded = run.recorded_config("baseline")
    if seconds is not None and recorded is not None:
        cfg = resume_budget(cfg, recorded)
        seconds = None
    if seconds is None:
        check_run_config(run, cfg)
    resolution = int(cfg.model.get("resolution", 24))
    rows = training_rows(cfg, resolution)  # the generator stage's scenes and captions
    # every row's caption, as the generator stage trains it: the shared tokenizer is the same whichever stage runs first
    if world.main:  # process 0 makes the text tokenizer (when the generator stage has not); the others read it
        prepare_text_tokenizer(cfg, run, rows["text"])
    distributed.barrier()
    text_tok = prepare_text_tokenizer(cfg, run, rows["text"])
    layout = text_layout(text_tok, cfg.data.text_len, cfg.data.glyph_slots, cfg.data.glyph_end)
    dcfg = cfg.diffusion_config(layout)
    data = baseline_data(rows, resolution, text_tok, layout, progress=cfg.loop.progress)  # aligned, bad rows skipped
    images = data.images  # (N, R, R, 3) uint8
    task = BaselineTask(cfg, dcfg, layout, images, data.text_ids)
    if seconds is not None:
        cfg = fit_budget(cfg, task, seconds)
        check_run_config(run, cfg)
        log.info("baseline: %d steps for a budget of %.0f s", cfg.loop.steps, seconds)
    log.info("baseline: %d parameters, %d training images at %d px", sum(p.numel() for p in task.model.parameters()),
             len(images), resolution)
    result = train_loop(task, cfg.loop, run, desc="baseline", stage="baseline")
    log.info("baseline: %d steps in %.1fs (resumed from %d)", result.step, result.seconds, result.resumed_from)
    out = run.baseline
    if world.main:
        recommended = {k: v for k, v in asdict(cfg.recommended_sampling()).items() if k != "seed"}
        save_baseline(task.model.eval(), out, text_tokenizer=text_tok, extra_files=sampling_file(recommended))
    distributed.barrier()  # the exported baseline is on disk before any process reads it
    return out


__all__ = ["BaselineData", "BaselineStageConfig", "BaselineTask", "PRESETS", "baseline_data", "preset_config",
           "text_layout", "train_baseline"]
