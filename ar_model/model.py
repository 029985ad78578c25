"""The generator: a decoder-only `transformers` Llama over the joint text + image vocabulary.

After LlamaGen (Sun et al. 2024: a plain Llama -- RMSNorm, SwiGLU, RoPE -- is a
good image generator) and Parti / CM3leon (text and image tokens in one decoder).
The model is built from a `LlamaConfig` (no pretrained weights); a saved
generator directory is an ordinary HF model directory plus the text tokenizer
files and `tessera_layout.json`, so it also loads with plain
`transformers.AutoModelForCausalLM.from_pretrained(dir)`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from ar_model.errors import CheckpointError, ConfigError
from ar_model.layout import SequenceLayout

FORMAT = "tessera.generator"
VERSION = 1
LAYOUT_FILE = "tessera_layout.json"
VERIFY_ENV = "TESSERA_VERIFY_WEIGHTS"  # "0" turns load_generator's sha256 check off by default (very large files)

# Named sizes (after DiT's DiT_models / LlamaGen's GPT_models): data, not code paths.
# intermediate_size follows LlamaGen: SwiGLU's 8/3 * hidden rounded up to a multiple of 256
# (tiny: of 128). Parameter counts depend on the layout's vocabulary: see `param_count`.
SIZES: dict[str, dict[str, int]] = {
    # tests and the CPU demo: ~1M parameters, trains on the shapes world in minutes on 2 cores;
    # 2 kv heads (grouped-query attention) so the tests exercise GQA's cache shapes
    "tiny": dict(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=384),
    # a small GPU run / a long CPU run: ~28M
    "S": dict(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=8, intermediate_size=1536),
    # LlamaGen GPT-B's width (768, 12 heads) with 16 layers: ~115M with our small vocabularies
    "B": dict(hidden_size=768, num_layers=16, num_heads=12, num_kv_heads=12, intermediate_size=2048),
    # LlamaGen GPT-L's shape: ~310M
    "L": dict(hidden_size=1024, num_layers=24, num_heads=16, num_kv_heads=16, intermediate_size=2816),
}


@dataclass(frozen=True)
class GeneratorConfig:
    """Everything that defines a generator model. Plain data: `to_dict()` / `from_dict()` round-trip JSON.

    The default dims are the "tiny" preset; `GeneratorConfig.from_size("B", layout)` picks another.
    The explicit dims are authoritative; `size` only records which preset they came from.
    """

    layout: SequenceLayout  # the sequence / vocabulary layout (fixes vocab_size and seq_len)
    size: str = "tiny"  # preset name the dims came from ("custom" when set by hand); informational
    hidden_size: int = 128  # model width; 128 keeps the CPU demo in minutes
    num_layers: int = 4  # decoder blocks
    num_heads: int = 4  # attention heads; head_dim = hidden_size / num_heads must be even (RoPE)
    num_kv_heads: int = 2  # < num_heads: grouped-query attention (smaller KV cache); == num_heads: MHA
    intermediate_size: int = 384  # SwiGLU width, ~8/3 * hidden (LlamaGen / Llama)
    # Attention-probability dropout (Llama has no residual dropout). 0.0: the CPU runs are
    # short and underfit rather than overfit; LlamaGen uses 0.1 for long runs on small data.
    dropout: float = 0.0
    # Probability that a trainer replaces a caption by the unconditional (all-[PAD]) text,
    # so one model learns both halves of classifier-free guidance (Parti / LlamaGen: 0.1).
    cond_dropout: float = 0.1
    rope_theta: float = 10000.0  # RoPE base; sequences are a few hundred tokens, Llama's default is plenty
    init_std: float = 0.02  # normal init of linear / embedding weights (GPT-2, Llama)

    def __post_init__(self) -> None:
        if isinstance(self.layout, Mapping):  # from JSON
            object.__setattr__(self, "layout", SequenceLayout.from_dict(self.layout))
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the field and the value of the first bad setting."""
        if not isinstance(self.layout, SequenceLayout):
            raise ConfigError(f"GeneratorConfig.layout must be a SequenceLayout, got {type(self.layout).__name__}")
        if not isinstance(self.size, str) or not self.size:
            raise ConfigError(f"GeneratorConfig.size must be a preset name or 'custom', got {self.size!r}")
        for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"GeneratorConfig.{name} must be an integer >= 1, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"GeneratorConfig.num_heads={self.num_heads} must divide hidden_size={self.hidden_size}"
            )
        if (self.hidden_size // self.num_heads) % 2:
            raise ConfigError(
                f"GeneratorConfig: head_dim = hidden_size / num_heads = {self.hidden_size // self.num_heads} "
                "must be even (RoPE rotates pairs of channels)"
            )
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"GeneratorConfig.num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads}"
            )
        for name in ("dropout", "cond_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ConfigError(f"GeneratorConfig.{name} must be a number in [0, 1), got {value!r}")
        for name in ("rope_theta", "init_std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"GeneratorConfig.{name} must be a number > 0, got {value!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_size(cls, size: str, layout: SequenceLayout, **overrides: Any) -> "GeneratorConfig":
        """The preset `size` (a key of SIZES) for `layout`, with any field overridden."""
        if not isinstance(size, str) or size not in SIZES:
            raise ConfigError(f"unknown generator size {size!r} (known: {', '.join(SIZES)})")
        _check_keys(overrides)
        return cls(layout=layout, size=size, **{**SIZES[size], **overrides})

    # ---------------------------------------------------------- serialization
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict; the layout nests as its own dict."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["layout"] = self.layout.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GeneratorConfig":
        """Inverse of `to_dict`; `layout` is required, other missing keys take defaults, unknown keys are refused."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"a GeneratorConfig must be a mapping of settings, got {type(d).__name__}")
        _check_keys(d)
        if "layout" not in d:
            raise ConfigError("GeneratorConfig key 'layout' is missing")
        return cls(**dict(d))

    def replace(self, **overrides: Any) -> "GeneratorConfig":
        """A validated copy with `overrides` applied; this config is left as it is."""
        _check_keys(overrides)
        return dataclasses.replace(self, **overrides)


def _check_keys(d: Mapping[str, Any]) -> None:
    known = [f.name for f in dataclasses.fields(GeneratorConfig)]
    for key in d:
        if key not in known:
            raise ConfigError(f"unknown GeneratorConfig key {key!r} (known: {', '.join(known)})")


def llama_config(cfg: GeneratorConfig) -> Any:
    """The `transformers.LlamaConfig` of a generator config."""
    from transformers import LlamaConfig

    layout = cfg.layout
    return LlamaConfig(
        vocab_size=layout.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=layout.seq_len,  # RoPE needs no table, but HF tools read this as the context size
        # transformers 5: rope_theta lives in config.rope_parameters, no longer on the config itself
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
        attention_dropout=float(cfg.dropout),
        initializer_range=cfg.init_std,
        tie_word_embeddings=False,  # input and output rows of image codes play different roles (LlamaGen unties)
        bos_token_id=layout.bos_id,
        eos_token_id=layout.eoi_id,  # [EOI] ends a sequence, for HF tools that read it
        pad_token_id=layout.pad_id,
        use_cache=True,
    )


def build_model(cfg: GeneratorConfig, seed: int | None = None) -> Any:
    """A freshly initialised `transformers.LlamaForCausalLM` for `cfg` (no pretrained weights).

    `seed` makes the initialisation reproducible without touching the global RNG.
    """
    from transformers import LlamaForCausalLM

    config = llama_config(cfg)
    if seed is None:
        return LlamaForCausalLM(config)
    with torch.random.fork_rng(devices=[]):  # leaves the caller's CPU RNG stream as it was
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def param_count(size: str | GeneratorConfig, layout: SequenceLayout | None = None) -> int:
    """Exact parameter count of a preset (with `layout`) or of a config, without building the model."""
    cfg = size if isinstance(size, GeneratorConfig) else None
    if cfg is None:
        if layout is None:
            raise ConfigError("param_count(size, layout) needs the layout: the vocabulary size changes the count")
        cfg = GeneratorConfig.from_size(size, layout)
    h, hd, v = cfg.hidden_size, cfg.head_dim, cfg.layout.vocab_size
    attn = h * cfg.num_heads * hd + 2 * h * cfg.num_kv_heads * hd + cfg.num_heads * hd * h  # q, k, v, o (no bias)
    mlp = 3 * h * cfg.intermediate_size  # gate, up, down (SwiGLU)
    per_layer = attn + mlp + 2 * h  # + two RMSNorm weights
    return v * h + cfg.num_layers * per_layer + h + h * v  # embed, blocks, final norm, untied lm_head


# --------------------------------------------------------------------------- checkpoints
@dataclass
class LoadedGenerator:
    """What `load_generator` returns."""

    model: Any  # transformers.LlamaForCausalLM, in eval mode, on the requested device
    cfg: GeneratorConfig
    tokenizer: Any  # the text tokenizer saved beside the model
    layout: SequenceLayout  # == cfg.layout


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """Strip DDP / FSDP-style `.module` and torch.compile's `._orig_mod` wrappers (keys stay clean)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel) or (
            hasattr(model, "module") and isinstance(getattr(model, "module"), torch.nn.Module)
        ):
            model = model.module
        else:
            return model


@contextlib.contextmanager
def _transformers_progress(enabled: bool) -> Iterator[None]:
    """With `enabled=False`, turn transformers' tqdm bars ("Writing model shards", "Loading weights") off
    for the block and restore the previous setting afterwards; with True, leave the setting as it is.

    The setting is process-global (transformers' `utils.logging`, which also switches huggingface_hub's
    bars), so other threads see the change while the block runs.
    """
    if enabled:
        yield
        return
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _sha256(path: Path) -> str:
    """The sha256 of the file at `path`, read in 1 MiB chunks (a large file is never held in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_generator(
    model: torch.nn.Module,
    cfg: GeneratorConfig,
    tokenizer: Any,
    path: str | os.PathLike,
    *,
    progress: bool = True,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write a generator directory atomically: HF model files, text tokenizer files, tessera_layout.json.

    The directory is written under a temporary name beside `path` and renamed into
    place when complete; an existing directory at `path` is replaced only then.
    `progress=False` hides transformers' progress bars for this call only.
    `extra_files` ({name: text}) are written into the directory with the rest (e.g. a
    caller's recommended sampling settings), so they appear together or not at all.
    The sha256 of each weights file (*.safetensors) is recorded in tessera_layout.json
    for `load_generator` to check.
    """
    path = Path(path)
    model = unwrap_model(model)
    if model.config.vocab_size != cfg.layout.vocab_size:
        raise ConfigError(
            f"model vocab_size={model.config.vocab_size} does not match the layout's vocab_size={cfg.layout.vocab_size}"
        )
    if len(tokenizer) != cfg.layout.text_vocab:
        raise ConfigError(
            f"len(tokenizer)={len(tokenizer)} does not match the layout's text_vocab={cfg.layout.text_vocab}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if tmp.exists():  # left over from a save killed while writing
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        with _transformers_progress(progress):
            model.save_pretrained(str(tmp))  # config.json + model.safetensors (+ generation_config.json)
            tokenizer.save_pretrained(str(tmp))  # tokenizer.json + tokenizer_config.json
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "generator": cfg.to_dict(),  # includes the layout
            "token_ids": cfg.layout.token_ids(),  # derived, for readers; recomputed on load
            "tokenizer": {"path": ".", "class": type(tokenizer).__name__, "len": len(tokenizer)},
            # checked by load_generator; every weights file, should save_pretrained have sharded them
            "sha256": {f.name: _sha256(f) for f in sorted(tmp.glob("*.safetensors"))},
        }
        (tmp / LAYOUT_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        if path.exists():
            os.replace(path, old)  # directories cannot be replaced in one rename; move the old one aside first
        os.replace(tmp, path)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_generator_config(path: str | os.PathLike) -> GeneratorConfig:
    """The GeneratorConfig (and layout) of a generator directory, without loading any weights."""
    return _read_layout_file(Path(path))[0]


def _read_layout_file(path: Path) -> tuple[GeneratorConfig, dict[str, str]]:
    """The GeneratorConfig of a generator directory and the sha256s recorded with it ({file name: hex digest};
    empty for directories written before they were recorded)."""
    if not path.is_dir():
        what = "is a file, not a directory" if path.exists() else "does not exist"
        raise CheckpointError(f"generator directory {str(path)!r} {what}")
    meta_file = path / LAYOUT_FILE
    if not meta_file.is_file():
        raise CheckpointError(
            f"{str(path)!r} is not a Tessera generator directory: it has no {LAYOUT_FILE} "
            "(written by ar_model.save_generator)"
        )
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {str(meta_file)!r}: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"{str(meta_file)!r} has format {got!r}, expected {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise CheckpointError(
            f"{str(meta_file)!r} has version {meta.get('version')!r}; this code reads version {VERSION}"
        )
    recorded = meta.get("sha256", {})
    if not isinstance(recorded, dict) or not all(isinstance(v, str) for v in recorded.values()):
        raise CheckpointError(f"{str(meta_file)!r} has a malformed \"sha256\" entry "
                              "(expected {file name: hex digest})")
    try:
        return GeneratorConfig.from_dict(meta.get("generator")), recorded
    except ConfigError as e:
        raise CheckpointError(f"{str(meta_file)!r}: {e}") from e


def _check_sha256(path: Path, recorded: dict[str, str]) -> None:
    """Refuse weights files whose sha256 is not the one recorded when they were written (a missing file is
    left to the loader, which names it)."""
    for name, expected in recorded.items():
        file = path / name
        if not file.is_file():
            continue
        try:
            actual = _sha256(file)
        except OSError as e:
            raise CheckpointError(f"cannot read {str(file)!r}: {e}") from e
        if actual != expected:
            raise CheckpointError(f"cannot load {str(file)!r}: the file does not match the sha256 recorded when it "
                                  "was written; it is damaged or was replaced")


def _check_finite(model: torch.nn.Module, path: Path) -> None:
    """Refuse weights holding NaN or inf, naming the file and the first such tensor."""
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        file = path / "model.safetensors"
        where = file if file.is_file() else path  # sharded weights: the directory
        more = f" (and {len(bad) - 1} more tensor(s))" if len(bad) > 1 else ""
        raise CheckpointError(f"cannot load {str(where)!r}: tensor {bad[0]!r} holds non-finite values (NaN or inf)"
                              f"{more}; the weights are unusable")


def load_generator(
    path: str | os.PathLike,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    *,
    progress: bool = True,
    verify: bool | None = None,
) -> LoadedGenerator:
    """Load a directory written by `save_generator`: model (eval mode, on `device`), config, tokenizer, layout.

    Every weight must be present and of the right shape (no silent re-initialisation).
    `progress=False` hides transformers' progress bars for this call only.
    The weights files are checked against the sha256s recorded in tessera_layout.json when
    they were written (directories without them load unchecked); the check reads every file
    once more, so for very large files `verify=False` skips it; when `verify` is not given,
    the environment variable TESSERA_VERIFY_WEIGHTS=0 turns it off (an explicit
    `verify=True` checks regardless). Weights holding NaN or inf are refused either way.
    """
    from transformers import LlamaForCausalLM

    from ar_model.text import load_text_tokenizer

    path = Path(path)
    cfg, recorded = _read_layout_file(path)
    layout = cfg.layout
    if verify is None:
        verify = os.environ.get(VERIFY_ENV, "1").strip() != "0"
    if verify:
        _check_sha256(path, recorded)
    try:
        with _transformers_progress(progress):
            model, info = LlamaForCausalLM.from_pretrained(
                str(path), local_files_only=True, output_loading_info=True, dtype=dtype
            )
    except Exception as e:
        raise CheckpointError(f"cannot load the model weights of {str(path)!r}: {type(e).__name__}: {e}") from e
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        raise CheckpointError(f"the weights in {str(path)!r} do not match its config: {problems}")
    expected = llama_config(cfg)
    for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                 "intermediate_size"):
        if getattr(model.config, name) != getattr(expected, name):
            raise CheckpointError(
                f"{str(path)!r}: config.json {name}={getattr(model.config, name)} disagrees with {LAYOUT_FILE} "
                f"({getattr(expected, name)})"
            )
    _check_finite(model, path)
    tokenizer = load_text_tokenizer(path)
    if len(tokenizer) != layout.text_vocab:
        raise CheckpointError(
            f"{str(path)!r}: the saved text tokenizer has {len(tokenizer)} tokens but the layout expects "
            f"text_vocab={layout.text_vocab}"
        )
    model.to(device)
    model.eval()  # inference by default; a trainer calls model.train() itself
    return LoadedGenerator(model=model, cfg=cfg, tokenizer=tokenizer, layout=layout)


__all__ = [
    "FORMAT",
    "LAYOUT_FILE",
    "SIZES",
    "VERIFY_ENV",
    "VERSION",
    "GeneratorConfig",
    "LoadedGenerator",
    "build_model",
    "llama_config",
    "load_generator",
    "param_count",
    "read_generator_config",
    "save_generator",
    "unwrap_model",
]
