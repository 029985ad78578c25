"""Sampling image codes from the generator: prefill, decode one token at a time, guidance on the logits.

After LlamaGen's `prefill` / `decode_one_token` / `generate` split. With
classifier-free guidance (Ho & Salimans 2022; Parti, LlamaGen) the conditional
and unconditional (all-[PAD] text) rows run in ONE batch of 2B -- rows [0, B)
conditional, rows [B, 2B) unconditional -- and are mixed on the logits:

    logits = uncond + (cond - uncond) * scale

Both halves are fed the same sampled token at every step. With `cfg_scale == 1`
the mix equals the conditional logits, so the unconditional half is skipped.

With images in context (a layout's context_images, for editing) guidance is over both
conditions, as InstructPix2Pix does: the "unconditional" half drops only the text (the
image kept), and with `image_cfg_scale != 1` a third block of rows drops both:

    logits = none + image_cfg_scale * (image - none) + cfg_scale * (both - image)

With no image in context (text-to-image) the image-only rows are the unconditional rows
and this is the formula above.
Logits are restricted to the image vocabulary before any filtering, so a sample
is always a valid code; a layout's row tokens are fed, never sampled, and sampling draws from a `torch.Generator` seeded by
`SampleConfig.seed`: the same seed gives the same codes whatever the global RNG.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from einops import rearrange

from ar_model.errors import ConfigError
from ar_model.jacobi import INITS, generate_jacobi
from ar_model.zipar import generate_zipar
from ar_model.layout import SequenceLayout, absent_context, build_prefix, padding_mask, unconditional_text


DECODERS = ("plain", "jacobi", "zipar")
CACHES = ("dynamic", "static")
_COMPILED: dict[int, Any] = {}  # id(model) -> its torch.compile'd forward (compiled once per model and shape)
MAX_GUIDANCE = 1000.0
MIN_TEMPERATURE = 1e-4


@dataclass(frozen=True)
class SampleConfig:
    """How to sample. Plain data: `to_dict()` / `from_dict()` round-trip JSON."""

    # Guidance scale; 1 = no guidance (the unconditional half is skipped). Light guidance and a low
    # temperature scored best on the small CPU-preset models (benchmarks/faithfulness_sweep.py,
    # docs/RESULTS.md): guidance 3 hurt them badly. Guidance trades diversity for faithfulness
    # (LlamaGen's text-to-image setting is 7.5), so sweep it per model. These are the recommended
    # settings a trained run records unless its stage config's `sample` section says otherwise.
    cfg_scale: float = 1.5
    # Guidance over the context image(s) (editing layouts only; see the module docstring); 1 = none
    image_cfg_scale: float = 1.0
    temperature: float = 0.5  # 1 = the model's distribution; 0 = greedy (argmax)
    top_k: int = 0  # keep the k most likely codes; 0 = off, 1 = greedy
    top_p: float = 1.0  # nucleus: keep the smallest set with mass >= top_p; 1.0 = off
    # min-p: keep the codes at least min_p times as likely as the best one (after temperature); 0 = off.
    # Unlike top-p it keeps a legitimately spread choice (an object's start cell when the prompt leaves it
    # free: 1 / 16 against 15 / 16) while cutting the long tail a temperature of 1 would draw from.
    min_p: float = 0.0
    seed: int | None = 0  # seeds the sampler's own torch.Generator; None = a fresh random seed
    use_cache: bool = True  # KV cache; False recomputes the whole prefix each step (slow reference)
    # "plain": one code per forward pass; "jacobi": speculative Jacobi decoding (ar_model.jacobi), several codes
    # per pass, the same distribution (greedy: the same codes)
    decoder: str = "plain"
    jacobi_window: int = 16  # draft codes scored per pass
    jacobi_init: str = "random"  # new drafts: "random" (uniform) or "above" (the code one row up)
    # "zipar": parallel row decoding (ar_model.zipar): row r + 1 starts once row r holds this many more codes than
    # it; changes the distribution (>= the grid's width: plain decoding)
    zipar_window: int = 2
    # the plain and jacobi decoders' KV cache: "dynamic" (grows token by token) or "static" (transformers'
    # StaticCache: preallocated, fixed shapes); `compile` runs their passes through torch.compile (static only)
    cache: str = "dynamic"
    compile: bool = False
    # rewrite each prompt with the run's prompt expander (ar_model.expander) before the generator reads it: a
    # complete description of a scene the prompt allows. Read by the pipeline (pipelines.ARPipeline), not here.
    expand: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the field and the value of the first bad setting."""
        # bounds that keep float32 logits finite: guidance x logit gaps and logits / temperature stay far
        # below 3e38 (a scale of 1e38 or a temperature of 1e-300 overflowed to NaN probabilities)
        for name in ("cfg_scale", "image_cfg_scale"):
            _number(self, name, lambda v: abs(v) <= MAX_GUIDANCE, f"a number in [-{MAX_GUIDANCE}, {MAX_GUIDANCE}]")
        _number(self, "temperature", lambda v: v == 0 or v >= MIN_TEMPERATURE,
                f"0 (greedy) or a number >= {MIN_TEMPERATURE}")
        _number(self, "top_p", lambda v: 0 < v <= 1, "a number in (0, 1]")
        _number(self, "min_p", lambda v: 0 <= v < 1, "a number in [0, 1) (0 = off)")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ConfigError(f"SampleConfig.top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ConfigError(f"SampleConfig.seed must be an integer or null, got {self.seed!r}")
        if not isinstance(self.use_cache, bool):
            raise ConfigError(f"SampleConfig.use_cache must be true or false, got {self.use_cache!r}")
        if self.decoder not in DECODERS:
            raise ConfigError(f"SampleConfig.decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        if isinstance(self.jacobi_window, bool) or not isinstance(self.jacobi_window, int) or self.jacobi_window < 1:
            raise ConfigError(f"SampleConfig.jacobi_window must be an integer >= 1, got {self.jacobi_window!r}")
        if isinstance(self.zipar_window, bool) or not isinstance(self.zipar_window, int) or self.zipar_window < 1:
            raise ConfigError(f"SampleConfig.zipar_window must be an integer >= 1, got {self.zipar_window!r}")
        if self.jacobi_init not in INITS:
            raise ConfigError(f"SampleConfig.jacobi_init must be one of {', '.join(INITS)}, got {self.jacobi_init!r}")
        if self.cache not in CACHES:
            raise ConfigError(f"SampleConfig.cache must be one of {', '.join(CACHES)}, got {self.cache!r}")
        if not isinstance(self.expand, bool):
            raise ConfigError(f"SampleConfig.expand must be true or false, got {self.expand!r}")
        if not isinstance(self.compile, bool):
            raise ConfigError(f"SampleConfig.compile must be true or false, got {self.compile!r}")
        if self.compile and self.cache != "static":
            raise ConfigError("SampleConfig.compile needs the static cache (cache 'static'): fixed shapes")
        if self.cache == "static" and (self.decoder not in ("plain", "jacobi") or not self.use_cache):
            raise ConfigError("SampleConfig.cache 'static' is for the plain and jacobi decoders with the KV cache")
        if self.decoder != "plain" and not self.use_cache:
            raise ConfigError(f"SampleConfig.decoder {self.decoder!r} needs the KV cache (use_cache true)")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    @classmethod
    def greedy(cls, **overrides: Any) -> "SampleConfig":
        """Argmax decoding (top_k = 1), with any other field overridden (e.g. cfg_scale)."""
        return cls(**{"top_k": 1, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SampleConfig":
        known = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in known:
                raise ConfigError(f"unknown SampleConfig key {key!r} (known: {', '.join(known)})")
        return cls(**dict(d))

    def replace(self, **overrides: Any) -> "SampleConfig":
        return SampleConfig.from_dict({**self.to_dict(), **overrides})


def _number(sc: SampleConfig, name: str, ok: Any, rule: str) -> None:
    value = getattr(sc, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ConfigError(f"SampleConfig.{name} must be {rule}, got {value!r}")


# --------------------------------------------------------------------------- logits -> codes
def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> torch.Tensor:
    """Set logits outside the top-k / nucleus (top-p) / min-p set to -inf; (B, K) -> (B, K). Always keeps the best."""
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1) the k-th largest
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        # after: Holtzman et al. 2020 (nucleus sampling); the HF / LlamaGen sort-and-cumsum form
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, K)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # mass of the strictly better codes
        drop_sorted = mass_before >= top_p  # the first code has mass_before 0 and is always kept
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to code order
        logits = logits.masked_fill(drop, float("-inf"))
    if min_p > 0.0:
        # transformers' warper (Nguyen et al. 2024, min-p sampling); it ignores input_ids
        from transformers import MinPLogitsWarper

        logits = MinPLogitsWarper(min_p)(None, logits)
    return logits


def sample_from_logits(logits: torch.Tensor, sc: SampleConfig, generator: torch.Generator) -> torch.Tensor:
    """Draw one code per row from (already guided) image logits (B, K) -> (B,) long."""
    if sc.is_greedy:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits / sc.temperature, sc.top_k, sc.top_p, sc.min_p)
    probs = logits.softmax(dim=-1)  # (B, K)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)  # (B,)


def guided_image_logits(
    logits: torch.Tensor, layout: SequenceLayout, cfg_scale: float, guided: bool, image_cfg_scale: float | None = None
) -> torch.Tensor:
    """Full-vocabulary last-position logits (B', V) -> image logits (B, K) in float32, guidance applied.

    Rows: [0, B) conditional, [B, 2B) without the text; with `image_cfg_scale` also [2B, 3B) without
    text or context images (module docstring).
    """
    logits = logits[:, layout.image_offset : layout.image_offset + layout.codebook_size].float()  # (B', K)
    if not guided:
        return logits
    if image_cfg_scale is None:
        cond, uncond = logits.chunk(2, dim=0)
        return uncond + (cond - uncond) * cfg_scale  # (B, K)
    both, image, none = logits.chunk(3, dim=0)
    return none + (image - none) * image_cfg_scale + (both - image) * cfg_scale  # (B, K)


# --------------------------------------------------------------------------- model calls
def prefill(model: Any, input_ids: torch.Tensor, cache: Any | None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Run the whole prompt (B', P) once, filling `cache` if given; returns the last position's logits (B', V).

    `mask` (B', P): the attention mask of a layout with mask_padding (layout.padding_mask), else None.
    """
    # transformers 5.x: the KV cache is passed as `cache=` (`past_key_values=` is deprecated, removed in 5.40)
    out = model(input_ids=input_ids, attention_mask=mask, cache=cache, use_cache=cache is not None, logits_to_keep=1)
    return out.logits[:, -1]  # (B', V)


def decode_one_token(model: Any, token: torch.Tensor, cache: Any, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Feed the new token(s) of each row (B', 1) -- or (B', 2): a code and a [ROW r] -- through the KV
    cache; returns the last one's logits (B', V). `mask` (B', cached + new): as for prefill."""
    out = model(input_ids=token, attention_mask=mask, cache=cache, use_cache=True)  # positions continue from the cache
    return out.logits[:, -1]  # (B', V)


def _device_of(model: Any) -> torch.device:
    return next(model.parameters()).device


def generate(
    model: Any, layout: SequenceLayout, text_ids: torch.Tensor, sc: SampleConfig | None = None,
    context: torch.Tensor | None = None, stats: dict | None = None,
) -> torch.Tensor:
    """Sample image codes for text ids (B, text_len) -> codes (B, h, w) long in [0, codebook_size).

    context: the images in context, (B, context_images, h, w) codes, for a layout with
    context_images (editing); ABSENT marks one absent, None = all absent (text-to-image).
    The model runs in eval mode (dropout off) and is put back in its former mode
    afterwards. The codes come back on the model's device, as an ordinary tensor.
    `stats`, when given, gets "forward_passes" added: the sequential model calls made (prefill included).
    """
    sc = sc if sc is not None else SampleConfig()
    was_training = model.training
    model.eval()  # disables attention dropout
    try:
        with torch.inference_mode():
            codes = _generate(model, layout, text_ids, sc, context, stats)
    finally:
        model.train(was_training)
    # a clone outside inference mode: callers may edit the codes in place or use them under autograd
    return codes.clone()


def _generate(
    model: Any, layout: SequenceLayout, text_ids: torch.Tensor, sc: SampleConfig, context: torch.Tensor | None,
    stats: dict | None = None,
) -> torch.Tensor:
    from transformers import DynamicCache

    device = _device_of(model)
    text_ids = text_ids.to(device)
    b = text_ids.shape[0]
    if layout.context_images:
        context = absent_context(b, layout, device) if context is None else context.to(device)
    image_guided = layout.context_images > 0 and sc.image_cfg_scale != 1.0
    # scale 1 gives the conditional logits: skip the unconditional half (unless the image is guided)
    guided = sc.cfg_scale != 1.0 or image_guided
    if guided:  # blocks of B rows: (text, images), (no text, images), and with image guidance (neither)
        no_text = unconditional_text(b, layout, device=device)
        blocks = [(text_ids, context), (no_text, context)]
        if image_guided:
            blocks.append((no_text, absent_context(b, layout, device)))
        text_ids = torch.cat([t for t, _ in blocks], dim=0)  # (B', T)
        if context is not None:
            context = torch.cat([c for _, c in blocks], dim=0)  # (B', k, h, w)
    seq = build_prefix(text_ids, layout, context)  # (B', prefix_len): [BOS] (context images) text [BOI]
    if layout.row_tokens:
        seq = torch.cat([seq, _row_token(layout, 0, seq.shape[0], device)], dim=1)  # ... [BOI] [ROW 0]
    generator = torch.Generator(device=device)
    if sc.seed is None:
        generator.seed()  # nondeterministic, still independent of the global RNG
    else:
        generator.manual_seed(sc.seed)

    if sc.decoder != "plain":
        def guide(logits: torch.Tensor) -> torch.Tensor:
            return guided_image_logits(logits, layout, sc.cfg_scale, guided, sc.image_cfg_scale if image_guided else None)

        decode = generate_jacobi if sc.decoder == "jacobi" else generate_zipar
        codes = decode(model, layout, seq, b, sc, guide, generator, stats)  # (B, N)
        return rearrange(codes, "b (h w) -> b h w", h=layout.grid_h, w=layout.grid_w)

    if sc.cache == "static":
        return _generate_static(model, layout, seq, b, sc, guided, image_guided, generator, stats)
    cache = DynamicCache(config=getattr(model, "config", None)) if sc.use_cache else None
    mask = padding_mask(seq, layout)  # (B', P) or None; grows with every token fed
    logits = prefill(model, seq, cache, mask)  # (B', V) predicts the first code
    codes = torch.empty(b, layout.num_image_tokens, dtype=torch.long, device=device)  # (B, N)
    for i in range(layout.num_image_tokens):
        image_logits = guided_image_logits(logits, layout, sc.cfg_scale, guided,
                                           sc.image_cfg_scale if image_guided else None)  # (B, K)
        codes[:, i] = sample_from_logits(image_logits, sc, generator)  # (B,)
        if i == layout.num_image_tokens - 1:
            break  # the last code needs no forward pass
        token = codes[:, i : i + 1] + layout.image_offset  # (B, 1) joint-vocabulary id
        if guided:
            token = token.repeat(text_ids.shape[0] // b, 1)  # (B', 1): every block continues with the same code
        if layout.row_tokens and (i + 1) % layout.grid_w == 0:  # a row is done: [ROW r] comes next, fixed
            token = torch.cat([token, _row_token(layout, (i + 1) // layout.grid_w, token.shape[0], device)], dim=1)
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
        if cache is not None:
            logits = decode_one_token(model, token, cache, mask)
        else:  # slow reference: recompute the whole sequence so far
            seq = torch.cat([seq, token], dim=1)  # (B', P + everything fed so far)
            logits = prefill(model, seq, None, mask)
    if stats is not None:
        stats["forward_passes"] = stats.get("forward_passes", 0) + layout.num_image_tokens  # prefill + N - 1 steps
    return rearrange(codes, "b (h w) -> b h w", h=layout.grid_h, w=layout.grid_w)  # (B, h, w)


def _generate_static(model: Any, layout: SequenceLayout, seq: torch.Tensor, b: int, sc: SampleConfig, guided: bool,
                     image_guided: bool, generator: torch.Generator, stats: dict | None) -> torch.Tensor:
    """The plain decoder on transformers' StaticCache: the cache, the attention mask (B', max length) and the
    cache positions keep fixed shapes, so `sc.compile` compiles a decode step once (per batch size and for
    the 1- and 2-token steps) instead of once per length. Draws exactly what the dynamic cache draws."""
    from transformers import StaticCache

    device = seq.device
    fed = layout.num_image_tokens - 1 + (layout.grid_h - 1 if layout.row_tokens else 0)  # tokens fed after prefill
    total = seq.shape[1] + fed
    cache = StaticCache(config=model.config, max_cache_len=total)
    pad = padding_mask(seq, layout)
    mask = None
    if pad is not None:  # the whole length up front: 0 at the prompt's padding and at positions not yet filled
        mask = torch.zeros(seq.shape[0], total, dtype=pad.dtype, device=device)
        mask[:, : seq.shape[1]] = pad
    step = compiled_forward(model) if sc.compile else model.forward
    length = seq.shape[1]
    logits = model(input_ids=seq, attention_mask=mask, cache=cache, use_cache=True, logits_to_keep=1,
                   cache_position=torch.arange(length, device=device)).logits[:, -1]  # (B', V)
    codes = torch.empty(b, layout.num_image_tokens, dtype=torch.long, device=device)
    for i in range(layout.num_image_tokens):
        image_logits = guided_image_logits(logits, layout, sc.cfg_scale, guided,
                                           sc.image_cfg_scale if image_guided else None)  # (B, K)
        codes[:, i] = sample_from_logits(image_logits, sc, generator)
        if i == layout.num_image_tokens - 1:
            break
        token = (codes[:, i : i + 1] + layout.image_offset).repeat(seq.shape[0] // b, 1)  # (B', 1)
        if layout.row_tokens and (i + 1) % layout.grid_w == 0:
            token = torch.cat([token, _row_token(layout, (i + 1) // layout.grid_w, token.shape[0], device)], dim=1)
        positions = torch.arange(length, length + token.shape[1], device=device)
        if mask is not None:
            mask[:, positions] = 1
        logits = step(input_ids=token, attention_mask=mask, cache=cache, use_cache=True,
                      cache_position=positions).logits[:, -1]
        length += token.shape[1]
    if stats is not None:
        stats["forward_passes"] = stats.get("forward_passes", 0) + layout.num_image_tokens
    return rearrange(codes, "b (h w) -> b h w", h=layout.grid_h, w=layout.grid_w)


def compiled_forward(model: Any) -> Any:
    """`model.forward` through torch.compile with fixed shapes, made once per model (each new shape compiles once)."""
    if id(model) not in _COMPILED:  # the entry holds the model (its bound forward): its id is never reused
        _COMPILED[id(model)] = torch.compile(model.forward, dynamic=False)
    return _COMPILED[id(model)]


def _row_token(layout: SequenceLayout, row: int, batch: int, device: torch.device) -> torch.Tensor:
    return torch.full((batch, 1), layout.row_id(row), dtype=torch.long, device=device)  # (B', 1)


__all__ = [
    "DECODERS",
    "SampleConfig",
    "decode_one_token",
    "filter_logits",
    "generate",
    "guided_image_logits",
    "prefill",
    "sample_from_logits",
]
