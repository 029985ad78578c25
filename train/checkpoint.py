"""Atomic, resumable training checkpoints (the `state/` directory of a run).

Layout::

    state/
      latest                 one line: the name of the newest complete checkpoint
      step-00001200/
        model.safetensors    the model's full state (safetensors, no pickles)
        ema.safetensors      EMA weights, when EMA is on
        train_state.pt       optimizer (keyed by parameter name), scheduler, RNG
                             states, step (plain tensors and numbers; loaded with
                             torch.load(weights_only=True))
        meta.json            step, format version, what wrote it

A checkpoint directory is written under a temporary name and renamed into place
only once complete, and `latest` is replaced atomically after that, so a run
killed at any moment leaves either the previous checkpoint or the new one, never
a half-written one. The last `keep` checkpoints are kept.

Tensors are stored whole and by name, never as per-process shards: process 0
writes what the loop gathered, and any process count (or a single process) can
resume from it (train/distributed.py).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from train.errors import ResumeError

FORMAT = "tessera.train_state"
VERSION = 1


class CheckpointData(NamedTuple):
    model: dict[str, torch.Tensor]  # full tensors by parameter / buffer name
    ema: dict[str, torch.Tensor] | None
    train_state: dict  # optimizer (by parameter name), scheduler, rng, step, seconds


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
    model_state: dict[str, torch.Tensor],
    train_state: dict,
    ema_state: dict[str, torch.Tensor] | None = None,
    keep: int = 2,
) -> Path:
    """Write checkpoint `step` atomically and prune all but the newest `keep`.

    Takes full state dicts (the loop gathers them from every process under FSDP), so a
    checkpoint is the same file whatever the process count that wrote it.
    """
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    final = state_dir / name
    tmp = state_dir / f".tmp-{name}"
    if tmp.exists():  # left over from a run killed while writing
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(_unshared(model_state), str(tmp / "model.safetensors"))
    if ema_state is not None:
        save_file(_unshared(ema_state), str(tmp / "ema.safetensors"))
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


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, each with its own storage: `save_file` refuses shared memory
    (tied weights); a tied pair is stored twice so that a strict load finds both names."""
    seen: set[int] = set()
    out = {}
    for k, v in state.items():
        v = v.detach().cpu().contiguous()
        ptr = v.untyped_storage().data_ptr()
        if ptr in seen:
            v = v.clone()
        seen.add(ptr)
        out[k] = v
    return out


def read_checkpoint(path: Path, ema: bool = False) -> CheckpointData:
    """The weights and train state of a checkpoint, checked to be ours and of this version."""
    path = Path(path)
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("format") != FORMAT:
        raise ResumeError(f"{path} is not a Tessera training checkpoint (format={meta.get('format')!r})")
    if meta.get("version") != VERSION:
        raise ResumeError(
            f"{path} was written by train-state version {meta.get('version')}, this code reads {VERSION}"
        )
    try:
        model = load_file(str(path / "model.safetensors"))
        ema_state = load_file(str(path / "ema.safetensors")) if ema else None
    except (OSError, FileNotFoundError, SafetensorError) as e:
        raise ResumeError(f"cannot resume from {path}: {e}") from e
    train_state = torch.load(path / "train_state.pt", weights_only=True)  # no pickled code
    return CheckpointData(model, ema_state, train_state)


def check_keys(expected: set[str], got: set[str], path: Path, what: str = "weights") -> None:
    """Refuse a checkpoint whose tensor names are not exactly the model's (never load non-strictly)."""
    missing, unexpected = sorted(expected - got), sorted(got - expected)
    if missing or unexpected:
        raise ResumeError(
            f"cannot resume from {path}: the {what} do not match this model "
            f"(missing keys {missing[:5]}, unexpected keys {unexpected[:5]})"
        )
