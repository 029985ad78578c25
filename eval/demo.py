"""`tessera demo`: the whole pipeline on the shapes world, from nothing, as one workflow.

    summary = run_demo(DemoConfig(out="runs/demo"))     # writes runs/demo/summary.{json,md} and samples/

1. trains the VQ tokenizer (the stage preset), 2. measures it on held-out scenes,
3. pre-tokenizes and trains the generator, 4. samples the demo's fixed prompts with
the settings recorded with the generator (overridable), 5. scores every sample
against its prompt with the shapes world's `parse`. Each stage resumes, so a killed
demo rerun with the same settings continues where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipelines import Run, open_sampler, write_atomic
from pipelines.provenance import weights_sha256

SAMPLES_PER_BATCH = 64


@dataclass
class DemoConfig:
    out: str | Path = "runs/demo"  # the run directory
    preset: str = "cpu"  # both stages' preset: cpu (minutes on 2 cores) or gpu
    stages: dict = field(default_factory=dict)  # per-stage overrides: {"generator": {"loop.steps": 100}}
    eval_images: int = 1000  # held-out images the tokenizer is measured on
    samples_per_prompt: int = 4
    sampling: dict = field(default_factory=dict)  # overrides of the generator's recorded settings (not the seed)
    seed: int = 0  # sampling seed
    progress: bool = True


def _stage_configs(cfg: DemoConfig) -> tuple:
    from train import generator_stage, tokenizer_stage

    quiet = {} if cfg.progress else {"loop.progress": False}
    tok = tokenizer_stage.preset_config(cfg.preset).override({**cfg.stages.get("tokenizer", {}), **quiet})
    gen = generator_stage.preset_config(cfg.preset).override({**cfg.stages.get("generator", {}), **quiet})
    return tok, gen


def _measure_tokenizer(run: Run, cfg: DemoConfig, signer: Any) -> dict:
    """The tokenizer's metrics on held-out scenes, written to tokenizer_eval.json, with a reconstruction grid."""
    import torch

    from pipelines import save_grid
    from eval.tokenizer_metrics import evaluate_tokenizer, heldout_images
    from vqtok import images_to_tensor, tensor_to_images

    tok = run.load_tokenizer()
    grid = int(run.recorded_data("tokenizer").get("grid", 3))
    images = heldout_images(cfg.eval_images, tok.cfg.resolution, grid=grid)
    report = evaluate_tokenizer(tok, images, progress=cfg.progress, grid=grid).to_dict()
    write_atomic(run.file("tokenizer_eval.json"), json.dumps(report, indent=2) + "\n")
    with torch.no_grad():
        shown = images[:16]
        recon = tensor_to_images(tok.decode(tok.encode(images_to_tensor(shown)).codes))
    save_grid([shown, recon], run.samples_dir() / "reconstructions.png", signer=signer,
              generation={"reconstructions": "held-out scenes (top) and the tokenizer's reconstructions (bottom)",
                          "model": {"weights": {"tokenizer": weights_sha256(run.require("tokenizer"))}}})
    return {**report, "codes": tok.cfg.num_codes, "grid": tok.cfg.grid_size, "resolution": tok.cfg.resolution}


def _sample_and_score(run: Run, cfg: DemoConfig, device: str | None, signer: Any) -> tuple[dict, dict]:
    """The demo prompts sampled `samples_per_prompt` times and scored; grids per category."""
    from eval import faithfulness
    from pipelines import save_grid

    specs = faithfulness.demo_prompts(int(run.recorded_data("generator").get("grid", 3)))
    pipe = open_sampler(run, "generator", device=device, progress=cfg.progress)
    settings = pipe.settings(**{**cfg.sampling, "seed": cfg.seed})
    k = cfg.samples_per_prompt
    result = pipe.sample([s.text for s in specs], n=k, settings=settings, batch_size=SAMPLES_PER_BATCH,
                         progress=cfg.progress)
    per_image = [s for s in specs for _ in range(k)]
    report = faithfulness.score_images(list(result.images), per_image, [i % k for i in range(len(result.images))])
    for cat in faithfulness.CATEGORIES:
        idx = [i for i, s in enumerate(per_image) if s.category == cat]
        shown = idx[::k][:12]
        save_grid([result.images[i : i + k] for i in shown], run.samples_dir() / f"{cat}.png", signer=signer,
                  generation={"prompts": [per_image[i].text for i in shown], "seed": result.seed,
                              "settings": result.sample_config, "model": result.model})
    return report, result.sample_config


