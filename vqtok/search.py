"""Decoder-checked encoding: each position's code chosen by what the decoder draws from it.

The encoder picks, at each position, the code nearest its own output, and nothing checks that this code is the
one the decoder draws closest to the image. `search_codes` starts from the encoder's codes and, position by
position, tries the `candidates` codes nearest the encoder's output in its place and keeps whichever makes the
decoded pixels closest to the image (squared error): the same codes, the same bits per pixel, the same decoder,
only a better choice of codes -- what a classical codec's rate-distortion-optimised quantisation does for its
coefficients. Written here because no library we use offers it for a VQ tokenizer.

It is exact and cheap because the decoder is local: with the per-position norm (VQConfig.norm = "pixel") or
the patch architecture, the pixels of one code's block depend only on the codes within `decoder_radius` r of it.
Positions 2r + 1 apart cannot see each other's changes, so one decode of the whole grid tries one candidate at
every such position at once, and the change of squared error in the (2r + 1)^2 blocks around each position is
exactly what its candidate would do alone. (2r + 1)^2 interleaved lattices cover the grid; a round visits each
once, and every accepted change lowers the image's error (checked after each lattice, undone otherwise); the
search stops early when a round changes nothing (no single candidate at any position would lower it). A
GroupNorm decoder normalises over the whole map, so every block depends on every code: refused.

Cost: per round, (2r + 1)^2 x (candidates + 1) decodes of the image (r = 4 for the cpu-photo preset: 729 at
8 candidates; ~30 s a round for a 256 x 448 photograph on 2 CPU cores), in fp32: trial decodes under bf16 autocast
ran 1.5x faster for 0.006 dB less on chelsea, not taken, so that a gain is what fp32 decodes say. docs/RESULTS.md
"Issue 23" (session 32) has what it buys on photographs.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from vqtok.errors import TokenizerError
from vqtok.model import VQTokenizer

TOLERANCE = 1e-6  # the least change of summed squared error (images in [-1, 1]) that counts as a gain
TRIAL_POSITIONS = 2**21  # code positions decoded at once (candidates x images x h x w): ~1 GB a width-128 map


def block_errors(recon: torch.Tensor, images: torch.Tensor, block: int) -> torch.Tensor:
    """Squared error of (B, C, H, W) `recon` against `images`, summed over each code's block x block pixels and
    the channels: (B, H / block, W / block)."""
    return F.pixel_unshuffle((recon.float() - images.float()).pow(2), block).sum(1)


@torch.no_grad()
def decoder_radius(tokenizer: VQTokenizer, limits: tuple[int, ...] = (12, 40)) -> int:
    """How far (in codes, Chebyshev distance) a code's change reaches in the decoded image: decodes a random
    grid of side 2 * limit + 1 and the same grid with its centre code changed, and measures the blocks that
    differ; a reach up to the grid's edge is measured again on the next, larger grid of `limits`. Raises
    TokenizerError where it reaches the edge of the largest (a decoder that is not local, e.g. GroupNorm)."""
    ds, device = tokenizer.cfg.downsample, next(tokenizer.parameters()).device
    reach = 0
    for limit in limits:
        side = 2 * limit + 1
        gen = torch.Generator().manual_seed(0)
        codes = torch.randint(tokenizer.cfg.num_codes, (1, side, side), generator=gen).to(device)
        base = tokenizer.decode(codes)  # (1, 3, side * ds, side * ds)
        for shift in range(1, 5):  # another code at the centre (a few tries, should two codes decode alike)
            other = codes.clone()
            other[0, limit, limit] = (codes[0, limit, limit] + shift * 97) % tokenizer.cfg.num_codes
            changed = block_errors(tokenizer.decode(other), base, ds)[0] > 0  # (side, side)
            if changed.any():
                break
        else:
            raise TokenizerError("the decoder drew the same image for several different centre codes: cannot "
                                 "measure its reach")
        ys, xs = changed.nonzero(as_tuple=True)
        reach = int(torch.maximum((ys - limit).abs(), (xs - limit).abs()).max())
        if reach < limit:
            return reach
    raise TokenizerError(
        f"the decoder is not local (a code's change reaches {reach} codes away or more): code search needs the "
        "per-position norm (vq.norm=pixel) or the patch architecture; GroupNorm decoders normalise over the whole "
        "image"
    )


@torch.no_grad()
def search_codes(tokenizer: VQTokenizer, images: torch.Tensor, candidates: int = 8, rounds: int = 2,
                 radius: int | None = None, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Codes (B, h, w) int64 for `images` (B, 3, H, W) in [-1, 1] whose decoding is closer to the images than the
    encoder's own codes (never farther): the module docstring. `candidates` codes are tried at each position
    (the encoder's nearest first), over `rounds` passes; `radius` is the decoder's reach (measured when None);
    `progress(done, total)` is called after each lattice (total = rounds x lattices; done jumps to total when
    the search stops early). The vq quantizer only (FSQ and LFQ have no nearest-code list); the tokenizer should
    be in eval mode. Large images are tried a few candidates at a time (TRIAL_POSITIONS) to bound memory."""
    if tokenizer.cfg.quantizer != "vq":
        raise TokenizerError(f"code search needs the vq quantizer, this tokenizer has {tokenizer.cfg.quantizer!r}")
    if candidates < 1 or rounds < 0:
        raise ValueError(f"candidates must be >= 1 and rounds >= 0, got {candidates} and {rounds}")
    tokenizer._check_images(images)
    r = decoder_radius(tokenizer) if radius is None else radius
    span, ds = 2 * r + 1, tokenizer.cfg.downsample
    cand = tokenizer.quantizer.nearest_codes(tokenizer.encoder(images), candidates)  # (B, h, w, K)
    b, h, w, k = cand.shape
    latents = torch.stack([tokenizer.quantizer.codes_to_latent(cand[..., j]) for j in range(k)])  # (K, B, D, h, w)
    d = latents.shape[2]
    choice = torch.zeros(b, h, w, dtype=torch.long, device=images.device)  # index into each position's candidates

    def pick(ch: torch.Tensor) -> torch.Tensor:  # (B, h, w) candidate indices -> (B, D, h, w) latent
        return latents.gather(0, ch[None, :, None].expand(1, b, d, h, w))[0]

    current = pick(choice)
    err = block_errors(tokenizer.decode_latent(current), images, ds)  # (B, h, w)
    rows, cols = torch.arange(h, device=images.device)[:, None], torch.arange(w, device=images.device)[None, :]
    group = max(1, min(k, TRIAL_POSITIONS // (b * h * w)))  # candidates decoded together
    repeated = images.repeat(group, 1, 1, 1)  # (group * B, 3, H, W), candidate-major as the trials
    lattices = min(span, h) * min(span, w)
    total, done = (rounds if k > 1 else 0) * lattices, 0

    def trial_errors(on: torch.Tensor) -> torch.Tensor:  # (K, B, h, w): block errors with candidate j on `on`
        out = []
        for j in range(0, k, group):
            trials = torch.where(on, latents[j : j + group], current)  # (g, B, D, h, w)
            g = trials.shape[0]
            decoded = tokenizer.decode_latent(trials.flatten(0, 1))  # (g * B, 3, H, W), candidate-major
            out.append(block_errors(decoded, repeated[: g * b], ds).view(g, b, h, w))
        return torch.cat(out)

    for _ in range(rounds if k > 1 else 0):
        changed = False
        for y0 in range(min(span, h)):
            for x0 in range(min(span, w)):
                done += 1
                if progress is not None:
                    progress(done, total)
                on = ((rows % span) == y0) & ((cols % span) == x0)  # (h, w): this lattice's positions
                change = (trial_errors(on) - err).flatten(0, 1)[:, None]  # (K * B, 1, h, w)
                # each lattice position's change summed over the blocks it can reach (zero outside the image)
                gain = F.avg_pool2d(change, span, stride=1, padding=r, count_include_pad=True) * span**2
                gain = gain.view(k, b, h, w)
                best = gain.argmin(0)  # (B, h, w)
                # a change must gain more than float noise (decodes of one latent in two batches may differ in the
                # last bits), or two near-equal codes could be swapped back and forth
                better = on & (gain.gather(0, best[None])[0] < -TOLERANCE) & (best != choice)
                if not better.any():
                    continue
                new_choice = torch.where(better, best, choice)
                new_current = pick(new_choice)
                new_err = block_errors(tokenizer.decode_latent(new_current), images, ds)
                keep = new_err.flatten(1).sum(1) <= err.flatten(1).sum(1)  # (B,): exact for a local decoder
                choice = torch.where(keep[:, None, None], new_choice, choice)
                current = torch.where(keep[:, None, None, None], new_current, current)
                err = torch.where(keep[:, None, None], new_err, err)
                changed = changed or bool(keep.any())
        if not changed:  # a local optimum: no single candidate at any position lowers the error
            if progress is not None and done < total:
                progress(total, total)
            break
    return cand.gather(-1, choice[..., None])[..., 0]  # (B, h, w)


__all__ = ["block_errors", "decoder_radius", "search_codes"]
