"""The joint vocabulary and the sequence layout of the generator.

One sequence per (caption, image) pair, after Parti / CM3leon / LlamaGen's
text-conditioned GPT:

    position:  0       1 .. T          T+1     T+2 .. T+1+N     T+2+N
    token:     [BOS]   text (padded)   [BOI]   image codes      [EOI]

with T = `text_len` and N = h * w image codes in raster order. The joint
vocabulary is laid out as

    [0, text_vocab)                         text ids, exactly as the text tokenizer gives them
    text_vocab + 0 .. 3                     [BOS] [BOI] [EOI] [PAD] (our own ids, whatever the
                                            text tokenizer's specials are)
    [image_offset, image_offset + K)        image code k -> image_offset + k
    image_offset + K + r, r < h             [ROW r], only with row_tokens

Text is left-aligned and padded with our [PAD] to the fixed length T. The model
*does* attend to the padding (no attention mask): the text block has a fixed
length, so every image token sits at the same position in every sequence, the
KV cache needs no per-row bookkeeping, and [PAD] simply learns an embedding.
No loss is ever taken on the text, so the padding costs nothing but compute.
The unconditional (dropped-condition) text for classifier-free guidance is all
[PAD] -- the same form as an empty prompt.

Masked padding (`mask_padding=True`): the [PAD]s of the text are masked out of
attention (an attention mask, positions unchanged), so they contribute nothing and
training may drop the text columns that are padding in every row of a batch
(`image_loss` does: a batch of short captions then costs far less than the fixed
length; the kept tokens keep their positions, so the result is the same). The
sampler passes the same mask. Runs trained before this setting existed attend to
their padding and keep doing so (the default, False).

Row tokens (`row_tokens=True`): each row of codes is preceded by its own
[ROW r] token,

    [BOI] [ROW 0] codes of row 0 [ROW 1] codes of row 1 ... [EOI]

Llama's rotary positions are relative, so a plain raster of codes leaves a small
model to work out *where* in the image it is by counting; with row tokens the row
is the identity of the last [ROW r] it saw and the column its distance from it
(docs/RESULTS.md measures what that is worth on the shapes world). The row tokens are fixed, never sampled and never
scored; they cost h extra positions. (Lumina-mGPT and Chameleon mark image rows
with an end-of-line token for the same reason; one id per row is our variant.)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from einops import rearrange

from ar_model.errors import ConfigError

IGNORE_INDEX = -100  # the label transformers' causal-LM loss skips
NUM_SPECIALS = 4  # [BOS] [BOI] [EOI] [PAD]


@dataclass(frozen=True)
class SequenceLayout:
    """Plain data: the fixed sizes that define the token ids and the sequence length."""

    text_len: int  # text tokens per sequence (padded / truncated); the shapes world needs ~26, the stage uses 32
    text_vocab: int  # len(text_tokenizer): ids [0, text_vocab) are text (len(), not .vocab_size: added tokens count)
    codebook_size: int  # image codes K of the VQ tokenizer (its num_codes)
    grid: tuple[int, int]  # (h, w) of the code grid; h * w image tokens per sequence
    row_tokens: bool = False  # a [ROW r] token before each row of codes (see the module docstring)
    mask_padding: bool = False  # the text's [PAD]s are masked out of attention (see the module docstring)

    def __post_init__(self) -> None:
        if isinstance(self.grid, list):  # JSON brings lists back; the layout keeps a tuple
            object.__setattr__(self, "grid", tuple(self.grid))
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the field and the value of the first bad setting."""
        for name, minimum in (("text_len", 0), ("text_vocab", 1), ("codebook_size", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"SequenceLayout.{name} must be an integer >= {minimum}, got {value!r}")
        g = self.grid
        ok = isinstance(g, tuple) and len(g) == 2
        ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in g)
        if not ok:
            raise ConfigError(f"SequenceLayout.grid must be two integers [h, w] >= 1, got {g!r}")
        if not isinstance(self.row_tokens, bool):
            raise ConfigError(f"SequenceLayout.row_tokens must be true or false, got {self.row_tokens!r}")

    # ------------------------------------------------------------- derived ids
    @property
    def bos_id(self) -> int:
        return self.text_vocab

    @property
    def boi_id(self) -> int:
        return self.text_vocab + 1

    @property
    def eoi_id(self) -> int:
        return self.text_vocab + 2

    @property
    def pad_id(self) -> int:
        return self.text_vocab + 3

    @property
    def image_offset(self) -> int:
        """Token id of image code 0."""
        return self.text_vocab + NUM_SPECIALS

    def row_id(self, row: int) -> int:
        """Token id of [ROW row] (only meaningful with row_tokens)."""
        return self.image_offset + self.codebook_size + row

    @property
    def vocab_size(self) -> int:
        """Size of the joint vocabulary (the model's embedding / output rows)."""
        return self.image_offset + self.codebook_size + (self.grid[0] if self.row_tokens else 0)

    # ------------------------------------------------------------ derived sizes
    @property
    def grid_h(self) -> int:
        return self.grid[0]

    @property
    def grid_w(self) -> int:
        return self.grid[1]

    @property
    def num_image_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def image_len(self) -> int:
        """Positions of the image block between [BOI] and [EOI]: the codes, plus the row tokens if any."""
        return self.num_image_tokens + (self.grid[0] if self.row_tokens else 0)

    @property
    def prefix_len(self) -> int:
        """Length of `[BOS] text [BOI]`, the prompt the sampler prefills; also the first image position."""
        return 1 + self.text_len + 1

    @property
    def seq_len(self) -> int:
        """Full training sequence: [BOS] text [BOI] image block [EOI]."""
        return self.prefix_len + self.image_len + 1

    def code_positions(self) -> torch.Tensor:
        """Sequence positions of the h * w codes, in raster order: (N,) long."""
        n = torch.arange(self.num_image_tokens)
        if self.row_tokens:  # row r's codes follow its [ROW r]: one extra position per row before them
            n = n + n // self.grid[1] + 1
        return self.prefix_len + n

    def token_ids(self) -> dict[str, int]:
        """The derived ids, for humans reading a checkpoint's json (never read back)."""
        return {
            "bos": self.bos_id,
            "boi": self.boi_id,
            "eoi": self.eoi_id,
            "pad": self.pad_id,
            "image_offset": self.image_offset,
            **({"row_offset": self.row_id(0)} if self.row_tokens else {}),
            "vocab_size": self.vocab_size,
            "seq_len": self.seq_len,
        }

    # ---------------------------------------------------------- serialization
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of the fields (grid as a list)."""
        d = dataclasses.asdict(self)
        d["grid"] = list(self.grid)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SequenceLayout":
        """Inverse of `to_dict`; every field but row_tokens is required, unknown keys are refused."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"a SequenceLayout must be a mapping of settings, got {type(d).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in known:
                raise ConfigError(f"unknown SequenceLayout key {key!r} (known: {', '.join(known)})")
        for key in known:
            if key not in d and key not in ("row_tokens", "mask_padding"):  # layouts saved before these existed
                raise ConfigError(f"SequenceLayout key {key!r} is missing (required: {', '.join(known)})")
        return cls(**dict(d))

    @classmethod
    def for_tokenizer(
        cls, tokenizer: Any, codebook_size: int, grid: Sequence[int], text_len: int = 24, row_tokens: bool = False,
        mask_padding: bool = False,
    ) -> "SequenceLayout":
        """The layout for a text tokenizer (text_vocab = len(tokenizer)) and a VQ codebook / grid."""
        return cls(text_len=text_len, text_vocab=len(tokenizer), codebook_size=codebook_size, grid=tuple(grid),
                   row_tokens=row_tokens, mask_padding=mask_padding)


@dataclass
class TextBatch:
    """Text ids ready for `build_sequences` / the sampler, and which prompts were cut short."""

    ids: torch.Tensor  # (B, text_len) long: tokenizer ids, then [PAD]
    truncated: list[bool]  # per prompt: True when it had more than text_len tokens (callers warn)


def encode_text(tokenizer: Any, prompts: Sequence[str], layout: SequenceLayout) -> TextBatch:
    """Tokenize prompts to fixed-length text ids: left-aligned, [PAD]-padded, truncated to text_len.

    The tokenizer's own special tokens (BOS/EOS/CLS...) are not added: the layout's
    [BOS] / [BOI] frame the text. An empty or whitespace-only prompt gives all
    [PAD], i.e. the unconditional form (training skips such captions, so spaces
    alone never meant anything to a model).
    """
    if isinstance(prompts, str):
        raise TypeError("encode_text takes a list of prompts, got a single string (wrap it in a list)")
    prompts = [p if p.strip() else "" for p in prompts]
    ids = torch.full((len(prompts), layout.text_len), layout.pad_id, dtype=torch.long)
    truncated = []
    if prompts:
        encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        for row, tokens in enumerate(encoded):  # setup, not a hot path: one small list per prompt
            if tokens and max(tokens) >= layout.text_vocab:
                raise ConfigError(
                    f"the text tokenizer produced id {max(tokens)} >= layout.text_vocab={layout.text_vocab}: the "
                    f"layout was built for another tokenizer (this one has len(tokenizer)={len(tokenizer)})"
                )
            truncated.append(len(tokens) > layout.text_len)
            tokens = tokens[: layout.text_len]
            if tokens:
                ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    return TextBatch(ids=ids, truncated=truncated)


def unconditional_text(batch_size: int, layout: SequenceLayout, device: torch.device | str | None = None) -> torch.Tensor:
    """The dropped-condition text: all [PAD], (B, text_len) long (same as an empty prompt)."""
    return torch.full((batch_size, layout.text_len), layout.pad_id, dtype=torch.long, device=device)


def condition_dropout(
    text_ids: torch.Tensor, prob: float, layout: SequenceLayout, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Replace each row's text by the unconditional form with probability `prob` (training-time CFG).

    Returns a new tensor; `text_ids` is left as it is. `generator` (on text_ids'
    device) makes the choice reproducible.
    """
    # after: Ho & Salimans, classifier-free guidance; Parti / LlamaGen drop the condition with p = 0.1
    if prob <= 0:
        return text_ids.clone()
    drop = torch.rand(text_ids.shape[0], generator=generator, device=text_ids.device) < prob  # (B,)
    return torch.where(drop[:, None], torch.full_like(text_ids, layout.pad_id), text_ids)


def build_prefix(text_ids: torch.Tensor, layout: SequenceLayout) -> torch.Tensor:
    """`[BOS] text [BOI]`: (B, text_len) -> (B, prefix_len) long, the sampler's prompt."""
    _check_text(text_ids, layout)
    b = text_ids.shape[0]
    bos = torch.full((b, 1), layout.bos_id, dtype=torch.long, device=text_ids.device)
    boi = torch.full((b, 1), layout.boi_id, dtype=torch.long, device=text_ids.device)
    return torch.cat([bos, text_ids.long(), boi], dim=1)  # (B, 1 + T + 1)


def build_sequences(text_ids: torch.Tensor, codes: torch.Tensor, layout: SequenceLayout) -> torch.Tensor:
    """`[BOS] text [BOI] codes [EOI]`: text (B, T) + codes (B, h, w) -> input_ids (B, seq_len) long.

    With row tokens the image block is `[ROW 0] row 0 [ROW 1] row 1 ...`.
    """
    if codes.dim() != 3 or tuple(codes.shape[1:]) != layout.grid:
        raise ConfigError(f"codes must have shape (B, {layout.grid_h}, {layout.grid_w}), got {tuple(codes.shape)}")
    if codes.shape[0] != text_ids.shape[0]:
        raise ConfigError(f"text ids and codes disagree on the batch size: {text_ids.shape[0]} vs {codes.shape[0]}")
    codes = codes.long()  # datasets store codes as int16
    if codes.numel() and bool(((codes < 0) | (codes >= layout.codebook_size)).any()):
        raise ConfigError(f"codes must lie in [0, {layout.codebook_size}), got min {int(codes.min())} max {int(codes.max())}")
    prefix = build_prefix(text_ids, layout)  # (B, 1 + T + 1)
    image = codes + layout.image_offset  # (B, h, w)
    if layout.row_tokens:
        rows = torch.arange(layout.grid_h, device=codes.device) + layout.row_id(0)  # (h,)
        image = torch.cat([rows.view(1, -1, 1).expand(codes.shape[0], -1, 1), image], dim=2)  # (B, h, 1 + w)
    image = rearrange(image, "b h w -> b (h w)")  # (B, image_len) raster order
    eoi = torch.full((codes.shape[0], 1), layout.eoi_id, dtype=torch.long, device=codes.device)
    return torch.cat([prefix, image.to(prefix.device), eoi.to(prefix.device)], dim=1)  # (B, seq_len)


def loss_targets(input_ids: torch.Tensor, layout: SequenceLayout) -> torch.Tensor:
    """Labels for `model(input_ids, labels=...)`: the image codes and [EOI]; IGNORE_INDEX elsewhere.

    Row tokens are fixed by the layout, so they are not scored either.

    HF convention: labels are aligned with input_ids and the model shifts them, so
    the logits at [BOI] are scored against the first image code, and so on.
    """
    if input_ids.dim() != 2 or input_ids.shape[1] != layout.seq_len:
        raise ConfigError(f"input_ids must have shape (B, {layout.seq_len}), got {tuple(input_ids.shape)}")
    labels = input_ids.clone()
    labels[:, : layout.prefix_len] = IGNORE_INDEX  # [BOS] text [BOI]: conditioning, never predicted
    if layout.row_tokens:
        rows = layout.prefix_len + torch.arange(layout.grid_h) * (layout.grid_w + 1)  # positions of [ROW r]
        labels[:, rows.to(labels.device)] = IGNORE_INDEX
    return labels  # (B, seq_len)


def scored_positions(layout: SequenceLayout) -> torch.Tensor:
    """Sequence positions whose token is scored: the codes and [EOI] (the row tokens are fixed): (N + 1,) long."""
    return torch.cat([layout.code_positions(), torch.tensor([layout.seq_len - 1])])


def image_loss(model: Any, input_ids: torch.Tensor, layout: SequenceLayout) -> torch.Tensor:
    """Mean cross-entropy on the image codes and [EOI]: `model(ids, labels=loss_targets(ids, layout)).loss`.

    The same number, but the LM head and the log-softmax run only at the positions that
    predict a scored token (HF's `logits_to_keep` with a tensor of positions), not at the
    text, [BOS] or row-token positions: a third of that work on the cpu preset's layout.
    """
    if input_ids.dim() != 2 or input_ids.shape[1] != layout.seq_len:
        raise ConfigError(f"input_ids must have shape (B, {layout.seq_len}), got {tuple(input_ids.shape)}")
    targets = scored_positions(layout).to(input_ids.device)
    if layout.mask_padding:  # drop the text columns that are [PAD] in every row; the rest keep their positions
        ids, mask, positions = trim_padding(input_ids, layout)
        cut = input_ids.shape[1] - ids.shape[1]  # the scored positions all lie after the dropped columns
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                       logits_to_keep=targets - 1 - cut).logits  # (B, N + 1, V)
    else:
        logits = model(input_ids=input_ids, logits_to_keep=targets - 1).logits  # (B, N + 1, V)
    # float32 for the log-softmax, as HF's own causal-LM loss does under autocast
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), input_ids[:, targets].flatten())


