"""Demo-prompt faithfulness of a trained run under several sampling settings, side by side.

    python benchmarks/faithfulness_sweep.py --run runs/demo [--setting CFG:TEMP:TOPK ...] [--n 4] [--seed 0]

Each setting (guidance scale, temperature with 0 = greedy, top-k with 0 = off) samples
`--n` images for each of the demo's 48 prompts exactly as `tessera demo` does and scores
them with the shapes world's `parse` (eval.faithfulness). Prints a markdown table, one
row per setting, and writes it as JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

DEFAULT_SETTINGS = ["1:0:0", "1:0.5:0", "1:1:0", "1.5:0.5:0", "3:1:0"]


def parse_setting(text: str) -> tuple[float, float, int]:
    try:
        cfg, temp, top_k = text.split(":")
        return float(cfg), float(temp), int(top_k)
    except ValueError:
        raise SystemExit(f"error: --setting must be CFG:TEMPERATURE:TOPK, e.g. 1.5:0.5:0; got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a trained run directory (tokenizer/ and generator/)")
    p.add_argument("--setting", action="append", help=f"CFG:TEMPERATURE:TOPK (default: {' '.join(DEFAULT_SETTINGS)})")
    p.add_argument("--n", type=int, default=4, help="samples per prompt")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--out", help="also write the rows as JSON here")
    args = p.parse_args(argv)
    settings = [parse_setting(s) for s in (args.setting or DEFAULT_SETTINGS)]

    from eval import faithfulness
    from pipelines import open_sampler

    pipe = open_sampler(args.run, "generator", device="cpu")
    specs = faithfulness.demo_prompts()
    per_image = [s for s in specs for _ in range(args.n)]
    rows = []
    for cfg, temp, top_k in settings:
        sc = pipe.settings(cfg_scale=cfg, temperature=temp, top_k=top_k, seed=args.seed)
        result = pipe.sample([s.text for s in specs], n=args.n, settings=sc, batch_size=64)
        report = faithfulness.score_images(list(result.images), per_image, [i % args.n for i in range(len(per_image))])
        rows.append({"cfg": cfg, "temperature": temp, "top_k": top_k,
                     **{name: c["accuracy"] for name, c in report.categories.items()}, "all": report.accuracy})
    names = list(faithfulness.CATEGORIES) + ["all"]
    print(f"run {args.run}; {len(specs)} prompts x {args.n} samples, seed {args.seed}\n")
    print("| guidance | temperature | top-k | " + " | ".join(names) + " |")
    print("|---:|---:|---:|" + "---:|" * len(names))
    for r in rows:
        print(f"| {r['cfg']:g} | {r['temperature']:g} | {r['top_k']} | " + " | ".join(f"{r[n]:.1%}" for n in names) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps({"run": args.run, "n": args.n, "seed": args.seed, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
