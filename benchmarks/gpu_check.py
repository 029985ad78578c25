"""One command for a machine with a CUDA GPU: do the GPU presets run, and how fast? One table, ~8 minutes.

    bash benchmarks/gpu_check.sh [--out gpu_check/] [--smoke]

Steps, each in its own process with a time limit (a failing step is a row that says so; the
rest still run), all on the gpu presets unless said otherwise:

1. tokenizer: `tessera train-tokenizer --preset gpu` for TOK_STEPS steps on 20,000 scenes
   (images/s from the loop's log);
2. generator S and B: `tessera train --preset gpu` (model.size S, then B) for GEN_STEPS steps on
   20,000 scenes pre-tokenized with that tokenizer (tokens/s; pre-tokenizing off the clock);
3. baseline: `tessera train-baseline --preset gpu` for BASE_STEPS steps (images/s);
4. MFU: `benchmarks/train_throughput.py --sizes B --compile` (bf16 autocast, torch.compile; its
   FLOPs per token: 6 (N - N_embedding) + 12 L d T, PaLM appendix B; dense bf16 peak 989 TFLOPS);
5. sampling: `benchmarks/decoders.py --no-quality` on the S generator of step 2 (a few steps
   trained: speed only; the jacobi decoder's acceptance depends on the model, so its figure here
   is a lower bound), images/s at batch 1 and 256 per decoder;
6. the batch-1 bound: the time to read the S generator's weights once from memory (bytes / the
   GPU's memory bandwidth: 3.35 TB/s H100 SXM, 4.8 TB/s H200) against the measured batch-1 time
   per token of plain decoding.

`--smoke` runs every step at toy sizes on whatever device there is (the CPU included), so the
script itself is tested without a GPU (tests/test_gpu_check.py). Writes OUT/gpu_check.json and
OUT/gpu_check.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BANDWIDTH_TBS = {"H100": 3.35, "H200": 4.8, "A100": 2.0}  # HBM bandwidth of the SXM parts, TB/s
SCENES = 20000

FULL = {"tok_steps": 300, "gen_steps": 100, "base_steps": 100, "mfu_steps": 10, "mfu_batch": 32,
        "sample_batches": [1, 256], "sample_images": 256, "timeout": 240, "sizes": ["S", "B"]}
SMOKE = {"tok_steps": 3, "gen_steps": 3, "base_steps": 2, "mfu_steps": 2, "mfu_batch": 2,
         "sample_batches": [1, 4], "sample_images": 4, "timeout": 600, "sizes": ["tiny"]}
# toy model and data sizes for --smoke (the gpu presets' layout and worlds, tiny nets)
SMOKE_SET = {
    "tokenizer": {"vq.base_channels": 16, "vq.latent_dim": 16, "vq.codebook_size": 64, "vq.norm_groups": 4,
                  "loop.batch_size": 8,
                  "vq.disc_start": 1000000, "data.train_images": 64},
    "generator": {"loop.batch_size": 8, "data.train_images": 64, "data.text_len": 160},
    "baseline": {"loop.batch_size": 4, "data.train_images": 64, "model.block_out_channels": [16, 32, 32],
                 "model.norm_num_groups": 8, "model.attention_head_dim": 8, "model.text_dim": 32,
                 "model.text_layers": 1, "model.text_heads": 2},
}


def _sets(d: dict) -> list[str]:
    return [a for k, v in d.items() for a in ("--set", f"{k}={json.dumps(v)}")]


def _run(name: str, argv: list[str], timeout: int, log: Path) -> tuple[bool, float, str]:
    """Run one step; (ok, seconds, its output), output also written to log/NAME.log."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": os.environ.get("WANDB_MODE", "disabled")}
    t = time.perf_counter()
    try:
        p = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        ok, out = p.returncode == 0, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        ok, out = False, f"timed out after {timeout} s\n" + (e.stdout or "") + (e.stderr or "")
    seconds = time.perf_counter() - t
    log.mkdir(parents=True, exist_ok=True)
    (log / f"{name}.log").write_text(out)
    return ok, seconds, out