def padding_mask(input_ids: torch.Tensor, layout: SequenceLayout) -> torch.Tensor | None:
    """The attention mask of sequences (B, L) under `layout`: 0 at [PAD], 1 elsewhere; None without mask_padding."""
    return (input_ids != layout.pad_id).long() if layout.mask_padding else None


def trim_padding(input_ids: torch.Tensor, layout: SequenceLayout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Full sequences (B, seq_len) without the text columns that are [PAD] in every row.

    Text is left-aligned, so those are the last columns of the text block. Returns the kept
    ids (B, L'), their attention mask (B, L') and their original positions (B, L'), which
    the model must be given so that every kept token sits where it does in the full sequence.
    """
    text = input_ids[:, 1 : 1 + layout.text_len]  # (B, T)
    longest = int((text != layout.pad_id).sum(1).max()) if len(text) else 0  # no caption has a [PAD] inside
    keep = torch.cat([torch.arange(1 + longest), torch.arange(1 + layout.text_len, input_ids.shape[1])])
    keep = keep.to(input_ids.device)
    ids = input_ids[:, keep]  # (B, L')
    return ids, (ids != layout.pad_id).long(), keep.expand(len(ids), -1)


def codes_from_tokens(tokens: torch.Tensor, layout: SequenceLayout) -> torch.Tensor:
    """Image tokens (B, h*w) in the joint vocabulary -> codes (B, h, w) in [0, codebook_size)."""
    if tokens.dim() != 2 or tokens.shape[1] != layout.num_image_tokens:
        raise ConfigError(f"image tokens must have shape (B, {layout.num_image_tokens}), got {tuple(tokens.shape)}")
    codes = tokens.long() - layout.image_offset
    if codes.numel() and bool(((codes < 0) | (codes >= layout.codebook_size)).any()):
        raise ConfigError(
            f"image tokens must lie in [{layout.image_offset}, {layout.vocab_size}) (the image vocabulary)"
        )
    return rearrange(codes, "b (h w) -> b h w", h=layout.grid_h, w=layout.grid_w)


def image_tokens(input_ids: torch.Tensor, layout: SequenceLayout) -> torch.Tensor:
    """The image codes' tokens (B, h*w) of full sequences (B, seq_len) or of sequences cut after the last code."""
    return input_ids[:, layout.code_positions().to(input_ids.device)]


def _check_text(text_ids: torch.Tensor, layout: SequenceLayout) -> None:
    if text_ids.dim() != 2 or text_ids.shape[1] != layout.text_len:
        raise ConfigError(f"text ids must have shape (B, {layout.text_len}), got {tuple(text_ids.shape)}")
    if text_ids.numel():
        bad = ((text_ids < 0) | (text_ids >= layout.text_vocab)) & (text_ids != layout.pad_id)
        if bool(bad.any()):
            raise ConfigError(
                f"text ids must lie in [0, {layout.text_vocab}) or be [PAD]={layout.pad_id}; "
                f"got {int(text_ids[bad][0])}"
            )


__all__ = [
    "IGNORE_INDEX",
    "SequenceLayout",
    "TextBatch",
    "build_prefix",
    "build_sequences",
    "codes_from_tokens",
    "condition_dropout",
    "encode_text",
    "image_tokens",
    "loss_targets",
    "image_loss",
    "scored_positions",
    "unconditional_text",
]
