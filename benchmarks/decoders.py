"""The generator's decoders side by side: speed, sequential passes and faithfulness against plain decoding.

    python benchmarks/decoders.py --run runs/demo [--decoder plain --decoder jacobi:16:random ...]
                                  [--batch-sizes 1 32] [--images 32] [--suite position --suite heldout] [--n 4]
                                  [--fid-images 500] [--out decoders.json]

Each decoder is `plain`, `static` / `static+compile` (the plain decoder on a static KV cache, compiled),
`jacobi:WINDOW:INIT` (INIT random or above; `+static` or `+static+compile` on the static cache) or `zipar:WINDOW`, on the run's recorded
sampling settings (guidance, temperature, ...) and one seed. For every decoder, in one process:

1. speed (eval.speed.measure_sampling, decoders interleaved so they share the machine's state):
   images/s and sequential forward passes per batch, at each batch size, and the ratio to plain;
2. faithfulness on the chosen suites of `tessera eval` (95% intervals) and FID on the harness's
   classifier features, with the same seed (eval.harness.evaluate_run, speed off).

Prints one markdown table and writes every number as JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def parse_decoder(text: str) -> dict:
    """'plain', 'static', 'static+compile', 'jacobi:WINDOW:INIT[+static[+compile]]' or 'zipar:WINDOW' ->
    SampleConfig overrides."""
    if text.startswith("jacobi") and "+static" in text:  # speculative Jacobi on the static cache (compiled)
        base, _, cache = text.partition("+")
        return {**parse_decoder(base), "cache": "static", **({"compile": True} if cache.endswith("compile") else {})}
    if text == "plain":
        return {"decoder": "plain"}
    if text in ("static", "static+compile"):  # the plain decoder on transformers' StaticCache (compiled)
        return {"decoder": "plain", "cache": "static", **({"compile": True} if text.endswith("compile") else {})}
    parts = text.split(":")
    if parts[0] == "zipar" and len(parts) <= 2:
        return {"decoder": "zipar", "zipar_window": int(parts[1]) if len(parts) > 1 else 2}
    if parts[0] != "jacobi" or len(parts) > 3:
        raise argparse.ArgumentTypeError(f"a decoder is plain, static, static+compile, jacobi:WINDOW:INIT or "
                                         f"zipar:WINDOW, got {text!r}")
    return {"decoder": "jacobi", "jacobi_window": int(parts[1]) if len(parts) > 1 else 16,
            "jacobi_init": parts[2] if len(parts) > 2 else "random"}


def main(argv: list[str] | None = None) -> int:
    from eval.faithfulness import demo_prompts
    from eval.harness import EvalConfig, evaluate_run
    from eval.speed import describe_machine, measure_sampling
    from pipelines import Run, open_sampler

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run directory with tokenizer/ and generator/")
    p.add_argument("--decoder", action="append", type=parse_decoder, dest="decoders",
                   help="plain, static, static+compile, jacobi:WINDOW:INIT[+static[+compile]] or zipar:WINDOW (repeat; default: plain, jacobi:16:random, "
                        "jacobi:16:above, zipar:1, zipar:2, zipar:4)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    p.add_argument("--images", type=int, default=32, help="images timed per decoder and batch size")
    p.add_argument("--suite", action="append", dest="suites", help="eval suites (default: the eval's default ones)")
    p.add_argument("--n", type=int, default=4, help="samples per prompt for faithfulness")
    p.add_argument("--fid-images", type=int, default=500)
    p.add_argument("--no-quality", action="store_true", help="speed only")
    p.add_argument("--no-speed", action="store_true",
                   help="faithfulness and FID only (they do not depend on the machine's load: run beside other work)")
    p.add_argument("--quality-from", help="take faithfulness and FID from this earlier --out JSON (same run, seed, "
                                          "suites and n) for the decoders it holds, instead of measuring them again")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    decoders = args.decoders or [parse_decoder(d) for d in ("plain", "jacobi:16:random", "jacobi:16:above", "zipar:1",
                                                            "zipar:2", "zipar:4")]
    if decoders[0] != {"decoder": "plain"}:
        decoders.insert(0, {"decoder": "plain"})  # the reference

    pipe = open_sampler(args.run, "generator", device="cpu", progress=False)
    settings = {pipe.describe(pipe.settings(**d, seed=args.seed)): pipe.settings(**d, seed=args.seed) for d in decoders}
    grid = int(Run(args.run).recorded_data("generator").get("grid", 3))
    speed = None if args.no_speed else measure_sampling(pipe, [s.text for s in demo_prompts(grid)], settings,
                                                        args.batch_sizes, args.images)
    quality = {}
    if args.quality_from:
        earlier = json.loads(Path(args.quality_from).read_text())
        if earlier.get("run") != args.run or earlier.get("seed") != args.seed or earlier.get("n") != args.n or \
                earlier.get("suites") != args.suites:
            p.error(f"{args.quality_from} was measured on another run, seed, n or suites")
        quality = {name: q for name, q in earlier["quality"].items() if name in settings}
    if not args.no_quality:
        with tempfile.TemporaryDirectory() as tmp:
            for name, d in zip(settings, decoders):
                if name in quality:
                    continue
                result = evaluate_run(args.run, EvalConfig(suites=args.suites, n=args.n, seed=args.seed, sampling=d,
                                                           fid_images=args.fid_images, tokenizer=False, speed=False,
                                                           progress=False), Path(tmp) / "eval")
                f = result.faithfulness
                quality[name] = {"accuracy": f["accuracy"], "interval": f["ci95"],
                                 "n": f["n"], "categories": {c: v["accuracy"] for c, v in f["categories"].items()},
                                 "fid": result.fid["fid"] if result.fid else None}

    plain_name = next(iter(settings))
    lines = [f"machine: {describe_machine(speed.machine) if speed else '(speed not measured)'}; run {args.run}; "
             f"seed {args.seed}", "",
             "| decoder | batch | images/s | x plain | sequential passes | faithfulness | FID |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name in ([] if speed else quality):
        q = quality[name]
        lines.append(f"| {name} | — | — | — | — | {100 * q['accuracy']:.1f}% [{100 * q['interval'][0]:.1f}, "
                     f"{100 * q['interval'][1]:.1f}] | {q['fid'] if q['fid'] is None else round(q['fid'], 3)} |")
    for r in speed.rows if speed else []:
        ref = next(x for x in speed.rows if x.batch_size == r.batch_size and x.setting == plain_name)
        q = quality.get(r.setting, {})
        acc = f"{100 * q['accuracy']:.1f}%" if q else "—"
        if q.get("interval"):
            acc += f" [{100 * q['interval'][0]:.1f}, {100 * q['interval'][1]:.1f}]"
        fid = f"{q['fid']:.3f}" if q.get("fid") is not None else "—"
        lines.append(f"| {r.setting} | {r.batch_size} | {r.images_per_s:.2f} | {r.images_per_s / ref.images_per_s:.2f} | "
                     f"{r.sequential_passes} | {acc} | {fid} |")
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text(json.dumps({"run": args.run, "seed": args.seed, "n": args.n, "suites": args.suites,
                                              "speed": speed.to_dict() if speed else None, "quality": quality,
                                              "decoders": decoders}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
