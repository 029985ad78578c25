"""A prompt expander's plans scored against the eval suites, without images: what it lets the generator get right.

    python benchmarks/expander_plans.py --expander runs/long7/expander [--grid 4] [--suites relation binding]
                                        [--n 1] [--seed 0] [--show 3] [--out plans.json]

Each suite prompt is expanded `--n` times as `tessera eval --expand` does (the temperature recorded with the
expander); each plan is read back into objects (`grammar.read_plan`) and scored by the eval's own judge
(`eval.faithfulness.score_plans`) as if the generator had drawn exactly the plan. A plan that is not a complete
description fails. A plan that leaves out a size the prompt names counts as wrong (the generator would pick one).
The figure per suite is an upper bound on `tessera eval --expand` with this expander; the gap to the images'
figure is the generator's. Seconds on a CPU, so expanders can be compared before a generator is trained.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--expander", required=True, help="an expander directory (RUN/expander)")
    p.add_argument("--grid", type=int, default=4, help="the world's grid (the expander's training world)")
    p.add_argument("--suites", nargs="*", help="suites to score (default: tessera eval's)")
    p.add_argument("--n", type=int, default=1, help="expansions per prompt")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (a temperature above 0 only)")
    p.add_argument("--show", type=int, default=3, help="failures to print per suite")
    p.add_argument("--out", help="also write the table and every failure as JSON here")
    args = p.parse_args(argv)

    import torch

    from ar_model.expander import expand, load_expander, read_expander_meta
    from eval.faithfulness import score_plans, wilson
    from eval.suites import get_suites

    torch.set_grad_enabled(False)
    ex = load_expander(args.expander)
    temperature = float(read_expander_meta(args.expander).get("temperature", 0.0))
    suites = get_suites(args.suites, args.grid)
    rows, failures = {}, {}
    total = right = 0
    for name, specs in suites.items():
        said = [s for s in specs for _ in range(args.n)]
        plans = expand(ex.model, ex.tokenizer, ex.cfg, [s.text for s in said], temperature, args.seed).plans
        verdicts = score_plans(plans, said)
        ok = sum(v.ok for v in verdicts)
        lo, hi = wilson(ok, len(verdicts))
        rows[name] = {"n": len(verdicts), "accuracy": ok / len(verdicts), "ci95": [lo, hi]}
        failures[name] = [{"prompt": s.text, "plan": q, "reason": v.reason}
                          for s, q, v in zip(said, plans, verdicts) if not v.ok]
        total, right = total + len(verdicts), right + ok
    print(f"expander {args.expander}; grid {args.grid}; {args.n} plan(s) per prompt, temperature {temperature:g}\n")
    print("| suite | plans | right | 95% interval |\n|---|---:|---:|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['n']} | {r['accuracy']:.1%} | [{r['ci95'][0]:.1%}, {r['ci95'][1]:.1%}] |")
    print(f"| **all** | {total} | {right / max(total, 1):.1%} | |")
    for name, fails in failures.items():
        for f in fails[: args.show]:
            print(f"\n{name}: {f['prompt']!r}\n  -> {f['plan']!r}\n  {f['reason']}")
    if args.out:
        Path(args.out).write_text(json.dumps({"expander": args.expander, "grid": args.grid, "n": args.n,
                                              "rows": rows, "failures": failures}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
