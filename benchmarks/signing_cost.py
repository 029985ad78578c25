"""What C2PA signing costs: seconds and bytes per PNG, and sampling-to-files throughput signed vs unsigned.

    python benchmarks/signing_cost.py --run runs/demo [--images 64] [--repeats 3] [--out signing.json]

1. Signing alone: the run's samples encoded as PNGs (with their text chunks) once, then signed
   `--images` times with the configured credentials (pipelines.provenance; the development ones
   by default): median seconds per signature and the bytes the manifest adds per PNG.
2. End to end, as `tessera sample` does it: `pipelines.sample_to_dir` (sampling, PNGs, grid)
   for the demo prompts, signed and unsigned, alternating `--repeats` times in one process so
   both share the machine's state; images/s of each and their ratio (the median of the repeats).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from eval.faithfulness import demo_prompts
    from eval.speed import describe_machine, machine_info
    from pipelines import Run, open_sampler, provenance, sample_to_dir

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run directory with tokenizer/ and generator/")
    p.add_argument("--images", type=int, default=64, help="signatures timed (part 1)")
    p.add_argument("--n", type=int, default=2, help="images per demo prompt (part 2)")
    p.add_argument("--repeats", type=int, default=3, help="signed/unsigned pairs (part 2)")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)

    pipe = open_sampler(args.run, "generator", device="cpu", progress=False)
    signer = provenance.resolve_signer(True)
    grid = int(Run(args.run).recorded_data("generator").get("grid", 3))
    prompts = [s.text for s in demo_prompts(grid)][:24]
    result = pipe.sample(prompts[:8], n=1, settings=pipe.settings(seed=0))

    # 1. signing alone
    pngs = []
    for img, prompt in zip(result.images, result.prompts):
        meta = PngInfo()
        meta.add_itxt("prompt", prompt)
        meta.add_text("tessera", json.dumps(result.sample_config))
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG", pnginfo=meta)
        pngs.append((buf.getvalue(), prompt))
    times, added = [], []
    for i in range(args.images):
        data, prompt = pngs[i % len(pngs)]
        m = provenance.manifest(f"{i}.png", {"prompt": prompt, "seed": 0, "settings": result.sample_config,
                                             "model": result.model})
        t = time.perf_counter()
        signed = signer.sign_png(data, m)
        times.append(time.perf_counter() - t)
        added.append(len(signed) - len(data))

    # 2. sampling to files, signed vs unsigned, alternating
    rates: dict[str, list[float]] = {"signed": [], "unsigned": []}
    with tempfile.TemporaryDirectory() as tmp:
        sample_to_dir(pipe, prompts, Path(tmp) / "warm", n=args.n, settings=pipe.settings(seed=0), progress=False,
                      signer=None)  # warm-up
        for r in range(args.repeats):
            for name, s in (("signed", signer), ("unsigned", None)):
                t = time.perf_counter()
                files = sample_to_dir(pipe, prompts, Path(tmp) / f"{name}{r}", n=args.n,
                                      settings=pipe.settings(seed=r), progress=False, signer=s)
                rates[name].append(len(files.pngs) / (time.perf_counter() - t))

    report = {
        "machine": machine_info(pipe.device), "run": args.run, "credentials": str(signer.credentials.cert_chain),
        "sign_seconds_median": statistics.median(times), "sign_seconds_p90": sorted(times)[int(0.9 * len(times))],
        "png_bytes_median": statistics.median(len(d) for d, _ in pngs),
        "bytes_added_median": statistics.median(added), "images_signed": len(times),
        "sample_to_dir_images": len(prompts) * args.n,
        "images_per_s": {k: statistics.median(v) for k, v in rates.items()}, "rates": rates,
    }
    report["throughput_ratio_signed_over_unsigned"] = (report["images_per_s"]["signed"]
                                                       / report["images_per_s"]["unsigned"])
    print(f"machine: {describe_machine(report['machine'])}")
    print(f"signing alone: {1000 * report['sign_seconds_median']:.2f} ms per PNG (median of {len(times)}; "
          f"p90 {1000 * report['sign_seconds_p90']:.2f} ms), +{report['bytes_added_median']:.0f} bytes per PNG "
          f"(PNG {report['png_bytes_median']:.0f} bytes unsigned)")
    print(f"sample_to_dir, {report['sample_to_dir_images']} images + grid, median of {args.repeats}: signed "
          f"{report['images_per_s']['signed']:.1f} images/s, unsigned {report['images_per_s']['unsigned']:.1f} "
          f"images/s, ratio {report['throughput_ratio_signed_over_unsigned']:.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