def _last_rate(metrics: Path) -> float | None:
    """items/s of the last line of a stage's metrics log (the loop's own throughput)."""
    try:
        rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    except OSError:
        return None
    rates = [r["items_per_s"] for r in rows if "items_per_s" in r]
    return rates[-1] if rates else None


def _tail(out: str) -> str:
    lines = [x for x in out.strip().splitlines() if x.strip()]
    return lines[-1][:160] if lines else ""


def check(out: Path, smoke: bool = False, device: str | None = None) -> list[dict]:
    """Run every step; one row each: step, ok, seconds, figure, note."""
    cfg = SMOKE if smoke else FULL
    run = out / "run"
    logs = out / "logs"
    tessera = [sys.executable, "-m", "tessera.cli"]
    dev = ["--device", device] if device else []
    rows = []

    def row(step: str, ok: bool, seconds: float, figure: str, note: str = "") -> None:
        rows.append({"step": step, "ok": ok, "seconds": round(seconds, 1), "figure": figure, "note": note})

    tok_set = {"data.train_images": SCENES, **(SMOKE_SET["tokenizer"] if smoke else {})}
    ok, s, o = _run("tokenizer", [*tessera, "train-tokenizer", "--run", str(run), "--preset", "gpu", "--steps",
                                  str(cfg["tok_steps"]), "--no-progress", *dev, *_sets(tok_set)], cfg["timeout"], logs)
    rate = _last_rate(run / "metrics" / "tokenizer.jsonl")
    row("tokenizer (gpu preset)", ok, s, f"{rate:.0f} images/s" if rate else "—", "" if ok else _tail(o))

    gen_runs = {}
    for size in cfg["sizes"]:
        gen_run = out / f"run-{size}"
        if (run / "tokenizer").is_dir() and not (gen_run / "tokenizer").exists():
            import shutil

            gen_run.mkdir(parents=True, exist_ok=True)
            shutil.copytree(run / "tokenizer", gen_run / "tokenizer")
        gen_set = {"model.size": size, "data.train_images": SCENES, **(SMOKE_SET["generator"] if smoke else {})}
        ok, s, o = _run(f"generator-{size}", [*tessera, "train", "--run", str(gen_run), "--preset", "gpu", "--steps",
                                              str(cfg["gen_steps"]), "--no-progress", *dev, *_sets(gen_set)],
                        cfg["timeout"] + 300, logs)  # + pre-tokenizing
        rows_log = gen_run / "metrics" / "generator.jsonl"
        rate = _last_rate(rows_log)
        row(f"generator {size} (gpu preset)", ok, s, f"{rate:.0f} sequences/s" if rate else "—",
            "" if ok else _tail(o))
        if ok:
            gen_runs[size] = gen_run

    base_set = {"data.train_images": SCENES, **(SMOKE_SET["baseline"] if smoke else {})}
    base_run = next(iter(gen_runs.values()), run)  # shares the generator's text tokenizer
    ok, s, o = _run("baseline", [*tessera, "train-baseline", "--run", str(base_run), "--preset", "gpu", "--steps",
                                 str(cfg["base_steps"]), "--no-progress", *dev, *_sets(base_set)], cfg["timeout"], logs)
    rate = _last_rate(base_run / "metrics" / "baseline.jsonl")
    row("diffusion baseline (gpu preset)", ok, s, f"{rate:.0f} images/s" if rate else "—", "" if ok else _tail(o))

    mfu_size = "tiny" if smoke else "B"
    mfu_json = out / "mfu.json"
    argv = [sys.executable, "benchmarks/train_throughput.py", "--sizes", mfu_size, "--batch", str(cfg["mfu_batch"]),
            "--steps", str(cfg["mfu_steps"]), "--out", str(mfu_json)] + ([] if smoke else ["--compile"])
    ok, s, o = _run("mfu", argv, cfg["timeout"] + 120, logs)
    figure = "—"
    if ok and mfu_json.is_file():
        r = json.loads(mfu_json.read_text())
        r = r[0] if isinstance(r, list) else r.get(mfu_size, r)
        mfu = r.get("mfu")
        figure = (f"MFU {100 * mfu:.1f}%, " if mfu else "") + f"{r.get('tokens_per_s', 0):.0f} tokens/s"
    row(f"training MFU, {mfu_size}" + ("" if smoke else ", bf16 + compile"), ok, s, figure, "" if ok else _tail(o))

    sample_run = gen_runs.get("S") or next(iter(gen_runs.values()), None)
    per_token = None
    if sample_run is not None:
        dec_json = out / "decoders.json"
        argv = [sys.executable, "benchmarks/decoders.py", "--run", str(sample_run), "--no-quality", "--batch-sizes",
                *map(str, cfg["sample_batches"]), "--images", str(cfg["sample_images"]), "--out", str(dec_json),
                "--decoder", "plain", "--decoder", "jacobi:16:random", "--decoder", "jacobi:16:above"]
        ok, s, o = _run("sampling", argv, cfg["timeout"], logs)
        if ok and dec_json.is_file():
            speed = json.loads(dec_json.read_text())["speed"]
            for r in speed["rows"]:
                row(f"sampling: {r['setting']}, batch {r['batch_size']}", True, 0.0, f"{r['images_per_s']:.2f} images/s",
                    f"{r['sequential_passes']} sequential passes")
                if r["batch_size"] == 1 and r["setting"].startswith("kv cache on"):
                    per_token = r["seconds_per_image"] / max(1, r["sequential_passes"])
        else:
            row("sampling (decoders)", False, s, "—", _tail(o))
    row(*_bound(sample_run, per_token, device))
    return rows


