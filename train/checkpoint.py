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
        meta.json            step, format version, the sha256 of each file above

A checkpoint directory is written under a temporary name and renamed into place
only once complete, and `latest` is replaced atomically after that, so a run
killed at any moment leaves either the previous checkpoint or the new one, never
a half-written one. The last `keep` checkpoints are kept.

A checkpoint damaged afterwards (a file truncated, garbled or missing: a full disk,
a bad copy) is found by its sha256s when it is read: `DamagedCheckpointError` names
the file and the newest intact checkpoint beside it, which the loop resumes from
instead when told to (`LoopConfig.resume_intact`). Checkpoints written before the
sha256s were recorded are checked only for their files being present and readable.

Tensors are stored whole and by name, never as per-process shards: process 0
writes what the loop gathered, and any process count (or a single process) can
resume from it (train/distributed.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
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
MODEL_FILE, EMA_FILE, STATE_FILE, META_FILE = "model.safetensors", "ema.safetensors", "train_state.pt", "meta.json"
VERIFY_ENV = "TESSERA_VERIFY_WEIGHTS"  # "0": read_checkpoint skips the sha256s by default (very large checkpoints)


class CheckpointData(NamedTuple):
    model: dict[str, torch.Tensor]  # full tensors by parameter / buffer name
    ema: dict[str, torch.Tensor] | None
    train_state: dict  # optimizer (by parameter name), scheduler, rng, step, seconds


class DamagedCheckpointError(ResumeError):
    """A checkpoint with a file missing, unreadable or not the bytes recorded when it was written.

    `path`: the checkpoint; `problem`: what is wrong with it; `intact`: the newest other
    checkpoint in its state directory that verifies, or None.
    """

    def __init__(self, message: str, path: Path, problem: str, intact: Path | None):
        super().__init__(message)
        self.path, self.problem, self.intact = path, problem, intact


def sha256_file(path: Path) -> str:
    """The sha256 of the file at `path`, read in 1 MiB chunks (a large file is never held in memory).

    (vqtok, ar_model and baseline keep their own few-line copy: the libraries import nothing of the project.)
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
    """The checkpoint `state_dir/latest` names, or None when there is none.

    A name whose directory is missing or has no meta.json is a DamagedCheckpointError
    (naming the newest intact checkpoint); the files themselves are checked by `read_checkpoint`.
    """
    state_dir = Path(state_dir)
    pointer = state_dir / "latest"
    if not pointer.exists():
        return None
    name = pointer.read_text().strip()
    path = state_dir / name
    if not name or not (path / META_FILE).is_file():
        raise _damaged(state_dir, path, f"{pointer} names {name or 'nothing'}, which is missing or incomplete")
    return path


def _problem(path: Path, check_sha: bool = True) -> str | None:
    """What is wrong with checkpoint `path` -- meta.json unreadable, a file missing, or (with `check_sha`) not
    the bytes recorded when it was written -- or None when it is intact. Checkpoints written before the
    sha256s were recorded are checked for their files being present."""
    try:
        meta = json.loads((path / META_FILE).read_text())
    except FileNotFoundError:
        return f"{META_FILE} is missing"
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bad UTF-8
        return f"{META_FILE} cannot be read ({e})"
    recorded = meta.get("sha256", {}) if isinstance(meta, dict) else None
    if not isinstance(recorded, dict) or not all(isinstance(v, str) for v in recorded.values()):
        return f"{META_FILE} is malformed"
    names = sorted({MODEL_FILE, STATE_FILE, *recorded})
    missing = [n for n in names if not (path / n).is_file()]
    if missing:
        return f"{missing[0]} is missing"
    for name in sorted(recorded) if check_sha else []:
        try:
            digest = sha256_file(path / name)
        except OSError as e:
            return f"{name} cannot be read ({e})"
        if digest != recorded[name]:
            return (f"{name} does not match the sha256 recorded when it was written "
                    "(the file is damaged or was replaced)")
    return None


def newest_intact_checkpoint(state_dir: Path, skip: Path | None = None) -> Path | None:
    """The newest checkpoint under `state_dir` (other than `skip`) whose files match their recorded sha256s
    (older checkpoints, without them: whose files are present), or None. Reads every file of each checkpoint
    it tries, newest first."""
    candidates = sorted((p for p in Path(state_dir).glob("step-*") if p.is_dir()), reverse=True)
    for path in candidates:
        if (skip is None or path.name != Path(skip).name) and _problem(path) is None:
            return path
    return None


def _damaged(state_dir: Path, path: Path, problem: str) -> DamagedCheckpointError:
    """The error for damaged checkpoint `path`: what is wrong, and the newest intact checkpoint and how to use it."""
    intact = newest_intact_checkpoint(state_dir, skip=path)
    if intact is None:
        hint = f"no intact checkpoint is left in {state_dir} to resume from"
    else:
        hint = (f"the newest intact checkpoint is {intact}: rerun with the loop setting resume_intact=true "
                "(e.g. --set loop.resume_intact=true) to resume from it, training the steps after it again")
    return DamagedCheckpointError(f"cannot resume from {path}: {problem}; {hint}", path, problem, intact)


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
    save_file(_unshared(model_state), str(tmp / MODEL_FILE))
    if ema_state is not None:
        save_file(_unshared(ema_state), str(tmp / EMA_FILE))
    torch.save(train_state, tmp / STATE_FILE)
    sha256 = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}  # checked by read_checkpoint
    (tmp / META_FILE).write_text(json.dumps({"format": FORMAT, "version": VERSION, "step": step, "sha256": sha256}))
    if final.exists():  # the same step written again (e.g. final save after a resume)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _atomic_write_text(state_dir / "latest", name + "\n")
    old = sorted(p for p in state_dir.glob("step-*") if p.is_dir() and p.name != name)
    for path in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(path, ignore_errors=True)
    return final


BEST_DIR = "best"  # state/<stage>/best/: the weights of the lowest validation loss (LoopConfig.keep_best)


def save_best(state_dir: Path, step: int, val_loss: float, weights: dict[str, torch.Tensor]) -> Path:
    """The weights the stage would export (the EMA's when there is one) at the lowest validation loss so far,
    in state_dir/best/ (model.safetensors + meta.json with step, val_loss and sha256), written atomically."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    final, tmp = state_dir / BEST_DIR, state_dir / f".tmp-{BEST_DIR}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(_unshared(weights), str(tmp / MODEL_FILE))
    meta = {"format": FORMAT, "version": VERSION, "step": step, "val_loss": val_loss,
            "sha256": {MODEL_FILE: sha256_file(tmp / MODEL_FILE)}}
    (tmp / META_FILE).write_text(json.dumps(meta))
    old = state_dir / f".old-{BEST_DIR}"
    if final.exists():  # moved aside, then replaced: a kill in between leaves .old-best, which read_best falls back to
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def read_best(state_dir: Path, weights: bool = True) -> tuple[dict, dict[str, torch.Tensor] | None] | None:
    """(meta, weights) of state_dir/best/ (or the .old-best a kill left), None when there is none; a damaged
    one is a ResumeError."""
    for name in (BEST_DIR, f".old-{BEST_DIR}"):
        path = Path(state_dir) / name
        if not (path / META_FILE).is_file():
            continue
        try:
            meta = json.loads((path / META_FILE).read_text())
            if weights and sha256_file(path / MODEL_FILE) != meta["sha256"][MODEL_FILE]:
                raise ResumeError(f"the best-validation weights in {str(path)!r} do not match their sha256: remove "
                                  "the directory to start the best-checkpoint tracking afresh")
            return meta, (load_file(str(path / MODEL_FILE)) if weights else None)
        except (OSError, ValueError, KeyError, SafetensorError) as e:
            raise ResumeError(f"cannot read the best-validation weights in {str(path)!r}: {e}") from e
    return None


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


def read_checkpoint(path: Path, ema: bool = False, verify: bool | None = None) -> CheckpointData:
    """The weights and train state of a checkpoint, checked to be ours, of this version and intact.

    Every file is checked against the sha256 recorded when it was written; a mismatch, a
    missing or an unreadable file is a DamagedCheckpointError naming the file and the newest
    intact checkpoint. The check reads each file once more: `verify=False` skips it (files
    are then only checked to be present and readable), and so does the environment variable
    TESSERA_VERIFY_WEIGHTS=0 when `verify` is not given.
    """
    path = Path(path)
    if verify is None:
        verify = os.environ.get(VERIFY_ENV, "1").strip() != "0"
    problem = _problem(path, check_sha=verify)
    if problem is not None:
        raise _damaged(path.parent, path, problem)
    meta = json.loads((path / META_FILE).read_text())
    if meta.get("format") != FORMAT:
        raise ResumeError(f"{path} is not a Tessera training checkpoint (format={meta.get('format')!r})")
    if meta.get("version") != VERSION:
        raise ResumeError(
            f"{path} was written by train-state version {meta.get('version')}, this code reads {VERSION}"
        )
    tensors = {}
    for name in [MODEL_FILE, EMA_FILE] if ema else [MODEL_FILE]:
        try:
            tensors[name] = load_file(str(path / name))
        except (OSError, SafetensorError) as e:
            raise _damaged(path.parent, path, f"{name} cannot be read ({e})") from e
    try:
        train_state = torch.load(path / STATE_FILE, weights_only=True)  # no pickled code
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _damaged(path.parent, path, f"{STATE_FILE} cannot be read ({first_line})") from e
    return CheckpointData(tensors[MODEL_FILE], tensors.get(EMA_FILE), train_state)


def check_keys(expected: set[str], got: set[str], path: Path, what: str = "weights") -> None:
    """Refuse a checkpoint whose tensor names are not exactly the model's (never load non-strictly)."""
    missing, unexpected = sorted(expected - got), sorted(got - expected)
    if missing or unexpected:
        raise ResumeError(
            f"cannot resume from {path}: the {what} do not match this model "
            f"(missing keys {missing[:5]}, unexpected keys {unexpected[:5]})"
        )
