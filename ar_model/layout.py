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

Images in context (`context_images=k`, for editing): k images precede the text, each
framed as an image is,

    [BOS] [BOI] image 1 [EOI] ... [BOI] image k [EOI] text (padded) [BOI] image codes [EOI]

so the sequence reads "this image; the instruction; the new image" (CM3leon / Emu-style
interleaving, with a fixed number of images so that every position stays fixed as above).
A context image is given as codes (B, k, h, w); a code of -1 marks a whole image as absent
(all its code positions [PAD], its row tokens kept): the dropped image condition of
classifier-free guidance over images, and what a text-to-image prompt to an editing model
gives. Context images are conditioning, never scored. k = 0 is the text-to-image layout
exactly (the default, and what every run trained before editing existed has).

Row tokens (`row_tokens=True`): each row of codes is preceded by its own
[ROW r] token,

    [BOI] [ROW 0] codes of row 0 [ROW 1] codes of row 1 ... [EOI]

Llama's rotary positions are relative, so a plain raster of codes leaves a small
model to work out *where* in the image it is by counting; with row tokens the row
is the identity of the last [ROW r] it saw and the column its distance from it
(docs/RESULTS.md measures what that is worth on the shapes world). The row tokens are fixed, never sampled and never
scored; they cost h extra positions. (Lumina-mGPT and Chameleon mark image rows
with an end-of-line token for the same reason; one id per row is our variant.)

Glyph slots (`glyph_slots=S`, a multiple of 4): the text block opens with S slots that
spell the prompt's strings (quoted, or runs of digits) a character a slot, 4 slots a
string, [PAD] where empty; the caption follows in the remaining T - S positions:

    [BOS] "T" "A" "X" "I" [PAD] .. caption (padded) [BOI] image codes [EOI]

so the i-th character of a string sits at the same distance from the image whatever
words come before it in the caption (see `encode_text`; docs/RESULTS.md "Issue 21"
measures what that is worth). S = 0 is the layout without slots (every run before them).
With `glyph_end` the slot after a string's last character holds the quote mark's id, so
where the string stops is visible (an empty slot is [PAD], which masked padding hides).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from einops import rearrange

from ar_model.errors import ConfigError

IGNORE_INDEX = -100  # the label transformers' causal-LM loss skips
NUM_SPECIALS = 4  # [BOS] [BOI] [EOI] [PAD]
MAX_CONTEXT_IMAGES = 8
ABSENT = -1  # the code that marks a context image as absent (dropped, or a text-to-image prompt)
GLYPH_CHARS = 4  # glyph slots per string: a string's first 4 characters (the shapes world's strings are 1-4)
# what encode_text spells into the glyph slots: each quoted string, and each run of digits outside quotes
_SPELLED = re.compile(r'"([^"]*)"|([0-9]+)')


