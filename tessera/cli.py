"""The `tessera` command line: each command parses its arguments and calls one library function.

Settings use one grammar everywhere: `--set KEY=VALUE` (VALUE is JSON when it parses as
JSON), with KEY `SECTION.NAME` for a stage command and `STAGE.SECTION.NAME` (or
`bench.FIELD`) where a command configures several stages. Errors that are the user's to fix
(each package's base error, a missing file) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import fields
from pathlib import Path

# flags that change how a training run executes, not what it computes -> loop.* settings
LOOP_FLAGS = {"steps": "steps", "device": "device", "log": "log", "parallel": "parallel", "compile": "compile",
              "activation_checkpointing": "activation_checkpointing", "resume_intact": "resume_intact"}
# sampling flags -> fields of the model's sampling settings (ar_model.SampleConfig / baseline.DiffusionSampleConfig)
SAMPLING_FLAGS = {"cfg": "cfg_scale", "image_cfg": "image_cfg_scale", "temperature": "temperature", "top_k": "top_k",
                  "top_p": "top_p", "min_p": "min_p", "decoder": "decoder", "jacobi_window": "jacobi_window",
                  "jacobi_init": "jacobi_init", "zipar_window": "zipar_window", "kv_cache": "cache",
                  "compile_sampler": "compile", "sampler": "sampler", "diffusion_steps": "steps",
                  "expand": "expand"}


def _user_errors() -> tuple[type[BaseException], ...]:
    """Each package's base error (imported late: importing torch costs seconds)."""
    from ar_model import GeneratorError
    from tessera.arguments import UsageError
    from baseline import BaselineError
    from eval.errors import EvalError
    from pipelines import RunError
    from train.errors import TrainError
    from vqtok import TokenizerError

    return (UsageError, TokenizerError, GeneratorError, BaselineError, RunError, TrainError, EvalError,
            FileNotFoundError)


def _chosen(args: argparse.Namespace, flags: dict[str, str], prefix: str = "") -> dict[str, object]:
    """{prefix + setting: value} for each flag of `flags` the user gave (None / False = not given, but for the
    --expand / --no-expand pair, whose False is --no-expand)."""
    given = {flag: getattr(args, flag, None) for flag in flags}
    return {prefix + key: given[flag] for flag, key in flags.items()
            if given[flag] is not None and (given[flag] is not False or flag == "expand")}


def _sampling(args: argparse.Namespace) -> dict[str, object]:
    """The sampling flags given, with a warning for a guidance scale that is legal but odd."""
    chosen = _chosen(args, SAMPLING_FLAGS)
    cfg = chosen.get("cfg_scale")
    if cfg is not None and (cfg < 1 or cfg > 10):
        odd = "below 1: samples move toward the unconditional model" if cfg < 1 else "unusually strong"
        print(f"warning: guidance {cfg:g} is {odd}", file=sys.stderr)
    return chosen


def _assignments(args: argparse.Namespace) -> dict[str, object]:
    from train.config import parse_assignments

    return parse_assignments(args.set)


def _stage_config(args: argparse.Namespace, stage: str):
    from train.stages import stage_config

    extra = _chosen(args, LOOP_FLAGS, "loop.") | ({"loop.progress": False} if args.no_progress else {})
    return stage_config(stage, args.preset, args.config, _assignments(args) | extra)


def cmd_train_stage(args: argparse.Namespace) -> int:
    from train.stages import train_stage

    kwargs = {"tokenizer_dir": args.tokenizer} if args.stage == "generator" else {}
    if args.minutes is not None:
        kwargs["seconds"] = args.minutes * 60
    out = train_stage(args.stage, _stage_config(args, args.stage), args.run, **kwargs)
    if args.minutes is None:
        print(f"{args.stage} written to {out}")
    else:  # the step count the budget gave when the run began (a resume keeps it)
        from pipelines import Run

        steps = Run(args.run).recorded_config(args.stage)["loop"]["steps"]
        print(f"{args.stage} written to {out} ({steps} steps, from the --minutes budget the run began with)")
    return 0


