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
    from vqtok import CheckpointError, ConfigError

    return (ConfigError, CheckpointError, TrainConfigError, ResumeError, ImageError, FileNotFoundError)


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


def _tokenizer_stage_config(args):
    from train.tokenizer_stage import TokenizerStageConfig, preset_config

    cfg = preset_config(args.preset)
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        cfg = TokenizerStageConfig.from_dict(json.loads(path.read_text()))
    overrides = _parse_assignments(args.set)
    if args.steps is not None:
        overrides["loop.steps"] = args.steps
    if args.device is not None:
        overrides["loop.device"] = args.device
    if getattr(args, "no_progress", False):
        overrides["loop.progress"] = False
    return cfg.override(overrides) if overrides else cfg


def cmd_train_tokenizer(args) -> int:
    from train.tokenizer_stage import train_tokenizer

    cfg = _tokenizer_stage_config(args)
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


def cmd_demo(args) -> int:
    from eval.grids import save_grid
    from eval.tokenizer_metrics import evaluate_tokenizer, heldout_images
    from train.tokenizer_stage import preset_config, train_tokenizer
    import torch

    from vqtok import images_to_tensor, load_tokenizer, tensor_to_images

    out = Path(args.out)
    cfg = preset_config(args.preset)
    if args.steps is not None:
        cfg = cfg.override({"loop.steps": args.steps})
    print(f"[1/3] training the tokenizer ({args.preset} preset, {cfg.loop.steps} steps) in {out}")
    train_tokenizer(cfg, out)
    tok = load_tokenizer(out / "tokenizer")
    print(f"[2/3] measuring it on {args.eval_images} held-out images")
    images = heldout_images(args.eval_images, tok.cfg.resolution)
    report = evaluate_tokenizer(tok, images)
    (out / "tokenizer_eval.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    print("[3/3] writing originals vs reconstructions")
    with torch.no_grad():
        shown = images[:16]
        recon = tensor_to_images(tok.decode(tok.encode(images_to_tensor(shown)).codes))
    grid = save_grid([shown, recon], out / "samples" / "reconstructions.png")
    summary = (
        "# Tessera demo: tokenizer\n\n"
        f"- preset: {args.preset}, steps: {cfg.loop.steps}, codebook: {tok.cfg.num_codes} codes, "
        f"grid {tok.cfg.grid_size}x{tok.cfg.grid_size} at {tok.cfg.resolution} px\n"
        f"- held-out images: {report.images}\n"
        f"- scene preserved (parse(recon) == parse(original)): {report.scene_preservation:.1%}\n"
        f"- PSNR: {report.psnr:.2f} dB\n"
        f"- codebook usage: {report.codebook_usage:.1%} (perplexity {report.perplexity:.1f})\n"
        f"- encode {report.encode_images_per_s:.0f} images/s, decode {report.decode_images_per_s:.0f} images/s "
        f"({report.device})\n"
        f"- grid (originals over reconstructions): {grid.relative_to(out)}\n"
    )
    (out / "summary.md").write_text(summary)
    print(summary)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tessera",
        description="Autoregressive text-to-image over VQ image tokens: train, sample, evaluate.",
    )
    p.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def stage_args(sp):
        sp.add_argument("--preset", default="cpu", help="named preset: cpu (minutes on 2 cores) or gpu")
        sp.add_argument("--config", help="a JSON file with the full stage config (replaces the preset)")
        sp.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                        help="override one setting, e.g. --set vq.codebook_size=512 --set loop.lr=1e-3")
        sp.add_argument("--steps", type=int, help="shorthand for --set loop.steps=N")
        sp.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present)")
        sp.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")

    d = sub.add_parser("demo", help="train a tokenizer on the shapes world and show reconstructions",
                       description="Train the tokenizer on the embedded shapes world (CPU preset), "
                       "measure it on held-out images and write a grid of originals vs reconstructions.")
    d.add_argument("--out", default="runs/demo", help="run directory (resumes if it exists)")
    d.add_argument("--preset", default="cpu", help="tokenizer preset (cpu or gpu)")
    d.add_argument("--steps", type=int, help="override the preset's step count")
    d.add_argument("--eval-images", type=int, default=1000, help="held-out images to measure on")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train-tokenizer", help="train the VQ image tokenizer",
                       description="Train (or resume) the VQ tokenizer of a run directory; writes RUN/tokenizer/.")
    t.add_argument("--run", required=True, help="run directory, e.g. runs/tok (resumes if it has state/)")
    stage_args(t)
    t.set_defaults(func=cmd_train_tokenizer)

    e = sub.add_parser("eval-tokenizer", help="measure a trained tokenizer on held-out shapes",
                       description="Scene preservation, PSNR, codebook usage and speed on held-out images.")
    e.add_argument("--run", required=True, help="run directory holding tokenizer/")
    e.add_argument("--n", type=int, default=1000, help="number of held-out images")
    e.add_argument("--seed", type=int, default=1234, help="held-out scene seed")
    e.add_argument("--batch-size", type=int, default=100)
    e.add_argument("--device", help="cpu or cuda")
    e.add_argument("--out", help="also write the JSON report here")
    e.set_defaults(func=cmd_eval_tokenizer)

    r = sub.add_parser("reconstruct", help="encode and decode image files with a run's tokenizer",
                       description="Images are converted to RGB and resized when square; "
                       "unreadable or non-square files are refused by name.")
    r.add_argument("--run", required=True, help="run directory holding tokenizer/")
    r.add_argument("images", nargs="+", help="image files")
    r.add_argument("--out", default="reconstructions.png", help="output grid PNG")
    r.set_defaults(func=cmd_reconstruct)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("TESSERA_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
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


if __name__ == "__main__":
    sys.exit(main())
