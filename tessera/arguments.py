"""The `tessera` commands' arguments (tessera/cli.py holds what each command calls).

Argument names that match a library config's fields keep their names as `dest`
(`EvalConfig(n=..., fid_images=...)`), so the command passes them on without copying.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from types import ModuleType

MAX_SEED = 2**63 - 2**32  # batch b samples with seed + b: stay inside torch's 64-bit seed range


class UsageError(Exception):
    """A command given what it cannot work with (e.g. nothing to sample); the message says what to give."""


def _file_lines(name: str | None, what: str) -> list[str]:
    """The non-blank lines of the UTF-8 text file `name` ([] for None); `what` names it in errors."""
    if not name:
        return []
    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    try:
        return [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except UnicodeDecodeError as e:
        raise UsageError(f"{what} file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def prompts_from(args: argparse.Namespace) -> list[str]:
    """`sample`'s prompts: each --prompt, then the non-blank lines of --prompts-file (UTF-8)."""
    prompts = list(args.prompt or []) + _file_lines(args.prompts_file, "prompts")
    if not prompts:
        raise UsageError("give at least one --prompt (an empty string samples unconditionally) or --prompts-file")
    return prompts


def instructions_from(args: argparse.Namespace) -> list[str]:
    """`edit`'s turns: each --instruction, then the non-blank lines of --instructions-file (UTF-8)."""
    turns = list(args.instruction or [])
    if any(not t.strip() for t in turns):
        raise UsageError("an --instruction is empty: say what to change")
    turns += _file_lines(args.instructions_file, "instructions")
    if not turns:
        raise UsageError("give at least one --instruction or an --instructions-file (one turn per line)")
    return turns


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (exit status 2), like every other error of the command line."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind: type, low: float | None = None, high: float | None = None, low_open: bool = False,
            name: str = "a number"):
    """An argparse type: `kind` (int or float), finite, within [low, high] ((low, high] with low_open)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None
        if not math.isfinite(value) or (low is not None and (value <= low if low_open else value < low)) or (
                high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}")
        return value

    return parse


POSITIVE = _number(int, 1, name="an integer >= 1")
NONNEGATIVE = _number(int, 0, name="an integer >= 0")
SEED = _number(int, 0, MAX_SEED, name=f"an integer from 0 to {MAX_SEED}")
GUIDANCE = _number(float, 0, 1000, name="a guidance scale from 0 to 1000 (1 = none)")
TEMPERATURE = _number(float, 0, name="a temperature >= 0 (0 = greedy)")  # ar_model.SampleConfig bounds it further
TOP_P = _number(float, 0, 1, low_open=True, name="a probability mass in (0, 1]")
MIN_P = _number(float, 0, 0.999, name="a fraction from 0 to 0.999 (0 = off)")
MINUTES = _number(float, 0, low_open=True, name="a number of minutes > 0")


def DEVICE(text: str) -> str:
    """A device this torch can use (cpu, cuda, cuda:1, ...), checked before any work."""
    from pipelines import RunError, resolve_device

    try:
        resolve_device(text)
    except RunError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def DEVICES(text: str) -> list[str]:
    """A comma-separated list of devices, each checked."""
    devices = [d.strip() for d in text.split(",") if d.strip()]
    if not devices:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list such as cuda:0,cuda:1, got {text!r}")
    return [DEVICE(d) for d in devices]


def _no_file_on_the_way(path: Path, text: str) -> None:
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise argparse.ArgumentTypeError(f"{text!r}: {parent} is a file, not a directory")


def OUT_DIR(text: str) -> str:
    """A directory to write into: absent (it is made) or a directory, never an existing file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file; give a directory")
    _no_file_on_the_way(path, text)
    return text