def run_demo(cfg: DemoConfig, echo: Callable[[str], None] = print, signer: Any = "auto") -> dict:
    """Run the demo into `cfg.out`; `echo` reports each step. Returns summary.json's dict. Its grids are
    signed with `signer` (pipelines.png: "auto", a provenance.Signer, or None)."""
    from eval import faithfulness
    from train import generator_stage, tokenizer_stage

    t0 = time.perf_counter()
    run = Run(cfg.out)
    tok_cfg, gen_cfg = _stage_configs(cfg)
    echo(f"[1/5] training the tokenizer ({cfg.preset} preset, {tok_cfg.loop.steps} steps) in {run.root}")
    tokenizer_stage.train_tokenizer(tok_cfg, run.root)
    t_tok = time.perf_counter() - t0
    echo(f"[2/5] measuring it on {cfg.eval_images} held-out images")
    tok_report = _measure_tokenizer(run, cfg, signer)

    echo(f"[3/5] pre-tokenizing and training the generator ({gen_cfg.model['size']}, {gen_cfg.loop.steps} steps)")
    t1 = time.perf_counter()
    generator_stage.train_generator(gen_cfg, run.root)
    t_gen = time.perf_counter() - t1

    echo(f"[4/5] sampling {cfg.samples_per_prompt} images for each of {len(faithfulness.demo_prompts())} prompts")
    t2 = time.perf_counter()
    report, sampling = _sample_and_score(run, cfg, device="cpu" if gen_cfg.loop.device == "cpu" else None,
                                         signer=signer)
    t_sample = time.perf_counter() - t2
    echo("[5/5] scored the samples against their prompts (the shapes world's parse)")
    total = time.perf_counter() - t0
    summary = {
        "preset": cfg.preset,
        "seconds": {"tokenizer": round(t_tok, 1), "generator": round(t_gen, 1), "sampling": round(t_sample, 1),
                    "total": round(total, 1)},
        "tokenizer": {k: v for k, v in tok_report.items() if k not in ("failures", "codes", "grid", "resolution")},
        "generator": {"size": gen_cfg.model["size"], "steps": gen_cfg.loop.steps},
        "sampling": sampling | {"samples_per_prompt": cfg.samples_per_prompt},
        "faithfulness": report.to_dict(),
    }
    write_atomic(run.file("summary.json"), json.dumps(summary, indent=2) + "\n")
    md = render_markdown(summary, tok_report, report.to_markdown())
    write_atomic(run.file("summary.md"), md)
    echo(md)
    return summary


def render_markdown(summary: dict, tok: dict, faithfulness_table: str) -> str:
    s, t, g, sp = summary["seconds"], summary["tokenizer"], summary["generator"], summary["sampling"]
    return (
        "# Tessera demo\n\n"
        f"- preset: {summary['preset']}; total {s['total'] / 60:.1f} min (tokenizer {s['tokenizer'] / 60:.1f}, "
        f"generator {s['generator'] / 60:.1f}, sampling {s['sampling'] / 60:.1f})\n"
        f"- tokenizer: {tok['codes']} codes, {tok['grid']}x{tok['grid']} grid at {tok['resolution']} px; on "
        f"{t['images']} held-out images scene preserved {t['scene_preservation']:.1%}, PSNR {t['psnr']:.2f} dB, "
        f"codebook usage {t['codebook_usage']:.1%}\n"
        f"- generator: {g['size']}, {g['steps']} steps; sampled with guidance {sp['cfg_scale']}, "
        f"temperature {sp['temperature']}, top-k {sp['top_k']}, top-p {sp['top_p']}, min-p {sp['min_p']}, "
        f"seed {sp['seed']}\n\n"
        "## Samples that match their prompt (shape, colour and cell of every object; nothing extra)\n\n"
        f"{faithfulness_table}\n\n"
        "Grids: samples/<category>.png (one row per prompt), samples/reconstructions.png.\n"
    )


__all__ = ["DemoConfig", "render_markdown", "run_demo"]
