"""A run's VQ tokenizer measured on held-out scenes, or applied to image files (`tessera eval-tokenizer`,
`tessera reconstruct`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

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


def psnr(a, b) -> float:
    """PSNR (dB) of uint8 images `b` against `a` (torch, any equal shapes), from the mean squared error over all."""
    mse = float((a.double() - b.double()).pow(2).mean())
    return 10 * math.log10(255.0**2 / max(mse, 1e-10))


def reconstruct_files(run_dir: str | Path, paths: Sequence[str | Path], out: str | Path, search: int = 0,
                      rounds: int = 2) -> dict:
    """Encode and decode image files with the run's tokenizer: a grid of originals (top) and reconstructions
    (below), written to `out`; with `search` > 0 a third row decoded from codes checked against the decoder
    (vqtok.search.search_codes, `search` candidates a position, `rounds` passes). Returns the grid's path and
    the PSNR (dB) of each row of reconstructions over all the images."""
    import numpy as np
    import torch

    from train.data.images import load_image_file
    from vqtok import images_to_tensor, tensor_to_images
    from vqtok.search import search_codes

    tok = Run(run_dir).load_tokenizer(device="cpu")
    images = torch.from_numpy(np.stack([load_image_file(p, tok.cfg.resolution) for p in paths]))  # (N, H, W, 3)
    x = images_to_tensor(images)  # (N, 3, H, W)
    with torch.no_grad():
        recon = tensor_to_images(tok.decode(tok.encode(x).codes))
        rows, report = [images, recon], {"psnr": psnr(images, recon)}
        if search > 0:
            searched = tensor_to_images(tok.decode(search_codes(tok, x, search, rounds)))
            rows.append(searched)
            report["psnr_searched"] = psnr(images, searched)
    return {"out": save_grid(rows, out), **report}


__all__ = ["evaluate_run_tokenizer", "reconstruct_files"]
