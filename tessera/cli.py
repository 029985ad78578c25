"""The `tessera` command line: a thin layer that parses arguments and calls library functions."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message is the whole story (imported late: importing torch costs seconds)."""
    from train.checkpoint import ResumeError
    from train.data.images import ImageError
    from train.loop import TrainConfigError
    from ar_model import CheckpointError as GeneratorCheckpointError
    from ar_model import ConfigError as GeneratorConfigError
    from eval.bench import BenchError
    from eval.diffusion import BaselineError
    from vqtok import CheckpointError, ConfigError

    return (ConfigError, CheckpointError, GeneratorConfigError, GeneratorCheckpointError, TrainConfigError,
            ResumeError, ImageError, FileNotFoundError, BaselineError, BenchError)


def _parse_assignments(items: list[str]) -> dict[str, object]:
    """`key=value` pairs; values are JSON when they parse as JSON, else strings."""
    out: dict[str, object] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --set expects key=value, got {item!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def _stage_config(args, stage):
    """The preset (or --config file) of `stage`, with --set / --steps / --device / --no-progress applied."""
    if stage == "tokenizer":
        from train.tokenizer_stage import TokenizerStageConfig as Config, preset_config
    elif stage == "baseline":
        from train.diffusion_stage import BaselineStageConfig as Config, preset_config
    else:
        from train.generator_stage import GeneratorStageConfig as Config, preset_config

    cfg = preset_config(args.preset)
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        cfg = Config.from_dict(json.loads(path.read_text()))
    overrides = _parse_assignments(args.set)
    if getattr(args, "steps", None) is not None:  # `tokenize` trains nothing and has no --steps
        overrides["loop.steps"] = args.steps
    if args.device is not None:
        overrides["loop.device"] = args.device
    for flag in ("log", "parallel"):
        if getattr(args, flag, None) is not None:
            overrides[f"loop.{flag}"] = getattr(args, flag)
    for flag in ("compile", "activation_checkpointing"):
        if getattr(args, flag, False):
            overrides[f"loop.{flag}"] = True
    if getattr(args, "no_progress", False):
        overrides["loop.progress"] = False
    return cfg.override(overrides) if overrides else cfg


def cmd_train_tokenizer(args) -> int:
    from train.tokenizer_stage import train_tokenizer

    cfg = _stage_config(args, "tokenizer")
    out = train_tokenizer(cfg, args.run)
    print(f"tokenizer written to {out}")
    return 0


def cmd_eval_tokenizer(args) -> int:
    from eval.tokenizer_metrics import evaluate_tokenizer, heldout_images
    from vqtok import load_tokenizer

    tok = load_tokenizer(Path(args.run) / "tokenizer", device=args.device or "cpu")
    images = heldout_images(args.n, tok.cfg.resolution, seed=args.seed)
    report = evaluate_tokenizer(tok, images, batch_size=args.batch_size)
    text = json.dumps(report.to_dict(), indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


def cmd_reconstruct(args) -> int:
    import numpy as np
    import torch

    from eval.grids import save_grid
    from train.data.images import load_image_file
    from vqtok import images_to_tensor, load_tokenizer, tensor_to_images

    tok = load_tokenizer(Path(args.run) / "tokenizer", device="cpu")
    images = torch.from_numpy(np.stack([load_image_file(p, tok.cfg.resolution) for p in args.images]))  # (N, H, W, 3)
    with torch.no_grad():
        recon = tensor_to_images(tok.decode(tok.encode(images_to_tensor(images)).codes))
    path = save_grid([images, recon], args.out)
    print(f"originals (top) and reconstructions (bottom) written to {path}")
    return 0


def _parse_devices(text: str | None) -> list[str] | None:
    """--devices cuda:0,cuda:1 -> ["cuda:0", "cuda:1"]."""
    if text is None:
        return None
    devices = [d.strip() for d in text.split(",") if d.strip()]  # each is checked by prepare_codes
    if not devices:
        raise SystemExit(f"error: --devices expects a comma-separated list such as cuda:0,cuda:1, got {text!r}")
    return devices


def cmd_tokenize(args) -> int:
    from train.generator_stage import prepare_codes
    from train.pretokenize import read_manifest

    cfg = _stage_config(args, "generator")
    devices = _parse_devices(args.devices)
    num_proc = args.num_proc if args.num_proc is not None else len(devices) if devices else 1  # one per device
    if num_proc < 1:
        raise SystemExit(f"error: --num-proc must be >= 1, got {num_proc}")
    prepared = prepare_codes(cfg, args.run, tokenizer_dir=args.tokenizer, num_proc=num_proc, devices=devices)
    m = read_manifest(prepared.codes_dir)
    print(f"{m.rows} rows of codes in {prepared.codes_dir} ({m.skipped_empty_text} empty captions and "
          f"{m.skipped_bad_image} unreadable images skipped, {m.truncated_text} captions truncated); "
          "`tessera train` with the same settings uses them")
    return 0


def cmd_train(args) -> int:
    from train.generator_stage import train_generator

    cfg = _stage_config(args, "generator")
    out = train_generator(cfg, args.run, tokenizer_dir=args.tokenizer)
    print(f"generator written to {out}")
    return 0


def cmd_train_baseline(args) -> int:
    from train.diffusion_stage import train_baseline

    cfg = _stage_config(args, "baseline")
    out = train_baseline(cfg, args.run)
    print(f"diffusion baseline written to {out}")
    return 0


def _read_prompts(args) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise FileNotFoundError(f"prompts file {path} does not exist")
        prompts += [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise SystemExit("error: give at least one --prompt (an empty string samples unconditionally) or --prompts-file")
    return prompts


def cmd_bench(args) -> int:
    from eval.bench import STAGES, BenchConfig, run_bench

    stages: dict[str, dict] = {}
    bench: dict[str, object] = {}
    for key, value in _parse_assignments(args.set).items():
        head, _, rest = key.partition(".")
        if head == "bench" and rest:
            bench[rest] = value
        elif head in STAGES and rest:
            stages.setdefault(head, {})[rest] = value
        else:
            raise SystemExit(f"error: bench --set keys start with bench., {'., '.join(STAGES)}., got {key!r}")
    try:
        cfg = BenchConfig.preset(args.preset, stages=stages, device=args.device, progress=not args.no_progress,
                                 **bench)
    except TypeError as e:  # an unknown bench.* field
        raise SystemExit(f"error: {e}") from e
    report = run_bench(args.run, cfg, out_dir=args.out)
    out = Path(args.out) if args.out else Path(args.run) / "bench"
    ar, df = report["main"]
    print(f"faithfulness {ar['faithfulness']:.1%} (AR) vs {df['faithfulness']:.1%} (diffusion); "
          f"FID {ar['fid']:.3f} vs {df['fid']:.3f}; images/s at batch {cfg.large_batch} "
          f"{ar['images_per_s_large']:.1f} vs {df['images_per_s_large']:.1f}")
    print(f"report written to {out / 'report.md'} ({report['seconds']['total'] / 60:.1f} min)")
    return 0


def cmd_sample(args) -> int:
    from ar_model import SampleConfig
    from eval.grids import save_grid
    from tessera.pipeline import Pipeline, save_pngs

    prompts = _read_prompts(args)
    sc = SampleConfig(cfg_scale=args.cfg, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                      seed=args.seed)
    pipe = Pipeline.from_run(args.run, device=args.device)
    result = pipe.sample(prompts, n=args.n, sc=sc, batch_size=args.batch_size, progress=True)
    out = Path(args.out)  # result.warnings (empty / truncated prompts) were logged as they were found
    paths = save_pngs(result, out, run=str(args.run))
    rows = [result.images[i * args.n : (i + 1) * args.n] for i in range(len(prompts))]
    grid = save_grid(rows, out / "grid.png")
    print(f"{len(paths)} images written to {out} (one row per prompt in {grid})")
    return 0


DEMO_SAMPLES = "samples"
# Sampling defaults of `demo` and `sample`, from benchmarks/faithfulness_sweep.py on cpu-preset runs
# (docs/RESULTS.md): light guidance and a low temperature; guidance 3 hurt these small models badly.
DEMO_CFG = 1.5
DEMO_TEMPERATURE = 0.5


def _demo_overrides(items: list[str]) -> dict[str, dict[str, object]]:
    """--set tokenizer.loop.steps=20 --set generator.data.train_images=500 -> per-stage assignments."""
    out: dict[str, dict[str, object]] = {"tokenizer": {}, "generator": {}}
    for key, value in _parse_assignments(items).items():
        stage, _, rest = key.partition(".")
        if stage not in out or not rest:
            raise SystemExit(f"error: demo --set keys start with tokenizer. or generator., got {key!r}")
        out[stage][rest] = value
    return out


def cmd_demo(args) -> int:
    import time

    import torch

    from ar_model import SampleConfig
    from eval import faithfulness
    from eval.grids import save_grid
    from eval.tokenizer_metrics import evaluate_tokenizer, heldout_images
    from tessera.pipeline import Pipeline
    from train import generator_stage, tokenizer_stage
    from vqtok import images_to_tensor, load_tokenizer, tensor_to_images

    t0 = time.perf_counter()
    out = Path(args.out)
    overrides = _demo_overrides(args.set)
    progress = {"loop.progress": False} if args.no_progress else {}
    tok_cfg = tokenizer_stage.preset_config(args.preset).override({**overrides["tokenizer"], **progress})
    gen_cfg = generator_stage.preset_config(args.preset).override({**overrides["generator"], **progress})

    print(f"[1/5] training the tokenizer ({args.preset} preset, {tok_cfg.loop.steps} steps) in {out}", flush=True)
    tokenizer_stage.train_tokenizer(tok_cfg, out)
    t_tok = time.perf_counter() - t0
    tok = load_tokenizer(out / "tokenizer")
    print(f"[2/5] measuring it on {args.eval_images} held-out images", flush=True)
    images = heldout_images(args.eval_images, tok.cfg.resolution)
    tok_report = evaluate_tokenizer(tok, images, progress=not args.no_progress)
    (out / "tokenizer_eval.json").write_text(json.dumps(tok_report.to_dict(), indent=2) + "\n")
    with torch.no_grad():
        shown = images[:16]
        recon = tensor_to_images(tok.decode(tok.encode(images_to_tensor(shown)).codes))
    save_grid([shown, recon], out / DEMO_SAMPLES / "reconstructions.png")

    print(f"[3/5] pre-tokenizing and training the generator ({gen_cfg.model['size']}, {gen_cfg.loop.steps} steps)",
          flush=True)
    t1 = time.perf_counter()
    generator_stage.train_generator(gen_cfg, out)
    t_gen = time.perf_counter() - t1

    specs = faithfulness.demo_prompts()
    print(f"[4/5] sampling {args.samples_per_prompt} images for each of {len(specs)} prompts "
          f"(guidance {args.cfg})", flush=True)
    t2 = time.perf_counter()
    pipe = Pipeline.from_run(out, device="cpu" if gen_cfg.loop.device == "cpu" else None)
    sc = SampleConfig(cfg_scale=args.cfg, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                      seed=args.seed)
    result = pipe.sample([s.text for s in specs], n=args.samples_per_prompt, sc=sc, batch_size=64,
                         progress=not args.no_progress)
    t_sample = time.perf_counter() - t2

    print("[5/5] scoring the samples against their prompts (the shapes world's parse)", flush=True)
    k = args.samples_per_prompt
    per_image_specs = [s for s in specs for _ in range(k)]
    report = faithfulness.score_images(list(result.images), per_image_specs, [i % k for i in range(len(result.images))])
    for cat in faithfulness.CATEGORIES:
        idx = [i for i, s in enumerate(per_image_specs) if s.category == cat]
        save_grid([result.images[i : i + k] for i in idx[::k][:12]], out / DEMO_SAMPLES / f"{cat}.png")
    total = time.perf_counter() - t0
    summary = {
        "preset": args.preset,
        "seconds": {"tokenizer": round(t_tok, 1), "generator": round(t_gen, 1), "sampling": round(t_sample, 1),
                    "total": round(total, 1)},
        "tokenizer": {k2: v for k2, v in tok_report.to_dict().items() if k2 != "failures"},
        "generator": {"size": gen_cfg.model["size"], "steps": gen_cfg.loop.steps},
        "sampling": result.sample_config | {"samples_per_prompt": k},
        "faithfulness": report.to_dict(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    md = (
        "# Tessera demo\n\n"
        f"- preset: {args.preset}; total {total / 60:.1f} min (tokenizer {t_tok / 60:.1f}, generator "
        f"{t_gen / 60:.1f}, sampling {t_sample / 60:.1f})\n"
        f"- tokenizer: {tok.cfg.num_codes} codes, {tok.cfg.grid_size}x{tok.cfg.grid_size} grid at "
        f"{tok.cfg.resolution} px; on {tok_report.images} held-out images scene preserved "
        f"{tok_report.scene_preservation:.1%}, PSNR {tok_report.psnr:.2f} dB, codebook usage "
        f"{tok_report.codebook_usage:.1%}\n"
        f"- generator: {gen_cfg.model['size']}, {gen_cfg.loop.steps} steps; sampled with guidance {args.cfg}, "
        f"temperature {args.temperature}, top-k {args.top_k}, top-p {args.top_p}, seed {args.seed}\n\n"
        "## Samples that match their prompt (shape, colour and cell of every object; nothing extra)\n\n"
        f"{report.to_markdown()}\n\n"
        f"Grids: {DEMO_SAMPLES}/<category>.png (one row per prompt), {DEMO_SAMPLES}/reconstructions.png.\n"
    )
    (out / "summary.md").write_text(md)
    print(md)
    return 0


def cmd_eval(args) -> int:
    from eval.fid import FeaturesError, FeaturesUnavailableError
    from eval.harness import EvalConfig, evaluate_run

    try:
        cfg = EvalConfig(
            model=args.model, diffusion_sampler=args.sampler, diffusion_steps=args.steps,
            suites=args.suite or None, n=args.n, seed=args.seed, cfg_scale=args.cfg, temperature=args.temperature,
            top_k=args.top_k, top_p=args.top_p, batch_size=args.batch_size, fid=not args.no_fid,
            fid_images=args.fid_images, features=args.features, tokenizer=not args.no_tokenizer,
            tokenizer_images=args.tokenizer_images, speed=not args.no_speed, speed_batch_sizes=args.speed_batch_sizes,
            device=args.device, progress=not args.no_progress,
        )
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    out = Path(args.out) if args.out else Path(args.run) / ("eval" if args.model == "generator" else "eval-baseline")
    try:
        result = evaluate_run(args.run, cfg, out)
    except (FeaturesError, FeaturesUnavailableError) as e:  # a refused weights file, a missing package
        print(f"error: {e}", file=sys.stderr)
        return 2
    f = result.faithfulness
    print(f"faithfulness {f['accuracy']:.1%} ({f['correct']}/{f['n']}); "
          + ", ".join(f"{c} {v['accuracy']:.1%}" for c, v in f["categories"].items()))
    if result.fid:
        print(f"FID {result.fid['fid']:.3f} on {result.fid['feature_name']} features")
    print(f"wrote {out / 'result.json'} and {out / 'report.md'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tessera",
        description="Autoregressive text-to-image over VQ image tokens: train, sample, evaluate.",
    )
    p.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def stage_args(sp, trains: bool = True):
        sp.add_argument("--preset", default="cpu", help="named preset: cpu (minutes on 2 cores) or gpu")
        sp.add_argument("--config", help="a JSON file with the full stage config (replaces the preset)")
        sp.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                        help="override one setting, e.g. --set loop.lr=1e-3 (tokenizer: vq.codebook_size=512; "
                        "generator: model.size=S; own data: data.source=PATH, docs/DATA.md)")
        if trains:
            sp.add_argument("--steps", type=int, help="shorthand for --set loop.steps=N")
            # how the run executes (a resumed run may change these): docs/SCALE.md
            sp.add_argument("--log", choices=["jsonl", "wandb"],
                            help="jsonl (default: RUN/metrics/<stage>.jsonl only) or wandb as well "
                            "(mode from WANDB_MODE; pip install 'tessera[wandb]')")
            sp.add_argument("--compile", action="store_true", help="torch.compile the model (loop.compile)")
            sp.add_argument("--activation-checkpointing", action="store_true",
                            help="recompute activations in backward: less memory, more compute")
            sp.add_argument("--parallel", choices=["ddp", "fsdp"],
                            help="under torchrun: replicate the model (ddp, default) or shard it (fsdp)")
        sp.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present)")
        sp.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")

    def sampling_args(sp, seed_help: str):
        sp.add_argument("--cfg", type=float, default=DEMO_CFG, help="classifier-free guidance scale (1 = none)")
        sp.add_argument("--temperature", type=float, default=DEMO_TEMPERATURE,
                        help="sampling temperature (0 = greedy)")
        sp.add_argument("--top-k", type=int, default=0, help="keep the k most likely codes (0 = all)")
        sp.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
        sp.add_argument("--seed", type=int, default=0, help=seed_help)

    d = sub.add_parser("demo", help="the whole pipeline on the shapes world, from nothing",
                       description="Train the tokenizer, pre-tokenize, train the generator and sample a fixed "
                       "prompt list (seen and held-out compositions) on the embedded shapes world; scores every "
                       "sample against its prompt and writes OUT/summary.{json,md} and grids in OUT/samples/.")
    d.add_argument("--out", default="runs/demo", help="run directory (a killed demo resumes where it stopped)")
    d.add_argument("--preset", default="cpu", help="preset of both stages: cpu (minutes on 2 cores) or gpu")
    d.add_argument("--set", action="append", metavar="STAGE.SECTION.KEY=VALUE",
                   help="override a stage setting, e.g. --set tokenizer.loop.steps=100 "
                   "--set generator.model.size=S")
    d.add_argument("--eval-images", type=int, default=1000, help="held-out images to measure the tokenizer on")
    d.add_argument("--samples-per-prompt", type=int, default=4, help="samples drawn for each demo prompt")
    sampling_args(d, "sampling seed")
    d.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train-tokenizer", help="train the VQ image tokenizer",
                       description="Train (or resume) the VQ tokenizer of a run directory; writes RUN/tokenizer/.")
    t.add_argument("--run", required=True, help="run directory, e.g. runs/tok (resumes if it has state/)")
    stage_args(t)
    t.set_defaults(func=cmd_train_tokenizer)

    k = sub.add_parser("tokenize", help="pre-tokenize the generator's data (before `train`, for large data)",
                       description="The data preparation of `tessera train` alone: make (or reuse) RUN/text_tokenizer "
                       "and encode the images with RUN/tokenizer into RUN/codes, in resumable shards "
                       "(data.shard_size rows; rerun the same command after a kill). Takes the same --preset / --set "
                       "as `tessera train`, which then reuses RUN/codes. Unreadable images and empty captions are "
                       "skipped, named in the log and counted in RUN/codes/tessera_codes.json.")
    k.add_argument("--run", required=True, help="run directory holding tokenizer/")
    k.add_argument("--tokenizer", help="use this tokenizer directory instead of RUN/tokenizer")
    k.add_argument("--num-proc", type=int,
                   help="worker processes (default: one per --devices entry, else 1); each CPU worker gets an "
                   "equal share of the cores")
    k.add_argument("--devices", metavar="DEV,DEV",
                   help="encode on these devices, e.g. cuda:0,cuda:1: worker r uses device r mod their number")
    stage_args(k, trains=False)
    k.set_defaults(func=cmd_tokenize)

    g = sub.add_parser("train", help="train the generator on a run's tokenizer",
                       description="Pre-tokenize the training data with RUN/tokenizer (once, into RUN/codes, unless "
                       "`tessera tokenize` made them), then train (or resume) the Llama generator; writes "
                       "RUN/generator/, a Hugging Face model directory with the text tokenizer and the sequence "
                       "layout.")
    g.add_argument("--run", required=True, help="run directory holding tokenizer/ (resumes if it has state/)")
    g.add_argument("--tokenizer", help="use this tokenizer directory instead of RUN/tokenizer")
    stage_args(g)
    g.set_defaults(func=cmd_train)

    b = sub.add_parser("train-baseline", help="train the diffusion baseline on the generator's data",
                       description="Train (or resume) a small text-conditioned UNet (diffusers) on the same scenes, "
                       "captions and text ids as the generator, in pixels; writes RUN/baseline/. Measure it with "
                       "`tessera eval --run RUN --model baseline`.")
    b.add_argument("--run", required=True, help="run directory (shares text_tokenizer/ with the generator)")
    stage_args(b)
    b.set_defaults(func=cmd_train_baseline)

    bn = sub.add_parser("bench", help="the autoregressive generator vs the diffusion baseline, on one budget",
                        description="Train what RUN lacks (tokenizer, generator, then the diffusion baseline for "
                        "the same training wall-clock), evaluate both with `tessera eval`'s harness, sweep guidance / "
                        "top-k and diffusion step counts, and write OUT/report.md (table: faithfulness per "
                        "category, FID, images/s at batch 1 and a large batch, FLOPs and network evaluations per "
                        "image, parameters, training time), OUT/bench.json and two PNG plots (faithfulness and FID "
                        "vs images/s). The cpu preset takes about an hour on 2 cores from nothing.")
    bn.add_argument("--run", default="runs/bench", help="run directory; trained parts are reused (default: runs/bench)")
    bn.add_argument("--preset", choices=["cpu", "gpu"], default="cpu",
                    help="cpu: ~1 h on 2 cores; gpu: one H100/H200 (the stages' gpu presets)")
    bn.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="bench.FIELD=JSON (e.g. bench.n=2, bench.ar_points='[{\"cfg_scale\": 3}]') or "
                    "STAGE.SECTION.KEY=VALUE for tokenizer, generator, baseline (e.g. generator.loop.steps=600)")
    bn.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    bn.add_argument("--out", help="report directory (default: RUN/bench)")
    bn.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    bn.set_defaults(func=cmd_bench)

    s = sub.add_parser("sample", help="sample images from prompts with a trained run",
                       description="Draw N images per prompt; writes one PNG per image (prompt and settings in "
                       "its text chunks) and OUT/grid.png with one row per prompt. An empty prompt samples "
                       "unconditionally; a prompt longer than the model's text length is truncated with a warning.")
    s.add_argument("--run", required=True, help="run directory holding tokenizer/ and generator/")
    s.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
    s.add_argument("--prompts-file", help="a text file with one prompt per line")
    s.add_argument("--n", type=int, default=4, help="images per prompt")
    sampling_args(s, "seed; the same seed and settings give the same images")
    s.add_argument("--batch-size", type=int, default=32, help="images sampled together")
    s.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    s.add_argument("--out", default="samples", help="output directory")
    s.set_defaults(func=cmd_sample)

    from eval.suites import DEFAULT_SUITES, SUITES

    v = sub.add_parser("eval", help="measure a trained run: faithfulness per category, FID, tokenizer, speed",
                       description="Sample every prompt of the chosen suites N times with fixed seeds and score "
                       "each image against its prompt's constraints (the shapes world's parse); FID of generated "
                       "vs rendered scenes on the harness's own classifier features (trained once and cached in "
                       "$TESSERA_CACHE or ~/.cache/tessera) or Inception from a local weights file; tokenizer "
                       "metrics; sampling speed. Writes OUT/result.json, OUT/report.md and OUT/grids/ (OUT: RUN/eval, "
                       "or RUN/eval-baseline with --model baseline).")
    v.add_argument("--run", required=True, help="run directory holding tokenizer/ and generator/ (or baseline/)")
    v.add_argument("--model", choices=["generator", "baseline"], default="generator",
                   help="what to measure: the autoregressive generator, or the diffusion baseline")
    v.add_argument("--sampler", choices=["ddim", "dpm++"], default="ddim", help="the baseline's sampler")
    v.add_argument("--steps", type=int, default=25, help="the baseline's denoising steps")
    v.add_argument("--suite", action="append", choices=list(SUITES),
                   help=f"a suite to run (repeat for several; default: {' '.join(DEFAULT_SUITES)})")
    v.add_argument("--n", type=int, default=4, help="samples per prompt")
    sampling_args(v, "sampling seed; the same seed gives the same numbers")
    v.add_argument("--batch-size", type=int, default=64, help="images sampled together")
    v.add_argument("--features", default="classifier",
                   help="FID features: classifier (default, offline) or inception:PATH (a local Inception-v3 "
                   "state dict, .pth or .safetensors; needs torch-fidelity and torchvision)")
    v.add_argument("--fid-images", type=int, default=500, help="generated and rendered images for FID")
    v.add_argument("--no-fid", action="store_true", help="skip FID")
    v.add_argument("--tokenizer-images", type=int, default=500, help="held-out images for the tokenizer metrics")
    v.add_argument("--no-tokenizer", action="store_true", help="skip the tokenizer metrics")
    v.add_argument("--no-speed", action="store_true", help="skip the speed measurement")
    v.add_argument("--speed-batch-sizes", type=int, nargs="+", default=[1, 32], help="batch sizes timed")
    v.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    v.add_argument("--out", help="output directory (default: RUN/eval or RUN/eval-baseline)")
    v.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    v.set_defaults(func=cmd_eval)

    e = sub.add_parser("eval-tokenizer", help="measure a trained tokenizer on held-out shapes",
                       description="Scene preservation, PSNR, SSIM, codebook usage and speed on held-out images "
                       "(`tessera eval` adds reconstruction FID).")
    e.add_argument("--run", required=True, help="run directory holding tokenizer/")
    e.add_argument("--n", type=int, default=1000, help="number of held-out images")
    e.add_argument("--seed", type=int, default=1234, help="held-out scene seed")
    e.add_argument("--batch-size", type=int, default=100)
    e.add_argument("--device", help="cpu or cuda")
    e.add_argument("--out", help="also write the JSON report here")
    e.set_defaults(func=cmd_eval_tokenizer)

    r = sub.add_parser("reconstruct", help="encode and decode image files with a run's tokenizer",
                       description="Images are converted to RGB, centre-cropped to a square and resized; "
                       "unreadable files are refused by name.")
    r.add_argument("--run", required=True, help="run directory holding tokenizer/")
    r.add_argument("images", nargs="+", help="image files")
    r.add_argument("--out", default="reconstructions.png", help="output grid PNG")
    r.set_defaults(func=cmd_reconstruct)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))  # under torchrun: one process speaks, the others only warn
    if rank:
        sys.stdout = open(os.devnull, "w")  # "generator written to ..." once, not once per process
    level = os.environ.get("TESSERA_LOG", "WARNING") if rank == 0 else "ERROR"
    logging.basicConfig(level=level, format=f"%(levelname)s {f'[{rank}] ' if rank else ''}%(name)s: %(message)s")
    try:
        if args.debug:
            return args.func(args)
        try:
            return args.func(args)
        except _user_errors() as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
            return 130
    finally:
        if "torch.distributed" in sys.modules:  # leave a torchrun job's process group cleanly
            from train.distributed import destroy

            destroy()


if __name__ == "__main__":
    sys.exit(main())
