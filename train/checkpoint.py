"""Atomic, resumable training checkpoints (the `state/` directory of a run).

Layout::

    state/
      latest                 one line: the name of the newest complete checkpoint
      step-00001200/
        model.safetensors    trainable weights (safetensors, no pickles)
        ema.safetensors      EMA weights, when EMA is on
        train_state.pt       optimizer, scheduler, RNG states, step (plain tensors
                             and numbers; loaded with torch.load(weights_only=True))
        meta.json            step, format version, what wrote it

A checkpoint directory is written under a temporary name and renamed into place
only once complete, and `latest` is replaced atomically after that, so a run
killed at any moment leaves either the previous checkpoint or the new one, never
a half-written one. The last `keep` checkpoints are kept.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model, save_model

FORMAT = "tessera.train_state"
VERSION = 1


class ResumeError(RuntimeError):
    """A checkpoint exists but cannot be resumed (foreign, other version, mismatched)."""


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # atomic on POSIX: readers see the old or the new file


def rng_state() -> dict:
    """Every RNG the loop's results depend on, as weights_only-loadable data."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    random.setstate(state["python"])


def latest_checkpoint(state_dir: Path) -> Path | None:
    """The newest complete checkpoint under `state_dir`, or None when there is none."""
    pointer = Path(state_dir) / "latest"
    if not pointer.exists():
        return None
    path = Path(state_dir) / pointer.read_text().strip()
    if not (path / "meta.json").exists():
        raise ResumeError(f"{pointer} names {path.name}, which is missing or incomplete")
    return path


def save_checkpoint(
    state_dir: Path,
    step: int,
    model: torch.nn.Module,
    train_state: dict,
    ema: torch.nn.Module | None = None,
    keep: int = 2,
) -> Path:
    """Write checkpoint `step` atomically and prune all but the newest `keep`."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    final = state_dir / name
    tmp = state_dir / f".tmp-{name}"
    if tmp.exists():  # left over from a run killed while writing
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))  # save_model handles tied weights
    if ema is not None:
        save_model(ema, str(tmp / "ema.safetensors"))
    torch.save(train_state, tmp / "train_state.pt")
    (tmp / "meta.json").write_text(json.dumps({"format": FORMAT, "version": VERSION, "step": step}))
    if final.exists():  # the same step written again (e.g. final save after a resume)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _atomic_write_text(state_dir / "latest", name + "\n")
    old = sorted(p for p in state_dir.glob("step-*") if p.is_dir() and p.name != name)
    for path in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(path, ignore_errors=True)
    return final


def load_checkpoint(
    path: Path, model: torch.nn.Module, ema: torch.nn.Module | None = None
) -> dict:
    """Load weights into `model` (and `ema`) in place; return the train state dict."""
    path = Path(path)
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("format") != FORMAT:
        raise ResumeError(f"{path} is not a Tessera training checkpoint (format={meta.get('format')!r})")
    if meta.get("version") != VERSION:
        raise ResumeError(
            f"{path} was written by train-state version {meta.get('version')}, this code reads {VERSION}"
        )
    try:
        _load_strict(model, path / "model.safetensors")
        if ema is not None:
            _load_strict(ema, path / "ema.safetensors")
    except (RuntimeError, FileNotFoundError) as e:
        raise ResumeError(f"cannot resume from {path}: the weights do not match this model ({e})") from e
    return torch.load(path / "train_state.pt", weights_only=True)  # no pickled code


def _load_strict(module: torch.nn.Module, file: Path) -> None:
    missing, unexpected = load_model(module, str(file), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"missing keys {sorted(missing)[:5]}, unexpected keys {sorted(unexpected)[:5]}")
