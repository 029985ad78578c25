"""Image grids for reports and the demo (rows of uint8 images side by side)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from einops import rearrange, repeat
from PIL import Image


def save_grid(rows: list[torch.Tensor | np.ndarray], path: str | Path, scale: int = 4, pad: int = 2) -> Path:
    """Save rows of images, each row uint8 (N, H, W, 3) with the same N, as one PNG.

    Pixels are enlarged `scale` times (nearest) so 32 px images stay legible;
    `pad` grey pixels separate the tiles.
    """
    grid = torch.stack([torch.as_tensor(np.asarray(r)) for r in rows])  # (R, N, H, W, 3)
    grid = torch.nn.functional.pad(grid, (0, 0, pad, pad, pad, pad), value=128)  # pad H and W
    grid = rearrange(grid, "r n h w c -> (r h) (n w) c")
    grid = repeat(grid, "h w c -> (h s1) (w s2) c", s1=scale, s2=scale)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.numpy()).save(path)
    return path
