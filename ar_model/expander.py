"""The prompt expander: a small causal language model that rewrites a prompt as a complete description.

A prompt such as "three red circles" or "a red circle above a blue square" leaves most of the
picture free; the generator then has to count, place and bind while it writes image codes in
raster order. The expander moves that work into text, where a language model does it well: it
reads the prompt and writes one complete description that satisfies it (every object's size,
colour, shape and cell, in the order the prompt names them: "a large red circle in the top left,
a small red circle in the top right and ..."), and the generator renders that description as it
renders any complete caption. This is caption upsampling (DALL-E 3 rewrites prompts with a
language model) and LLM-grounded layout (LMD, LayoutGPT) at the scale of the shapes world: the
expander is trained here from nothing, on the generator's own training scenes (train/expander_stage.py).

One sequence per (prompt, plan) pair, over the run's text tokenizer plus two ids of our own:

    [BOS] prompt ids [SEP] plan ids [EOS]        [SEP] = len(text tokenizer)
    [BOS] prompt ids [SEP] [SAME] [EOS]          [SAME] = len(text tokenizer) + 1

[SAME] is the plan of a prompt that is complete already (every object's colour, shape and cell named):
the generator reads such a prompt as written, so the expander never has to copy a list of 16 objects.

right-padded with [PAD] for training (loss on the plan and its [EOS] only), left-padded for
generation. The model is a `transformers.LlamaForCausalLM` built from a config (no pretrained
weights) and sampled with the library's `generate`. A saved expander is a directory of HF model
files (safetensors), the text tokenizer and tessera_expander.json (format, version, config,
sha256 of the weights).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch

from ar_model.errors import CheckpointError, ConfigError
from ar_model.model import _check_finite, _check_sha256, _sha256, _transformers_progress, unwrap_model

FORMAT = "tessera.expander"
VERSION = 1
META_FILE = "tessera_expander.json"
IGNORE = -100  # labels the loss skips (torch's cross_entropy ignore_index, which transformers uses)


@dataclass(frozen=True)
class ExpanderConfig:
    """The expander's shape and its text lengths (prompt and plan, in text tokens)."""

    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 768
    prompt_len: int = 160  # longer prompts are cut (with a warning from the pipeline)
    plan_len: int = 192  # a complete description of 16 objects is ~130 tokens with place tokens
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type == "int" and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(f"expander {f.name} must be an integer >= 1, got {v!r}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"expander hidden_size {self.hidden_size} is not a multiple of num_heads "
                              f"{self.num_heads}")

    @classmethod
    def from_dict(cls, d: dict) -> "ExpanderConfig":
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"unknown ExpanderConfig key {unknown[0]!r} (known: {', '.join(f.name for f in fields(cls))})")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


class Ids(NamedTuple):
    """The expander's special ids for a text tokenizer (its own [PAD] [BOS] [EOS]; [SEP] and [SAME] after its
    vocabulary)."""

    pad: int
    bos: int
    eos: int
    sep: int
    same: int
    vocab: int  # the model's vocabulary: the text tokenizer's, [SEP] and [SAME]

    @classmethod
    def of(cls, tok: Any) -> "Ids":
        if None in (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id):
            raise ConfigError("the expander needs a text tokenizer with [PAD], [BOS] and [EOS] tokens "
                              "(ar_model.train_text_tokenizer makes one)")
        return cls(tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, len(tok), len(tok) + 1, len(tok) + 2)


def build_expander(cfg: ExpanderConfig, ids: Ids, seed: int | None = None) -> Any:
    """A freshly initialised `transformers.LlamaForCausalLM` for `cfg` (seeded without touching the global RNG)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=ids.vocab, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.prompt_len + cfg.plan_len + 3, initializer_range=cfg.init_std,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=ids.bos, eos_token_id=ids.eos, pad_token_id=ids.pad, tie_word_embeddings=True, use_cache=True,
    )
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def _text_ids(tok: Any, texts: Sequence[str], limit: int) -> tuple[list[list[int]], list[bool]]:
    """Each text's ids without specials, cut to `limit`, and whether it was cut."""
    ids = tok(list(texts), add_special_tokens=False)["input_ids"] if len(texts) else []
    return [x[:limit] for x in ids], [len(x) > limit for x in ids]


