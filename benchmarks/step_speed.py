"""Training step time of the CPU presets' models, fp32 vs bf16 autocast, side by side in one process.

    python benchmarks/step_speed.py [--threads 2] [--steps 5]

Times `--steps` optimizer steps (after 3 warm-up steps) of the tokenizer (cpu
preset's VQConfig, batch 16) and of the tiny generator (batch 64, the cpu
preset's layout: 6x6 codes, row tokens, 18 text tokens) on random inputs, once in
fp32 and once under bf16 autocast. This is how the presets' `precision` was
chosen. The generator is timed twice: with the loss the stage trains with
(`ar_model.image_loss`, logits only where a token is scored) and with HF's own
`labels=` loss (logits everywhere).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def _time_steps(step, n: int, bf16: bool) -> float:
    import torch

    for i in range(3 + n):
        if i == 3:
            t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = step()
        loss.backward()
    return (time.perf_counter() - t) / n


def main(argv: list[str] | None = None) -> int:
    import torch

    from ar_model import GeneratorConfig, SequenceLayout, build_model, image_loss, loss_targets
    from train.generator_stage import preset_config as generator_preset
    from train.tokenizer_stage import preset_config
    from vqtok import TokenizerLoss, VQTokenizer

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    vq = preset_config("cpu").vq
    tok, tok_loss = VQTokenizer(vq), TokenizerLoss(vq)
    opt_t = torch.optim.AdamW(tok.parameters(), 1e-3)
    images = torch.rand(16, 3, vq.resolution, vq.resolution) * 2 - 1

    def tok_step():
        opt_t.step()
        opt_t.zero_grad(set_to_none=True)
        return tok_loss(tok, images, 0).loss

    data = generator_preset("cpu").data
    layout = SequenceLayout(text_len=data.text_len, text_vocab=400, codebook_size=vq.num_codes,
                            grid=(vq.grid_size,) * 2, row_tokens=data.row_tokens)
    gen = build_model(GeneratorConfig.from_size("tiny", layout), seed=0)
    opt_g = torch.optim.AdamW(gen.parameters(), 1e-3)
    ids = torch.randint(0, layout.vocab_size, (64, layout.seq_len))
    labels = loss_targets(ids, layout)

    def gen_step():
        opt_g.step()
        opt_g.zero_grad(set_to_none=True)
        return image_loss(gen, ids, layout)

    def gen_step_hf():
        opt_g.step()
        opt_g.zero_grad(set_to_none=True)
        return gen(input_ids=ids, labels=labels).loss

    print(f"{args.threads} threads, {args.steps} timed steps each")
    print("| model | batch | fp32 s/step | bf16 s/step | bf16 speed-up |\n|---|---:|---:|---:|---:|")
    rows = (("tokenizer (cpu preset)", tok_step, 16), ("generator tiny, image_loss", gen_step, 64),
            ("generator tiny, HF labels loss", gen_step_hf, 64))
    for name, step, batch in rows:
        fp32 = _time_steps(step, args.steps, False)
        bf16 = _time_steps(step, args.steps, True)
        print(f"| {name} | {batch} | {fp32:.3f} | {bf16:.3f} | {fp32 / bf16:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
