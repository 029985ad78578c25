"""Save and load a tokenizer directory: config.json + model.safetensors.

    config.json        {"format": "tessera.vqtok", "version": 1, "config": VQConfig.to_dict(),
                        "sha256": {"model.safetensors": hex digest}}
    model.safetensors  the VQTokenizer's state dict (never a pickle)

The sha256 of the weights is recorded when they are written and checked when they
are loaded, so a damaged or replaced file is refused at load instead of producing
garbage later; directories written before it was recorded load unchecked.

Saving is atomic: both files are written into a temporary sibling directory
that is then renamed into place, so a reader sees the old tokenizer or the new
one, never half of one.
"""

from __future__ import annotations

import hashlib
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
VERIFY_ENV = "TESSERA_VERIFY_WEIGHTS"  # "0" turns the loaders' sha256 check off by default (very large files)


def weights_path(directory: str | Path) -> Path:
    """The weights file of the tokenizer directory `directory` (whether or not it exists yet)."""
    return Path(directory) / WEIGHTS_NAME


def _sha256(path: Path) -> str:
    """The sha256 of the file at `path`, read in 1 MiB chunks (a large file is never held in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify_default(verify: bool | None) -> bool:
    """`verify` when given, else on unless the environment sets TESSERA_VERIFY_WEIGHTS=0."""
    return verify if verify is not None else os.environ.get(VERIFY_ENV, "1").strip() != "0"


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
        save_model(model, str(weights_path(tmp)), metadata={"format": FORMAT})  # save_model handles shared tensors
        meta = {"format": FORMAT, "version": VERSION, "config": model.cfg.to_dict(),
                "sha256": {WEIGHTS_NAME: _sha256(weights_path(tmp))}}  # checked by load_tokenizer
        with open(tmp / CONFIG_NAME, "w") as f:
            json.dump(meta, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
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
    return _read_config_json(directory)[0]


def _read_config_json(directory: str | Path) -> tuple[VQConfig, dict[str, str]]:
    """The VQConfig of a tokenizer directory and the sha256s recorded with it ({file name: hex digest}; empty
    for directories written before they were recorded)."""
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
    recorded = meta.get("sha256", {})  # absent in directories written before it was recorded
    if not isinstance(recorded, dict) or not all(isinstance(v, str) for v in recorded.values()):
        raise CheckpointError(f"'{path}' has a malformed \"sha256\" entry (expected {{file name: hex digest}})")
    try:
        return VQConfig.from_dict(meta["config"]), recorded
    except ConfigError as e:
        raise CheckpointError(f"'{path}': {e}") from e


def _check_sha256(weights: Path, expected: str) -> None:
    """Refuse a weights file whose sha256 is not the one recorded when it was written."""
    try:
        actual = _sha256(weights)
    except OSError as e:
        raise CheckpointError(f"cannot read '{weights}': {e}") from e
    if actual != expected:
        raise CheckpointError(f"cannot load '{weights}': the file does not match the sha256 recorded when it was "
                              "written; it is damaged or was replaced")


def _check_finite(model: nn.Module, weights: Path) -> None:
    """Refuse weights holding NaN or inf, naming the file and the first such tensor."""
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        more = f" (and {len(bad) - 1} more tensor(s))" if len(bad) > 1 else ""
        raise CheckpointError(f"cannot load '{weights}': tensor '{bad[0]}' holds non-finite values (NaN or inf)"
                              f"{more}; the weights are unusable")


def load_tokenizer(directory: str | Path, device: str | torch.device = "cpu", *,
                   verify: bool | None = None) -> VQTokenizer:
    """Load a tokenizer saved by `save_tokenizer`, in eval mode on `device`; strict about every weight.

    The weights file is checked against the sha256 recorded in config.json when it was
    written (directories without one load unchecked); the check reads the whole file once
    more, so for very large files `verify=False` skips it; when `verify` is not given, the
    environment variable TESSERA_VERIFY_WEIGHTS=0 turns it off (an explicit `verify=True`
    checks regardless). Weights holding NaN or inf are refused either way.
    """
    directory = Path(directory)
    cfg, recorded = _read_config_json(directory)
    weights = weights_path(directory)
    if not weights.is_file():
        raise CheckpointError(f"'{directory}' is not a complete tokenizer directory: {WEIGHTS_NAME} is missing")
    if WEIGHTS_NAME in recorded and _verify_default(verify):
        _check_sha256(weights, recorded[WEIGHTS_NAME])
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
    _check_finite(model, weights)
    return model.to(device).eval()


__all__ = ["CONFIG_NAME", "FORMAT", "VERIFY_ENV", "VERSION", "WEIGHTS_NAME", "load_tokenizer",
           "read_tokenizer_config", "save_tokenizer", "weights_path"]