def _bound(sample_run: Path | None, per_token: float | None, device: str | None) -> tuple:
    """The batch-1 row: measured time per token against reading the weights once."""
    import torch

    if sample_run is None or per_token is None:
        return ("batch-1 time per token vs the memory bound", False, 0.0, "—", "no sampling figure")
    size = sum(f.stat().st_size for f in (sample_run / "generator").glob("*.safetensors"))
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    bw = next((v for k, v in BANDWIDTH_TBS.items() if k in name), None)
    bf16_bytes = size / 2  # the weights are stored in fp32; sampling reads them once per token in bf16 at best
    if bw is None:
        return ("batch-1 time per token vs the memory bound", True, 0.0, f"{1e3 * per_token:.3f} ms per token",
                f"no bandwidth known for {name or 'this device'}")
    bound = bf16_bytes / (bw * 1e12)
    return ("batch-1 time per token vs the memory bound", True, 0.0,
            f"{1e3 * per_token:.3f} ms per token (bound {1e6 * bound:.1f} us: {per_token / bound:.0f}x)",
            f"{bf16_bytes / 1e6:.0f} MB of bf16 weights at {bw} TB/s")


def render(rows: list[dict], machine: str) -> str:
    lines = [f"# GPU check on {machine}", "", "| step | ok | seconds | figure | note |", "|---|---|---:|---|---|"]
    lines += [f"| {r['step']} | {'yes' if r['ok'] else 'FAILED'} | {r['seconds']:g} | {r['figure']} | {r['note']} |"
              for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="gpu_check", help="directory for the runs, logs and the table")
    p.add_argument("--smoke", action="store_true", help="toy sizes on any device (tests the script, measures nothing)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    args = p.parse_args(argv)
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here (use --smoke to test the script on this machine)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    t = time.perf_counter()
    rows = check(out, smoke=args.smoke, device=args.device)
    table = render(rows, machine) + f"\n{time.perf_counter() - t:.0f} s in all.\n"
    (out / "gpu_check.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    (out / "gpu_check.md").write_text(table)
    print(table)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
