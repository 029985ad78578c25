"""The autoregressive pipeline: text -> image codes (ar_model) -> pixels (vqtok).

`vqtok` and `ar_model` never import each other; this is where they meet:

    pipe = ARPipeline.from_run("runs/demo")
    result = pipe.sample(["a red circle in the top left"], n=4, settings=pipe.settings(seed=0))

Prompts are checked before sampling: an empty prompt samples unconditionally, a
prompt longer than the model's text length is truncated; both are reported in
`result.warnings` (and logged), never raised.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import torch

from ar_model import CheckpointError, SampleConfig, encode_text, generate
from pipelines.device import resolve_device
from pipelines.interface import SampleResult, sample_in_batches
from pipelines.run import Run
from vqtok import tensor_to_images

log = logging.getLogger(__name__)


class ARPipeline:
    """A run's VQ tokenizer, generator and text tokenizer on one device; an `ImageSampler`."""

    kind = "autoregressive"

    def __init__(self, tokenizer: Any, generator: Any, device: torch.device, recommended: dict | None = None):
        self.tokenizer = tokenizer.to(device).eval()  # vqtok.VQTokenizer
        self.generator = generator  # ar_model.LoadedGenerator: .model, .cfg, .tokenizer, .layout
        self.model = generator.model.to(device).eval()
        self.layout = generator.layout
        self.device = device
        self.recommended = SampleConfig.from_dict(recommended or {})  # the run's recorded settings
        if (self.tokenizer.cfg.num_codes, (self.tokenizer.cfg.grid_size,) * 2) != (
            self.layout.codebook_size, tuple(self.layout.grid)
        ):
            raise CheckpointError(
                f"the generator expects {self.layout.codebook_size} codes on a {self.layout.grid} grid, the "
                f"tokenizer makes {self.tokenizer.cfg.num_codes} on {self.tokenizer.cfg.grid_size}^2: not one run"
            )

    @classmethod
    def from_run(cls, run: str | Path | Run, device: str | None = None, progress: bool = True) -> "ARPipeline":
        run = Run(run)
        for part in ("tokenizer", "generator"):  # a missing part is named before anything loads
            run.require(part)
        return cls(run.load_tokenizer(), run.load_generator(progress=progress), resolve_device(device),
                   run.recorded_sampling("generator"))

    @property
    def resolution(self) -> int:
        return self.tokenizer.cfg.resolution

    def settings(self, **overrides: Any) -> SampleConfig:
        """The run's recorded settings (ar_model.SampleConfig's defaults for older runs), overridden."""
        return self.recommended.replace(**overrides)

    def describe(self, settings: SampleConfig) -> str:
        return "kv cache on" if settings.use_cache else "kv cache off"

    def steps_per_image(self, settings: SampleConfig) -> int:
        """Sequential model calls per image: one per image token."""
        return self.layout.num_image_tokens

    def check_prompts(self, prompts: Sequence[str]) -> list[str]:
        """Warnings for prompts that will not be used as written (empty, truncated)."""
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, got one string")
        warnings = []
        batch = encode_text(self.generator.tokenizer, list(prompts), self.layout)
        for p, cut in zip(prompts, batch.truncated):
            if not p.strip():
                warnings.append("empty prompt: sampling unconditionally")
            elif cut:
                warnings.append(
                    f"prompt longer than the model's {self.layout.text_len} text tokens, truncated: {p[:60]!r}"
                )
        for w in warnings:
            log.warning(w)
        return warnings

    def sample(self, prompts: Sequence[str], n: int = 4, settings: SampleConfig | None = None, batch_size: int = 32,
               progress: bool = False) -> SampleResult:
        """`n` images for each prompt (prompt-major); batch b uses seed settings.seed + b."""
        settings = settings if settings is not None else self.settings()
        warnings = self.check_prompts(prompts)
        text = encode_text(self.generator.tokenizer, [p for p in prompts for _ in range(n)], self.layout).ids  # (P*n, T)

        def draw(rows: slice, sc: SampleConfig):
            codes = generate(self.model, self.layout, text[rows], sc)  # (B, h, w)
            with torch.inference_mode():
                return tensor_to_images(self.tokenizer.decode(codes.to(self.device))).cpu().numpy()

        rows, images = sample_in_batches(prompts, n, settings, batch_size, draw, progress)
        return SampleResult(images, rows, settings.seed, settings.to_dict(), warnings)


__all__ = ["ARPipeline"]
