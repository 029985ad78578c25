"""Memorisation: are a run's samples new images, or copies of its training rows?

For a run trained on own data (`tessera eval` runs this by default there), with the run's
pre-tokenized rows (RUN/codes) and the rows its generator stage held out (data.val_split):

- prompts: the captions of the held-out rows (or, without a split, of training rows drawn
  by seed), `n` samples each;
- for every generated image, the distance to the nearest training row, in pixels (RMS on
  the 0-255 scale, against the training rows as the tokenizer reproduces them: the best any
  generator of this run can copy) and in the tokenizer's code space (the largest share of
  code positions equal to one training row's, the generated image re-encoded);
- **near copies**: images within `threshold` RMS of a training row (default 10; distinct
  images of a real data set are typically 20-40 apart, a copy through the tokenizer 0-5);
- **distinct samples per prompt**: the share of a prompt's n samples whose codes differ;
- the same distances for the held-out rows themselves: real images the model never saw, the
  reference a generator that does not copy should look like.

A model that memorised shows near copies far above the held-out rows' share, distances far
below theirs, and few distinct samples per prompt.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from eval.faithfulness import wilson

NEAR_COPY_RMS = 10.0  # 0-255 scale
MAX_TRAIN_ROWS = 20000  # training rows searched (a random subset of larger sets: the copies found are a lower bound)
PROMPTS = 64


@dataclass
class MemorisationReport:
    threshold_rms: float
    train_rows: int  # training rows of the run
    searched_rows: int  # of them searched for the nearest neighbour
    prompts: int
    prompt_source: str  # "held-out rows" or "training rows"
    generated: dict  # summary(): images, median / p10 RMS, near copies, median code match
    heldout: dict | None  # the same for the held-out rows (None: the run held none out)
    distinct_per_prompt: float  # mean share of a prompt's samples with distinct codes

    def to_dict(self) -> dict:
        return asdict(self)

    def to_markdown(self) -> str:
        def row(name: str, s: dict) -> str:
            c = s["near_copies"]
            return (f"| {name} | {s['images']} | {s['median_rms']:.1f} | {s['p10_rms']:.1f} | "
                    f"{100 * c['rate']:.1f}% [{100 * c['lo']:.1f}, {100 * c['hi']:.1f}] | "
                    f"{100 * s['median_code_match']:.1f}% |")

        lines = [f"Nearest of {self.searched_rows} training rows (of {self.train_rows}); near copy: RMS < "
                 f"{self.threshold_rms:g} on 0-255. {self.prompts} prompts from the {self.prompt_source}; "
                 f"distinct samples per prompt {100 * self.distinct_per_prompt:.1f}%.", "",
                 "| images | n | median RMS to nearest | 10th pct RMS | near copies | median code match |",
                 "|---|---:|---:|---:|---:|---:|", row("generated", self.generated)]
        if self.heldout:
            lines.append(row("held-out real rows (reference)", self.heldout))
        return "\n".join(lines)


def nearest_rms(images: torch.Tensor, train: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """(N,) RMS distance (0-255) from each of images (N, H, W, 3) uint8 to its nearest of train (M, H, W, 3)."""
    a, b = images.flatten(1).float(), train.flatten(1).float()  # (N, D), (M, D)
    out = []
    for part in a.split(chunk):
        out.append(torch.cdist(part, b).min(dim=1).values / a.shape[1] ** 0.5)  # Euclidean / sqrt(D) = RMS
    return torch.cat(out)


def best_code_match(codes: torch.Tensor, train: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """(N,) the largest share of positions where codes (N, L) equal one row of train (M, L)."""
    out = []
    for part in codes.split(chunk):
        out.append((part[:, None, :] == train[None, :, :]).float().mean(-1).max(dim=1).values)  # (chunk,)
    return torch.cat(out)


def summary(rms: torch.Tensor, match: torch.Tensor, threshold: float) -> dict:
    near = int((rms < threshold).sum())
    return {"images": len(rms), "median_rms": float(rms.median()), "p10_rms": float(rms.quantile(0.1)),
            "near_copies": {"rate": near / len(rms), **dict(zip(("lo", "hi"), wilson(near, len(rms)))), "n": len(rms)},
            "median_code_match": float(match.median())}


def evaluate_memorisation(pipe: Any, run: Any, n: int, settings: Any, batch_size: int = 64, seed: int = 0,
                          prompts: int = PROMPTS, threshold: float = NEAR_COPY_RMS,
                          max_train_rows: int = MAX_TRAIN_ROWS, progress: bool = False) -> MemorisationReport:
    """The memorisation report of `pipe` (any ImageSampler of the run) against `run`'s pre-tokenized rows."""
    from ar_model import load_text_tokenizer
    from train.loop import split_rows
    from train.pretokenize import load_codes
    from vqtok import images_to_tensor, tensor_to_images

    codes, text_ids = load_codes(run.part("codes"))  # (N, h*w) int16, (N, T) int32
    data = run.recorded_data("generator")
    train_idx, val_idx = split_rows(len(codes), float(data.get("val_split", 0.0)), int(data.get("seed", 1)))
    g = torch.Generator().manual_seed(seed)
    searched = train_idx if len(train_idx) <= max_train_rows else \
        train_idx[torch.randperm(len(train_idx), generator=g)[:max_train_rows]].sort().values
    source = val_idx if len(val_idx) else train_idx[torch.randperm(len(train_idx), generator=g)]
    rows = source[:prompts]
    text_tok = load_text_tokenizer(run.part("text_tokenizer"))
    captions = [text_tok.decode(t.tolist(), skip_special_tokens=True) for t in text_ids[rows]]

    tokenizer = run.load_tokenizer(device=pipe.device)
    grid = tokenizer.cfg.grid_size

    def decode(c: torch.Tensor) -> torch.Tensor:  # (B, h*w) -> uint8 (B, R, R, 3)
        out = []
        with torch.inference_mode():
            for part in c.long().split(batch_size):
                out.append(tensor_to_images(tokenizer.decode(part.view(-1, grid, grid).to(pipe.device))).cpu())
        return torch.cat(out)

    def encode(images: torch.Tensor) -> torch.Tensor:  # uint8 (B, R, R, 3) -> (B, h*w)
        out = []
        with torch.inference_mode():
            for part in images.split(batch_size):
                out.append(tokenizer.encode(images_to_tensor(part).to(pipe.device)).codes.flatten(1).cpu())
        return torch.cat(out)

    train_images = decode(codes[searched])  # (M, R, R, 3): the training rows as this tokenizer reproduces them
    train_codes = codes[searched].long()
    result = pipe.sample(captions, n=n, settings=settings, batch_size=batch_size, progress=progress)
    generated = torch.from_numpy(np.ascontiguousarray(result.images))  # (P * n, R, R, 3), prompt-major
    gen_codes = encode(generated)
    gen = summary(nearest_rms(generated, train_images), best_code_match(gen_codes, train_codes), threshold)
    distinct = float(np.mean([len({tuple(c.tolist()) for c in gen_codes[i * n : (i + 1) * n]}) / n
                              for i in range(len(captions))]))
    held = None
    if len(val_idx):
        real = val_idx[: prompts * n]  # as many held-out rows as generated images, where there are that many
        held = summary(nearest_rms(decode(codes[real]), train_images), best_code_match(codes[real].long(), train_codes),
                       threshold)
    return MemorisationReport(threshold, len(train_idx), len(searched), len(captions),
                              "held-out rows" if len(val_idx) else "training rows", gen, held, distinct)


__all__ = ["MAX_TRAIN_ROWS", "NEAR_COPY_RMS", "MemorisationReport", "best_code_match", "evaluate_memorisation",
           "nearest_rms", "summary"]