def encode_pairs(tok: Any, cfg: ExpanderConfig, prompts: Sequence[str],
                 plans: Sequence[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """Training rows: ids (N, L) int32 right-padded with [PAD], and the length of each row's prompt part
    ([BOS] prompt [SEP]) (N,) int32; L = prompt_len + plan_len + 3. A plan of None is [SAME]."""
    ids = Ids.of(tok)
    p, _ = _text_ids(tok, prompts, cfg.prompt_len)
    q, cut = _text_ids(tok, [x or "" for x in plans], cfg.plan_len)
    q = [[ids.same] if x is None else y for x, y in zip(plans, q)]
    if any(cut):
        raise ConfigError(f"{sum(cut)} plan(s) are longer than plan_len={cfg.plan_len} text tokens: raise "
                          "model.plan_len")
    out = torch.full((len(p), cfg.prompt_len + cfg.plan_len + 3), ids.pad, dtype=torch.int32)
    heads = torch.zeros(len(p), dtype=torch.int32)
    for i, (a, b) in enumerate(zip(p, q)):
        row = [ids.bos, *a, ids.sep, *b, ids.eos]
        out[i, : len(row)] = torch.tensor(row, dtype=torch.int32)
        heads[i] = len(a) + 2
    return out, heads


def pair_loss(model: Any, rows: torch.Tensor, heads: torch.Tensor, pad: int) -> torch.Tensor:
    """Mean next-token cross-entropy over the plan tokens and [EOS] of right-padded rows (B, L), trimmed to the
    longest row of the batch first."""
    lengths = (rows != pad).sum(1)
    rows = rows[:, : int(lengths.max())].long()
    pos = torch.arange(rows.shape[1], device=rows.device)
    labels = rows.masked_fill((pos[None] < heads[:, None].to(rows.device)) | (pos[None] >= lengths[:, None]), IGNORE)
    mask = (pos[None] < lengths[:, None]).long()
    # transformers shifts the labels itself (token t is predicted from tokens < t)
    return model(input_ids=rows, attention_mask=mask, labels=labels).loss


class Expanded(NamedTuple):
    plans: list[str]  # one complete description per prompt (the prompt itself where the expander said [SAME])
    truncated: list[bool]  # whether the prompt was cut to prompt_len tokens
    same: list[bool]  # whether the expander found the prompt complete already ([SAME])


@torch.inference_mode()
def expand(model: Any, tok: Any, cfg: ExpanderConfig, prompts: Sequence[str], temperature: float = 0.0,
           seed: int | None = 0, batch_size: int = 64) -> Expanded:
    """Each prompt rewritten as a complete description: greedy (temperature 0) or sampled at `temperature`
    (seeded by `seed` + batch index, without touching the caller's RNG)."""
    ids = Ids.of(tok)
    device = next(model.parameters()).device
    p, cut = _text_ids(tok, prompts, cfg.prompt_len)
    plans: list[str] = []
    same: list[bool] = []
    for b, start in enumerate(range(0, len(p), batch_size)):
        chunk = [[ids.bos, *x, ids.sep] for x in p[start : start + batch_size]]
        width = max(map(len, chunk))
        inp = torch.tensor([[ids.pad] * (width - len(x)) + x for x in chunk], device=device)  # left-padded
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in chunk], device=device)
        with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
            if seed is not None:
                torch.manual_seed(seed + b)
            out = model.generate(
                input_ids=inp, attention_mask=mask, max_new_tokens=cfg.plan_len + 1, do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None, top_k=None, top_p=None,
                eos_token_id=ids.eos, pad_token_id=ids.pad,
            )
        for i, row in enumerate(out[:, width:].tolist()):
            row = row[: row.index(ids.eos)] if ids.eos in row else row
            same.append(bool(row) and row[0] == ids.same)
            plans.append(prompts[start + i] if same[-1] else
                         tok.decode([t for t in row if t < ids.sep and t != ids.pad], skip_special_tokens=True).strip())
    return Expanded(plans, cut, same)


class LoadedExpander(NamedTuple):
    model: Any
    cfg: ExpanderConfig
    tokenizer: Any


def save_expander(model: torch.nn.Module, cfg: ExpanderConfig, tokenizer: Any, path: str | os.PathLike,
                  extra: dict | None = None) -> Path:
    """Write an expander directory atomically (a temporary name renamed into place): HF model files
    (safetensors), the text tokenizer, tessera_expander.json (with `extra`, e.g. the sampling temperature)."""
    path = Path(path)
    model = unwrap_model(model)
    if model.config.vocab_size != Ids.of(tokenizer).vocab:
        raise ConfigError(f"model vocab_size={model.config.vocab_size} is not the tokenizer's {len(tokenizer)} + 2")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with _transformers_progress(False):
            model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
        meta = {"format": FORMAT, "version": VERSION, "expander": cfg.to_dict(), **(extra or {}),
                "sha256": {f.name: _sha256(f) for f in sorted(tmp.glob("*.safetensors"))}}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_expander_meta(path: str | os.PathLike) -> dict:
    """tessera_expander.json of an expander directory, checked for format and version."""
    path = Path(path)
    meta_file = path / META_FILE
    if not meta_file.is_file():
        raise CheckpointError(f"{str(path)!r} is not a Tessera expander directory: it has no {META_FILE}")
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {str(meta_file)!r}: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{str(meta_file)!r} has format {meta.get('format') if isinstance(meta, dict) else None!r}, "
                              f"expected {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{str(meta_file)!r} has version {meta.get('version')!r}; this code reads version {VERSION}")
    return meta


def load_expander(path: str | os.PathLike, device: torch.device | str = "cpu") -> LoadedExpander:
    """Load a directory written by `save_expander` (eval mode, on `device`); refuses changed or non-finite weights."""
    from transformers import LlamaForCausalLM

    from ar_model.text import load_text_tokenizer

    path = Path(path)
    meta = read_expander_meta(path)
    try:
        cfg = ExpanderConfig.from_dict(meta.get("expander") or {})
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{str(path / META_FILE)!r}: {e}") from e
    _check_sha256(path, meta.get("sha256") or {})
    tok = load_text_tokenizer(path)
    try:
        with _transformers_progress(False):
            model = LlamaForCausalLM.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
    except Exception as e:  # transformers raises OSError / ValueError depending on what is missing
        raise CheckpointError(f"cannot load the expander weights in {str(path)!r}: {type(e).__name__}: {e}") from e
    if model.config.vocab_size != Ids.of(tok).vocab:
        raise CheckpointError(f"{str(path)!r}: the weights' vocabulary ({model.config.vocab_size}) is not the "
                              f"tokenizer's {len(tok)} + 2")
    _check_finite(model, path)
    return LoadedExpander(model.to(device).eval(), cfg, tok)


__all__ = ["ExpanderConfig", "Expanded", "Ids", "LoadedExpander", "build_expander", "encode_pairs", "expand",
           "load_expander", "pair_loss", "read_expander_meta", "save_expander"]
