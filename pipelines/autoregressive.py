"""The autoregressive pipeline: text -> image codes (ar_model) -> pixels (vqtok).

`vqtok` and `ar_model` never import each other; this is where they meet:

    pipe = ARPipeline.from_run("runs/demo")
    result = pipe.sample(["a red circle in the top left"], n=4, settings=pipe.settings(seed=0))

Prompts are checked before sampling: an empty prompt samples unconditionally, a
prompt longer than the model's text length is truncated; both are reported in
`result.warnings` (and logged), never raised.

A run trained for editing (`data.task` "edit": one image in context) also edits,
turn after turn, each turn conditioned on the codes the turn before made:

    result = pipe.edit(images, [["make the red circle blue", "remove the square"]], settings=pipe.settings(seed=0))
    result.images  # (chains, turns, H, W, 3) uint8

An empty instruction, or editing with a text-to-image run, raises EditError.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ar_model import CheckpointError, SampleConfig, encode_text, generate
from pipelines.device import resolve_device
from pipelines.errors import EditError
from pipelines.expansion import PromptExpansion
from pipelines.interface import SampleResult, sample_in_batches
from pipelines.run import Run
from vqtok import images_to_tensor, tensor_to_images

log = logging.getLogger(__name__)


@dataclass
class EditResult:
    """Chains of edits: chain c's turn t is images[c, t], made from codes[c, t] (fed to turn t + 1)."""

    images: np.ndarray  # (C, T, H, W, 3) uint8
    codes: torch.Tensor  # (C, T, h, w) long
    instructions: list[list[str]]  # (C, T)
    seed: int | None
    sample_config: dict
    warnings: list[str] = field(default_factory=list)
    model: dict = field(default_factory=dict)  # what made them (ARPipeline.provenance())


