"""The generator stage: text tokenizer, pre-tokenized codes, and the Llama generator trained on them.

    run/tokenizer/            the VQ tokenizer (from `train_tokenizer`), required
    run/text_tokenizer/       the text tokenizer, made once and reused
    run/codes/                pre-tokenized Arrow data (train.pretokenize), made once and reused
                              (by `prepare_codes`: `tessera tokenize` ahead of training, or `train_generator`)
    run/generator_stage.json  the stage config (a resumed run must keep it)
    run/state/generator/      the shared loop's checkpoints (resume)
    run/metrics/generator.jsonl  its log
    run/generator/            the exported HF model directory + text tokenizer + layout

The text tokenizer is a byte-level BPE trained on the run's captions (or a local
HF tokenizer directory named by `data.text_tokenizer`); it is saved into
`run/text_tokenizer/` before the codes are made, so a resumed run encodes text
exactly as the first one did. The data are the shapes world (`data.source`
"shapes") or the user's own images and captions at a local path (train.data.own,
docs/DATA.md). Like the tokenizer stage, the presets are data.

`data.task` "edit" trains an editor instead: rows of (source image, instruction,
edited image) -- the shapes world's edits (train.data.edits) or the user's own --
in the layout with one image in context (ar_model.layout), the source image's
condition dropped as often as the text's (independently) for guidance over both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ar_model import (
    GeneratorConfig,
    context_dropout,
    SampleConfig,
    SequenceLayout,
    build_model,
    condition_dropout,
    image_loss,
    load_text_tokenizer,
    save_generator,
    train_text_tokenizer,
)
from ar_model.layout import GLYPH_CHARS, build_sequences, text_lengths
from train import distributed
from train.data import edits, grammar, own, shapes
from pipelines import Run, resolve_device, sampling_file
from train.config import StageConfig, check_run_config, check_share, preset
from train.errors import TrainConfigError
from train.loop import (EpochOrder, LoopConfig, LossOutput, capped_steps, fit_budget, resume_budget, split_rows,
                        train_loop)
from train.pretokenize import (
    SHARD_SIZE,
    check_devices,
    check_manifest,
    load_codes,
    load_context,
    pretokenize,
    read_manifest,
)
from vqtok import load_tokenizer, read_tokenizer_config

log = logging.getLogger(__name__)

# data.task: what the generator learns. "edit" has an image in context; "edit-scenes" is text-to-image on the
# shapes world's edit results, each described completely: what the editing baselines (regenerate, SDEdit) train on
TASKS = ("text-to-image", "edit", "edit-scenes")
# loop.max_epochs's default on own data. The cpu preset on 1,617 training rows of real handwritten digits
# (benchmarks/digits.py, docs/RESULTS.md "Issue 23"): 47 passes (its 1,200 steps) made 99% of samples exact
# copies of training rows; 24 passes made none, and an independent classifier read 97.5% of samples as the
# digit asked for (16 passes: 72.5%, 10: 27.5%); the validation loss was lowest near 16-18 passes.
OWN_DATA_MAX_EPOCHS = 24


@dataclass
class GeneratorDataConfig:
    source: str = own.SHAPES  # "shapes" (the embedded world), or a local path to own data (docs/DATA.md)
    # "text-to-image", or "edit": (source image, instruction) -> edited image, one image in context
    task: str = "text-to-image"
    image_column: str = "image"  # own data: the column with the images ("image" is the imagefolder's); edits: the result
    text_column: str = "text"  # own data: the column with the captions (edits: the instructions)
    source_column: str = "source"  # own editing data: the column with the image before the edit
    max_turns: int = edits.MAX_TURNS  # shapes-world edits: chains of 1..max_turns edits make the rows
    # the shapes world only (own data use every row): distinct scenes, one caption each
    train_images: int = 20000
    grid: int = shapes.GRID  # the world's grid: 3 (3x3 cells) or 4; the tokenizer's codes per cell must be whole
    max_objects: int = shapes.MAX_OBJECTS
    min_objects: int = 1  # objects per scene are drawn from min_objects..max_objects,
    count_weights: list[float] | None = None  # ... uniformly, or with these weights (one per count)
    uniform_scenes: float = 0.0  # share of scenes whose objects all share a colour and/or shape (counting data)
    text: float = 0.0  # share of scenes holding a string (train.data.glyphs; held-out strings never drawn)
    # phrasings drawn from: "all" (every true description in a training phrasing), or "complete" (each
    # object's colour, shape and cell only); train.data.grammar.CAPTION_SETS
    captions: str = "all"
    # the "all" set's kinds of description and their weights, e.g. {"partial": 0.4, "relation": 0.3}: a kind
    # left out is not drawn; null = train.data.grammar.DESCRIPTION_KINDS (scenes with strings: their own mix)
    caption_kinds: dict[str, float] | None = None
    seed: int = 1  # scene / caption seed; 1, not the tokenizer stage's 0: other scenes, same world
    text_len: int = 32  # text tokens per sequence; the longest shapes-world captions take ~26 with a small BPE
    row_tokens: bool = False  # a [ROW r] token before each row of codes (ar_model.layout): tells the model where it is
    # mask the text's padding out of attention, drop the columns a batch pads everywhere, and batch captions of
    # similar lengths together (ar_model.layout): a batch costs its longest caption, not data.text_len
    mask_padding: bool = False
    # text positions before the caption that spell its quoted strings and digits, 4 a string (ar_model.layout's
    # encode_text): a string's i-th character sits at a fixed distance from the image; 0 = none
    glyph_slots: int = 0
    glyph_end: bool = False  # a visible end mark after a string shorter than its 4 slots (needs glyph_slots)
    text_vocab: int = 512  # BPE vocabulary bound when the stage trains its own text tokenizer
    # the shapes world: each place name of two or more words ("upper center left") one token of the text tokenizer
    # the stage trains (grammar.place_phrases; ar_model.text's phrases), so a cell is one id, not three words
    place_tokens: bool = False
    text_tokenizer: str | None = None  # a local HF tokenizer directory to use instead of training one
    encode_batch_size: int = 256  # images per tokenizer forward pass when pre-tokenizing
    shard_size: int = SHARD_SIZE  # rows per pre-tokenizing shard: what a killed `tessera tokenize` may redo
    # rows held out of training for the validation loss (loop.val_every): a fraction < 1 or a count; which rows
    # is fixed by data.seed (train.loop.split_rows); 0 = none
    val_split: float = 0.0

    @property
    def context_images(self) -> int:
        """Images in context of the task's sequence layout: the source image of an edit."""
        return 1 if self.task == "edit" else 0

    def __post_init__(self):
        if self.task not in TASKS:
            raise TrainConfigError(f"data.task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.task == "edit-scenes" and self.source != own.SHAPES:
            raise TrainConfigError("data.task edit-scenes is the shapes world's edit results; own data: text-to-image "
                                   "or edit")
        for name in ("source", "image_column", "text_column", "source_column"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise TrainConfigError(f"data.{name} must be a non-empty string, got {getattr(self, name)!r}")
        if self.captions not in grammar.CAPTION_SETS:
            raise TrainConfigError(f"data.captions must be one of {', '.join(grammar.CAPTION_SETS)}, got {self.captions!r}")
        if self.caption_kinds is not None:
            if self.source != own.SHAPES or self.captions != "all" or self.task != "text-to-image":
                raise TrainConfigError("data.caption_kinds weighs the shapes world's kinds of description: it needs "
                                       "data.source shapes, data.captions all and data.task text-to-image")
            try:
                self.caption_kinds = grammar.check_kinds(self.caption_kinds)
            except ValueError as e:
                raise TrainConfigError(f"data.caption_kinds: {e}") from None
        for name in ("row_tokens", "mask_padding", "glyph_end", "place_tokens"):
            if not isinstance(getattr(self, name), bool):
                raise TrainConfigError(f"data.{name} must be true or false, got {getattr(self, name)!r}")
        if self.glyph_end and not self.glyph_slots:
            raise TrainConfigError("data.glyph_end marks where a string ends in the glyph slots: set data.glyph_slots")
        if self.place_tokens and (self.source != own.SHAPES or self.text_tokenizer):
            raise TrainConfigError("data.place_tokens names the shapes world's places in a text tokenizer the stage "
                                   "trains: it needs data.source shapes and no data.text_tokenizer")
        try:
            if int(self.min_objects) < 1:
                raise ValueError(f"min_objects must be >= 1, got {self.min_objects!r}")
            if self.count_weights is not None and not isinstance(self.count_weights, list):
                raise ValueError(f"count_weights must be null or a list, got {self.count_weights!r}")
            shapes.check_grid(self.grid)
            shapes.check_counts(int(self.min_objects), int(self.max_objects), self.count_weights, self.grid)
        except ValueError as e:
            raise TrainConfigError(f"data.grid / min_objects / max_objects / count_weights: {e}") from None
        check_share("data.uniform_scenes", self.uniform_scenes)
        check_share("data.text", self.text)
        for name in ("train_images", "text_len", "encode_batch_size", "shard_size", "max_turns"):
            if int(getattr(self, name)) < 1:
                raise TrainConfigError(f"data.{name} must be >= 1, got {getattr(self, name)!r}")
        g = self.glyph_slots
        if isinstance(g, bool) or not isinstance(g, int) or g < 0 or g % GLYPH_CHARS or g >= int(self.text_len):
            raise TrainConfigError(f"data.glyph_slots must be a multiple of {GLYPH_CHARS} below data.text_len "
                                   f"({self.text_len}), got {g!r}")


@dataclass
class GeneratorStageConfig(StageConfig):
    STAGE = "generator"
    OPEN_SECTIONS = ("model", "sample")
    FREE_SECTIONS = ("sample",)  # what sampling to recommend does not change training: a resume may change it

    # size names a preset of ar_model.SIZES; any other GeneratorConfig field overrides it
    model: dict = field(default_factory=lambda: {"size": "tiny"})
    loop: LoopConfig = field(default_factory=LoopConfig)
    data: GeneratorDataConfig = field(default_factory=GeneratorDataConfig)
    # the sampling settings recorded with the trained generator (RUN/generator/tessera_sampling.json), which
    # `tessera sample`, `eval`, `bench`, the demo and the notebook start from: ar_model.SampleConfig fields,
    # its defaults where unset
    sample: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.model, dict) or "size" not in self.model:
            raise TrainConfigError(f"model must be a mapping with a 'size' key, got {self.model!r}")
        self.recommended_sampling()  # a bad sample.* setting fails here, before any work
        # and so does a bad model.* one: checked on a stand-in layout (the real one needs the trained tokenizers)
        self.generator_config(SequenceLayout(text_len=int(self.data.text_len), text_vocab=64, codebook_size=16,
                                             grid=(2, 2), row_tokens=bool(self.data.row_tokens),
                                             mask_padding=bool(self.data.mask_padding),
                                             context_images=self.data.context_images,
                                             glyph_slots=self.data.glyph_slots, glyph_end=self.data.glyph_end))

    def recommended_sampling(self) -> SampleConfig:
        return SampleConfig.from_dict(self.sample)

    def generator_config(self, layout: SequenceLayout) -> GeneratorConfig:
        opts = dict(self.model)
        return GeneratorConfig.from_size(opts.pop("size"), layout, **opts)


PRESETS: dict[str, dict] = {
    # the tiny model (~1M parameters) on the 6x6 codes of the cpu tokenizer, what the demo's
    # 15-minute budget leaves after installing and the tokenizer (~7.5 minutes on 2 AVX2 cores:
    # 1200 steps scored like 1500 did, docs/RESULTS.md). Row tokens and complete captions are
    # what make held-out compositions reachable at all (5% -> 44% with greedy decoding). Scenes
    # of two objects are what make the model find an object by its cell words rather than by
    # where that colour and shape usually sit: trained on single objects only, held-out prompts
    # score 6%; with 1 or 2 objects uniformly ~60%; with 15% single / 85% two objects ~84%
    # (three sampling seeds; the singles teach it to draw exactly one). EMA weights are exported.
    # Captions of 1-2 objects fit 17 BPE tokens, hence 18.
    "cpu": {
        "model": {"size": "tiny"},
        "loop": {"steps": 1200, "batch_size": 64, "lr": 3e-3, "warmup_steps": 100, "weight_decay": 0.05,
                 "betas": [0.9, 0.95], "min_lr_ratio": 0.05, "ema_decay": 0.995, "ckpt_every": 250, "log_every": 25},
        "data": {"train_images": 20000, "max_objects": 2, "count_weights": [0.15, 0.85], "captions": "complete",
                 "row_tokens": True, "text_len": 18},
    },
    # The 4x4 world on 2 cores in at most an hour with the tokenizer's cpu-long preset (32 px, 4x4 codes: one
    # a cell) and the expander's (train.expander_stage): scenes of 1-16 objects, a quarter of them of one kind
    # ("seven red circles" needs them), counts weighted towards one and two objects and 10-16 (many objects);
    # the generator reads complete descriptions only and a prompt expander rewrites any other prompt as one
    # (`sample.expand`). Trained on every kind of description instead, the same budget scored 68.5% over the
    # suites (runs/long6) against 87% (runs/long7, docs/RESULTS.md): a partial caption teaches it nothing a
    # complete one does not, and held-out compositions leaked in through them. Its text tokenizer still learns
    # every kind (grammar_corpus) so that prompts tokenize into words, and names each place in one token
    # (`place_tokens`: the expander copies a cell as one token; 85% vs 22% of the objects of 10-16 object scenes
    # right on 8x8 codes, docs/RESULTS.md). The longest caption (16 objects with sizes) is < 155 BPE tokens, hence 160; masked padding with length-bucketed batches makes a step ~1.8x
    # cheaper. 4,000 steps: ~25 minutes on 2 cores with --compile (Intel with AMX; runs/long10). On the
    # decoder-fine-tuned tokenizer's codes 3,400 steps drew 4.2% of 10-16 object scenes entirely right, 4,000
    # steps 50.0% and 5,000 56.2% but held-out compositions 88.5% (runs/long9-gen3400, runs/long9,
    # runs/long9-gen5000; docs/RESULTS.md session 25). Four key/value heads instead of tiny's two (plain multi-head
    # attention: each head reads the caption with its own keys) took that 50.0% to 89.6% and 83.3% (two
    # trainings: runs/exp26b, runs/long10) at ~the same cost; a denser count mix took it to 68.8% (docs/RESULTS.md
    # session 26).
    "cpu-long": {
        "model": {"size": "tiny", "num_kv_heads": 4},
        "loop": {"steps": 4000, "batch_size": 64, "lr": 3e-3, "warmup_steps": 300, "weight_decay": 0.05,
                 "betas": [0.9, 0.95], "min_lr_ratio": 0.05, "ema_decay": 0.999, "ckpt_every": 500, "log_every": 50},
        "data": {"train_images": 100000, "grid": 4, "max_objects": 16,
                 "count_weights": [0.2, 0.22, 0.08] + [0.045] * 6 + [0.033] * 7, "uniform_scenes": 0.25,
                 "captions": "all", "caption_kinds": {"complete": 1.0}, "row_tokens": True, "mask_padding": True,
                 "text_len": 160, "place_tokens": True},
        "sample": {"expand": True},
    },
    # Text in the 4x4 world on 2 cores in at most an hour with the tokenizer's cpu-text preset (4x4 patch codes, a
    # character or an object one code; on 8x8 conv codes, 2x2 a character, the same preset spelled 79% of held-out
    # strings and drew 2% of mixed prompts entirely right, on one code a cell 95% and 87.5%: docs/RESULTS.md
    # "Issue 21", session 28; 7,800 steps with --compile took ~31-32 minutes there): 80% of scenes hold a string
    # of 1-4 characters (never a held-out one, train.data.glyphs) beside 0-3 objects, the rest 1-3 objects; every
    # kind of description. Strings are tokenized a character each (ar_model.text), so a model can spell what it
    # never saw whole. The longest caption is ~47 BPE tokens, hence 56: 4 glyph slots that spell the string at a
    # fixed distance from the image (ar_model.layout.encode_text), then the caption.
    "cpu-text": {
        "model": {"size": "tiny"},
        "loop": {"steps": 7800, "batch_size": 64, "lr": 3e-3, "warmup_steps": 300, "weight_decay": 0.05,
                 "betas": [0.9, 0.95], "min_lr_ratio": 0.05, "ema_decay": 0.999, "ckpt_every": 500, "log_every": 50},
        "data": {"train_images": 100000, "grid": 4, "max_objects": 3, "text": 0.8, "captions": "all",
                 "row_tokens": True, "mask_padding": True, "text_len": 56, "glyph_slots": 4},
    },
    # Editing on 2 cores in at most an hour with the tokenizer's cpu-edit preset (3x3 world, 24 px, tones):
    # single edits from chains of 1-5 turns on scenes of 1-5 objects (train.data.edits), the source image
    # in context (~120 positions a sequence), instructions of at most ~25 BPE tokens.
    "cpu-edit": {
        "model": {"size": "tiny"},
        "loop": {"steps": 9000, "batch_size": 64, "lr": 3e-3, "warmup_steps": 200, "weight_decay": 0.05,
                 "betas": [0.9, 0.95], "min_lr_ratio": 0.05, "ema_decay": 0.999, "ckpt_every": 500, "log_every": 50},
        "data": {"task": "edit", "train_images": 60000, "max_objects": 5, "row_tokens": True, "mask_padding": True,
                 "text_len": 32},
        # greedy and unguided: the best of 7 settings on runs/edit2's edit suite (chains right 75.0% vs 68.8% at
        # guidance 1.5 / temperature 0.5, docs/RESULTS.md), and one row per image instead of two
        "sample": {"cfg_scale": 1.0, "temperature": 0.0},
    },
    # S (~28M) on one H100/H200 (not yet run on one): the cpu-long data on the gpu tokenizer's 4x4
    # world at 48 px (12x12 codes, 3x3 a cell), with more scenes and steps
    "gpu": {
        "model": {"size": "S"},
        "loop": {"steps": 20000, "batch_size": 256, "lr": 6e-4, "warmup_steps": 1000, "weight_decay": 0.05,
                 "betas": [0.9, 0.95], "ema_decay": 0.999, "ckpt_every": 2000, "log_every": 50},
        "data": {"train_images": 400000, "grid": 4, "max_objects": 16,
                 "count_weights": [0.1, 0.14, 0.08] + [0.05] * 6 + [0.054] * 7, "uniform_scenes": 0.25,
                 "captions": "all", "row_tokens": True, "mask_padding": True, "text_len": 160},
    },
}


def preset_config(name: str) -> GeneratorStageConfig:
    return preset(GeneratorStageConfig, PRESETS, name)


class GeneratorTask:
    """The generator stage as a `train.loop.Task` over in-memory codes and text ids."""

    def __init__(self, cfg: GeneratorStageConfig, gcfg: GeneratorConfig, codes: torch.Tensor, text_ids: torch.Tensor,
                 context: torch.Tensor | None = None):
        self.layout = gcfg.layout
        self.model = build_model(gcfg, seed=cfg.loop.seed)
        self.codes = codes.view(-1, *self.layout.grid)  # (N, h, w) int16
        self.text_ids = text_ids  # (N, T) int32
        # editing: the source images' codes (N, 1, h, w) int16, ABSENT where a row has none
        if (context is not None) != (self.layout.context_images > 0):
            raise TrainConfigError("the codes and the layout disagree on whether rows have a source image "
                                   "(editing codes need data.task 'edit', and the other way round)")
        self.context = context.view(-1, self.layout.context_images, *self.layout.grid) if context is not None else None
        self.cond_dropout = gcfg.cond_dropout
        # rows held out for the validation loss (data.val_split), never read by training
        train_rows, self.val_rows = split_rows(len(self.codes), cfg.data.val_split, cfg.data.seed)
        self.train_rows, self.val_batch = len(train_rows), cfg.loop.batch_size
        if not len(self.val_rows):
            self.validate = None  # train.loop: no rows held out
        # with masked padding a batch costs its longest caption: batches of similar lengths (EpochOrder's buckets)
        lengths = text_lengths(text_ids, self.layout) if self.layout.mask_padding else None
        self.lengths = lengths
        self.order = EpochOrder(len(self.codes), cfg.loop.seed, cfg.loop.grad_accum, lengths=lengths,
                                block=cfg.loop.batch_size, rows=train_rows if len(self.val_rows) else None)
        self.seed = cfg.loop.seed
        self.batch_size, self.accum = cfg.loop.batch_size, cfg.loop.grad_accum

    def _sequences(self, idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Rows `idx` as training sequences, conditions dropped with `g`."""
        text = condition_dropout(self.text_ids[idx].long(), self.cond_dropout, self.layout, generator=g)  # (B, T)
        context = None
        if self.context is not None:  # the image condition dropped as often as the text, independently
            context = context_dropout(self.context[idx].long(), self.cond_dropout, generator=g)  # (B, 1, h, w)
        ids = build_sequences(text, self.codes[idx], self.layout, context)  # (B, seq_len)
        return ids.to(next(self.model.parameters()).device)

    def batch(self, step: int, micro: int, batch_size: int) -> torch.Tensor:
        idx = self.order.indices(step, micro, batch_size)  # (B,)
        # the dropped captions are a function of (seed, step, micro) too, like the example order
        return self._sequences(idx, torch.Generator().manual_seed((self.seed * 1_000_003 + step) * 64 + micro))

    def cost(self, step: int) -> float:
        """The tokens step's batch trains on (with masked padding, each micro-batch's text is cut to its longest
        caption)."""
        image = self.layout.seq_len - self.layout.text_len
        micro = (self.order.indices(step, m, self.batch_size) for m in range(self.accum))
        return float(sum(len(i) * (image + (int(self.lengths[i].max()) if self.lengths is not None
                                            else self.layout.text_len)) for i in micro))

    def loss(self, batch: torch.Tensor, step: int) -> LossOutput:
        loss = image_loss(self.model, batch, self.layout)
        return LossOutput(loss, {"loss": float(loss.detach())})

    def validate(self) -> dict[str, float]:
        """The training loss on the held-out rows (conditions dropped as in training, with fixed draws: the
        same every time, comparable with the training loss), averaged per image token."""
        total, n = 0.0, 0
        for b, idx in enumerate(self.val_rows.split(self.val_batch)):
            batch = self._sequences(idx, torch.Generator().manual_seed(self.seed * 7_000_003 + b))
            total += float(image_loss(self.model, batch, self.layout)) * len(idx)
            n += len(idx)
        return {"val_loss": total / n}

    def items(self, batch: torch.Tensor) -> int:
        return batch.shape[0]

    # sample grids during training (loop.sample_every): set by train_generator when asked for
    preview_decoder: Any = None  # the VQ tokenizer, to turn codes into pixels
    preview_text: Any = None  # the text tokenizer, to print the captions
    preview_sampling: SampleConfig = SampleConfig()  # the stage's recommended settings (seeded by step)

    def preview(self, step: int, prompts: int = 4, per_prompt: int = 4) -> tuple[np.ndarray, list[str]]:
        """`per_prompt` samples for each of `prompts` fixed training captions (the recommended settings)."""
        from ar_model import generate
        from vqtok import tensor_to_images

        idx = torch.arange(prompts) * max(1, len(self.text_ids) // prompts)  # the same captions every time
        text = self.text_ids[idx].long().repeat_interleave(per_prompt, dim=0)  # (P * n, T)
        context = None if self.context is None else self.context[idx].long().repeat_interleave(per_prompt, dim=0)
        device = next(self.model.parameters()).device
        codes = generate(self.model, self.layout, text.to(device), self.preview_sampling.replace(seed=step),
                         context)  # (P*n, h, w)
        with torch.inference_mode():
            images = tensor_to_images(self.preview_decoder.decode(codes.to(next(self.preview_decoder.parameters()).device)))
        captions = [self.preview_text.decode(t.tolist(), skip_special_tokens=True) for t in text]
        return np.asarray(images), captions


def training_rows(cfg: GeneratorStageConfig, resolution: int) -> Any:
    """The stage's rows as a `datasets.Dataset` with columns image and text (own data: image undecoded),
    and for editing source (the image before the edit)."""
    d = cfg.data
    if d.source != own.SHAPES:
        columns = {"image": d.image_column, "text": d.text_column}
        return own.load_rows(d.source, {**columns, "source": d.source_column} if d.task == "edit" else columns)
    if d.task == "edit":
        return edits.edits_dataset(d.train_images, resolution, d.seed, d.grid, d.max_objects, d.min_objects,
                                   d.max_turns)
    if d.task == "edit-scenes":
        return edits.edit_scenes_dataset(d.train_images, resolution, d.seed, d.grid, d.max_objects, d.min_objects,
                                         d.max_turns)
    return shapes.shapes_dataset(
        cfg.data.train_images, resolution=resolution, split="train",
        seed=cfg.data.seed, max_objects=cfg.data.max_objects, captions=cfg.data.captions,
        min_objects=cfg.data.min_objects, count_weights=cfg.data.count_weights, grid=cfg.data.grid,
        uniform=cfg.data.uniform_scenes, text=cfg.data.text, caption_kinds=cfg.data.caption_kinds,
    )


def data_source(data: GeneratorDataConfig) -> dict:
    """What the rows are read from, as recorded with the codes: codes of other data are refused."""
    edit = {"task": data.task} if data.task != "text-to-image" else {}  # codes made before tasks existed match
    if data.source != own.SHAPES:
        return {"source": str(Path(data.source).expanduser().resolve()), "image_column": data.image_column,
                "text_column": data.text_column, **edit, **({"source_column": data.source_column} if edit else {})}
    if edit:
        return {"source": own.SHAPES, **edit, "train_images": data.train_images, "max_objects": data.max_objects,
                "min_objects": data.min_objects, "max_turns": data.max_turns, "seed": data.seed, "grid": data.grid}
    return {"source": own.SHAPES, "train_images": data.train_images, "max_objects": data.max_objects,
            "captions": data.captions, "seed": data.seed,
            # settings added later only when set, so codes made before they existed still match
            **({"min_objects": data.min_objects} if data.min_objects != 1 else {}),
            **({"count_weights": data.count_weights} if data.count_weights is not None else {}),
            **({"grid": data.grid} if data.grid != shapes.GRID else {}),
            **({"uniform_scenes": data.uniform_scenes} if data.uniform_scenes else {}),
            **({"text": data.text} if data.text else {}),
            **({"caption_kinds": data.caption_kinds} if data.caption_kinds is not None else {})}


GRAMMAR_CORPUS = 20000  # scenes described by every kind of description for the text tokenizer (grammar_corpus)


def grammar_corpus(data: GeneratorDataConfig) -> list[str]:
    """Captions of every kind of description (grammar.DESCRIPTION_KINDS' mix) of GRAMMAR_CORPUS training scenes,
    for a text tokenizer whose stage trains on a narrower mix (`data.caption_kinds`, e.g. complete descriptions
    only, for a generator that reads a prompt expander's plans): the BPE still learns the words of every prompt
    ("three", "above", "shape"), which the expander reads. [] for any other data (the tokenizer is unchanged)."""
    if data.source != own.SHAPES or data.task != "text-to-image" or data.captions != "all" or data.caption_kinds is None:
        return []
    scenes = shapes.sample_scenes(min(data.train_images, GRAMMAR_CORPUS), data.seed, "train", data.max_objects,
                                  data.min_objects, data.count_weights, data.grid, data.uniform_scenes, text=data.text)
    rng = np.random.default_rng([data.seed, 3])
    return [grammar.caption(s, rng, "all") for s in scenes]


def prepare_text_tokenizer(cfg: GeneratorStageConfig, run: Run | str | Path, captions: Any) -> Any:
    """The run's text tokenizer: made once (trained, or copied from data.text_tokenizer), then reloaded."""
    path = Run(run).text_tokenizer
    if not path.is_dir():
        if cfg.data.text_tokenizer:
            tok = load_text_tokenizer(cfg.data.text_tokenizer)
        else:  # empty captions are skipped when pre-tokenizing; they must not shape the vocabulary either
            tok = train_text_tokenizer([t for t in captions if isinstance(t, str) and t.strip()]
                                       + grammar_corpus(cfg.data), vocab_size=cfg.data.text_vocab,
                                       phrases=grammar.place_phrases(cfg.data.grid) if cfg.data.place_tokens else ())
        tmp = path.with_name(path.name + ".tmp")
        tok.save_pretrained(str(tmp))
        tmp.rename(path)
    return load_text_tokenizer(path)


def check_world(data: GeneratorDataConfig, resolution: int, code_grid: int) -> None:
    """A shapes-world grid the tokenizer's images can show: >= 8 px a cell (else no judge can read
    them), and a warning unless each cell is a whole number of codes (objects then look alike in every cell)."""
    if data.source != own.SHAPES:
        return
    if resolution < shapes.MIN_CELL_PX * data.grid:
        raise TrainConfigError(f"data.grid {data.grid} needs a tokenizer of >= {shapes.MIN_CELL_PX * data.grid} px "
                               f"({shapes.MIN_CELL_PX} px a cell); this one is {resolution} px")
    if code_grid % data.grid:
        log.warning("each cell of the %dx%d world spans %.2f codes of the tokenizer's %dx%d: cells are not aligned "
                    "to codes, which makes the world harder to learn (docs/RESULTS.md)", data.grid, data.grid,
                    code_grid / data.grid, code_grid, code_grid)


class PreparedCodes(NamedTuple):
    codes_dir: Path  # the pre-tokenized Arrow directory (train.pretokenize)
    text_tokenizer: Any  # the run's text tokenizer, which made the text ids
    layout: SequenceLayout  # the sequence layout the codes were checked against
    manifest: Any  # train.pretokenize's manifest of the codes: rows, skipped and truncated counts


def prepare_codes(
    cfg: GeneratorStageConfig, run_dir: str | Path, tokenizer_dir: str | Path | None = None, num_proc: int = 1,
    devices: list[str] | None = None,
) -> PreparedCodes:
    """The generator stage's data: make (or reuse) `run_dir/text_tokenizer` and `run_dir/codes`.

    The VQ tokenizer is `run_dir/tokenizer` unless `tokenizer_dir` names another.
    `num_proc` / `devices` spread the encoding over processes and GPUs
    (`train.pretokenize.pretokenize`); existing codes are checked, not redone.
    """
    if num_proc < 1:
        raise TrainConfigError(f"the number of pre-tokenizing processes must be >= 1, got {num_proc}")
    run = Run(run_dir)
    tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir else run.tokenizer
    vq_cfg = read_tokenizer_config(tokenizer_dir)  # a clear error when it is missing or foreign
    check_world(cfg.data, vq_cfg.resolution, vq_cfg.grid_size)
    run.root.mkdir(parents=True, exist_ok=True)
    codes_dir = run.codes
    source = data_source(cfg.data)
    rows = None
    if not run.has("text_tokenizer") or not run.has("codes"):
        rows = training_rows(cfg, vq_cfg.resolution)
    text_tok = prepare_text_tokenizer(cfg, run, rows["text"] if rows is not None else [])
    layout = SequenceLayout.for_tokenizer(
        text_tok, codebook_size=vq_cfg.num_codes, grid=(vq_cfg.grid_size, vq_cfg.grid_size), text_len=cfg.data.text_len,
        row_tokens=cfg.data.row_tokens, mask_padding=cfg.data.mask_padding, context_images=cfg.data.context_images,
        glyph_slots=cfg.data.glyph_slots, glyph_end=cfg.data.glyph_end,
    )
    if not codes_dir.is_dir():
        check_devices(devices)  # before the tokenizer is loaded onto one of them
        if num_proc > 1:
            # the workers are forked, and a fork cannot use CUDA once its parent has (even probing for it
            # may count): the main process keeps its copy on the CPU, each worker moves its own
            device = "cpu"
            if not devices and cfg.loop.device not in ("auto", "cpu"):
                devices = [cfg.loop.device]
        elif devices:
            device = devices[0]
        else:
            device = str(resolve_device(cfg.loop.device))
        tokenizer = load_tokenizer(tokenizer_dir, device=device)
        pretokenize(rows, tokenizer, tokenizer_dir, text_tok, layout, codes_dir,
                    batch_size=cfg.data.encode_batch_size, progress=cfg.loop.progress, source=source,
                    shard_size=cfg.data.shard_size, num_proc=num_proc, devices=devices)
        del tokenizer
    manifest = read_manifest(codes_dir)
    check_manifest(manifest, tokenizer_dir, layout, source=source)
    return PreparedCodes(codes_dir, text_tok, layout, manifest)


def _recorded(sc: SampleConfig) -> dict:
    """The settings a run recommends: everything but the seed, which each use chooses."""
    return {k: v for k, v in sc.to_dict().items() if k != "seed"}


def train_generator(cfg: GeneratorStageConfig, run_dir: str | Path, tokenizer_dir: str | Path | None = None,
                    seconds: float | None = None) -> Path:
    """Train (or resume) the generator of `run_dir`; returns the exported generator directory.

    The VQ tokenizer is `run_dir/tokenizer` unless `tokenizer_dir` names another.
    Codes made beforehand by `prepare_codes` (`tessera tokenize`) are reused. With `seconds`,
    the step count is the one that fills that much training wall-clock on this machine
    (train.loop.steps_for_seconds, as the diffusion baseline's); a resumed run keeps its recorded count.
    """
    run = Run(run_dir)
    tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir else run.tokenizer
    # before check_run_config writes into the run: a missing tokenizer is the likelier mistake
    read_tokenizer_config(tokenizer_dir)
    world = distributed.init(resolve_device(cfg.loop.device).type)  # under torchrun: join the group first
    if seconds is not None and world.distributed:
        raise TrainConfigError("a wall-clock budget (seconds=) is measured in one process; give loop.steps instead")
    recorded = run.recorded_config("generator")
    if seconds is not None and recorded is not None:  # resuming a budgeted run: its recorded steps
        cfg = resume_budget(cfg, recorded)
        seconds = None
    max_epochs = cfg.loop.max_epochs if cfg.loop.max_epochs is not None else (
        OWN_DATA_MAX_EPOCHS if cfg.data.source != own.SHAPES else 0)
    if recorded is not None and "max_epochs" not in recorded.get("loop", {}):
        max_epochs = 0  # a run begun before the cap existed resumes with the steps it began with
    if seconds is None and not max_epochs:  # otherwise recorded once the step count is known
        check_run_config(run, cfg)
    if world.main:  # process 0 makes the text tokenizer and the codes; the others then read them
        prepared = prepare_codes(cfg, run.root, tokenizer_dir)
    distributed.barrier()
    if not world.main:
        prepared = prepare_codes(cfg, run.root, tokenizer_dir)  # finds both made: checks and loads them
    gcfg = cfg.generator_config(prepared.layout)
    codes, text_ids = load_codes(prepared.codes_dir)

    task = GeneratorTask(cfg, gcfg, codes, text_ids, load_context(prepared.codes_dir))
    if seconds is not None:
        cfg = fit_budget(cfg, task, seconds)
        if not max_epochs:
            check_run_config(run, cfg)
        log.info("generator: %d steps for a budget of %.0f s", cfg.loop.steps, seconds)
    if max_epochs:
        steps = capped_steps(cfg.loop, task.train_rows, max_epochs)
        if steps < cfg.loop.steps:
            log.info("generator: %d steps instead of %d: at most %g passes over the %d training rows "
                     "(loop.max_epochs%s)", steps, cfg.loop.steps, max_epochs, task.train_rows,
                     "" if cfg.loop.max_epochs is not None else ", own data's default; 0 for no cap")
            cfg = cfg.override({"loop.steps": steps, "loop.warmup_steps": min(cfg.loop.warmup_steps, steps // 10)})
        check_run_config(run, cfg)
    if cfg.loop.sample_every:
        task.preview_decoder = load_tokenizer(tokenizer_dir, device=str(resolve_device(cfg.loop.device)))
        task.preview_text = prepared.text_tokenizer
        task.preview_sampling = cfg.recommended_sampling()
    log.info("generator: %s, %d parameters, %d training sequences of %d tokens", gcfg.size,
             sum(p.numel() for p in task.model.parameters()), len(codes), prepared.layout.seq_len)
    result = train_loop(task, cfg.loop, run, desc="generator", stage="generator")
    log.info("generator: %d steps in %.1fs (resumed from %d)", result.step, result.seconds, result.resumed_from)
    out = run.generator
    if world.main:
        save_generator(task.model.eval(), gcfg, prepared.text_tokenizer, out, progress=cfg.loop.progress,
                       extra_files=sampling_file(_recorded(cfg.recommended_sampling())))
    distributed.barrier()  # the exported generator is on disk before any process reads it
    return out


__all__ = [
    "GeneratorDataConfig",
    "GeneratorStageConfig",
    "GeneratorTask",
    "PRESETS",
    "PreparedCodes",
    "TASKS",
    "data_source",
    "prepare_codes",
    "preset_config",
    "train_generator",
]
