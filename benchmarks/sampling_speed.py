"""Sampling speed of a trained run: images/s at several batch sizes, KV cache on and off, side by side.

    python benchmarks/sampling_speed.py --run runs/demo [--batch-sizes 1 32] [--images 32] [--cfg 1.5]

Each setting samples `--images` images (at least one full batch) from the shapes
world's demo prompts, codes *and* decoding to pixels, after one warm-up batch;
the settings run interleaved in one process so they share the machine's state.
Prints a markdown table and writes it, with the machine, as JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> int:
    from eval.faithfulness import demo_prompts
    from eval.speed import measure_sampling
    from pipelines import open_sampler

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run directory with tokenizer/ and generator/")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    p.add_argument("--images", type=int, default=32, help="images per setting (rounded up to whole batches)")
    p.add_argument("--cfg", type=float,
                   help="guidance scale (default: the run's recorded one; any value but 1 samples two rows per image)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)

    pipe = open_sampler(args.run, "generator", device=args.device)
    guidance = {} if args.cfg is None else {"cfg_scale": args.cfg}
    settings = {f"kv cache {'on' if c else 'off'}": pipe.settings(**guidance, seed=0, use_cache=c) for c in (True, False)}
    report = measure_sampling(pipe, [s.text for s in demo_prompts()], settings, args.batch_sizes, args.images)
    lines = report.to_markdown().splitlines()
    lines[2] += " speed-up of the cache |"
    lines[3] += "---:|"
    for i, r in enumerate(report.rows, start=4):
        off = next(x for x in report.rows if x.batch_size == r.batch_size and x.setting == "kv cache off")
        lines[i] += f" {r.images_per_s / off.images_per_s:.1f}x |" if r is not off else " |"
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
