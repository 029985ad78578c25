"""What a shapes-world tokenizer changes: each object of held-out scenes compared before and after a round trip.

    python benchmarks/tokenizer_errors.py --tokenizer runs/long8/tokenizer [--grid 4] [--n 1000] [--top 15]
    python benchmarks/tokenizer_errors.py --tokenizer runs/text1/tokenizer --text 1.0 --max-objects 4

`tessera eval` reports the share of scenes a tokenizer keeps (`parse(decode(encode(x))) == parse(x)`); this
says which objects it loses: every object of `--n` held-out scenes (the scenes of eval's held-out images:
up to grid x grid objects, seed 1234) whose reconstruction parses to another colour, shape or size, goes
missing, or gains a neighbour, counted by (what it was -> what it became). With `--text` (the share of scenes
holding a string, as a text tokenizer's data.text) it also reads every character back in its cell, plain and on a
sign, and says how many characters the codes themselves confuse: a code the encoder gives to cells of two or more
different characters (in this sample) cannot be decoded right for all of them, whatever the decoder. Seconds on
a CPU.
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


def char_changes(scene, parsed) -> dict[tuple[int, int], tuple[str, str | None, bool]]:
    """Every character of `scene`'s strings `parsed` reads otherwise in its cell: cell -> (was, read or None,
    on a sign)."""
    read = {cell: ch for t in parsed.texts for cell, ch in zip(t.cells(), t.string)}
    return {cell: (ch, read.get(cell), t.sign) for t in scene.texts for cell, ch in zip(t.cells(), t.string)
            if read.get(cell) != ch}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", required=True, help="a tokenizer directory (RUN/tokenizer)")
    p.add_argument("--grid", type=int, default=4, help="the world's grid")
    p.add_argument("--n", type=int, default=1000, help="held-out scenes")
    p.add_argument("--top", type=int, default=15, help="the commonest changes to print")
    p.add_argument("--text", type=float, default=0.0, help="share of scenes holding a string (a text tokenizer)")
    p.add_argument("--max-objects", type=int, default=None, help="objects a scene at most (default grid x grid)")
    args = p.parse_args(argv)

    import torch

    from train.data import shapes
    from vqtok import images_to_tensor, tensor_to_images
    from vqtok.io import load_tokenizer

    tok = load_tokenizer(args.tokenizer).eval()
    res = tok.cfg.resolution
    scenes = shapes.sample_scenes(args.n, seed=1234, split="heldout", max_objects=args.max_objects or args.grid ** 2,
                                  grid=args.grid, text=args.text)
    images = torch.from_numpy(shapes.render_batch(scenes, res))
    counts, objects, kept = collections.Counter(), collections.Counter(), 0
    chars, char_counts = collections.Counter(), collections.Counter()  # (on a sign) -> characters; changes
    by_code: dict[int, set] = collections.defaultdict(set)  # code -> the characters whose cells it was given
    char_codes = []  # (code, read right) for each character cell, with one code a cell
    with torch.no_grad():
        for start in range(0, args.n, 100):
            x = images[start : start + 100]
            codes = tok.encode(images_to_tensor(x)).codes  # (B, h, w)
            recon = tensor_to_images(tok.decode(codes))
            per = codes.shape[-1] // args.grid  # codes a cell across
            for scene, r, c in zip(scenes[start : start + 100], recon, codes):
                parsed = shapes.parse(r.numpy(), args.grid)
                objects.update((o.shape, o.size) for o in scene.objects)
                wrong = changes(scene, parsed)
                bad = char_changes(scene, parsed)
                kept += not wrong and not bad
                counts.update(wrong)
                char_counts.update(bad.values())
                for t in scene.texts:
                    for (row, col), ch in zip(t.cells(), t.string):
                        chars[t.sign] += 1
                        if per == 1:  # one code a cell: which characters share it
                            code = int(c[row, col])
                            by_code[code].add(ch)
                            char_codes.append((code, (row, col) not in bad))
    total = sum(objects.values())
    changed = sum(counts.values())
    print(f"tokenizer {args.tokenizer}: {args.n} held-out scenes at {res} px, {total} objects; "
          f"scenes kept {kept / args.n:.1%}, objects changed {changed} ({changed / total:.2%})")
    print("objects by (shape, size): " + ", ".join(f"{s} {z} {n}" for (s, z), n in sorted(objects.items())))
    for change, n in counts.most_common(args.top):
        print(f"{n:6d}  {' '.join(map(str, change))}")
    if chars:
        for sign in (False, True):
            n_bad = sum(n for (_, _, s), n in char_counts.items() if s == sign)
            print(f"characters {'on a sign' if sign else 'plain'}: {chars[sign]}, read otherwise {n_bad} "
                  f"({n_bad / max(chars[sign], 1):.1%})")
        if char_codes:
            shared = [ok for code, ok in char_codes if len(by_code[code]) > 1]
            print(f"one code a cell: {len(by_code)} codes given to characters, {sum(len(v) > 1 for v in by_code.values())} "
                  f"of them to two or more; characters read otherwise on such a shared code: "
                  f"{shared.count(False)} of {sum(not ok for _, ok in char_codes)}")
        for (was, read, sign), n in char_counts.most_common(args.top):
            print(f"{n:6d}  {was} -> {read if read is not None else 'nothing'}{' (sign)' if sign else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
