"""Speculative Jacobi decoding: several image codes per forward pass, the same samples as plain decoding.

After Teng et al., "Accelerating Auto-regressive Text-to-Image Generation with Training-free
Speculative Jacobi Decoding" (ICLR 2025). A window of `jacobi_window` draft codes follows the
codes accepted so far; one forward pass through the KV cache scores the whole window, and the
drafts are verified left to right with speculative sampling's rule (Leviathan et al. 2023):
draft d, drawn from q, is accepted with probability min(1, p(d) / q(d)), where p is the
sampling distribution (guidance, temperature, top-k / top-p applied) given everything before
it; the first rejected draft is replaced by a draw from norm(max(0, p - q)), and when every
draft is accepted one more code is drawn from p at the window's end. Each accepted or drawn
code is therefore distributed exactly as plain sampling's, whatever the drafts. The drafts after
the first rejection are refined Jacobi-style: redrawn from this pass's p (q := p), and new
window slots start from `jacobi_init`:

    "random"  a uniform code (q uniform), as the paper does;
    "above"   the code of the same column one row up (q a point mass): images repeat vertically.

Greedy sampling (temperature 0 or top-k 1) makes p a point mass: a draft is accepted exactly when
it is the argmax, so the codes are plain greedy decoding's (up to the floating-point order of a
window's forward pass against one token's: an argmax tie can break differently).

In a batch, rows accept different numbers of codes; the KV cache keeps one length for all rows,
so a row's accepted codes beyond the shortest row's are kept as accepted (never tested again) and
fed again with the next window. A batch therefore moves at its slowest row: the speed-up is
largest at batch 1. `stats["forward_passes"]` counts sequential model calls (prefill included).

With `cache="static"` the passes run on transformers' StaticCache: each feeds a fixed block (the longest
window plus the slot fed again, padded) at explicit cache positions, and the cache's length is moved back
to the first replaced slot after it, so every pass has one shape and `compile=True` compiles it once
(2.17x plain decoding at batch 1 on 2 CPU cores, docs/RESULTS.md "Issue 19"). It draws what the dynamic
cache draws.
"""

from __future__ import annotations

from typing import Any

import torch

from ar_model.layout import SequenceLayout, padding_mask

INITS = ("random", "above")


def _probs(logits: torch.Tensor, sc: Any) -> torch.Tensor:
    """Guided image logits (..., K) -> the distribution codes are drawn from (..., K), float32."""
    from ar_model.sampler import filter_logits

    if sc.is_greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    flat = logits.reshape(-1, logits.shape[-1])
    return filter_logits(flat / sc.temperature, sc.top_k, sc.top_p, sc.min_p).softmax(-1).reshape(logits.shape)


