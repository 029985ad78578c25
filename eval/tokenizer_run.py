"""A run's VQ tokenizer measured on held-out scenes, or applied to image files (`tessera eval-tokenizer`,
`tessera reconstruct`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

from eval.errors import EvalError
from pipelines import Run, resolve_device, save_grid, write_atomic


def evaluate_run_tokenizer(run_dir: str | Path, n: int = 1000, seed: int = 1234, batch_size: int = 100,
                           device: str | None = "cpu", out: str | Path | None = None) -> dict:
    """Scene preservation, PSNR, SSIM, codebook usage and speed on `n` held-out images of the tokenizer's world
    (and glyph preservation where it was trained with text); also written to `out`."""
    from eval.tokenizer_metrics import evaluate_tokenizer, heldout_images

    run = Run(run_dir)
    tok = run.load_tokenizer(device=resolve_device(device))
    data = run.recorded_data("tokenizer")  # the world the tokenizer was trained on: grid, objects, tones, text
    grid = int(data.get("grid", 3))
    images = heldout_images(n, tok.cfg.resolution, seed=seed, grid=grid, tones=bool(data.get("tones", False)),
                            text=float(data.get("text", 0.0)), max_objects=data.get("max_objects"))
    report = evaluate_tokenizer(tok, images, batch_size=batch_size, grid=grid).to_dict()
    if out:
        write_atomic(Path(out), json.dumps(report, indent=2) + "\n")
    return report


def reconstruct_files(run_dir: str | Path, paths: Sequence[str | Path], out: str | Path, search: int = 0,
                      rounds: int = 2, whole: bool = False) -> dict:
    """Encode and decode image files with the run's tokenizer: a grid of originals (top) and reconstructions
    (below), written to `out`; with `search` > 0 a third row decoded from codes checked against the decoder
    (vqtok.search.search_codes, `search` candidates a position, `rounds` passes). Images are centre-cropped and
    resized to the tokenizer's resolution, or with `whole` encoded at their own size, cropped to a multiple of
    the downsampling (one pass each; the grid pads them to the largest, unenlarged). Returns the grid's path and
    the PSNR (dB) of each row of reconstructions over all the images."""
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from train.data.images import load_image_file
    from vqtok import images_to_tensor, tensor_to_images
    from vqtok.search import search_codes

    tok = Run(run_dir).load_tokenizer(device="cpu")
    ds = tok.cfg.downsample
    if whole:
        images = [load_image_file(p, None) for p in paths]
        images = [im[: im.shape[0] // ds * ds, : im.shape[1] // ds * ds] for im in images]  # whole codes only
        if any(im.size == 0 for im in images):
            raise EvalError(f"an image is smaller than the tokenizer's {ds} x {ds} pixels a code")
    else:
        images = [load_image_file(p, tok.cfg.resolution) for p in paths]
    rows: list[list] = [[], [], []]
    with torch.no_grad():
        for image in (images if whole else [np.stack(images)]):  # whole: one pass per image (sizes differ)
            original = torch.from_numpy(np.ascontiguousarray(image if not whole else image[None]))  # (N, H, W, 3)
            x = images_to_tensor(original)
            rows[0].append(original)
            rows[1].append(tensor_to_images(tok.decode(tok.encode(x).codes)))
            if search > 0:
                with tqdm(desc="code search", unit="lattice", leave=False) as bar:

                    def advance(done: int, total: int) -> None:
                        bar.total, bar.n = total, done
                        bar.refresh()

                    codes = search_codes(tok, x, search, rounds, progress=advance)
                rows[2].append(tensor_to_images(tok.decode(codes)))
    sq = lambda row: sum(float((a.double() - b.double()).pow(2).sum()) for a, b in zip(rows[0], row))  # noqa: E731
    count = sum(a.numel() for a in rows[0])
    to_db = lambda total: 10 * math.log10(255.0**2 / max(total / count, 1e-10))  # noqa: E731 (PSNR over all)
    report = {"psnr": to_db(sq(rows[1]))}
    if search > 0:
        report["psnr_searched"] = to_db(sq(rows[2]))
    grid = [_padded(row) for row in rows if row]
    return {"out": save_grid(grid, out, scale=1 if whole else 4), **report}


def _padded(parts: list):
    """uint8 (n, H_i, W_i, 3) tensors as one (N, H, W, 3), each image padded with grey to the largest size."""
    import torch

    h = max(p.shape[1] for p in parts)
    w = max(p.shape[2] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, 0, 0, w - p.shape[2], 0, h - p.shape[1]), value=128)
                      for p in parts])


__all__ = ["evaluate_run_tokenizer", "reconstruct_files"]
