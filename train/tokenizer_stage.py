"""Stage 1: train the VQ image tokenizer (on the shapes world by default, or on own images: docs/DATA.md).

`train_tokenizer(cfg, run_dir)` renders / loads the images, runs the shared
loop and writes `run_dir/tokenizer/` (config.json + model.safetensors). Named
presets (`PRESETS`) are plain data: a CPU preset that trains in minutes on two
cores and a GPU preset for one H100-class card.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from train import distributed
from train.data import own, shapes
from train.data.images import dataset_images
from pipelines import Run, resolve_device
from train.config import StageConfig, check_run_config, check_share, preset
from train.errors import TrainConfigError
from train.loop import EpochOrder, LoopConfig, LossOutput, fit_budget, resume_budget, split_rows, train_loop
from vqtok import TokenizerLoss, VQConfig, VQTokenizer, images_to_tensor, save_tokenizer

log = logging.getLogger(__name__)


# a preset's data.source when it is for the user's own images only: training stops until --set data.source=PATH
SOURCE_REQUIRED = "required"


@dataclass
class TokenizerDataConfig:
    source: str = own.SHAPES  # "shapes" (the embedded world), or a local path to own images (docs/DATA.md)
    image_column: str = "image"  # own data: the column with the images ("image" is the imagefolder's)
    # the shapes world only (own data use every image): distinct rendered scenes; the world is small, more adds little
    train_images: int = 20000
    grid: int = shapes.GRID  # the world's grid (3 or 4): keep each cell a whole number of codes
    max_objects: int = shapes.MAX_OBJECTS  # objects per scene, 1..max
    tones: bool = False  # objects bright or dim (shapes.TONES): the editing world's identity detail
    text: float = 0.0  # share of scenes holding a string (train.data.glyphs; never a held-out one)
    seed: int = 0  # scene sampling seed (independent of the loop's seed)
    # images held out of training for the validation metrics (loop.val_every): a fraction < 1 or a count; which
    # images is fixed by data.seed (train.loop.split_rows); 0 = none
    val_split: float = 0.0

    def __post_init__(self):
        for name in ("source", "image_column"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise TrainConfigError(f"data.{name} must be a non-empty string, got {getattr(self, name)!r}")
        if self.train_images < 1:
            raise TrainConfigError(f"data.train_images must be >= 1, got {self.train_images!r}")
        try:
            shapes.check_counts(1, int(self.max_objects), None, shapes.check_grid(self.grid))
        except ValueError as e:
            raise TrainConfigError(f"data.grid / max_objects: {e}") from None
        check_share("data.text", self.text)


@dataclass
class TokenizerStageConfig(StageConfig):
    STAGE = "tokenizer"

    vq: VQConfig = field(default_factory=VQConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    data: TokenizerDataConfig = field(default_factory=TokenizerDataConfig)


# Presets are data, not code paths (after DiT's DiT_models registry).
PRESETS: dict[str, dict] = {
    # 24 px, 6x6 codes: each cell of the world's 3x3 grid is exactly 2x2 codes, so an object looks
    # the same in code space in every cell (at 32 px / 8x8 a cell spans 2.67 codes and each cell
    # has its own phase): 98.6% of scenes preserved vs 96.1% at 32 px, and a generator can reuse
    # what it learnt in one cell in another. Width 16 with channel_mult [1, 2, 4] (64 channels at
    # 6x6), not 32 / [1, 2, 2]: half the step time, 98.8% of scenes preserved (width 24: 99.3%),
    # ~3.3 minutes on 2 cores of an AVX2 CPU in fp32, which leaves the demo's generator its time.
    # bf16-native: bf16 autocast made steps 1.4x faster on an earlier VM, while emulated bf16 on
    # an AVX2 CPU was 8x slower.
    # 1024 codes, not 256, because 256 merged colours of small objects (docs/RESULTS.md: sweeps).
    "cpu": {
        "vq": {"resolution": 24, "base_channels": 16, "channel_mult": [1, 2, 4], "latent_dim": 64,
               "quantizer": "vq", "codebook_size": 1024, "codebook_dim": 8},
        "loop": {"steps": 3000, "batch_size": 16, "lr": 2e-3, "warmup_steps": 50, "ckpt_every": 500,
                 "log_every": 25, "precision": "bf16-native"},
        "data": {"train_images": 20000},
    },
    # The editing world: the cpu preset's 3x3 world at 24 px, scenes of 1-5 objects, each bright or dim
    # (the tone, an identity detail edits must keep: the tokenizer must keep it too). The patch
    # architecture: a code is made from its own 4x4 patch alone, so an edit leaves the codes of every
    # untouched patch as they were (the conv nets' codes changed for 75% of untouched patches, and
    # all-background patches took 682 different codes: nothing for an editor to copy). Patches need more
    # codes than the conv net's context-aware ones: 4096 codes and 6000 steps keep 94.0% of edited scenes
    # (1024 codes, 3000 steps: 37%); a decoder that sees each code's 3x3 neighbourhood (patch_context 1,
    # the codes still local) keeps 100% (docs/RESULTS.md "Issue 18").
    "cpu-edit": {
        "vq": {"architecture": "patch", "patch_context": 1, "resolution": 24, "base_channels": 32,
               "channel_mult": [1, 2, 4], "latent_dim": 64, "norm_groups": 4, "quantizer": "vq",
               "codebook_size": 4096, "codebook_dim": 8},
        "loop": {"steps": 6000, "batch_size": 16, "lr": 2e-3, "warmup_steps": 50, "ckpt_every": 1000,
                 "log_every": 50, "precision": "bf16-native"},
        "data": {"train_images": 20000, "max_objects": 5, "tones": True},
    },
    # The 4x4 world (scenes of up to 16 objects) at 32 px (8 px a cell, as the cpu preset's 3x3 at 24 px, so
    # objects look as they do there) downsampled 8x: 4x4 codes, one a cell of 1,024 codes. The world has 36
    # kinds of object in two sizes, so one code names a cell's content; the generator's sequence is a quarter
    # of 8x8 codes' and it scored 68.5% over the suites against 43.0% on 8x8 codes at the same budget
    # (runs/long6 vs runs/long5, docs/RESULTS.md). fp32: on a CPU with AVX512-BF16 bf16 autocast measured
    # slower and worse than fp32. The last 2,000 steps train the decoder alone on frozen codes (twice as fast a
    # step): scenes kept 86.1 -> 91.0% (benchmarks/tokenizer_errors.py), small circles no longer drawn with
    # half-on corners that read as squares; 4,000 more joint steps, a wider decoder, FSQ or another dead-code
    # threshold did not do as well (docs/RESULTS.md "Session 25").
    "cpu-long": {
        "vq": {"resolution": 32, "base_channels": 16, "channel_mult": [1, 2, 4, 4], "latent_dim": 64,
               "quantizer": "vq", "codebook_size": 1024, "codebook_dim": 8, "decoder_only_from": 4000},
        "loop": {"steps": 6000, "batch_size": 16, "lr": 2e-3, "warmup_steps": 50, "ckpt_every": 500,
                 "log_every": 25, "precision": "fp32"},
        "data": {"train_images": 20000, "grid": 4, "max_objects": 16},
    },
    # Text in the 4x4 world (train.data.glyphs): 32 px, 8 px a cell, downsampled 8x with the patch architecture, so
    # each cell is one code made from that cell's pixels alone (a character is one code, as an object is); 70% of
    # scenes hold a string of 1-4 characters beside up to 4 objects. cpu-long's conv net at one code a cell merged
    # white-on-grey sign characters that differ in a few pixels (V/U, R/P, C/O: 42% of sign characters misread) and
    # 8x8 conv codes (2x2 a character) kept every glyph but left the generator 64 positions an image; the patch net
    # with 4,096 codes gives each character its own code (0 shared), keeps 99.3% of glyphs and 94.6% of crowded
    # scenes, and the generator on its codes meets the text bars (docs/RESULTS.md "Issue 21", session 28). With
    # 1,024 codes the same net merged characters (I/T, U/O: 68% of glyphs kept).
    "cpu-text": {
        "vq": {"architecture": "patch", "patch_context": 1, "resolution": 32, "base_channels": 32,
               "channel_mult": [1, 2, 4, 4], "latent_dim": 64, "norm_groups": 4, "quantizer": "vq",
               "codebook_size": 4096, "codebook_dim": 8},
        "loop": {"steps": 6000, "batch_size": 16, "lr": 2e-3, "warmup_steps": 50, "ckpt_every": 500,
                 "log_every": 25, "precision": "fp32"},
        "data": {"train_images": 20000, "grid": 4, "max_objects": 4, "text": 0.7},
    },
    # Photographs (own data: --set data.source=FOLDER), 64 px, 16x16 codes of 1,024 (0.625 bits per pixel):
    # each 4x4 block of pixels folded into 48 channels (space_to_depth 4) and one level of width 128 at 16x16, so
    # no conv runs above the code grid's size: steps are what this budget buys on a CPU (every cheaper net of the
    # pilots learned more in 5 minutes than every wider or deeper one; the 64 px conv net before it, with a level
    # at full resolution, took 6.6x as long a step). A per-position norm ("pixel"): with GroupNorm a whole
    # photograph is normalised unlike its training crops (1.1 dB lost on chelsea). L2, lr 1e-3, bf16, a weight
    # EMA; the codebook trains by index (vqtok.model.SparseCodebook: 1.9x the steps of the library's one-hot path),
    # 13,000 steps took 17.6 minutes on 2 cores (AVX512-BF16, no AMX; 18-19.5 on slower days from their step
    # times). On two photographs it never saw (28.6 / 31.7 dB; 29.3 / 32.1 with codes checked against the decoder,
    # vqtok.search): docs/RESULTS.md "Issue 23" (benchmarks/photo_tokenizer.py, which trains on random crops).
    "cpu-photo": {
        "vq": {"resolution": 64, "base_channels": 64, "channel_mult": [2], "space_to_depth": 4, "latent_dim": 64,
               "norm": "pixel", "quantizer": "vq", "codebook_size": 1024, "codebook_dim": 8},
        "loop": {"steps": 13000, "batch_size": 16, "lr": 1e-3, "warmup_steps": 50, "ckpt_every": 500,
                 "log_every": 25, "precision": "bf16-native", "ema_decay": 0.995},
        "data": {"source": SOURCE_REQUIRED},  # never the shapes world by default
    },
    # The 4x4 world at 48 px, 12x12 codes (3x3 per cell, aligned), wider nets and the PatchGAN
    # term: one H100/H200 (not yet run on one).
    "gpu": {
        "vq": {"resolution": 48, "base_channels": 128, "channel_mult": [1, 2, 2], "latent_dim": 256,
               "quantizer": "vq", "codebook_size": 1024, "codebook_dim": 8, "disc_weight": 0.1,
               "disc_start": 5000},
        "loop": {"steps": 20000, "batch_size": 128, "lr": 4e-4, "warmup_steps": 500, "ckpt_every": 1000,
                 "log_every": 50},
        "data": {"train_images": 200000, "grid": 4, "max_objects": 16},
    },
}


def preset_config(name: str) -> TokenizerStageConfig:
    return preset(TokenizerStageConfig, PRESETS, name)


class _TrainModule(torch.nn.Module):
    """Everything the optimizer updates: the tokenizer and its loss (discriminator).

    Its forward is the loss, so that under DDP the loop's wrapper sees the whole
    computation (gradients are averaged in the wrapper's backward hooks).
    """

    def __init__(self, tokenizer: VQTokenizer, loss: TokenizerLoss):
        super().__init__()
        self.tokenizer = tokenizer
        self.loss_fn = loss

    def forward(self, images: torch.Tensor, step: int):
        return self.loss_fn(self.tokenizer, images, step)


class TokenizerTask:
    """The tokenizer stage as a `train.loop.Task` over an in-memory uint8 image set."""


    def __init__(self, cfg: TokenizerStageConfig, images: torch.Tensor):
        torch.manual_seed(cfg.loop.seed)  # model init is part of the run's identity
        self.model = _TrainModule(VQTokenizer(cfg.vq), TokenizerLoss(cfg.vq))
        # a discriminator sits idle until disc_start, the encoder from decoder_only_from: DDP must then not wait
        # for their gradients
        self.unused_parameters = cfg.vq.disc_weight > 0 or cfg.vq.decoder_only_from > 0
        self.images = images  # (N, H, W, 3) uint8
        train_rows, self.val_rows = split_rows(len(images), cfg.data.val_split, cfg.data.seed)
        self.train_rows, self.val_batch, self.recon_loss = len(train_rows), cfg.loop.batch_size, cfg.vq.recon_loss
        if not len(self.val_rows):
            self.validate = None  # train.loop: no images held out
        self.order = EpochOrder(len(images), cfg.loop.seed, cfg.loop.grad_accum,
                                rows=train_rows if len(self.val_rows) else None)

    def batch(self, step: int, micro: int, batch_size: int) -> torch.Tensor:
        idx = self.order.indices(step, micro, batch_size)  # (B,)
        device = next(self.model.parameters()).device
        return images_to_tensor(self.images[idx]).to(device)  # (B, 3, H, W) in [-1, 1]

    def loss(self, batch: torch.Tensor, step: int) -> LossOutput:
        out = self.model(batch, step)  # through the loop's wrapper (DDP) when there is one
        return LossOutput(out.loss, {"loss": float(out.loss.detach()), **out.metrics})

    def items(self, batch: torch.Tensor) -> int:
        return batch.shape[0]

    def validate(self) -> dict[str, float]:
        """Reconstruction of the held-out images: val_loss (the reconstruction loss plus the quantizer's, the
        stage's loss without its perceptual and adversarial terms), val_recon, val_psnr (dB on 0-255) and
        val_usage (the share of the codebook the held-out images use)."""
        tokenizer = self.model.tokenizer  # the loop hands validation the plain module
        device = next(tokenizer.parameters()).device
        sums, n, used = {"val_loss": 0.0, "val_recon": 0.0, "val_psnr": 0.0}, 0, set()
        for idx in self.val_rows.split(self.val_batch):
            x = images_to_tensor(self.images[idx]).to(device)  # (B, 3, H, W) in [-1, 1]
            out = tokenizer(x)
            err = out.recon - x
            recon = err.abs().mean() if self.recon_loss == "l1" else err.pow(2).mean()
            mse = ((out.recon.clamp(-1, 1) - x) * 127.5).pow(2).flatten(1).mean(1)  # (B,) on the 0-255 scale
            psnr = 10 * torch.log10(255.0**2 / mse.clamp_min(1e-10))
            sums["val_loss"] += float(recon + out.loss) * len(idx)
            sums["val_recon"] += float(recon) * len(idx)
            sums["val_psnr"] += float(psnr.sum())
            used.update(out.codes.unique().tolist())
            n += len(idx)
        return {**{k: v / n for k, v in sums.items()}, "val_usage": len(used) / tokenizer.cfg.num_codes}


def training_images(cfg: TokenizerStageConfig, progress: bool = True) -> torch.Tensor:
    """The stage's training images (unreadable own images skipped and named in the log)."""
    if cfg.data.source != own.SHAPES:
        ds = own.load_rows(cfg.data.source, {"image": cfg.data.image_column})
        return dataset_images(ds, cfg.vq.resolution, progress=progress)
    ds = shapes.shapes_dataset(
        cfg.data.train_images, resolution=cfg.vq.resolution, split="train",
        seed=cfg.data.seed, max_objects=cfg.data.max_objects, grid=cfg.data.grid, tones=cfg.data.tones,
        text=cfg.data.text,
    )
    return dataset_images(ds, cfg.vq.resolution, progress=progress)


def train_tokenizer(cfg: TokenizerStageConfig, run_dir: str | Path, seconds: float | None = None) -> Path:
    """Train (or resume) the tokenizer of `run_dir`; returns the exported tokenizer directory.

    With `seconds`, the step count is the one that fills that much training wall-clock on this
    machine (train.loop.steps_for_seconds); a resumed run keeps its recorded count.
    """
    if cfg.data.source == SOURCE_REQUIRED:  # before anything is written into the run
        raise TrainConfigError("this tokenizer preset trains on your own images: give --set data.source=PATH (a "
                               "folder of images or a saved data set, docs/DATA.md)")
    run = Run(run_dir)
    world = distributed.init(resolve_device(cfg.loop.device).type)  # under torchrun: join the group first
    if seconds is not None and world.distributed:
        raise TrainConfigError("a wall-clock budget (seconds=) is measured in one process; give loop.steps instead")
    recorded = run.recorded_config("tokenizer")
    if seconds is not None and recorded is not None:  # resuming a budgeted run: its recorded steps
        cfg, seconds = resume_budget(cfg, recorded), None
    if seconds is None:
        check_run_config(run, cfg)
    images = training_images(cfg, progress=cfg.loop.progress)
    task = TokenizerTask(cfg, images)
    if seconds is not None:
        cfg = fit_budget(cfg, task, seconds)
        check_run_config(run, cfg)
        log.info("tokenizer: %d steps for a budget of %.0f s", cfg.loop.steps, seconds)
    result = train_loop(task, cfg.loop, run, desc="tokenizer", stage="tokenizer")
    log.info("tokenizer: %d steps in %.1fs (resumed from %d)", result.step, result.seconds, result.resumed_from)
    out = run.tokenizer
    if distributed.world().main:
        save_tokenizer(task.model.tokenizer.eval(), out)
    distributed.barrier()  # the exported tokenizer is on disk before any process reads it
    return out


__all__ = [
    "PRESETS",
    "SOURCE_REQUIRED",
    "TokenizerDataConfig",
    "TokenizerStageConfig",
    "TokenizerTask",
    "preset_config",
    "train_tokenizer",
    "training_images",
]
