"""The diffusion baseline's pipeline: text ids -> a denoised image, behind the same interface."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Sequence

import torch

from ar_model import SequenceLayout, encode_text
from baseline import BaselineError, DiffusionSampleConfig, sample, to_uint8
from pipelines.device import resolve_device
from pipelines.expansion import PromptExpansion
from pipelines.interface import SampleResult, sample_in_batches
from pipelines.run import Run

log = logging.getLogger(__name__)


class DiffusionPipeline(PromptExpansion):
    """A run's diffusion baseline and its text tokenizer on one device; an `ImageSampler`."""

    kind = "diffusion"
    tokenizer = None  # works in pixels: no image tokenizer

    def __init__(self, model: Any, text_tokenizer: Any, device: torch.device, recommended: dict | None = None,
                 origin: dict | None = None):
        self.origin = origin or {}  # {"run": path, "dirs": {"baseline": model directory}} when opened from a run
        self._provenance: dict | None = None
        self.model = model.to(device).eval()  # baseline.DiffusionBaseline
        self.text_tokenizer = text_tokenizer
        self.device = device
        self.recommended = DiffusionSampleConfig()
        self.recommended = self.settings(**(recommended or {}))
        # the generator's text ids (ar_model.encode_text); the layout's image part is unused
        self.text_layout = SequenceLayout.for_tokenizer(text_tokenizer, 1, (1, 1), model.cfg.text_len,
                                                        glyph_slots=model.cfg.glyph_slots,
                                                        glyph_end=model.cfg.glyph_end)

    @classmethod
    def from_run(cls, run: str | Path | Run, device: str | None = None, progress: bool = True) -> "DiffusionPipeline":
        """`progress` is part of the interface; loading the baseline shows no progress bar."""
        run = Run(run)
        model, text_tokenizer = run.load_baseline()
        parts = ("baseline",) + (("expander",) if run.has("expander") else ())
        return cls(model, text_tokenizer, resolve_device(device), run.recorded_sampling("baseline"),
                   {"run": str(run.root), "dirs": {p: run.require(p) for p in parts}})

    def provenance(self) -> dict:
        """What made this pipeline's images, for their C2PA manifests: kind, run, and the sha256 of every
        weights file of the baseline (empty when not opened from a run directory)."""
        if self._provenance is None:
            from pipelines.provenance import model_record

            self._provenance = model_record(self.kind, self.origin)
        return self._provenance

    @property
    def resolution(self) -> int:
        return self.model.cfg.resolution

    def settings(self, **overrides: Any) -> DiffusionSampleConfig:
        """The run's recorded settings (baseline.DiffusionSampleConfig's defaults for older runs), overridden."""
        known = {f.name for f in dataclasses.fields(DiffusionSampleConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            ar_only = {"decoder", "jacobi_window", "jacobi_init", "zipar_window", "cache", "compile", "top_k", "top_p",
                       "min_p", "temperature", "image_cfg_scale"}
            what = " (a setting of the autoregressive generator's sampler)" if unknown[0] in ar_only else ""
            raise BaselineError(f"unknown diffusion sampling setting {unknown[0]!r}{what}; the diffusion baseline's "
                                f"are {', '.join(sorted(known))}")
        settings = dataclasses.replace(self.recommended, **overrides)
        if settings.steps > self.model.cfg.num_train_timesteps:
            raise BaselineError(f"steps must be at most the {self.model.cfg.num_train_timesteps} timesteps the "
                                f"baseline was trained with, got {settings.steps}")
        return settings

    def describe(self, settings: DiffusionSampleConfig) -> str:
        return f"{settings.sampler} {settings.steps} steps"

    def steps_per_image(self, settings: DiffusionSampleConfig) -> int:
        """Sequential model calls per image: one per denoising step."""
        return settings.steps

    def sample(self, prompts: Sequence[str], n: int = 4, settings: DiffusionSampleConfig | None = None,
               batch_size: int = 32, progress: bool = False) -> SampleResult:
        """`n` images per prompt (prompt-major); batch b uses seed settings.seed + b."""
        settings = settings if settings is not None else self.settings()
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, got one string")
        said = self.prompts_to_read(prompts, n, settings.expand, settings.seed)  # (P * n)
        batch = encode_text(self.text_tokenizer, said, self.text_layout)
        warnings = [f"{'expanded ' if settings.expand else ''}prompt longer than the model's "
                    f"{self.text_layout.caption_len} text tokens, truncated: {p[:60]!r}"
                    for p, cut in zip(said[::n] if n else [], batch.truncated[::n] if n else []) if cut]
        for w in warnings:
            log.warning(w)
        text = batch.ids  # (P * n, T)

        def draw(rows: slice, sc: DiffusionSampleConfig):
            return to_uint8(sample(self.model, text[rows], sc)).numpy()

        rows, images = sample_in_batches(prompts, n, settings, batch_size, draw, progress)
        return SampleResult(images, rows, settings.seed, dataclasses.asdict(settings), warnings, self.provenance())

    def sdedit(self, images: Any, prompts: Sequence[str], strength: float, settings: DiffusionSampleConfig | None = None,
               batch_size: int = 32) -> Any:
        """Each image (uint8 (B, R, R, 3)) noised to `strength` and denoised towards its prompt (SDEdit,
        baseline.sample); batch b uses seed settings.seed + b. Returns uint8 images (B, R, R, 3)."""
        import numpy as np

        settings = settings if settings is not None else self.settings()
        images = np.asarray(images)
        if len(images) != len(prompts):
            raise BaselineError(f"{len(images)} images for {len(prompts)} prompts")
        text = encode_text(self.text_tokenizer, list(prompts), self.text_layout).ids  # (B, T)
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1  # (B, 3, R, R) in [-1, 1]
        out = [np.zeros((0, *images.shape[1:]), np.uint8)]
        for b, start in enumerate(range(0, len(images), batch_size)):
            seed = None if settings.seed is None else settings.seed + b
            rows = slice(start, start + batch_size)
            out.append(to_uint8(sample(self.model, text[rows], dataclasses.replace(settings, seed=seed),
                                       init=x[rows], strength=strength)).numpy())
        return np.concatenate(out)


__all__ = ["DiffusionPipeline"]