@dataclass(frozen=True)
class SequenceLayout:
    """Plain data: the fixed sizes that define the token ids and the sequence length."""

    text_len: int  # text tokens per sequence (padded / truncated); the shapes world needs ~26, the stage uses 32
    text_vocab: int  # len(text_tokenizer): ids [0, text_vocab) are text (len(), not .vocab_size: added tokens count)
    codebook_size: int  # image codes K of the VQ tokenizer (its num_codes)
    grid: tuple[int, int]  # (h, w) of the code grid; h * w image tokens per sequence
    row_tokens: bool = False  # a [ROW r] token before each row of codes (see the module docstring)
    mask_padding: bool = False  # the text's [PAD]s are masked out of attention (see the module docstring)
    context_images: int = 0  # images before the text (editing); 0 = text-to-image (see the module docstring)
    glyph_slots: int = 0  # text positions, before the caption, that spell its quoted strings (see encode_text)
    glyph_end: bool = False  # a string shorter than its slots is followed by a visible end mark (see encode_text)

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
        for name in ("row_tokens", "mask_padding", "glyph_end"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"SequenceLayout.{name} must be true or false, got {getattr(self, name)!r}")
        g = self.glyph_slots
        if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g < max(self.text_len, 1) or g % GLYPH_CHARS:
            raise ConfigError(f"SequenceLayout.glyph_slots must be a multiple of {GLYPH_CHARS} in [0, text_len), "
                              f"got {g!r}")
        if self.glyph_end and not self.glyph_slots:
            raise ConfigError("SequenceLayout.glyph_end marks where a string ends in the glyph slots: set glyph_slots")
        k = self.context_images
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= MAX_CONTEXT_IMAGES:
            raise ConfigError(f"SequenceLayout.context_images must be an integer in [0, {MAX_CONTEXT_IMAGES}], got {k!r}")

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
    def caption_len(self) -> int:
        """Text tokens a caption may take: the text block less its glyph slots."""
        return self.text_len - self.glyph_slots

    @property
    def text_start(self) -> int:
        """Position of the first text token: after [BOS] and the context images' `[BOI] image [EOI]` blocks."""
        return 1 + self.context_images * (self.image_len + 2)

    @property
    def prefix_len(self) -> int:
        """Length of `[BOS] (context images) text [BOI]`, the prompt the sampler prefills; also the first image position."""
        return self.text_start + self.text_len + 1

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
            optional = ("row_tokens", "mask_padding", "context_images", "glyph_slots", "glyph_end")  # saved before them
            if key not in d and key not in optional:
                raise ConfigError(f"SequenceLayout key {key!r} is missing (required: {', '.join(known)})")
        return cls(**dict(d))

    @classmethod
    def for_tokenizer(
        cls, tokenizer: Any, codebook_size: int, grid: Sequence[int], text_len: int = 24, row_tokens: bool = False,
        mask_padding: bool = False, context_images: int = 0, glyph_slots: int = 0, glyph_end: bool = False,
    ) -> "SequenceLayout":
        """The layout for a text tokenizer (text_vocab = len(tokenizer)) and a VQ codebook / grid."""
        return cls(text_len=text_len, text_vocab=len(tokenizer), codebook_size=codebook_size, grid=tuple(grid),
                   row_tokens=row_tokens, mask_padding=mask_padding, context_images=context_images,
                   glyph_slots=glyph_slots, glyph_end=glyph_end)


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

    With `layout.glyph_slots` the text block opens with that many slots that spell the prompt's strings
    (each quoted string and each run of digits outside quotes, in the prompt's order, as many as fit;
    GLYPH_CHARS slots a string, a character a slot, [PAD] where a string is shorter or absent), and the
    caption follows them. A string's i-th character then always sits at the same distance from the image,
    whatever words come before it in the caption: a model that writes it looks it up by position (after the glyph-aware text encoders of
    Glyph-ByT5 / TextDiffuser, which give the quoted text its own encoding; here it is the same tokenizer's
    single-character tokens, so nothing is added to the vocabulary). With `layout.glyph_end` the slot after a
    string's last character (when it has one) holds the quote mark's id: with masked padding an empty slot
    is invisible, so without the mark a model must count the slots it sees to know where the string stops.
    """
    if isinstance(prompts, str):
        raise TypeError("encode_text takes a list of prompts, got a single string (wrap it in a list)")
    prompts = [p if p.strip() else "" for p in prompts]
    ids = torch.full((len(prompts), layout.text_len), layout.pad_id, dtype=torch.long)
    truncated = []
    start = layout.glyph_slots
    if prompts:
        encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        for row, tokens in enumerate(encoded):  # setup, not a hot path: one small list per prompt
            if start and prompts[row]:
                tokens = _spelled(tokenizer, prompts[row], start, layout.glyph_end) + tokens  # slots, caption
            if tokens and max(tokens) >= layout.text_vocab:
                raise ConfigError(
                    f"the text tokenizer produced id {max(tokens)} >= layout.text_vocab={layout.text_vocab}: the "
                    f"layout was built for another tokenizer (this one has len(tokenizer)={len(tokenizer)})"
                )
            truncated.append(len(tokens) > layout.text_len)
            tokens = tokens[: layout.text_len]
            if tokens:
                ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            if start:  # an unused slot is padding (masked with mask_padding), whatever id stood in for it
                ids[row, :start][ids[row, :start] < 0] = layout.pad_id
    return TextBatch(ids=ids, truncated=truncated)


def _spelled(tokenizer: Any, prompt: str, slots: int, end: bool = False) -> list[int]:
    """The glyph slots of one prompt: `slots` ids, -1 where a slot is empty (encode_text pads it)."""
    out = [-1] * slots
    strings = [quoted or digits for quoted, digits in _SPELLED.findall(prompt)]  # an unmatched group is ""
    strings = [s for s in strings if s][: slots // GLYPH_CHARS]
    chars = [c for s in strings for c in s[:GLYPH_CHARS]]
    if not chars:
        return out
    # a character alone, as the tokenizer reads it inside quotes (ar_model.text spells quoted strings a character
    # a token); one that does not come out as one token (a tokenizer without that rule) takes its first id
    encoded = iter([t[0] if t else -1 for t in tokenizer([*chars, '"'], add_special_tokens=False)["input_ids"]])
    ids = [next(encoded) for _ in chars]
    quote = next(encoded)
    for j, s in enumerate(strings):
        n = min(len(s), GLYPH_CHARS)
        out[j * GLYPH_CHARS : j * GLYPH_CHARS + n] = ids[:n]
        ids = ids[n:]
        if end and n < GLYPH_CHARS:
            out[j * GLYPH_CHARS + n] = quote
    return out


def text_lengths(text_ids: torch.Tensor, layout: SequenceLayout) -> torch.Tensor:
    """(B,) the text columns each row needs: one past its last non-[PAD] (glyph slots may leave [PAD]s inside)."""
    used = text_ids != layout.pad_id  # (B, T)
    cols = torch.arange(1, text_ids.shape[1] + 1, device=text_ids.device)
    return (used * cols).amax(1) if text_ids.shape[1] else torch.zeros(len(text_ids), dtype=torch.long)


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


def absent_context(batch_size: int, layout: SequenceLayout, device: torch.device | str | None = None) -> torch.Tensor:
    """Context images all absent: (B, context_images, h, w) long of ABSENT (a text-to-image prompt's context)."""
    return torch.full((batch_size, layout.context_images, *layout.grid), ABSENT, dtype=torch.long, device=device)


def context_dropout(
    context: torch.Tensor, prob: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Mark each row's context images absent with probability `prob` (training-time guidance over images).

    context: (B, k, h, w) codes; returns a new tensor. `generator` (on context's device) makes it reproducible.
    """
    # after: InstructPix2Pix (Brooks et al. 2023), which drops the image and the text condition independently
    if prob <= 0:
        return context.clone()
    drop = torch.rand(context.shape[0], generator=generator, device=context.device) < prob  # (B,)
    return torch.where(drop.view(-1, 1, 1, 1), torch.full_like(context, ABSENT), context)


def _check_codes(codes: torch.Tensor, layout: SequenceLayout, what: str, absent_ok: bool) -> torch.Tensor:
    codes = codes.long()  # datasets store codes as int16
    lo = ABSENT if absent_ok else 0
    if codes.numel() and bool(((codes < lo) | (codes >= layout.codebook_size)).any()):
        raise ConfigError(f"{what} must lie in [{lo}, {layout.codebook_size}), got min {int(codes.min())} "
                          f"max {int(codes.max())}")
    return codes


def image_block(codes: torch.Tensor, layout: SequenceLayout) -> torch.Tensor:
    """Codes (B, h, w) -> the image block's ids (B, image_len): codes at the image offset, [ROW r] before
    each row with row tokens, [PAD] where a code is ABSENT."""
    image = torch.where(codes < 0, layout.pad_id, codes + layout.image_offset)  # (B, h, w)
    if layout.row_tokens:
        rows = torch.arange(layout.grid_h, device=codes.device) + layout.row_id(0)  # (h,)
        image = torch.cat([rows.view(1, -1, 1).expand(codes.shape[0], -1, 1), image], dim=2)  # (B, h, 1 + w)
    return rearrange(image, "b h w -> b (h w)")  # (B, image_len) raster order


def build_prefix(text_ids: torch.Tensor, layout: SequenceLayout, context: torch.Tensor | None = None) -> torch.Tensor:
    """`[BOS] (context images) text [BOI]`: (B, text_len) -> (B, prefix_len) long, the sampler's prompt.

    context: (B, context_images, h, w) codes (ABSENT marks an image absent); None = all absent.
    """
    _check_text(text_ids, layout)
    b, device = text_ids.shape[0], text_ids.device
    bos = torch.full((b, 1), layout.bos_id, dtype=torch.long, device=device)
    boi = torch.full((b, 1), layout.boi_id, dtype=torch.long, device=device)
    eoi = torch.full((b, 1), layout.eoi_id, dtype=torch.long, device=device)
    parts = [bos]
    if layout.context_images:
        context = absent_context(b, layout, device) if context is None else context
        shape = (b, layout.context_images, *layout.grid)
        if tuple(context.shape) != shape:
            raise ConfigError(f"context images must have shape {shape}, got {tuple(context.shape)}")
        context = _check_codes(context, layout, "context image codes", absent_ok=True).to(device)
        for i in range(layout.context_images):
            parts += [boi, image_block(context[:, i], layout), eoi]
    elif context is not None and context.numel():
        raise ConfigError("this layout takes no context images (context_images = 0): a text-to-image model")
    return torch.cat([*parts, text_ids.long(), boi], dim=1)  # (B, prefix_len)


def build_sequences(
    text_ids: torch.Tensor, codes: torch.Tensor, layout: SequenceLayout, context: torch.Tensor | None = None
) -> torch.Tensor:
    """`[BOS] (context images) text [BOI] codes [EOI]`: text (B, T) + codes (B, h, w) -> input_ids (B, seq_len).

    With row tokens the image block is `[ROW 0] row 0 [ROW 1] row 1 ...`; context as for `build_prefix`.
    """
    if codes.dim() != 3 or tuple(codes.shape[1:]) != layout.grid:
        raise ConfigError(f"codes must have shape (B, {layout.grid_h}, {layout.grid_w}), got {tuple(codes.shape)}")
    if codes.shape[0] != text_ids.shape[0]:
        raise ConfigError(f"text ids and codes disagree on the batch size: {text_ids.shape[0]} vs {codes.shape[0]}")
    codes = _check_codes(codes, layout, "codes", absent_ok=False)
    prefix = build_prefix(text_ids, layout, context)  # (B, prefix_len)
    image = image_block(codes, layout)  # (B, image_len)
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

    Text is left-aligned, so those are the last columns of the text block (an absent context
    image's [PAD]s, and empty glyph slots, are kept: the mask hides them). Returns the kept
    ids (B, L'), their attention mask (B, L') and their original positions (B, L'), which
    the model must be given so that every kept token sits where it does in the full sequence.
    """
    start = layout.text_start
    text = input_ids[:, start : start + layout.text_len]  # (B, T)
    longest = int(text_lengths(text, layout).max()) if len(text) else 0
    keep = torch.cat([torch.arange(start + longest), torch.arange(start + layout.text_len, input_ids.shape[1])])
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
    "ABSENT",
    "IGNORE_INDEX",
    "SequenceLayout",
    "absent_context",
    "TextBatch",
    "build_prefix",
    "build_sequences",
    "codes_from_tokens",
    "condition_dropout",
    "context_dropout",
    "encode_text",
    "image_tokens",
    "loss_targets",
    "image_block",
    "image_loss",
    "scored_positions",
    "unconditional_text",
]