class ARPipeline(PromptExpansion):
    """A run's VQ tokenizer, generator and text tokenizer on one device; an `ImageSampler`."""

    kind = "autoregressive"

    def __init__(self, tokenizer: Any, generator: Any, device: torch.device, recommended: dict | None = None,
                 origin: dict | None = None):
        self.origin = origin or {}  # {"run": path, "dirs": {part: model directory}} when opened from a run
        self._provenance: dict | None = None
        # sequential forward passes ("forward_passes") over the sampled batches ("batches") since this was made;
        # eval.speed reads it (a data-dependent count for the jacobi decoder)
        self.passes: dict[str, int] = {}
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
        parts = ("generator", "tokenizer") + (("expander",) if run.has("expander") else ())
        return cls(run.load_tokenizer(), run.load_generator(progress=progress), resolve_device(device),
                   run.recorded_sampling("generator"), {"run": str(run.root), "dirs": {p: run.require(p) for p in parts}})

    def provenance(self) -> dict:
        """What made this pipeline's images, for their C2PA manifests: kind, run, and the sha256 of every
        weights file of the generator and tokenizer (empty when not opened from a run directory)."""
        if self._provenance is None:
            from pipelines.provenance import model_record

            self._provenance = model_record(self.kind, self.origin)
        return self._provenance

    @property
    def resolution(self) -> int:
        return self.tokenizer.cfg.resolution

    def settings(self, **overrides: Any) -> SampleConfig:
        """The run's recorded settings (ar_model.SampleConfig's defaults for older runs), overridden."""
        return self.recommended.replace(**overrides)

    def describe(self, settings: SampleConfig) -> str:
        if settings.decoder == "jacobi":
            static = ", static kv cache" + (", compiled" if settings.compile else "") if settings.cache == "static" else ""
            return f"jacobi (window {settings.jacobi_window}, {settings.jacobi_init} drafts{static})"
        if settings.decoder == "zipar":
            return f"zipar (window {settings.zipar_window})"
        if settings.cache == "static":
            return "static kv cache" + (", compiled" if settings.compile else "")
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
                    f"prompt longer than the model's {self.layout.caption_len} text tokens, truncated: {p[:60]!r}"
                )
        for w in warnings:
            log.warning(w)
        return warnings

    def sample(self, prompts: Sequence[str], n: int = 4, settings: SampleConfig | None = None, batch_size: int = 32,
               progress: bool = False) -> SampleResult:
        """`n` images for each prompt (prompt-major); batch b uses seed settings.seed + b."""
        settings = settings if settings is not None else self.settings()
        warnings = self.check_prompts(prompts)
        said = self.prompts_to_read(prompts, n, settings.expand, settings.seed)
        batch = encode_text(self.generator.tokenizer, said, self.layout)
        if settings.expand and any(batch.truncated):
            log.warning("%d of %d expanded prompts longer than the model's %d text tokens were truncated",
                        sum(batch.truncated), len(said), self.layout.caption_len)
        text = batch.ids  # (P*n, T)

        def draw(rows: slice, sc: SampleConfig):
            codes = generate(self.model, self.layout, text[rows], sc, stats=self.passes)  # (B, h, w)
            self.passes["batches"] = self.passes.get("batches", 0) + 1
            with torch.inference_mode():
                return tensor_to_images(self.tokenizer.decode(codes.to(self.device))).cpu().numpy()

        rows, images = sample_in_batches(prompts, n, settings, batch_size, draw, progress)
        return SampleResult(images, rows, settings.seed, settings.to_dict(), warnings, self.provenance())

    # ------------------------------------------------------------------ editing
    @property
    def edits(self) -> bool:
        """Whether the generator was trained to edit (an image in context)."""
        return self.layout.context_images > 0

    def encode(self, images: np.ndarray) -> torch.Tensor:
        """uint8 images (B, R, R, 3) at this run's resolution -> codes (B, h, w) long, in batches of 64."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != (self.resolution, self.resolution, 3) or images.dtype != np.uint8:
            raise EditError(f"source images must be uint8 ({self.resolution}, {self.resolution}, 3) each, got "
                            f"{images.dtype} {images.shape[1:]}")
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), 64):
                out.append(self.tokenizer.encode(images_to_tensor(images[start : start + 64]).to(self.device)).codes)
        return torch.cat(out).long() if out else torch.zeros(0, *self.layout.grid, dtype=torch.long)

    def check_instructions(self, chains: Sequence[Sequence[str]]) -> list[str]:
        """Raise EditError for an empty instruction or a run that cannot edit; warnings for truncated ones."""
        if not self.edits:
            raise EditError("this run's generator was trained for text-to-image, with no image in context: "
                            "train an editor with --set data.task=edit (docs/EDITING.md)")
        if isinstance(chains, str) or any(isinstance(c, str) for c in chains):
            raise TypeError("instructions must be a list of chains, each a list of strings")
        flat = [t for chain in chains for t in chain]
        if any(not isinstance(t, str) or not t.strip() for t in flat):
            raise EditError("an instruction is empty: say what to change")
        if len({len(c) for c in chains}) > 1:
            raise EditError("every chain needs the same number of turns")
        batch = encode_text(self.generator.tokenizer, flat, self.layout)
        warnings = [f"instruction longer than the model's {self.layout.caption_len} text tokens, truncated: {t[:60]!r}"
                    for t, cut in zip(flat, batch.truncated) if cut]
        for w in warnings:
            log.warning(w)
        return warnings

    def edit(self, sources: np.ndarray | torch.Tensor, chains: Sequence[Sequence[str]],
             settings: SampleConfig | None = None, batch_size: int = 32, progress: bool = False) -> EditResult:
        """Edit source c with chains[c]'s instructions in turn, each turn on the codes the turn before made.

        sources: uint8 images (C, R, R, 3) at this run's resolution, or their codes (C, h, w).
        Turn t's batch b samples with seed settings.seed + t * batches + b.
        """
        from tqdm.auto import tqdm

        settings = settings if settings is not None else self.settings()
        if settings.expand:
            raise EditError("expand rewrites text-to-image prompts as scenes; an edit instruction is not one")
        warnings = self.check_instructions(chains)
        codes = sources.long() if isinstance(sources, torch.Tensor) else self.encode(sources)  # (C, h, w)
        if len(codes) != len(chains):
            raise EditError(f"{len(codes)} source images for {len(chains)} chains of instructions")
        turns = len(chains[0]) if len(chains) else 0
        batches = range(0, len(codes), batch_size)
        made = []
        bar = tqdm(total=turns * len(batches), desc="editing", disable=not progress, leave=False)
        for t in range(turns):
            text = encode_text(self.generator.tokenizer, [c[t] for c in chains], self.layout).ids  # (C, T)
            out = []
            for b, start in enumerate(batches):
                rows = slice(start, start + batch_size)
                seed = None if settings.seed is None else settings.seed + t * len(batches) + b
                out.append(generate(self.model, self.layout, text[rows], settings.replace(seed=seed),
                                    codes[rows, None].to(self.device), stats=self.passes).cpu())
                self.passes["batches"] = self.passes.get("batches", 0) + 1
                bar.update()
            codes = torch.cat(out)  # (C, h, w): the next turn's context
            made.append(codes)
        bar.close()
        codes = torch.stack(made, 1) if made else torch.zeros(len(chains), 0, *self.layout.grid, dtype=torch.long)
        images = self.decode(codes.flatten(0, 1)).reshape(*codes.shape[:2], self.resolution, self.resolution, 3)
        return EditResult(images, codes, [list(c) for c in chains], settings.seed, settings.to_dict(), warnings,
                          self.provenance())

    def decode(self, codes: torch.Tensor) -> np.ndarray:
        """Codes (B, h, w) -> uint8 images (B, R, R, 3), in batches of 64."""
        out = [np.zeros((0, self.resolution, self.resolution, 3), np.uint8)]
        with torch.inference_mode():
            for start in range(0, len(codes), 64):
                out.append(tensor_to_images(self.tokenizer.decode(codes[start : start + 64].to(self.device))).cpu().numpy())
        return np.concatenate(out)


__all__ = ["ARPipeline", "EditResult"]
