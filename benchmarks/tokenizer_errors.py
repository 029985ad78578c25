"""What a shapes-world tokenizer changes: each object of held-out scenes compared before and after a round trip.

    python benchmarks/tokenizer_errors.py --tokenizer runs/long8/tokenizer [--grid 4] [--n 1000] [--top 15]

`tessera eval` reports the share of scenes a tokenizer keeps (`parse(decode(encode(x))) == parse(x)`); this
says which objects it loses: every object of `--n` held-out scenes (the scenes of eval's held-out images:
up to grid x grid objects, seed 1234) whose reconstruction parses to another colour, shape or size, goes
missing, or gains a neighbour, counted by (what it was -> what it became). Seconds on a CPU.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def changes(scene, parsed) -> list[tuple]:
    """The objects `parsed` got wrong of `scene`, each as (colour, shape, size, '->', colour, shape, size) (and
    (tone, '->', tone) where the tone changed), ('missing', colour, shape, size) or ('extra', colour, shape, size)."""
    before = {(o.row, o.col): o for o in scene.objects}
    after = {(o.row, o.col): o for o in parsed.objects}
    out = []
    for cell, o in before.items():
        p = after.get(cell)
        if p is None:
            out.append(("missing", o.colour, o.shape, o.size))
        elif p != o:  # the tone (bright / dim) is named where it changed
            tones = (o.tone, "->", p.tone) if o.tone != p.tone else ()
            out.append((o.colour, o.shape, o.size, "->", p.colour, p.shape, p.size, *tones))
    out += [("extra", p.colour, p.shape, p.size) for cell, p in after.items() if cell not in before]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", required=True, help="a tokenizer directory (RUN/tokenizer)")
    p.add_argument("--grid", type=int, default=4, help="the world's grid")
    p.add_argument("--n", type=int, default=1000, help="held-out scenes")
    p.add_argument("--top", type=int, default=15, help="the commonest changes to print")
    args = p.parse_args(argv)

    import torch

    from train.data import shapes
    from vqtok import images_to_tensor, tensor_to_images
    from vqtok.io import load_tokenizer

    tok = load_tokenizer(args.tokenizer).eval()
    res = tok.cfg.resolution
    scenes = shapes.sample_scenes(args.n, seed=1234, split="heldout", max_objects=args.grid ** 2, grid=args.grid)
    images = torch.from_numpy(shapes.render_batch(scenes, res))
    counts, objects, kept = collections.Counter(), collections.Counter(), 0
    with torch.no_grad():
        for start in range(0, args.n, 100):
            x = images[start : start + 100]
            recon = tensor_to_images(tok.decode(tok.encode(images_to_tensor(x)).codes))
            for scene, r in zip(scenes[start : start + 100], recon):
                objects.update((o.shape, o.size) for o in scene.objects)
                wrong = changes(scene, shapes.parse(r.numpy(), args.grid))
                kept += not wrong
                counts.update(wrong)
    total = sum(objects.values())
    changed = sum(counts.values())
    print(f"tokenizer {args.tokenizer}: {args.n} held-out scenes at {res} px, {total} objects; "
          f"scenes kept {kept / args.n:.1%}, objects changed {changed} ({changed / total:.2%})")
    print("objects by (shape, size): " + ", ".join(f"{s} {z} {n}" for (s, z), n in sorted(objects.items())))
    for change, n in counts.most_common(args.top):
        print(f"{n:6d}  {' '.join(map(str, change))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
