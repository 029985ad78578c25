"""The sampling interface: what every way of turning prompts into images provides.

`ImageSampler` is a `typing.Protocol`: the autoregressive pipeline
(`pipelines.autoregressive`) and the diffusion baseline's (`pipelines.diffusion`)
implement it, and so would a MaskGIT-style or editing sampler. Evaluation,
benchmarks, the CLI and the notebook only use this interface:

    pipe = open_sampler("runs/demo", "generator")     # or "baseline"
    settings = pipe.settings(seed=0)                  # the run's recorded settings, overridden
    result = pipe.sample(["a red circle in the top left"], n=4, settings=settings)
    result.images                                     # (P * n, H, W, 3) uint8, prompt-major

A sampler that was trained to edit also implements `ImageEditor`: `edits` says whether
it can, and `edit(sources, chains, settings)` applies each chain of instructions to its
source turn after turn (pipelines.autoregressive.ARPipeline; docs/EDITING.md).

`sample_in_batches` is the one batching and seeding rule every implementation
uses: the prompts are repeated `n` times (prompt-major), cut into batches, and
batch b is drawn with seed `settings.seed + b`, so the same settings give the
same images whatever else ran before.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np
import torch


@dataclass
class SampleResult:
    images: np.ndarray  # (P * n, H, W, 3) uint8, the n samples of prompt 0 first
    prompts: list[str]  # (P * n,) the prompt of each image
    seed: int | None
    sample_config: dict  # the settings used, as plain data
    warnings: list[str] = field(default_factory=list)  # prompts not used as written (empty, truncated)
    model: dict = field(default_factory=dict)  # what made them: kind, run, weights' sha256 (the sampler's provenance())


@runtime_checkable
class ImageSampler(Protocol):
    """Prompts -> images with one trained model; settings are the model family's own frozen dataclass."""

    kind: str  # "autoregressive", "diffusion", ...: what the reports call it
    device: torch.device
    tokenizer: Any  # the VQ image tokenizer (vqtok), or None for a sampler that works in pixels

    @property
    def resolution(self) -> int:
        """Side of the square images it makes, in pixels."""

    def settings(self, **overrides: Any) -> Any:
        """The run's recorded sampling settings with `overrides` applied (validated)."""

    def describe(self, settings: Any) -> str:
        """One line naming the settings, for reports (e.g. "kv cache on", "ddim 25 steps")."""

    def steps_per_image(self, settings: Any) -> int:
        """Sequential network calls per image (image tokens, or denoising steps)."""

    def sample(self, prompts: Sequence[str], n: int = 4, settings: Any = None, batch_size: int = 32,
               progress: bool = False) -> SampleResult:
        """`n` images per prompt, prompt-major, reproducible for fixed settings (`sample_in_batches`)."""


@runtime_checkable
class ImageEditor(Protocol):
    """An ImageSampler that edits: images and instructions -> edited images, turn after turn."""

    @property
    def edits(self) -> bool:
        """Whether this model was trained to edit (an image in context)."""

    def edit(self, sources: Any, chains: Sequence[Sequence[str]], settings: Any = None, batch_size: int = 32,
             progress: bool = False) -> Any:
        """Source c (uint8 (R, R, 3), or its codes) edited by chains[c]'s instructions in turn, each turn on
        the previous turn's output; an EditResult with images (C, T, R, R, 3)."""


def sample_in_batches(
    prompts: Sequence[str], n: int, settings: Any, batch_size: int,
    draw: Callable[[slice, Any], np.ndarray], progress: bool = False,
) -> tuple[list[str], np.ndarray]:
    """Rows (each prompt n times, prompt-major) and their images, `draw(rows_slice, settings_b)` per batch.

    Batch b gets `settings` with seed `settings.seed + b` (None stays None: fresh randomness).
    """
    from tqdm.auto import tqdm

    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, got one string")
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
    rows = [p for p in prompts for _ in range(n)]
    out = []
    starts = range(0, len(rows), batch_size)
    for b, start in enumerate(tqdm(starts, desc="sampling", disable=not progress, leave=False)):
        seed = None if settings.seed is None else settings.seed + b
        out.append(draw(slice(start, start + batch_size), dataclasses.replace(settings, seed=seed)))
    images = np.concatenate(out) if out else np.zeros((0, 0, 0, 3), np.uint8)
    return rows, images


__all__ = ["ImageEditor", "ImageSampler", "SampleResult", "sample_in_batches"]
