"""Writing samples to disk: one PNG per image (prompt and settings in its text chunks), and grids."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
from einops import rearrange, repeat

from pipelines.interface import SampleResult


def _slug(text: str, limit: int = 40) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-")
    if s or not text.strip():
        return s or "unconditional"
    return "prompt"  # no ASCII letters or digits (e.g. Japanese, Arabic): _file_stems adds a hash


def _file_stems(prompts: list[str]) -> dict[str, str]:
    """A file-name stem per distinct prompt: its ASCII slug, plus a short hash of the prompt where the slug
    alone would not tell prompts apart (other scripts, or prompts differing only in case or punctuation)."""
    import hashlib

    distinct = list(dict.fromkeys(prompts))
    slugs = {p: _slug(p) for p in distinct}
    shared = {s for s in slugs.values() if list(slugs.values()).count(s) > 1}
    return {p: f"{s}-{hashlib.sha256(p.encode()).hexdigest()[:8]}" if s in shared or s == "prompt" else s
            for p, s in slugs.items()}


def save_pngs(result: SampleResult, out_dir: str | Path, run: str = "") -> list[Path]:
    """One PNG per image, named by prompt and index, with the prompt and settings in PNG text chunks.

    Names are safe in any file system and distinct for distinct prompts in any script:
    `<ascii slug>_<index>.png`, with a short hash of the prompt added where slugs would collide.
    """
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stems = _file_stems(result.prompts)
    paths, count = [], {}
    for img, prompt in zip(result.images, result.prompts):
        k = count[prompt] = count.get(prompt, -1) + 1
        meta = PngInfo()
        meta.add_itxt("prompt", prompt)  # iTXt: UTF-8, any script (tEXt is Latin-1 only)
        meta.add_text("tessera", json.dumps({"run": run, "index": k, **result.sample_config}))
        path = out_dir / f"{stems[prompt]}_{k:03d}.png"
        Image.fromarray(img).save(path, pnginfo=meta)
        paths.append(path)
    return paths


def save_grid(rows: list[torch.Tensor | np.ndarray], path: str | Path, scale: int = 4, pad: int = 2) -> Path:
    """Save rows of images, each row uint8 (N, H, W, 3) with the same N, as one PNG.

    Pixels are enlarged `scale` times (nearest) so 24-48 px images stay legible;
    `pad` grey pixels separate the tiles.
    """
    from PIL import Image

    grid = torch.stack([torch.as_tensor(np.asarray(r)) for r in rows])  # (R, N, H, W, 3)
    grid = torch.nn.functional.pad(grid, (0, 0, pad, pad, pad, pad), value=128)  # pad H and W
    grid = rearrange(grid, "r n h w c -> (r h) (n w) c")
    grid = repeat(grid, "h w c -> (h s1) (w s2) c", s1=scale, s2=scale)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.numpy()).save(path)
    return path


class SampleFiles(NamedTuple):
    pngs: list[Path]  # one per image, prompt-major
    grid: Path  # one row per prompt


def sample_to_dir(sampler: Any, prompts: Sequence[str], out_dir: str | Path, n: int = 4, settings: Any = None,
                  batch_size: int = 32, progress: bool = True, run: str = "") -> SampleFiles:
    """`n` images per prompt from an ImageSampler, written as PNGs and OUT/grid.png (one row per prompt)."""
    result = sampler.sample(list(prompts), n=n, settings=settings, batch_size=batch_size, progress=progress)
    paths = save_pngs(result, out_dir, run=run)
    rows = [result.images[i * n : (i + 1) * n] for i in range(len(prompts))]
    return SampleFiles(paths, save_grid(rows, Path(out_dir) / "grid.png"))


def save_edits(result: Any, source: np.ndarray, out_dir: str | Path, run: str = "") -> SampleFiles:
    """An EditResult as OUT/chain_<c>_turn_<t>.png (instruction, earlier turns and settings in text chunks)
    and OUT/grid.png: a row per chain, the source (R, R, 3) first."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for c, (chain, turns) in enumerate(zip(result.images, result.instructions)):
        for t, img in enumerate(chain):
            meta = PngInfo()
            meta.add_itxt("instruction", turns[t])  # iTXt: UTF-8, any script
            meta.add_text("tessera", json.dumps({"run": run, "chain": c, "turn": t + 1, "instructions": turns[: t + 1],
                                                 **result.sample_config}))
            path = out_dir / f"chain_{c:03d}_turn_{t + 1}.png"
            Image.fromarray(img).save(path, pnginfo=meta)
            paths.append(path)
    rows = [np.concatenate([np.asarray(source)[None], chain]) for chain in result.images]
    return SampleFiles(paths, save_grid(rows, out_dir / "grid.png"))


__all__ = ["SampleFiles", "sample_to_dir", "save_edits", "save_grid", "save_pngs"]
