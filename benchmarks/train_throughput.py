"""Generator training throughput per size preset: tokens/s, peak memory, and MFU on a GPU.

    python benchmarks/train_throughput.py [--sizes tiny,S,B,L] [--batch 8] [--steps 4]
        [--precision auto] [--compile] [--activation-checkpointing] [--peak-tflops 989] [--out FILE.json]
    torchrun --nproc_per_node 8 benchmarks/train_throughput.py --sizes B --batch 32 --compile ...

Each size runs in its own process (a clean peak-memory reading) through the real
training loop (`train.loop.train_loop`: AdamW, EMA, clipping, checkpoints off the
clock) on random codes in the gpu preset's layout (12x12 codes with row tokens,
1024 codes, 32 text tokens: 191 tokens per sequence). `--steps` steps warm up
(compilation included), the next `--steps` are timed from the loop's own log
(`items_per_s`, summed over processes).

FLOPs per token (the PaLM paper's appendix-B convention, Chowdhery et al. 2022):
    6 * (N - N_embedding) + 12 * L * d * T
N: all parameters, N_embedding: the input embedding (a lookup, not a matmul; the
LM head is counted), L layers, d the width, T the sequence length; backward is
twice forward, attention scores are not halved for causality. MFU = tokens/s x
FLOPs/token / (processes x peak). `--peak-tflops` defaults to the dense bf16 peak
of an H100 / H200 SXM (989); on a CPU no peak is assumed and MFU is left out.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

H100_BF16_TFLOPS = 989.0  # dense bf16, H100 SXM (H200: the same compute)


def _layout():
    from ar_model import SequenceLayout

    return SequenceLayout(text_len=32, text_vocab=512, codebook_size=1024, grid=(12, 12), row_tokens=True)


class _Timed(Exception):
    """Raised after the timed steps, before the loop's final checkpoint."""


def flops_per_token(model, seq_len: int) -> float:
    cfg = model.config
    n = sum(p.numel() for p in model.parameters())
    n_embed = model.get_input_embeddings().weight.numel()
    return 6.0 * (n - n_embed) + 12.0 * cfg.num_hidden_layers * cfg.hidden_size * seq_len


def measure(size: str, batch: int, steps: int, precision: str, compile_: bool, ckpt: bool) -> dict:
    """One size, in this process: the loop's tokens/s after warm-up, and the peak memory."""
    import torch

    from train import distributed
    from train.generator_stage import GeneratorStageConfig, GeneratorTask
    from train.loop import LoopConfig, train_loop

    layout = _layout()
    cfg = GeneratorStageConfig(model={"size": size})
    # one step more than is run: the loop's final checkpoint (gigabytes for B and L) is never written
    cfg.loop = LoopConfig(steps=2 * steps + 1, batch_size=batch, lr=1e-4, warmup_steps=1, log_every=steps,
                          ckpt_every=10**9, ema_decay=0.999, progress=False, precision=precision,
                          compile=compile_, activation_checkpointing=ckpt)
    gcfg = cfg.generator_config(layout)
    g = torch.Generator().manual_seed(0)
    n = 4096
    codes = torch.randint(0, layout.codebook_size, (n, layout.num_image_tokens), generator=g, dtype=torch.int16)
    text = torch.randint(0, layout.text_vocab, (n, layout.text_len), generator=g, dtype=torch.int32)
    task = GeneratorTask(cfg, gcfg, codes, text)
    fpt = flops_per_token(task.model, layout.seq_len)
    params = sum(p.numel() for p in task.model.parameters())
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as run:
        def stop(step: int) -> None:
            if step == 2 * steps:
                raise _Timed

        try:
            train_loop(task, cfg.loop, run, desc=size, on_step=stop)
        except _Timed:
            pass
        rows = [json.loads(x) for x in (Path(run) / "metrics.jsonl").read_text().splitlines()] \
            if distributed.world().main else []
    w = distributed.world()
    seq_per_s = rows[-1]["items_per_s"] if rows else 0.0
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"size": size, "params": params, "batch_per_process": batch, "processes": w.size,
            "seq_len": layout.seq_len, "tokens_per_s": seq_per_s * layout.seq_len, "flops_per_token": fpt,
            "peak_memory_gib": peak / 2**30, "memory_kind": "cuda max allocated" if cuda else "process peak RSS",
            "device": torch.cuda.get_device_name() if cuda else f"cpu x {torch.get_num_threads()} threads",
            "precision": precision, "compile": compile_, "activation_checkpointing": ckpt}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="tiny,S,B,L")
    p.add_argument("--batch", type=int, default=8, help="sequences per process per step")
    p.add_argument("--steps", type=int, default=4, help="warm-up steps, then as many timed steps")
    p.add_argument("--precision", default="auto")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help=f"per-device peak for MFU (default {H100_BF16_TFLOPS:g} on a GPU, none on a CPU)")
    p.add_argument("--out", default=None, help="also write the rows as json here")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # internal: measure one size here
    a = p.parse_args(argv)
    sizes = a.sizes.split(",")
    if a.one or "WORLD_SIZE" in os.environ:  # under torchrun: every process measures in place, in turn
        rows = [measure(s, a.batch, a.steps, a.precision, a.compile, a.activation_checkpointing) for s in sizes]
    else:
        rows = []
        for s in sizes:  # a process per size: its own peak memory
            cmd = [sys.executable, __file__, "--one", "--sizes", s, "--batch", str(a.batch), "--steps", str(a.steps),
                   "--precision", a.precision] + ["--compile"] * a.compile \
                + ["--activation-checkpointing"] * a.activation_checkpointing
            t = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                print(out.stderr[-2000:], file=sys.stderr)
                return out.returncode
            rows.append(json.loads(out.stdout.strip().splitlines()[-1])[0])
            print(f"{s}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    if a.one:
        print(json.dumps(rows))
        return 0
    if int(os.environ.get("RANK", "0")):
        return 0
    import torch

    peak = a.peak_tflops or (H100_BF16_TFLOPS if torch.cuda.is_available() else None)
    print("| size | params | batch x procs | tokens/s | GFLOP/token | MFU | peak memory |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        r["mfu"] = r["tokens_per_s"] * r["flops_per_token"] / (r["processes"] * peak * 1e12) if peak else None
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        print(f"| {r['size']} | {r['params'] / 1e6:.1f}M | {r['batch_per_process']} x {r['processes']} | "
              f"{r['tokens_per_s']:,.0f} | {r['flops_per_token'] / 1e9:.3f} | {mfu} | {r['peak_memory_gib']:.2f} GiB |")
    print(f"\n{rows[0]['device']}, precision {a.precision}, compile {a.compile}, "
          f"activation checkpointing {a.activation_checkpointing}; memory: {rows[0]['memory_kind']}")
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
