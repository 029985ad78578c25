"""Parallel row decoding (after ZipAR, He et al. 2024): the next row starts before the previous one ends.

Image codes are spatially local: a code depends mostly on the codes above it and to its left. So
row r may draw its column c once row r - 1 holds min(w, c + `zipar_window`) codes, instead of
waiting for all of row r - 1; every step, each row that may advance feeds its last token and draws
its next code, all rows in one forward pass. A token sits at its place in the raster sequence
(its position id), and attends to what exists of the raster sequence before it: the codes of the
rows above that are not drawn yet are missing, which the model never saw in training -- so this
decoder changes the distribution (unlike ar_model.jacobi), by an amount to be measured
(benchmarks/decoders.py). With `zipar_window >= w` every row waits for the whole row above, and
the codes are plain decoding's.

It needs the layout's row tokens: row r's first code is predicted at its [ROW r] token, which can
be fed as soon as row r starts, while without them the first code of a row is predicted from the
last code of the row above. The schedule does not depend on the data, so a batch moves together;
a step feeds at most one token per row, so the steps number about w + (h - 1) x window instead of
h x w. `stats["forward_passes"]` counts them (prefill included).
"""

from __future__ import annotations

from typing import Any

import torch

from ar_model.errors import ConfigError
from ar_model.layout import SequenceLayout, padding_mask


def generate_zipar(model: Any, layout: SequenceLayout, seq: torch.Tensor, b: int, sc: Any, guided_logits: Any,
                   generator: torch.Generator, stats: dict | None = None) -> torch.Tensor:
    """Codes (B, N) for the prompts `seq` (B', P): [BOS] ... [BOI] [ROW 0] (B' = B x guidance blocks);
    `guided_logits(logits (B', V)) -> (B, K)`. Module docstring for the method."""
    from transformers import DynamicCache

    from ar_model.sampler import prefill, sample_from_logits

    if not layout.row_tokens:
        raise ConfigError("the zipar decoder needs a layout with row tokens (data.row_tokens): without them a row's "
                          "first code is predicted from the last code of the row above")
    device = seq.device
    dtype = next(model.parameters()).dtype
    h, w, off = layout.grid_h, layout.grid_w, layout.image_offset
    window = max(1, int(sc.zipar_window))
    first = layout.prefix_len  # the position of [ROW 0]; [ROW r] at first + r (w + 1), code (r, c) one after + c

    def row_pos(r: int) -> int:
        return first + r * (w + 1)

    cache = DynamicCache(config=getattr(model, "config", None))
    pad = padding_mask(seq, layout)  # (B', P) or None: the prompt's padding, hidden from every query
    kv_pos = torch.arange(seq.shape[1], device=device)  # the position of every cache entry, in cache order
    kv_ok = pad.bool() if pad is not None else torch.ones(seq.shape, dtype=torch.bool, device=device)  # (B', P)
    logits = prefill(model, seq, cache, pad)  # (B', V): predicts code (0, 0)
    passes = 1
    codes = torch.zeros(b, h, w, dtype=torch.long, device=device)
    codes[:, 0, 0] = sample_from_logits(guided_logits(logits), sc, generator)
    blocks = seq.shape[0] // b  # guidance blocks: every block is fed the same tokens
    made = [1] + [0] * (h - 1)  # codes drawn per row
    last_fed = [False] * h  # a finished row's last code is fed once more, for the rows below to see

    while not all(last_fed):
        queries = []  # (row, token (B,) or an int, position, the code it predicts or None)
        for r in range(h):
            if made[r] == w:
                if not last_fed[r] and r < h - 1:  # the last row's last code: nothing comes after it
                    queries.append((r, codes[:, r, w - 1] + off, row_pos(r) + w, None))
                last_fed[r] = True
                continue
            ready = r == 0 or made[r - 1] >= min(w, made[r] + window)
            if not ready:
                continue
            if made[r] == 0:  # [ROW r] predicts the row's first code
                queries.append((r, layout.row_id(r), row_pos(r), 0))
            else:
                queries.append((r, codes[:, r, made[r] - 1] + off, row_pos(r) + made[r], made[r]))
        if not queries:  # every row drawn (the last row's last code is never fed)
            break
        tokens = torch.stack([t.repeat(blocks) if torch.is_tensor(t) else torch.full((seq.shape[0],), t, device=device)
                              for _, t, _, _ in queries], 1)  # (B', Q)
        q_pos = torch.tensor([p for _, _, p, _ in queries], device=device)  # (Q,)
        kv_pos = torch.cat([kv_pos, q_pos])  # the new entries join the cache in this order
        kv_ok = torch.cat([kv_ok, torch.ones(seq.shape[0], len(queries), dtype=torch.bool, device=device)], 1)
        # each query sees the cache entries (and fellow queries) that come before it in the raster sequence
        attend = (kv_pos[None, :] <= q_pos[:, None])[None] & kv_ok[:, None, :]  # (B', Q, KV)
        # an additive mask (0 or the dtype's lowest), which every attention implementation reads the same way
        bias = torch.zeros(attend.shape, dtype=dtype, device=device).masked_fill(~attend, torch.finfo(dtype).min)
        out = model(input_ids=tokens, position_ids=q_pos[None].expand(seq.shape[0], -1),
                    attention_mask=bias[:, None], cache=cache, use_cache=True).logits  # (B', Q, V)
        passes += 1
        for i, (r, _, _, col) in enumerate(queries):
            if col is None:
                continue
            codes[:, r, col] = sample_from_logits(guided_logits(out[:, i]), sc, generator)
            made[r] += 1
    if stats is not None:
        stats["forward_passes"] = stats.get("forward_passes", 0) + passes
    return codes.flatten(1)  # (B, N)


__all__ = ["generate_zipar"]
