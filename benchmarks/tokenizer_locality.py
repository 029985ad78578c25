"""How local a tokenizer's codes are, and how well it keeps the editing world's scenes.

    python benchmarks/tokenizer_locality.py RUN/tokenizer [--n 300] [--seed 1]

Draws `n` edits of the shapes world (train.data.edits, the rows editing trains on), encodes the
image before and after each edit at the tokenizer's resolution and prints:

- the share of codes left unchanged among the patches whose pixels the edit did not change
  (1.0: an editor can copy every untouched patch's code);
- how many different codes the all-background patches take (1 for strictly local codes);
- the share of edited scenes that `shapes.parse` reads back exactly after encoding and decoding
  (tones included).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import torch

    from train.data import edits, shapes
    from vqtok import images_to_tensor, load_tokenizer, tensor_to_images

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("tokenizer", help="a tokenizer directory (RUN/tokenizer)")
    p.add_argument("--n", type=int, default=300, help="edits drawn")
    p.add_argument("--seed", type=int, default=1, help="edit seed")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    tok = load_tokenizer(args.tokenizer).eval()
    res, d = tok.cfg.resolution, tok.cfg.downsample
    g = res // d
    steps = edits.sample_edit_rows(args.n, seed=args.seed)
    before = shapes.render_batch([s.before for s in steps], res)
    after = shapes.render_batch([s.after for s in steps], res)
    with torch.no_grad():
        a, b = tok.encode(images_to_tensor(before)).codes, tok.encode(images_to_tensor(after)).codes
        decoded = tensor_to_images(tok.decode(b)).numpy()
    n = len(steps)
    unchanged = torch.from_numpy((before == after).all(-1).reshape(n, g, d, g, d).all(axis=(2, 4)))  # (n, g, g)
    background = torch.from_numpy((before.reshape(n, g, d, g, d, 3) == 0).all(axis=(2, 4, 5)))
    kept = float(np.mean([shapes.parse(img) == s.after for img, s in zip(decoded, steps)]))
    print(f"{args.tokenizer} ({tok.cfg.architecture}, {tok.cfg.num_codes} codes): untouched patches keeping their code "
          f"{float((a == b)[unchanged].float().mean()):.1%}; codes of all-background patches "
          f"{len(torch.unique(a[background]))}; scenes kept exactly {kept:.1%} of {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
