"""A trained run as one object: text -> image codes (ar_model) -> pixels (vqtok).

`vqtok` and `ar_model` never import each other; this is the glue the CLI, the
demo and notebooks share:

    pipe = Pipeline.from_run("runs/demo")
    result = pipe.sample(["a red circle in the top left"], n=4, sc=SampleConfig(cfg_scale=3.0, seed=0))
    result.images            # (P * n, H, W, 3) uint8, prompt-major
    save_pngs(result, "out/")

Prompts are checked before sampling: an empty prompt samples unconditionally, a
prompt longer than the model's text length is truncated; both are reported in
`result.warnings` (and logged), never raised.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ar_model import SampleConfig, encode_text, generate, load_generator
from vqtok import load_tokenizer, tensor_to_images

log = logging.getLogger(__name__)


@dataclass
class SampleResult:
    images: np.ndarray  # (P * n, H, W, 3) uint8, the n samples of prompt 0 first
    prompts: list[str]  # (P * n,) the prompt of each image
    seed: int | None
    sample_config: dict
    warnings: list[str] = field(default_factory=list)


class Pipeline:
    """A run's VQ tokenizer, generator and text tokenizer, on one device."""

    def __init__(self, tokenizer: Any, generator: Any, device: torch.device):
        self.tokenizer = tokenizer.to(device).eval()  # vqtok.VQTokenizer
        self.generator = generator  # ar_model.LoadedGenerator: .model, .cfg, .tokenizer, .layout
        self.model = generator.model.to(device).eval()
        self.layout = generator.layout
        self.device = device
        if (self.tokenizer.cfg.num_codes, (self.tokenizer.cfg.grid_size,) * 2) != (
            self.layout.codebook_size, tuple(self.layout.grid)
        ):
            from ar_model import CheckpointError

            raise CheckpointError(
                f"the generator expects {self.layout.codebook_size} codes on a {self.layout.grid} grid, the "
                f"tokenizer makes {self.tokenizer.cfg.num_codes} on {self.tokenizer.cfg.grid_size}^2: not one run"
            )

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str | None = None) -> "Pipeline":
        run_dir = Path(run_dir)
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        for part in ("tokenizer", "generator"):
            if not (run_dir / part).is_dir():
                raise FileNotFoundError(
                    f"{run_dir / part} does not exist: {run_dir} is not a trained run "
                    "(train it with `tessera train-tokenizer` and `tessera train`)"
                )
        return cls(load_tokenizer(run_dir / "tokenizer"), load_generator(run_dir / "generator"), dev)

    kind = "autoregressive"

    @property
    def resolution(self) -> int:
        return self.tokenizer.cfg.resolution

    def steps_per_image(self, sc: SampleConfig) -> int:
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

    def sample(
        self, prompts: Sequence[str], n: int = 4, sc: SampleConfig | None = None, batch_size: int = 32,
        progress: bool = False,
    ) -> SampleResult:
        """`n` images for each prompt; batch b of the run uses seed sc.seed + b, so a run is reproducible."""
        from tqdm.auto import tqdm

        sc = sc or SampleConfig()
        if n < 1 or batch_size < 1:
            raise ValueError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
        warnings = self.check_prompts(prompts)
        rows = [p for p in prompts for _ in range(n)]  # prompt-major
        text = encode_text(self.generator.tokenizer, rows, self.layout).ids  # (P * n, T)
        out = []
        for b, start in enumerate(tqdm(range(0, len(rows), batch_size), desc="sampling", disable=not progress,
                                       leave=False)):
            seed = None if sc.seed is None else sc.seed + b
            codes = generate(self.model, self.layout, text[start : start + batch_size], sc.replace(seed=seed))
            with torch.inference_mode():
                out.append(tensor_to_images(self.tokenizer.decode(codes.to(self.device))).cpu().numpy())
        images = np.concatenate(out) if out else np.zeros((0, 0, 0, 3), np.uint8)
        return SampleResult(images, rows, sc.seed, sc.to_dict(), warnings)


class BaselinePipeline:
    """A run's diffusion baseline (eval.diffusion) behind the same `sample` as Pipeline."""

    kind = "diffusion"

    def __init__(self, model: Any, text_tokenizer: Any, device: torch.device):
        from ar_model import SequenceLayout

        self.model = model.to(device).eval()  # eval.diffusion.DiffusionBaseline
        self.text_tokenizer = text_tokenizer
        self.device = device
        # the generator's text ids (ar_model.encode_text); the layout's image part is unused
        self.text_layout = SequenceLayout.for_tokenizer(text_tokenizer, 1, (1, 1), model.cfg.text_len)

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str | None = None) -> "BaselinePipeline":
        from ar_model import load_text_tokenizer
        from eval.diffusion import load_baseline

        path = Path(run_dir) / "baseline"
        if not path.is_dir():
            raise FileNotFoundError(f"{path} does not exist: {run_dir} has no diffusion baseline "
                                    "(train it with `tessera train-baseline`)")
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        return cls(load_baseline(path), load_text_tokenizer(path / "text_tokenizer"), dev)

    @property
    def resolution(self) -> int:
        return self.model.cfg.resolution

    def steps_per_image(self, sc: Any) -> int:
        """Sequential model calls per image: one per denoising step."""
        return sc.steps

    def sample(self, prompts: Sequence[str], n: int = 4, sc: Any = None, batch_size: int = 32,
               progress: bool = False) -> SampleResult:
        """`n` images per prompt (prompt-major); batch b uses seed sc.seed + b, as Pipeline.sample."""
        from tqdm.auto import tqdm

        from eval.diffusion import DiffusionSampleConfig, sample, to_uint8

        sc = sc or DiffusionSampleConfig()
        if n < 1 or batch_size < 1:
            raise ValueError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
        batch = encode_text(self.text_tokenizer, list(prompts), self.text_layout)
        warnings = [f"prompt longer than the model's {self.text_layout.text_len} text tokens, truncated: {p[:60]!r}"
                    for p, cut in zip(prompts, batch.truncated) if cut]
        for w in warnings:
            log.warning(w)
        rows = [p for p in prompts for _ in range(n)]
        text = batch.ids.repeat_interleave(n, dim=0)  # (P * n, T)
        out = []
        for b, start in enumerate(tqdm(range(0, len(rows), batch_size), desc="sampling", disable=not progress,
                                       leave=False)):
            seed = None if sc.seed is None else sc.seed + b
            images = sample(self.model, text[start : start + batch_size], dataclasses.replace(sc, seed=seed))
            out.append(to_uint8(images).numpy())
        images = np.concatenate(out) if out else np.zeros((0, 0, 0, 3), np.uint8)
        return SampleResult(images, rows, sc.seed, dataclasses.asdict(sc), warnings)


def _slug(text: str, limit: int = 40) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-")
    return s or "unconditional"


def save_pngs(result: SampleResult, out_dir: str | Path, run: str = "") -> list[Path]:
    """One PNG per image, named by prompt and index, with the prompt and settings in PNG text chunks."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo
    import json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, count = [], {}
    for img, prompt in zip(result.images, result.prompts):
        k = count[prompt] = count.get(prompt, -1) + 1
        meta = PngInfo()
        meta.add_text("prompt", prompt)
        meta.add_text("tessera", json.dumps({"run": run, "index": k, **result.sample_config}))
        path = out_dir / f"{_slug(prompt)}_{k:03d}.png"
        Image.fromarray(img).save(path, pnginfo=meta)
        paths.append(path)
    return paths


__all__ = ["BaselinePipeline", "Pipeline", "SampleResult", "save_pngs"]