def cmd_tokenize(args: argparse.Namespace) -> int:
    from train.generator_stage import prepare_codes

    devices = args.devices  # checked by arguments.DEVICES
    num_proc = args.num_proc if args.num_proc is not None else len(devices) if devices else 1  # one per device
    prepared = prepare_codes(_stage_config(args, "generator"), args.run, tokenizer_dir=args.tokenizer,
                             num_proc=num_proc, devices=devices)
    m = prepared.manifest
    print(f"{m.rows} rows of codes in {prepared.codes_dir} ({m.skipped_empty_text} empty captions and "
          f"{m.skipped_bad_image} unreadable images skipped, {m.truncated_text} captions truncated); "
          "`tessera train` with the same settings uses them")
    return 0


def _signer(args: argparse.Namespace) -> object:
    """The C2PA signer of --sign-cert / --sign-key / --tsa-url (or the environment, or the development
    credentials); None with --no-sign. Bad credentials stop here, before anything is loaded or sampled."""
    from pipelines.provenance import resolve_signer

    return resolve_signer(False if args.no_sign else None, args.sign_cert, args.sign_key, args.tsa_url)


def cmd_sample(args: argparse.Namespace) -> int:
    from pipelines import open_sampler, sample_to_dir

    from tessera.arguments import prompts_from

    prompts = prompts_from(args)
    signer = _signer(args)
    pipe = open_sampler(args.run, "generator", device=args.device, progress=not args.no_progress)
    files = sample_to_dir(pipe, prompts, args.out, n=args.n, settings=pipe.settings(**_sampling(args),
                          seed=args.seed), batch_size=args.batch_size, progress=not args.no_progress,
                          run=str(args.run), signer=signer)
    print(f"{len(files.pngs)} images written to {args.out} (one row per prompt in {files.grid})")
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    from pipelines import open_sampler
    from pipelines.png import save_edits

    from tessera.arguments import instructions_from
    from train.data.images import load_image_file

    turns = instructions_from(args)
    signer = _signer(args)
    pipe = open_sampler(args.run, "generator", device=args.device, progress=not args.no_progress)
    if not pipe.edits:  # before reading the image: the likelier mistake
        pipe.check_instructions([turns])
    source = load_image_file(args.image, pipe.resolution)  # any size or mode, converted; unreadable: one line
    result = pipe.edit(source[None].repeat(args.n, 0), [turns] * args.n,
                       settings=pipe.settings(**_sampling(args), seed=args.seed), progress=not args.no_progress)
    files = save_edits(result, source, args.out, run=str(args.run), signer=signer, source_file=args.image)
    print(f"{len(files.pngs)} edited images written to {args.out} (one row per chain in {files.grid})")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    import json

    from pipelines.provenance import verify_file

    failed = 0
    for path in args.files:
        v = verify_file(path, args.trust_anchors)
        ok = v.ok and (v.status == "trusted" or not args.require_trusted)
        failed += not ok
        print(json.dumps({**v.__dict__, "passed": ok}) if args.json else v.line())
    if failed:
        print(f"{failed} of {len(args.files)} files failed verification", file=sys.stderr)
    return 1 if failed else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from eval.demo import DemoConfig, run_demo
    from train.config import split_assignments

    signer = _signer(args)
    run_demo(DemoConfig(out=args.out, preset=args.preset, stages=split_assignments(_assignments(args),
                        ("tokenizer", "generator")), eval_images=args.eval_images,
                        samples_per_prompt=args.samples_per_prompt, sampling=_sampling(args),
                        seed=args.seed, progress=not args.no_progress), echo=lambda s: print(s, flush=True),
             signer=signer)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from eval.harness import EvalConfig, evaluate_run
    from pipelines import Run

    given = {f.name: getattr(args, f.name) for f in fields(EvalConfig) if getattr(args, f.name, None) is not None}
    result = evaluate_run(args.run, EvalConfig(**given, sampling=_sampling(args)), args.out)
    f, out = result.faithfulness, Path(args.out) if args.out else Run(args.run).eval_dir(args.model)
    if f["n"]:
        print(f"faithfulness {f['accuracy']:.1%} ({f['correct']}/{f['n']}); "
              + ", ".join(f"{c} {v['accuracy']:.1%}" for c, v in f["categories"].items()))
    if result.editing:
        e = result.editing
        chains = e["chains"][-1]["chain_right"]["rate"] if e["chains"] else 0.0
        print(f"edits: success {e['single']['success']['rate']:.1%}, untouched objects preserved "
              f"{e['single']['objects_preserved']['rate']:.1%}; chains of {len(e['chains'])} turns entirely right "
              f"{chains:.1%}")
    if result.memorisation:
        m = result.memorisation
        ref = (f" (held-out real rows: {m['heldout']['near_copies']['rate']:.1%}, median "
               f"{m['heldout']['median_rms']:.1f})") if m["heldout"] else ""
        print(f"memorisation: {m['generated']['near_copies']['rate']:.1%} of samples are near copies of a training "
              f"row, median RMS to the nearest {m['generated']['median_rms']:.1f}{ref}; distinct samples per prompt "
              f"{m['distinct_per_prompt']:.1%}")
    if result.fid:
        print(f"FID {result.fid['fid']:.3f} on {result.fid['feature_name']} features")
    print(f"wrote {out / 'result.json'} and {out / 'report.md'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from eval import edit_bench
    from eval.bench import BenchConfig, run_bench

    if args.preset in edit_bench.PRESETS:  # the editor against its baselines (eval.edit_bench)
        ecfg = edit_bench.EditBenchConfig.from_assignments(args.preset, _assignments(args), device=args.device,
                                                           progress=not args.no_progress)
        result = edit_bench.run_edit_bench(args.run, ecfg, out_dir=args.out)
        for name, m in result["methods"].items():
            s = m["single"]
            print(f"{name}: edit success {s['success']['rate']:.1%}, untouched objects preserved "
                  f"{s['objects_preserved']['rate']:.1%}")
        print(f"report written to {Path(args.out or Path(args.run) / 'bench') / 'report.md'}")
        return 0
    cfg = BenchConfig.from_assignments(args.preset, _assignments(args), device=args.device,
                                       progress=not args.no_progress)
    report = run_bench(args.run, cfg, out_dir=args.out)
    ar, df = report["main"]
    print(f"faithfulness {ar['faithfulness']:.1%} (AR) vs {df['faithfulness']:.1%} (diffusion); "
          f"FID {ar['fid']:.3f} vs {df['fid']:.3f}; images/s at batch {cfg.large_batch} "
          f"{ar['images_per_s_large']:.1f} vs {df['images_per_s_large']:.1f}")
    print(f"report written to {Path(args.out or Path(args.run) / 'bench') / 'report.md'} "
          f"({report['seconds']['total'] / 60:.1f} min)")
    return 0


def cmd_eval_tokenizer(args: argparse.Namespace) -> int:
    import json

    from eval.tokenizer_run import evaluate_run_tokenizer

    print(json.dumps(evaluate_run_tokenizer(args.run, args.n, args.seed, args.batch_size, args.device or "cpu",
                                            args.out), indent=2))
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from eval.tokenizer_run import reconstruct_files

    r = reconstruct_files(args.run, args.images, args.out, search=args.search, rounds=args.search_rounds,
                          whole=args.whole)
    rows = "reconstructions (bottom)"
    if args.search:
        rows = "reconstructions (middle) and from decoder-checked codes (bottom)"
    print(f"originals (top) and {rows} written to {r['out']}")
    print(f"PSNR {r['psnr']:.2f} dB" + (f"; decoder-checked codes {r['psnr_searched']:.2f} dB" if args.search else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from tessera.arguments import Parser, add_commands

    p = Parser(prog="tessera", description="Autoregressive text-to-image over VQ image tokens: train, sample, evaluate.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    add_commands(p.add_subparsers(dest="command", required=True, metavar="COMMAND"), sys.modules[__name__])
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))  # under torchrun: one process speaks, the others only warn
    if rank:
        sys.stdout = open(os.devnull, "w")  # "generator written to ..." once, not once per process
    level = os.environ.get("TESSERA_LOG", "WARNING") if rank == 0 else "ERROR"
    logging.basicConfig(level=level, format=f"%(levelname)s {f'[{rank}] ' if rank else ''}%(name)s: %(message)s")
    if getattr(args, "no_progress", False) or getattr(args, "progress", True) is False:
        import datasets  # --no-progress silences its bars too ("Generating train split" for local files)

        datasets.disable_progress_bars()
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
