"""Writing samples to disk: one PNG per image (prompt and settings in its text chunks), and grids.

Every file is signed with a C2PA manifest (pipelines.provenance) unless `signer=None`:
`signer="auto"` (the default) is `provenance.resolve_signer()` -- the configured credentials,
or the local development ones; TESSERA_SIGN=0 switches it off. A file is written whole or
not at all (a temporary file renamed), so nothing is ever left half-signed.
"""

from __future__ import annotations

import io
import json
import os
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


def _signer(signer: Any) -> Any:
    if isinstance(signer, str):
        if signer != "auto":
            raise ValueError(f"signer must be a provenance.Signer, None or 'auto', got {signer!r}")
        from pipelines.provenance import resolve_signer

        return resolve_signer()
    return signer


def write_png(path: str | Path, image: np.ndarray, signer: Any = "auto", generation: dict | None = None,
              itxt: dict[str, str] | None = None, text: dict[str, str] | None = None, action: str = "c2pa.created",
              source_type: str | None = None, ingredients: Sequence[tuple[dict, Path]] = ()) -> Path:
    """One uint8 image (H, W, 3) as a PNG with text chunks (`itxt`: UTF-8, `text`: Latin-1), signed with
    a C2PA manifest (`generation` as Tessera's assertion, `action`, `ingredients`) unless `signer` is None;
    written to a temporary file and renamed."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from pipelines import provenance

    meta = PngInfo()
    for k, v in (itxt or {}).items():
        meta.add_itxt(k, v)
    for k, v in (text or {}).items():
        meta.add_text(k, v)
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image)).save(buf, format="PNG", pnginfo=meta)
    data = buf.getvalue()
    signer = _signer(signer)
    path = Path(path)
    if signer is not None:
        data = signer.sign_png(data, provenance.manifest(path.name, generation or {}, action,
                                                         source_type or provenance.TRAINED_ALGORITHMIC_MEDIA),
                               ingredients)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _generation(result: Any, run: str, **what: Any) -> dict:
    """Tessera's assertion for one image of a SampleResult / EditResult."""
    return {**what, "run": run, "seed": result.seed, "settings": result.sample_config, "model": result.model}


def save_pngs(result: SampleResult, out_dir: str | Path, run: str = "", signer: Any = "auto") -> list[Path]:
    """One PNG per image, named by prompt and index, with the prompt and settings in PNG text chunks and
    a signed C2PA manifest (c2pa.created: prompt, settings, seed, weights' sha256; `signer` None: unsigned).

    Names are safe in any file system and distinct for distinct prompts in any script:
    `<ascii slug>_<index>.png`, with a short hash of the prompt added where slugs would collide.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    signer = _signer(signer)
    stems = _file_stems(result.prompts)
    paths, count = [], {}
    for img, prompt in zip(result.images, result.prompts):
        k = count[prompt] = count.get(prompt, -1) + 1
        paths.append(write_png(
            out_dir / f"{stems[prompt]}_{k:03d}.png", img, signer, _generation(result, run, prompt=prompt, index=k),
            itxt={"prompt": prompt},  # iTXt: UTF-8, any script (tEXt is Latin-1 only)
            text={"tessera": json.dumps({"run": run, "index": k, **result.sample_config})}))
    return paths


def save_grid(rows: list[torch.Tensor | np.ndarray], path: str | Path, scale: int = 4, pad: int = 2,
              signer: Any = "auto", generation: dict | None = None, components: Sequence[str | Path] = ()) -> Path:
    """Save rows of images, each row uint8 (N, H, W, 3) with the same N, as one PNG.

    Pixels are enlarged `scale` times (nearest) so 24-48 px images stay legible;
    `pad` grey pixels separate the tiles. Signed as a composite (`generation`: what it shows;
    `components`: the image files it is made of, added as ingredients).
    """
    from pipelines import provenance

    grid = torch.stack([torch.as_tensor(np.asarray(r)) for r in rows])  # (R, N, H, W, 3)
    shape = {"rows": int(grid.shape[0]), "columns": int(grid.shape[1])}
    grid = torch.nn.functional.pad(grid, (0, 0, pad, pad, pad, pad), value=128)  # pad H and W
    grid = rearrange(grid, "r n h w c -> (r h) (n w) c")
    grid = repeat(grid, "h w c -> (h s1) (w s2) c", s1=scale, s2=scale)
    return write_png(path, grid.numpy(), signer, {"grid": shape, **(generation or {})},
                     source_type=provenance.COMPOSITE_SYNTHETIC,
                     ingredients=[provenance.component(p) for p in components])


class SampleFiles(NamedTuple):
    pngs: list[Path]  # one per image, prompt-major
    grid: Path  # one row per prompt


def sample_to_dir(sampler: Any, prompts: Sequence[str], out_dir: str | Path, n: int = 4, settings: Any = None,
                  batch_size: int = 32, progress: bool = True, run: str = "", signer: Any = "auto") -> SampleFiles:
    """`n` images per prompt from an ImageSampler, written as PNGs and OUT/grid.png (one row per prompt),
    all signed (the grid with the PNGs as its ingredients) unless `signer` is None."""
    signer = _signer(signer)  # bad credentials fail before sampling
    result = sampler.sample(list(prompts), n=n, settings=settings, batch_size=batch_size, progress=progress)
    paths = save_pngs(result, out_dir, run=run, signer=signer)
    rows = [result.images[i * n : (i + 1) * n] for i in range(len(prompts))]
    grid = save_grid(rows, Path(out_dir) / "grid.png", signer=signer,
                     generation=_generation(result, run, prompts=list(prompts)), components=paths)
    return SampleFiles(paths, grid)


def save_edits(result: Any, source: np.ndarray, out_dir: str | Path, run: str = "", signer: Any = "auto",
               source_file: str | Path | None = None) -> SampleFiles:
    """An EditResult as OUT/chain_<c>_turn_<t>.png (instruction, earlier turns and settings in text chunks)
    and OUT/grid.png: a row per chain, the source (R, R, 3) first. Each file is signed as c2pa.edited with
    its parent as ingredient: the turn before's file, and for the first turn `source_file` (the image the
    user gave; without one, the first turn is signed as c2pa.created). `signer` None: unsigned."""
    from pipelines import provenance

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    signer = _signer(signer)
    paths = []
    for c, (chain, turns) in enumerate(zip(result.images, result.instructions)):
        before = Path(source_file) if source_file is not None else None
        for t, img in enumerate(chain):
            path = write_png(
                out_dir / f"chain_{c:03d}_turn_{t + 1}.png", img, signer,
                _generation(result, run, instructions=list(turns[: t + 1]), chain=c, turn=t + 1),
                itxt={"instruction": turns[t]},  # iTXt: UTF-8, any script
                text={"tessera": json.dumps({"run": run, "chain": c, "turn": t + 1, "instructions": turns[: t + 1],
                                             **result.sample_config})},
                action="c2pa.edited" if before is not None else "c2pa.created",
                ingredients=[provenance.parent(before)] if before is not None else ())
            paths.append(path)
            before = path
    rows = [np.concatenate([np.asarray(source)[None], chain]) for chain in result.images]
    grid = save_grid(rows, out_dir / "grid.png", signer=signer,
                     generation={"run": run, "chains": [list(t) for t in result.instructions], "seed": result.seed,
                                 "settings": result.sample_config, "model": result.model},
                     components=([source_file] if source_file is not None else []) + paths)
    return SampleFiles(paths, grid)


__all__ = ["SampleFiles", "sample_to_dir", "save_edits", "save_grid", "save_pngs", "write_png"]