def _draw(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One code per row of probs (R, K) -> (R,), by inverting each row's CDF at a uniform draw. Not
    torch.multinomial: on the CPU it was many times slower for a window's rows and a large share of a batch-1
    pass's time; the draw is exact either way (a code of probability 0 is never chosen)."""
    cdf = probs.cumsum(-1)  # (R, K)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_max(probs.shape[-1] - 1)


def generate_jacobi(model: Any, layout: SequenceLayout, seq: torch.Tensor, b: int, sc: Any, guided_logits: Any,
                    generator: torch.Generator, stats: dict | None = None) -> torch.Tensor:
    """Codes (B, N) for the prompts `seq` (B', P) (B' = B x guidance blocks); `guided_logits(logits (B', V)) ->
    (B, K)` applies guidance. Module docstring for the method."""
    from transformers import DynamicCache, StaticCache

    from ar_model.sampler import compiled_forward, prefill

    device = seq.device
    blocks = seq.shape[0] // b
    h, w, k, off = layout.grid_h, layout.grid_w, layout.codebook_size, layout.image_offset
    # slots: the image part as fed: codes and, with row tokens, a fixed [ROW r] before each row but the first
    is_code, fixed = [], []
    for r in range(h):
        if r and layout.row_tokens:
            is_code.append(False)
            fixed.append(layout.row_id(r))
        is_code += [True] * w
        fixed += [-1] * w
    n_slots = len(is_code)
    code_slots = torch.tensor([s for s in range(n_slots) if is_code[s]], device=device)  # (N,)
    above = w + (1 if layout.row_tokens else 0)  # slots between a code and the one a row up
    window = max(1, int(sc.jacobi_window))
    rows = torch.arange(b, device=device)

    is_code_t = torch.tensor(is_code, device=device)  # (S,)

    mask = padding_mask(seq, layout)  # (B', P) or None
    static = getattr(sc, "cache", "dynamic") == "static"
    if static:  # fixed shapes: every pass feeds `block` slots (the window, padded) at explicit cache positions
        block = 1 + max(_window_end(is_code, s, window) - s for s in range(n_slots))  # + the slot fed again
        prompt = seq.shape[1]
        total = prompt + n_slots + block  # room for a padded block that runs past the last slot
        cache = StaticCache(config=model.config, max_cache_len=total)
        if mask is not None:  # the whole length up front; a rejected slot's stale entry is overwritten, never seen
            mask = torch.cat([mask, torch.zeros(mask.shape[0], total - prompt, dtype=mask.dtype, device=device)], 1)
        step = compiled_forward(model) if sc.compile else model.forward
        last = guided_logits(model(input_ids=seq, attention_mask=mask, cache=cache, use_cache=True, logits_to_keep=1,
                                   cache_position=torch.arange(prompt, device=device)).logits[:, -1])
    else:
        cache = DynamicCache(config=getattr(model, "config", None))
        last = guided_logits(prefill(model, seq, cache, mask))  # (B, K): predicts slot 0
    passes = 1
    tokens = torch.tensor(fixed, device=device).repeat(b, 1)  # (B, S) joint-vocabulary ids; -1: no draft yet
    # q[:, s]: the distribution each row's draft at slot s was drawn from (one buffer for all slots: no sliding)
    q = torch.zeros(b, n_slots, k, device=device)
    accepted = torch.zeros(b, dtype=torch.long, device=device)  # slots accepted per row (drawn exactly, or fixed)
    fed = 0  # slots in the cache: the same tokens in every row
    drafted = 0  # slots [0, drafted) hold a draft or an accepted code in every row
    uniform = torch.full((k,), 1.0 / k, device=device)

    while int(accepted.min()) < n_slots:
        start = int(accepted.min())
        end = _window_end(is_code, start, window)  # the window: slots [start, end), `window` codes (and row tokens)
        width = end - start
        code_span = is_code_t[start:end]  # (W,)
        # fresh drafts for the slots the window reaches for the first time (the same in every row: a slot, once
        # drafted, always holds a draft or an accepted code), a row's worth at a time ("above" copies the row before)
        for lo in range(max(start, drafted), end, above):
            hi = min(end, lo + above)
            empty = (tokens[:, lo:hi] < 0) & is_code_t[lo:hi]  # (B, w')
            new = torch.randint(0, k, empty.shape, generator=generator, device=device) + off
            dist = uniform.expand(*empty.shape, k)
            if sc.jacobi_init == "above" and lo >= above:
                up = tokens[:, lo - above : hi - above]  # (B, w') the codes one row up (drafts or accepted)
                known = up >= 0
                new = torch.where(known, up, new)
                dist = torch.where(known[..., None], torch.nn.functional.one_hot((up - off).clamp(0, k - 1), k).float(),
                                   dist)
            tokens[:, lo:hi] = torch.where(empty, new, tokens[:, lo:hi])
            q[:, lo:hi][empty] = dist[empty]
        drafted = max(drafted, end)
        feed = tokens[:, fed:end].repeat(blocks, 1)  # (B', end - fed): every guidance block the same tokens
        if static:  # padded to the block (any id: the padding comes after every real slot, which never sees it)
            n = feed.shape[1]
            feed = torch.cat([feed, feed[:, -1:].expand(-1, block - n)], 1)
            positions = torch.arange(prompt + fed, prompt + fed + block, device=device)
            if mask is not None:
                mask[:, positions] = 1
            out = step(input_ids=feed, attention_mask=mask, cache=cache, use_cache=True,
                       cache_position=positions).logits[:, :n]  # (B', L, V)
        else:
            if mask is not None:
                mask = torch.cat([mask, torch.ones_like(feed)], dim=1)
            out = model(input_ids=feed, attention_mask=mask, cache=cache, use_cache=True).logits  # (B', L, V)
        passes += 1
        # guidance on every position at once: rows are block-major, so (B', L) flattens into blocks of B x L rows
        logits = guided_logits(out.reshape(-1, out.shape[-1])).view(b, out.shape[1], k)  # (B, L, K)
        pred = torch.cat([last[:, None], logits], 1)  # (B, end - fed + 1, K): the predictions of slots fed .. end
        p = _probs(pred, sc)

        # verify every row's drafts in [accepted, end) at once; a row's first failure is where it stops
        span = torch.arange(start, end, device=device)  # (W,)
        ps = p[:, start - fed : end - fed]  # (B, W, K)
        qs = q[:, start:end]  # (B, W, K)
        d = (tokens[:, start:end] - off).clamp(0, k - 1)  # (B, W) draft codes (row slots: ignored)
        ratio = ps.gather(-1, d[..., None]).squeeze(-1) / qs.gather(-1, d[..., None]).squeeze(-1).clamp_min(1e-30)
        u = torch.rand(ratio.shape, generator=generator, device=device)
        ok = (u < ratio) | ~code_span[None] | (span[None] < accepted[:, None])  # (B, W)
        failed = ~ok
        first = torch.where(failed.any(1), failed.float().argmax(1) + start, torch.full_like(accepted, end))  # (B,)
        first = torch.maximum(first, accepted)  # rows already past the window stay where they are
        rejected = first < end
        if bool(rejected.any()):  # the first failed draft: a draw from norm(max(0, p - q))
            j = first[rejected] - start
            pr, qr = ps[rejected, j], qs[rejected, j]  # (R, K)
            residual = (pr - qr).clamp_min(0)
            residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, pr)
            tokens[rows[rejected], first[rejected]] = _draw(residual / residual.sum(-1, keepdim=True), generator) + off
        bonus = ~rejected & (accepted < end) & (end < n_slots)  # all accepted: the next slot too
        if bool(bonus.any()) and is_code[min(end, n_slots - 1)]:
            tokens[rows[bonus], end] = _draw(p[bonus, end - fed], generator) + off
        new_accepted = torch.where(rejected, first + 1, torch.where(bonus, torch.full_like(first, end + 1), first))
        valid = int(torch.where(rejected, first, torch.full_like(first, end)).min())  # slots fed unchanged in every row
        # Jacobi refinement: each row's drafts after its accepted slots are redrawn from this pass's predictions
        redraw = (span[None] >= new_accepted[:, None]) & code_span[None]  # (B, W)
        if bool(redraw.any()):
            drawn = _draw(ps.reshape(-1, k), generator).view(b, width) + off  # (B, W)
            tokens[:, start:end] = torch.where(redraw, drawn, tokens[:, start:end])
            q[:, start:end][redraw] = ps[redraw]
        accepted = torch.maximum(accepted, new_accepted)
        if static:  # a StaticCache writes where its length says: back to `valid` (its crop only moves the length;
            # the entries after it are overwritten by the next pass before anything attends to them)
            cache.crop(-(fed + block - valid))
        elif valid < end:  # drop the cache entries from the first replaced slot on
            cache.crop(-(end - valid))  # transformers 5: a negative count removes that many (a positive one raises)
            if mask is not None:
                mask = mask[:, : mask.shape[1] - (end - valid)]
        last = pred[:, valid - fed]  # (B, K): predicts slot `valid`, given the slots before it (kept in every row)
        fed = valid
    if stats is not None:
        stats["forward_passes"] = stats.get("forward_passes", 0) + passes
    return tokens[:, code_slots] - off  # (B, N)


def _window_end(is_code: list[bool], start: int, window: int) -> int:
    """The end of the window that starts at slot `start`: `window` code slots, the row slots among them riding along."""
    end, drafts = start, 0
    while end < len(is_code) and drafts < window:
        drafts += is_code[end]
        end += 1
    return end


__all__ = ["INITS", "generate_jacobi"]