def OUT_FILE(text: str) -> str:
    """A file to write: not an existing directory, and inside a directory (or where one can be made)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; give a file name")
    _no_file_on_the_way(path, text)
    return text

SET_HELP = {
    "stage": "override one setting, e.g. --set loop.lr=1e-3 (tokenizer: vq.codebook_size=512; generator: "
             "model.size=S, sample.cfg_scale=3 (the sampling settings recorded with the model); own data: "
             "data.source=PATH, docs/DATA.md)",
    "demo": "override a stage setting, e.g. --set tokenizer.loop.steps=100 --set generator.model.size=S",
    "bench": "bench.FIELD=JSON (e.g. bench.n=2, bench.ar_points='[{\"cfg_scale\": 3}]') or STAGE.SECTION.KEY=VALUE "
             "for tokenizer, generator, baseline (e.g. generator.loop.steps=600); cpu-edit also regenerate, and "
             "bench.strengths='[0.5]'",
}


def _stage_args(sp: argparse.ArgumentParser, trains: bool = True) -> None:
    sp.add_argument("--preset", default="cpu", help="named preset: cpu (the 3x3 world, minutes on 2 cores), cpu-long "
                    "(the 4x4 world of up to 16 objects, an hour on 2 cores), cpu-text (strings and objects in the 4x4 world, "
                    "~40 minutes on 2 cores), cpu-edit (editing on the 3x3 world with tones, docs/EDITING.md) or gpu (the 4x4 "
                    "world, one H100/H200)")
    sp.add_argument("--config", help="a JSON file with the full stage config (replaces the preset)")
    sp.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help=SET_HELP["stage"])
    if trains:  # how the run executes (a resumed run may change these): docs/SCALE.md
        budget = sp.add_mutually_exclusive_group()
        budget.add_argument("--steps", type=POSITIVE, help="shorthand for --set loop.steps=N")
        budget.add_argument("--minutes", type=MINUTES, help="train as many steps as fit in this many minutes of "
                            "training on this machine: a few steps are timed first (with --compile, compiled) and "
                            "loop.steps set from them; data preparation and checkpoints come on top; a resumed run "
                            "keeps the steps it began with (one process only)")
        sp.add_argument("--log", choices=["jsonl", "wandb"], help="jsonl (default: RUN/metrics/<stage>.jsonl only) "
                        "or wandb as well (mode from WANDB_MODE; pip install 'tessera[wandb]')")
        sp.add_argument("--compile", action="store_true", help="torch.compile the model (loop.compile)")
        sp.add_argument("--activation-checkpointing", action="store_true",
                        help="recompute activations in backward: less memory, more compute")
        sp.add_argument("--parallel", choices=["ddp", "fsdp"],
                        help="under torchrun: replicate the model (ddp, default) or shard it (fsdp)")
        sp.add_argument("--resume-intact", action="store_true", help="if the latest checkpoint is damaged, resume "
                        "from the newest intact one (its later steps are trained again) instead of stopping")
    sp.add_argument("--device", type=DEVICE, help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")


def _sampling_args(sp: argparse.ArgumentParser, seed_help: str, diffusion: bool = False, image: bool = False) -> None:
    """Sampling flags; unset ones keep the settings recorded with the trained model (RUN/*/tessera_sampling.json)."""
    sp.add_argument("--cfg", type=GUIDANCE, help="classifier-free guidance scale (1 = none; default: the run's recorded)")
    if image:
        sp.add_argument("--image-cfg", type=GUIDANCE, help="guidance over the image in context (1 = none; default: "
                        "the run's recorded)")
    sp.add_argument("--temperature", type=TEMPERATURE, help="sampling temperature (0 = greedy; default: the run's recorded)")
    sp.add_argument("--top-k", type=NONNEGATIVE, help="keep the k most likely codes (0 = all; default: the run's recorded)")
    sp.add_argument("--top-p", type=TOP_P, help="nucleus sampling mass (1 = off; default: the run's recorded)")
    sp.add_argument("--min-p", type=MIN_P, help="keep the codes at least this fraction as likely as the best one "
                    "(min-p sampling; 0 = off; default: the run's recorded)")
    sp.add_argument("--decoder", choices=["plain", "jacobi", "zipar"], help="the generator's decoder: plain (one "
                    "code per forward pass), jacobi (speculative Jacobi decoding: several per pass, the same "
                    "distribution) or zipar (parallel rows: a row starts before the one above ends; changes the "
                    "distribution; needs row tokens) (default: the run's recorded, plain)")
    sp.add_argument("--zipar-window", type=POSITIVE, help="the zipar decoder starts a row once the row above holds "
                    "this many more codes (default 2; the grid's width or more: plain decoding)")
    sp.add_argument("--kv-cache", choices=["dynamic", "static"], help="the plain and jacobi decoders' KV cache: "
                    "dynamic (grows) or static (preallocated, fixed shapes; the same samples) (default: the run's "
                    "recorded)")
    sp.add_argument("--compile-sampler", action="store_true", default=None, help="torch.compile the plain or "
                    "jacobi decoder's passes (with --kv-cache static; the first call compiles for about a minute)")
    sp.add_argument("--jacobi-window", type=POSITIVE, help="codes drafted per pass by the jacobi decoder (default 16)")
    sp.add_argument("--jacobi-init", choices=["random", "above"], help="the jacobi decoder's new drafts: random codes "
                    "or the code one row up (default random)")
    sp.add_argument("--expand", action=argparse.BooleanOptionalAction, default=None, help="rewrite each prompt with "
                    "the run's prompt expander (`tessera train-expander`) as a complete description before the "
                    "generator reads it (default: the run's recorded, off)")
    if diffusion:
        sp.add_argument("--sampler", choices=["ddim", "dpm++"], help="the baseline's sampler (default: recorded, ddim)")
        sp.add_argument("--steps", type=POSITIVE, dest="diffusion_steps",
                        help="the baseline's denoising steps (default: recorded, 25)")
    sp.add_argument("--seed", type=SEED, default=0, help=seed_help)


def _signing_args(sp: argparse.ArgumentParser) -> None:
    """C2PA signing of the images written (pipelines.provenance): on by default."""
    sp.add_argument("--no-sign", action="store_true", help="write images without a signed C2PA manifest "
                    "(also TESSERA_SIGN=0)")
    sp.add_argument("--sign-cert", metavar="PEM", help="certificate chain to sign with, signing certificate first "
                    "(default: $TESSERA_C2PA_CERT, else local untrusted development credentials)")
    sp.add_argument("--sign-key", metavar="PEM", help="the signing certificate's private key (default: "
                    "$TESSERA_C2PA_KEY)")
    sp.add_argument("--tsa-url", metavar="URL", help="RFC 3161 timestamp authority (default: $TESSERA_C2PA_TSA_URL; "
                    "none)")


def _command(sub, name: str, func, help: str, description: str | None = None, **defaults) -> argparse.ArgumentParser:
    sp = sub.add_parser(name, help=help, description=description or help)
    sp.set_defaults(func=func, **defaults)
    return sp


def _training_commands(sub, cli: ModuleType) -> None:
    t = _command(sub, "train-tokenizer", cli.cmd_train_stage, "train the VQ image tokenizer",
                 "Train (or resume) the VQ tokenizer of a run directory; writes RUN/tokenizer/.", stage="tokenizer")
    t.add_argument("--run", required=True, type=OUT_DIR, help="run directory, e.g. runs/tok (resumes if it has state/)")
    _stage_args(t)
    k = _command(sub, "tokenize", cli.cmd_tokenize, "pre-tokenize the generator's data (before `train`, for large data)",
                 "The data preparation of `tessera train` alone: make (or reuse) RUN/text_tokenizer and encode the "
                 "images with RUN/tokenizer into RUN/codes, in resumable shards (data.shard_size rows; rerun the same "
                 "command after a kill). Takes the same --preset / --set as `tessera train`, which then reuses "
                 "RUN/codes. Unreadable images and empty captions are skipped, named in the log and counted in "
                 "RUN/codes/tessera_codes.json.")
    k.add_argument("--run", required=True, type=OUT_DIR, help="run directory holding tokenizer/")
    k.add_argument("--tokenizer", help="use this tokenizer directory instead of RUN/tokenizer")
    k.add_argument("--num-proc", type=POSITIVE, help="worker processes (default: one per --devices entry, else 1); each "
                   "CPU worker gets an equal share of the cores")
    k.add_argument("--devices", metavar="DEV,DEV", type=DEVICES,
                   help="encode on these devices, e.g. cuda:0,cuda:1: worker r uses device r mod their number")
    _stage_args(k, trains=False)
    g = _command(sub, "train", cli.cmd_train_stage, "train the generator on a run's tokenizer",
                 "Pre-tokenize the training data with RUN/tokenizer (once, into RUN/codes, unless `tessera tokenize` "
                 "made them), then train (or resume) the Llama generator; writes RUN/generator/, a Hugging Face model "
                 "directory with the text tokenizer, the sequence layout and the recommended sampling settings.",
                 stage="generator")
    g.add_argument("--run", required=True, type=OUT_DIR, help="run directory holding tokenizer/ (resumes if it has state/)")
    g.add_argument("--tokenizer", help="use this tokenizer directory instead of RUN/tokenizer")
    _stage_args(g)
    b = _command(sub, "train-baseline", cli.cmd_train_stage, "train the diffusion baseline on the generator's data",
                 "Train (or resume) a small text-conditioned UNet (diffusers) on the same scenes, captions and text "
                 "ids as the generator, in pixels; writes RUN/baseline/. Measure it with `tessera eval --run RUN "
                 "--model baseline`.", stage="baseline")
    b.add_argument("--run", required=True, type=OUT_DIR, help="run directory (shares text_tokenizer/ with the generator)")
    _stage_args(b)
    x = _command(sub, "train-expander", cli.cmd_train_stage, "train the prompt expander on the generator's scenes",
                 "Train (or resume) the prompt expander: a small Llama that rewrites a prompt (\"three red circles\", "
                 "\"a red circle above a blue square\") as a complete description of a scene that satisfies it, which "
                 "the generator then renders (`--expand` on sample / eval). Trained on the generator's training scenes "
                 "(the shapes world only), each described afresh; writes RUN/expander/.", stage="expander")
    x.add_argument("--run", required=True, type=OUT_DIR, help="run directory (shares text_tokenizer/ with the generator)")
    _stage_args(x)


def _sampling_commands(sub, cli: ModuleType) -> None:
    d = _command(sub, "demo", cli.cmd_demo, "the whole pipeline on the shapes world, from nothing",
                 "Train the tokenizer, pre-tokenize, train the generator and sample a fixed prompt list (seen and "
                 "held-out compositions) on the embedded shapes world; scores every sample against its prompt and "
                 "writes OUT/summary.{json,md} and grids in OUT/samples/.")
    d.add_argument("--out", default="runs/demo", type=OUT_DIR, help="run directory (a killed demo resumes where it stopped)")
    d.add_argument("--preset", default="cpu", help="preset of both stages: cpu (minutes on 2 cores), cpu-long or gpu")
    d.add_argument("--set", action="append", metavar="STAGE.SECTION.KEY=VALUE", help=SET_HELP["demo"])
    d.add_argument("--eval-images", type=POSITIVE, default=1000, help="held-out images to measure the tokenizer on")
    d.add_argument("--samples-per-prompt", type=POSITIVE, default=4, help="samples drawn for each demo prompt")
    _sampling_args(d, "sampling seed")
    _signing_args(d)
    d.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    s = _command(sub, "sample", cli.cmd_sample, "sample images from prompts with a trained run",
                 "Draw N images per prompt; writes one PNG per image (prompt and settings in its text chunks, and a "
                 "signed C2PA manifest: prompt, settings, seed, weights' sha256) and OUT/grid.png with one row per "
                 "prompt. An empty prompt samples unconditionally; a prompt longer than the model's text length is "
                 "truncated with a warning. `tessera verify` reads the manifests back.")
    s.add_argument("--run", required=True, type=OUT_DIR, help="run directory holding tokenizer/ and generator/")
    s.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
    s.add_argument("--prompts-file", help="a text file with one prompt per line")
    s.add_argument("--n", type=POSITIVE, default=4, help="images per prompt")
    _sampling_args(s, "seed; the same seed and settings give the same images")
    s.add_argument("--batch-size", type=POSITIVE, default=32, help="images sampled together")
    s.add_argument("--device", type=DEVICE, help="cpu or cuda (default: cuda when present)")
    s.add_argument("--out", default="samples", type=OUT_DIR, help="output directory")
    _signing_args(s)
    s.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    ed = _command(sub, "edit", cli.cmd_edit, "edit an image with a run trained for editing, turn after turn",
                  "Apply each instruction in turn to the image, every turn conditioned on the codes the turn before "
                  "made (the run must be trained with --set data.task=edit, docs/EDITING.md). The image may be any "
                  "size or mode: it is converted to RGB, centre-cropped and resized to the run's resolution. Writes "
                  "OUT/chain_<c>_turn_<t>.png (instruction and settings in its text chunks; signed C2PA manifest "
                  "c2pa.edited with the image before as its parent) and OUT/grid.png, one row per chain: the source, "
                  "then each turn.")
    ed.add_argument("--run", required=True, type=OUT_DIR, help="run directory holding tokenizer/ and an editing generator/")
    ed.add_argument("--image", required=True, help="the image to edit")
    ed.add_argument("--instruction", action="append", help="an edit instruction (repeat for several turns)")
    ed.add_argument("--instructions-file", help="a text file with one instruction per line, applied in turn")
    ed.add_argument("--n", type=POSITIVE, default=1, help="independent chains of edits to draw")
    _sampling_args(ed, "seed; the same seed and settings give the same edits", image=True)
    ed.add_argument("--device", type=DEVICE, help="cpu or cuda (default: cuda when present)")
    ed.add_argument("--out", default="edits", type=OUT_DIR, help="output directory")
    _signing_args(ed)
    ed.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    vf = _command(sub, "verify", cli.cmd_verify, "read and check the signed C2PA manifests of image files",
                  "For each file: who made it, with what model, prompt and seed, and whether its manifest validates: "
                  "trusted (its certificate chains to a --trust-anchors root), untrusted credential (valid, but "
                  "nothing vouches for the signer, e.g. the development credentials), tampered (pixels or manifest "
                  "changed after signing), no manifest, unreadable. Exit status 1 when a file is tampered, has no "
                  "manifest or cannot be read (or, with --require-trusted, is not trusted).")
    vf.add_argument("files", nargs="+", metavar="FILE", help="image files")
    vf.add_argument("--trust-anchors", metavar="PEM", help="root certificates to trust (default: "
                    "$TESSERA_C2PA_TRUST_ANCHORS; none)")
    vf.add_argument("--require-trusted", action="store_true", help="fail files whose signer is not trusted")
    vf.add_argument("--json", action="store_true", help="one JSON object per file instead of a line")


def _eval_commands(sub, cli: ModuleType) -> None:
    from eval.suites import DEFAULT_SUITES, SUITES, TEXT_SUITES

    v = _command(sub, "eval", cli.cmd_eval, "measure a trained run: faithfulness per category, FID, tokenizer, speed",
                 "Sample every prompt of the chosen suites N times with fixed seeds and score each image against its "
                 "prompt's constraints (the shapes world's parse); FID of generated vs rendered scenes on the "
                 "harness's own classifier features (trained once and cached in $TESSERA_CACHE or ~/.cache/tessera) "
                 "or Inception from a local weights file; tokenizer metrics; sampling speed. A run trained on own "
                 "data is measured for memorisation instead of the shapes-world parts (samples of the held-out rows' "
                 "captions against the nearest training rows); an editing run by the edit suite. Writes "
                 "OUT/result.json, OUT/report.md and OUT/grids/ (OUT: RUN/eval, or RUN/eval-baseline with --model "
                 "baseline).")
    v.add_argument("--run", required=True, type=OUT_DIR, help="run directory holding tokenizer/ and generator/ (or baseline/)")
    v.add_argument("--model", choices=["generator", "baseline"], default="generator",
                   help="what to measure: the autoregressive generator, or the diffusion baseline")
    v.add_argument("--suite", action="append", dest="suites", choices=[*SUITES, "edit"],
                   help=f"a suite to run (repeat for several; default: {' '.join(DEFAULT_SUITES)}; for a run trained "
                        f"with text (data.text): {' '.join(TEXT_SUITES)} first; for a run trained for editing: edit)")
    v.add_argument("--n", type=POSITIVE, default=4, help="samples per prompt (the edit suite: n x 8 single edits of "
                                                        "each kind and n x 24 chains, one sample each)")
    _sampling_args(v, "sampling seed; the same seed gives the same numbers", diffusion=True, image=True)
    v.add_argument("--batch-size", type=POSITIVE, default=64, help="images sampled together")
    v.add_argument("--features", default="classifier", help="FID features: classifier (default, offline) or "
                   "inception:PATH (a local Inception-v3 state dict, .pth or .safetensors; needs torch-fidelity and "
                   "torchvision)")
    v.add_argument("--fid-images", type=POSITIVE, default=500, help="generated and rendered images for FID")
    v.add_argument("--no-fid", dest="fid", action="store_false", help="skip FID")
    v.add_argument("--tokenizer-images", type=POSITIVE, default=500, help="held-out images for the tokenizer metrics")
    v.add_argument("--no-tokenizer", dest="tokenizer", action="store_false", help="skip the tokenizer metrics")
    v.add_argument("--no-speed", dest="speed", action="store_false", help="skip the speed measurement")
    v.add_argument("--memorisation", action=argparse.BooleanOptionalAction, default=None,
                   help="distances of samples to their nearest training rows, near copies, distinct samples per "
                        "prompt, against the held-out rows (default: on for runs trained on own data)")
    v.add_argument("--speed-batch-sizes", type=POSITIVE, nargs="+", default=[1, 32], help="batch sizes timed")
    v.add_argument("--device", type=DEVICE, help="cpu or cuda (default: cuda when present)")
    v.add_argument("--out", type=OUT_DIR, help="output directory (default: RUN/eval or RUN/eval-baseline)")
    v.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars (for logs)")
    bn = _command(sub, "bench", cli.cmd_bench, "the autoregressive generator vs the diffusion baseline, on one budget",
                  "Train what RUN lacks (tokenizer, generator, then the diffusion baseline for the same training "
                  "wall-clock), evaluate both with `tessera eval`'s harness, sweep guidance / top-k and diffusion step "
                  "counts, and write OUT/report.md (table: faithfulness per category, FID, images/s at batch 1 and a "
                  "large batch, FLOPs and network evaluations per image, parameters, training time), OUT/bench.json "
                  "and two PNG plots (faithfulness and FID vs images/s). The cpu preset takes about an hour on 2 "
                  "cores from nothing.")
    bn.add_argument("--run", default="runs/bench", type=OUT_DIR, help="run directory; trained parts are reused (default: runs/bench)")
    bn.add_argument("--preset", choices=["cpu", "cpu-long", "cpu-text", "gpu", "cpu-edit"], default="cpu",
                    help="cpu: ~1 h on 2 cores; cpu-long: the 4x4 world, ~2.5 h on 2 cores; cpu-text: strings and "
                         "objects, the text suites first, ~1.5 h on 2 cores; gpu: one H100/H200 "
                         "(the stages' gpu presets); cpu-edit: the editor against regenerating and SDEdit on the "
                         "edit suite (~2.5 h on 2 cores, docs/EDITING.md)")
    bn.add_argument("--set", action="append", metavar="KEY=VALUE", help=SET_HELP["bench"])
    bn.add_argument("--device", type=DEVICE, help="cpu or cuda (default: cuda when present)")
    bn.add_argument("--out", type=OUT_DIR, help="report directory (default: RUN/bench)")
    bn.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    e = _command(sub, "eval-tokenizer", cli.cmd_eval_tokenizer, "measure a trained tokenizer on held-out shapes",
                 "Scene preservation, PSNR, SSIM, codebook usage and speed on held-out images (`tessera eval` adds "
                 "reconstruction FID).")
    e.add_argument("--run", required=True, type=OUT_DIR, help="run directory holding tokenizer/")
    e.add_argument("--n", type=POSITIVE, default=1000, help="number of held-out images")
    e.add_argument("--seed", type=SEED, default=1234, help="held-out scene seed")
    e.add_argument("--batch-size", type=POSITIVE, default=100)
    e.add_argument("--device", type=DEVICE, help="cpu or cuda (default: cpu)")
    e.add_argument("--out", type=OUT_FILE, help="also write the JSON report here")
    r = _command(sub, "reconstruct", cli.cmd_reconstruct, "encode and decode image files with a run's tokenizer",
                 "Images are converted to RGB, centre-cropped to a square and resized to the tokenizer's resolution "
                 "(or with --whole encoded at their own size); unreadable files are refused by name. Prints the "
                 "PSNR of the reconstructions.")
    r.add_argument("--run", required=True, type=OUT_DIR, help="run directory holding tokenizer/")
    r.add_argument("images", nargs="+", help="image files")
    r.add_argument("--out", default="reconstructions.png", type=OUT_FILE, help="output grid PNG")
    r.add_argument("--search", type=NONNEGATIVE, default=0, metavar="N",
                   help="also decode codes checked against the decoder: N codes tried at each position (8 is a good "
                        "start; needs the vq quantizer and a local decoder, e.g. the cpu-photo preset; default 0: off)")
    r.add_argument("--search-rounds", type=POSITIVE, default=2, help="passes of that search (default 2)")
    r.add_argument("--whole", action="store_true",
                   help="encode each image whole at its own size (cropped to a multiple of the tokenizer's "
                        "downsampling), as the photo benchmark does, instead of resizing it to the tokenizer's "
                        "resolution; for convolutional tokenizers with the per-position norm (cpu-photo)")


def add_commands(sub, cli: ModuleType) -> None:
    """Every command, in the order `tessera --help` lists them; `cli` holds their functions."""
    _sampling_commands(sub, cli)  # demo first: the README's main job
    _training_commands(sub, cli)
    _eval_commands(sub, cli)


__all__ = ["Parser", "UsageError", "add_commands", "instructions_from", "prompts_from"]
