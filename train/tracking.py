"""Where the training loop's numbers and sample grids go: the jsonl log always, wandb when asked.

    tracker = Tracker.open("wandb", metrics_path, samples_dir, run_name="runs/x/generator", config={...})
    tracker.log({"step": 10, "loss": 2.3, ...})       # a jsonl line, and wandb.log(..., step=10)
    tracker.images(10, grid_uint8, ["a red circle", ...])   # samples/<stage>/step-00000010.png (+ wandb.Image)
    tracker.close()

Only process 0 of a run opens a tracker. wandb is optional (`pip install
'tessera[wandb]'`) and imported only for `log="wandb"`; its mode comes from the
environment (`WANDB_MODE=offline` / `disabled`, `WANDB_PROJECT`): wandb reads it
when `wandb.init` runs, so it must be set before training starts, and no `mode=`
is passed that would override it. A resumed run continues the same wandb run
(its id is kept in `<log name>.wandb_id.txt` beside the log).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

LOGGERS = ("jsonl", "wandb")


class Tracker:
    """The jsonl log (always) plus an optional wandb run."""

    def __init__(self, metrics_file: Any, samples_dir: Path, wandb_run: Any = None):
        self._file = metrics_file  # an open text file, appended to
        self.samples_dir = samples_dir
        self.wandb = wandb_run

    @classmethod
    def open(cls, kind: str, metrics_path: Path, samples_dir: Path, run_name: str, config: dict) -> "Tracker":
        if kind not in LOGGERS:
            raise ValueError(f"log must be one of {', '.join(LOGGERS)}, got {kind!r}")
        run = _wandb_run(metrics_path, run_name, config) if kind == "wandb" else None
        return cls(metrics_path.open("a"), samples_dir, run)

    def log(self, row: dict[str, float]) -> None:
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self.wandb is not None:
            self.wandb.log({f"train/{k}": v for k, v in row.items() if k != "step"}, step=int(row["step"]))

    def images(self, step: int, grid: np.ndarray, captions: Sequence[str]) -> Path:
        """Save a sample grid (H, W, 3) uint8 as a PNG (and to wandb); returns the PNG's path."""
        from PIL import Image

        self.samples_dir.mkdir(parents=True, exist_ok=True)
        path = self.samples_dir / f"step-{step:08d}.png"
        tmp = path.with_name(path.name + ".tmp.png")
        Image.fromarray(grid).save(tmp)
        os.replace(tmp, path)
        (self.samples_dir / f"step-{step:08d}.txt").write_text("\n".join(captions) + "\n")
        if self.wandb is not None:
            import wandb

            self.wandb.log({"samples": wandb.Image(grid, caption=" | ".join(captions))}, step=step)
        return path

    def close(self) -> None:
        self._file.close()
        if self.wandb is not None:
            self.wandb.finish()


def _wandb_run(metrics_path: Path, run_name: str, config: dict) -> Any:
    try:
        import wandb
    except ImportError as e:
        raise ImportError("--log wandb needs wandb: pip install 'tessera[wandb]'") from e
    id_file = metrics_path.with_name(metrics_path.stem + ".wandb_id.txt")
    run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)  # any unique string will do
    id_file.write_text(run_id + "\n")
    run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", "tessera"),
        name=run_name,
        id=run_id,
        resume="allow",  # a resumed training run continues its wandb run
        config=config,
        dir=str(metrics_path.parent),
        # no `mode=`: wandb reads WANDB_MODE (online / offline / disabled) itself
    )
    log.info("wandb run %s (mode %s)", run_id, os.environ.get("WANDB_MODE", "online"))
    return run


def image_grid(images: np.ndarray, cols: int) -> np.ndarray:
    """(N, H, W, 3) uint8 -> one (rows*H, cols*W, 3) grid, row-major, white where empty."""
    n, h, w, c = images.shape
    rows = -(-n // cols)
    grid = np.full((rows * h, cols * w, c), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, k = divmod(i, cols)
        grid[r * h:(r + 1) * h, k * w:(k + 1) * w] = img
    return grid


__all__ = ["LOGGERS", "Tracker", "image_grid"]
