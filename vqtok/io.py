"""Save and load a tokenizer directory: config.json + model.safetensors.

    config.json        {"format": "tessera.vqtok", "version": 1, "config": VQConfig.to_dict()}
    model.safetensors  the VQTokenizer's state dict (never a pickle)

Saving is atomic: both files are written into a temporary sibling directory
that is then renamed into place, so a reader sees the old tokenizer or the new
one, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from vqtok.config import VQConfig
from vqtok.errors import CheckpointError, ConfigError
from vqtok.model import VQTokenizer

FORMAT = "tessera.vqtok"
VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def weights_path(directory: str | Path) -> Path:
    """The weights file of the tokenizer directory `directory` (whether or not it exists yet)."""
    return Path(directory) / WEIGHTS_NAME


def _unwrap(model: nn.Module) -> nn.Module:
    """Strip torch.compile (`_orig_mod`) and DDP/FSDP-style (`module`) wrappers so keys stay plain."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif not isinstance(model, VQTokenizer) and isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        else:
            return model


def save_tokenizer(model: nn.Module, directory: str | Path) -> Path:
    """Write `model` (a VQTokenizer, possibly compiled / DDP-wrapped) to `directory`, atomically."""
    model = _unwrap(model)
    if not isinstance(model, VQTokenizer):
        raise TypeError(f"save_tokenizer expects a VQTokenizer, got {type(model).__name__}")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"cannot save the tokenizer to '{directory}': it exists and is not a directory")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = directory.with_name(f".{directory.name}.tmp-{tag}")
    tmp.mkdir()
    try:
        meta = {"format": FORMAT, "version": VERSION, "config": model.cfg.to_dict()}
        with open(tmp / CONFIG_NAME, "w") as f:
            json.dump(meta, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        save_model(model, str(weights_path(tmp)), metadata={"format": FORMAT})  # save_model handles shared tensors
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{tag}")
            os.replace(directory, old)  # the old checkpoint steps aside ...
            try:
                os.replace(tmp, directory)  # ... the new one takes its place ...
            except BaseException:
                os.replace(old, directory)  # ... or the old one comes back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def read_tokenizer_config(directory: str | Path) -> VQConfig:
    """The VQConfig of a saved tokenizer directory, checked as `load_tokenizer` checks it."""
    directory = Path(directory)
    if not directory.exists():
        raise CheckpointError(f"tokenizer directory '{directory}' does not exist")
    if not directory.is_dir():
        raise CheckpointError(f"tokenizer path '{directory}' is not a directory (expected {CONFIG_NAME} + "
                              f"{WEIGHTS_NAME} inside)")
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"'{directory}' is not a tokenizer directory: {CONFIG_NAME} is missing")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read '{path}' as JSON: {e}") from e
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt != FORMAT:
        raise CheckpointError(f"'{path}' is not a Tessera tokenizer config (format {fmt!r}, expected {FORMAT!r})")
    if meta.get("version") != VERSION:
        raise CheckpointError(
            f"'{path}' is tokenizer format version {meta.get('version')!r}; this code reads version {VERSION}"
        )
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"'{path}' has no \"config\" object")
    try:
        return VQConfig.from_dict(meta["config"])
    except ConfigError as e:
        raise CheckpointError(f"'{path}': {e}") from e


def load_tokenizer(directory: str | Path, device: str | torch.device = "cpu") -> VQTokenizer:
    """Load a tokenizer saved by `save_tokenizer`, in eval mode on `device`; strict about every weight."""
    directory = Path(directory)
    cfg = read_tokenizer_config(directory)
    weights = weights_path(directory)
    if not weights.is_file():
        raise CheckpointError(f"'{directory}' is not a complete tokenizer directory: {WEIGHTS_NAME} is missing")
    model = VQTokenizer(cfg)
    try:
        with safe_open(str(weights), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            aliases = f.metadata() or {}  # save_model records dropped tied names: {dropped: kept}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read '{weights}' as safetensors: {e}") from e
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(k for k in expected if k not in shapes and aliases.get(k) not in shapes)
    unexpected = sorted(k for k in shapes if k not in expected)
    wrong = [f"{k} {shapes[k]} in file, {v} in model" for k, v in expected.items() if k in shapes and shapes[k] != v]
    if missing or unexpected or wrong:
        problems = []
        if wrong:
            problems.append(f"{len(wrong)} shape mismatch(es), e.g. {'; '.join(wrong[:3])}")
        if missing:
            problems.append(f"missing {len(missing)} key(s), e.g. {', '.join(missing[:3])}")
        if unexpected:
            problems.append(f"unexpected {len(unexpected)} key(s), e.g. {', '.join(unexpected[:3])}")
        raise CheckpointError(f"weights '{weights}' do not match {CONFIG_NAME}: {' | '.join(problems)}")
    load_model(model, str(weights), strict=True)  # restores tied tensors the way save_model dropped them
    return model.to(device).eval()


__all__ = ["CONFIG_NAME", "FORMAT", "VERSION", "WEIGHTS_NAME", "load_tokenizer", "read_tokenizer_config",
           "save_tokenizer", "weights_path"]
