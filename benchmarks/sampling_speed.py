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
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> int:
    import torch

    from ar_model import SampleConfig
    from eval.faithfulness import demo_prompts
    from eval.tokenizer_metrics import machine_description
    from tessera.pipeline import Pipeline

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run directory with tokenizer/ and generator/")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    p.add_argument("--images", type=int, default=32, help="images per setting (rounded up to whole batches)")
    p.add_argument("--cfg", type=float, default=1.5,
                   help="guidance scale (the demo's 1.5; any value but 1 samples two rows per image)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)

    pipe = Pipeline.from_run(args.run, device=args.device)
    prompts = [s.text for s in demo_prompts()]
    rows = []
    for bs in args.batch_sizes:
        batches = max(1, -(-args.images // bs))
        texts = [prompts[i % len(prompts)] for i in range(bs)]
        for use_cache in (True, False):
            sc = SampleConfig(cfg_scale=args.cfg, seed=0, use_cache=use_cache)
            pipe.sample(texts, n=1, sc=sc, batch_size=bs)  # warm-up
            if pipe.device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            for b in range(batches):
                pipe.sample(texts, n=1, sc=sc.replace(seed=b), batch_size=bs)
            if pipe.device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t
            n = batches * bs
            rows.append({"batch_size": bs, "kv_cache": use_cache, "images": n, "seconds": round(dt, 3),
                         "images_per_s": n / dt, "tokens_per_s": n * pipe.layout.num_image_tokens / dt})
            print(f"batch {bs:3d} cache {'on ' if use_cache else 'off'}: {n / dt:8.2f} images/s", flush=True)
    machine = machine_description(pipe.device)
    lines = [f"machine: {machine}; guidance {args.cfg}; {pipe.layout.num_image_tokens} image tokens per image", "",
             "| batch | KV cache | images/s | tokens/s | speed-up of the cache |", "|---:|---|---:|---:|---:|"]
    for r in rows:
        off = next(x for x in rows if x["batch_size"] == r["batch_size"] and not x["kv_cache"])
        gain = f"{r['images_per_s'] / off['images_per_s']:.1f}x" if r["kv_cache"] else ""
        lines.append(f"| {r['batch_size']} | {'on' if r['kv_cache'] else 'off'} | {r['images_per_s']:.2f} | "
                     f"{r['tokens_per_s']:.0f} | {gain} |")
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine, "cfg_scale": args.cfg, "torch_threads":
                                              torch.get_num_threads(), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
