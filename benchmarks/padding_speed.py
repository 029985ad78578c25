"""Generator training step time with and without masked padding, on a preset's own captions, side by side.

    python benchmarks/padding_speed.py [--preset cpu-long] [--steps 10] [--threads 2]

Draws 20,000 scenes and captions as the generator preset does (its grid, object counts,
uniform scenes and caption set), trains a BPE on them, and times `--steps` optimizer steps
(after 3 warm-up steps) of the preset's model on batches in the preset's order: with the
preset's layout as it is (masked padding: every batch cut to its longest caption, batches
grouped by caption length) and with the padding attended (the fixed text length every
step). Random image codes: the step time does not depend on them. Prints the mean text
length of a batch and seconds per step for each.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import torch

    from ar_model import SequenceLayout, build_model, build_sequences, encode_text, image_loss, train_text_tokenizer
    from train.data import grammar, shapes
    from train.generator_stage import preset_config
    from train.loop import EpochOrder
    from train.tokenizer_stage import preset_config as tokenizer_preset

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cpu-long")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    cfg, vq = preset_config(args.preset), tokenizer_preset(args.preset).vq
    d = cfg.data
    scenes = shapes.sample_scenes(20000, seed=d.seed, max_objects=d.max_objects, min_objects=d.min_objects,
                                  count_weights=d.count_weights, grid=d.grid, uniform=d.uniform_scenes)
    rng = np.random.default_rng(0)
    captions = [grammar.caption(s, rng, d.captions) for s in scenes]
    tok = train_text_tokenizer(captions, vocab_size=d.text_vocab)
    masked = SequenceLayout.for_tokenizer(tok, vq.num_codes, (vq.grid_size,) * 2, d.text_len, d.row_tokens, True)
    text = encode_text(tok, captions, masked).ids  # (N, T)
    codes = torch.randint(0, vq.num_codes, (len(text), vq.grid_size, vq.grid_size))
    lengths = (text != masked.pad_id).sum(1)
    b = cfg.loop.batch_size
    print(f"{args.preset}: {args.threads} threads, batch {b}, {args.steps} timed steps; text_len {d.text_len}, "
          f"mean caption {lengths.float().mean():.1f} tokens, longest {int(lengths.max())}")
    print("| padding | text tokens a batch | s/step |\n|---|---:|---:|")
    for name, layout, order in (
        ("attended (fixed length)", dataclasses.replace(masked, mask_padding=False), EpochOrder(len(text), 0)),
        ("masked, trimmed, length buckets", masked, EpochOrder(len(text), 0, lengths=lengths, block=b)),
    ):
        model = build_model(cfg.generator_config(layout), seed=0)
        opt = torch.optim.AdamW(model.parameters(), 1e-3)
        widths = []
        for i in range(3 + args.steps):
            if i == 3:
                t = time.perf_counter()
            idx = order.indices(i, 0, b)
            widths.append(int(lengths[idx].max()) if layout.mask_padding else layout.text_len)
            image_loss(model, build_sequences(text[idx], codes[idx], layout), layout).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        per_step = (time.perf_counter() - t) / args.steps
        print(f"| {name} | {np.mean(widths[3:]):.1f} | {per_step:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
