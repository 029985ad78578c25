"""`tessera bench`: the autoregressive generator against the diffusion baseline on one budget.

    report = run_bench("runs/bench", BenchConfig.preset("cpu"))    # writes runs/bench/bench/

What it does, in order (each step skipped when its output is already in the run):

1. trains the autoregressive side, the VQ tokenizer and the generator (the stages' presets), and the
   prompt expander where the generator's recorded sampling expands prompts (the cpu-long presets);
   both sides then read the same expansions, and the expander's time is counted apart from either;
2. trains the diffusion baseline (baseline) on the same scenes, captions and text ids for
   the same training wall-clock on the same machine: the baseline's step count is set so that
   its steps take as long as the tokenizer's and the generator's training loops together took
   (their metrics logs record it), from a few timed steps before training. Data preparation
   (rendering, pre-tokenizing) is left out on both sides;
3. evaluates both at their default settings with the full harness (eval.harness: every default
   suite, 4 samples per prompt, FID on 500 images, speed at batch 1 and a large batch);
4. sweeps sampling settings, the generator at several guidance scales and top-k, the baseline
   at several step counts of DDIM and DPM-Solver++, each evaluated with a lighter protocol
   (fewer samples per prompt and FID images: compare sweep points with each other, not with
   the main table);
5. counts FLOPs per image for every setting (torch's FlopCounterMode over one batch-1 sample:
   text to pixels, the tokenizer's decoder included, guidance's two rows included);
6. writes OUT/report.md (tables), OUT/bench.json (every number), OUT/faithfulness_vs_speed.png
   and OUT/fid_vs_speed.png (the sweep's trade-off curves on one chart each), and keeps each
   evaluation's own report under OUT/eval/.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from eval.errors import BenchError
from pipelines import STAGES, Run, open_sampler, resolve_device, write_atomic

log = logging.getLogger(__name__)

BENCH_VERSION = 1
BENCH_STAGES = (*STAGES, "expander")  # what --set STAGE.SECTION.KEY may name

# the faster decoders at the run's recorded guidance (issue 19): speculative Jacobi (the same distribution) on the
# static KV cache with torch.compile, its recommended batch-1 setting, and parallel rows (ZipAR, a window of 2 codes:
# the rows overlap, the distribution changes)
DECODER_POINTS = [{"decoder": "jacobi", "jacobi_window": 16, "cache": "static", "compile": True},
                  {"decoder": "zipar", "zipar_window": 2}]

PRESETS: dict[str, dict] = {
    # about 25 minutes on 2 CPU cores from nothing (an Intel Xeon with AMX; twice that on an AVX2 EPYC): ~5.5 min the
    # AR side's training, as long the baseline's, the rest the two main evaluations and the sweep
    "cpu": {
        "stage_preset": "cpu",
        "large_batch": 32,
        "ar_points": [{"cfg_scale": 1.0}, {"cfg_scale": 1.5}, {"cfg_scale": 3.0},
                      {"cfg_scale": 1.5, "top_k": 8}, {"cfg_scale": 1.5, "top_k": 64}, *DECODER_POINTS],
        "diffusion_points": [{"sampler": "ddim", "steps": 10}, {"sampler": "ddim", "steps": 25},
                             {"sampler": "ddim", "steps": 50}, {"sampler": "dpm++", "steps": 10},
                             {"sampler": "dpm++", "steps": 20}],
        "sweep_n": 2, "sweep_fid_images": 200, "sweep_speed_images": 16,
    },
    # the stages' cpu-long presets (the 4x4 world, an hour each side on 2 CPU cores) and the cpu sweep
    "cpu-long": {
        "stage_preset": "cpu-long",
        "large_batch": 32,
        "ar_points": [{"cfg_scale": 1.0}, {"cfg_scale": 3.0}, *DECODER_POINTS],
        "diffusion_points": [{"sampler": "ddim", "steps": 10}, {"sampler": "ddim", "steps": 50}],
        "sweep_n": 1, "sweep_fid_images": 100, "sweep_speed_images": 16,
    },
    # the stages' cpu-text presets (strings and objects in the 4x4 world, an hour each side on 2 CPU cores), scored
    # on the text suites (held-out strings alone and beside objects)
    "cpu-text": {
        "stage_preset": "cpu-text",
        "suites": ["text", "text_objects"],
        "large_batch": 32,
        "ar_points": [{"cfg_scale": 1.0}, {"cfg_scale": 3.0}],
        "diffusion_points": [{"sampler": "ddim", "steps": 10}, {"sampler": "ddim", "steps": 50}],
        "sweep_n": 1, "sweep_fid_images": 100, "sweep_speed_images": 16,
    },
    # one H100/H200: the stages' gpu presets (the S generator, a wider UNet at 48 px, the 4x4 world)
    "gpu": {
        "stage_preset": "gpu",
        "large_batch": 256,
        "ar_points": [{"cfg_scale": 1.0}, {"cfg_scale": 1.5}, {"cfg_scale": 3.0}, {"cfg_scale": 5.0},
                      {"cfg_scale": 1.5, "top_k": 16}, {"cfg_scale": 1.5, "top_k": 128}, *DECODER_POINTS],
        "diffusion_points": [{"sampler": "ddim", "steps": 10}, {"sampler": "ddim", "steps": 25},
                             {"sampler": "ddim", "steps": 50}, {"sampler": "ddim", "steps": 100},
                             {"sampler": "dpm++", "steps": 10}, {"sampler": "dpm++", "steps": 20}],
        "sweep_n": 4, "sweep_fid_images": 1000, "sweep_speed_images": 512,
        "fid_images": 2000, "speed_images": 512,
    },
}


def from_preset(cls: type, presets: dict[str, dict], name: str, overrides: dict[str, Any]) -> Any:
    """`cls` (a bench config dataclass) from the preset `name` of `presets`, with `overrides` (field names checked)."""
    if name not in presets:
        raise BenchError(f"unknown bench preset {name!r} (known: {', '.join(presets)})")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise BenchError(f"unknown bench setting {unknown[0]!r} (known: {', '.join(sorted(known))})")
    return cls(**{**presets[name], **overrides})


def split_assignments(assignments: dict[str, Any], stages: tuple[str, ...]) -> tuple[dict[str, dict], dict[str, Any]]:
    """`--set` assignments -> ({stage: {SECTION.KEY: value}}, {FIELD: value}) from STAGE.SECTION.KEY and bench.FIELD."""
    per_stage: dict[str, dict] = {}
    bench: dict[str, Any] = {}
    for key, value in assignments.items():
        head, _, rest = key.partition(".")
        if head == "bench" and rest:
            bench[rest] = value
        elif head in stages and rest:
            per_stage.setdefault(head, {})[rest] = value
        else:
            raise BenchError(f"bench --set keys start with bench., {'., '.join(stages)}., got {key!r}")
    return per_stage, bench


# the generator's sampling fields a bench point may set (ar_model.SampleConfig): guidance, filtering, the decoder
AR_FIELDS = {"cfg_scale", "top_k", "top_p", "min_p", "temperature", "decoder", "jacobi_window", "jacobi_init",
             "zipar_window", "cache", "compile"}


@dataclass
class BenchConfig:
    stage_preset: str = "cpu"  # the tokenizer, generator and baseline stages' preset
    stages: dict = field(default_factory=dict)  # per-stage overrides: {"generator": {"loop.steps": 100}}
    # sampling settings, as overrides of each model's recorded ones (EvalConfig.sampling)
    ar_main: dict = field(default_factory=dict)  # the generator's main setting: its recorded one
    diffusion_main: dict = field(default_factory=dict)  # the baseline's: its recorded one (DDIM, 25 steps)
    ar_points: list[dict] = field(default_factory=list)  # SampleConfig fields: cfg_scale, top_k, top_p, temperature
    diffusion_points: list[dict] = field(default_factory=list)  # sampler, steps (cfg_scale optional)
    n: int = 4  # the main evaluations' samples per prompt
    suites: list[str] | None = None  # the suites both sides are scored on; None: the run's defaults (eval.harness)
    fid_images: int = 500
    speed_images: int = 64
    large_batch: int = 32
    sweep_n: int = 2
    sweep_fid_images: int = 200
    sweep_speed_images: int = 16
    seed: int = 0
    device: str | None = None
    progress: bool = True

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> BenchConfig:
        return from_preset(cls, PRESETS, name, overrides)

    @classmethod
    def from_assignments(cls, name: str, assignments: dict[str, Any], **overrides: Any) -> BenchConfig:
        """The preset with `--set` assignments applied: bench.FIELD=value, or STAGE.SECTION.KEY=value."""
        stages, bench = split_assignments(assignments, BENCH_STAGES)
        return cls.preset(name, stages=stages, **overrides, **bench)

    def __post_init__(self):
        for name in ("n", "fid_images", "speed_images", "large_batch", "sweep_n", "sweep_fid_images",
                     "sweep_speed_images"):
            if int(getattr(self, name)) < 1:
                raise BenchError(f"bench {name} must be >= 1, got {getattr(self, name)!r}")
        unknown = set(self.stages) - set(BENCH_STAGES)
        if unknown:
            raise BenchError(f"unknown stage {sorted(unknown)[0]!r} (known: {', '.join(BENCH_STAGES)})")
        if min(self.fid_images, self.sweep_fid_images) < 5:
            raise BenchError("bench fid_images and sweep_fid_images must be >= 5")
        for p in [self.ar_main, *self.ar_points]:
            unknown = set(p) - AR_FIELDS
            if unknown:
                raise BenchError(f"unknown AR sweep field {sorted(unknown)[0]!r} (known: {', '.join(sorted(AR_FIELDS))})")
        for p in [self.diffusion_main, *self.diffusion_points]:
            unknown = set(p) - {"sampler", "steps", "cfg_scale", "expand"}
            if unknown:
                raise BenchError(f"unknown diffusion sweep field {sorted(unknown)[0]!r} (known: cfg_scale, "
                                 "expand, sampler, steps)")


# ---------------------------------------------------------------- training


def training_seconds(run: Run, stage: str) -> float:
    """Training-loop wall-clock of `stage` in `run_dir`, from its metrics log (train.loop writes
    cumulative "seconds"; logs from before that field are summed from items / items_per_s)."""
    run = Run(run)
    path = run.metrics_path(stage)
    if not path.is_file():
        raise BenchError(f"{path} is missing: cannot tell how long the {stage} stage trained")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise BenchError(f"{path} is empty")
    if "seconds" in rows[-1]:
        return float(rows[-1]["seconds"])
    cfg = (run.recorded_config(stage) or {}).get("loop", {})
    per_step = cfg.get("batch_size", 32) * cfg.get("grad_accum", 1)
    total, prev = 0.0, 0
    for r in rows:
        if r.get("items_per_s"):
            total += (r["step"] - prev) * per_step / r["items_per_s"]
        prev = r["step"]
    return total


def ensure_trained(run: Run, cfg: BenchConfig) -> dict:
    """Train whatever the run lacks; returns the training seconds and step counts of both sides (and of the
    prompt expander both read, where the generator's recorded sampling expands)."""
    from train import diffusion_stage, expander_stage, generator_stage, tokenizer_stage

    common = {} if cfg.progress else {"loop.progress": False}
    if cfg.device:
        common["loop.device"] = cfg.device

    def stage_cfg(module: Any, stage: str) -> Any:
        return module.preset_config(cfg.stage_preset).override({**common, **cfg.stages.get(stage, {})})

    if not run.has("tokenizer"):
        log.info("bench: training the tokenizer (%s preset)", cfg.stage_preset)
        tokenizer_stage.train_tokenizer(stage_cfg(tokenizer_stage, "tokenizer"), run.root)
    if not run.has("generator"):
        log.info("bench: pre-tokenizing and training the generator (%s preset)", cfg.stage_preset)
        generator_stage.train_generator(stage_cfg(generator_stage, "generator"), run.root)
    if expands(run) and not run.has("expander"):
        log.info("bench: training the prompt expander both sides read (%s preset)", cfg.stage_preset)
        expander_stage.train_expander(stage_cfg(expander_stage, "expander"), run.root)
    tok_seconds, gen_seconds = training_seconds(run, "tokenizer"), training_seconds(run, "generator")
    ar_seconds = tok_seconds + gen_seconds
    if not run.has("baseline"):
        bcfg = stage_cfg(diffusion_stage, "baseline")
        log.info("bench: training the diffusion baseline for the AR side's %.0f s", ar_seconds)
        diffusion_stage.train_baseline(bcfg, run.root, seconds=ar_seconds)
    out = {"ar_seconds": ar_seconds, "tokenizer_seconds": tok_seconds, "generator_seconds": gen_seconds,
           "baseline_seconds": training_seconds(run, "baseline"),
           "steps": {s: run.recorded_config(s)["loop"]["steps"] for s in STAGES}}
    if expands(run):
        out["expander_seconds"] = training_seconds(run, "expander")
        out["steps"]["expander"] = run.recorded_config("expander")["loop"]["steps"]
    return out


def expands(run: Run) -> bool:
    """Whether the run's generator recommends reading prompts through a prompt expander (`sample.expand`)."""
    return bool(((run.recorded_config("generator") or {}).get("sample") or {}).get("expand"))


# ---------------------------------------------------------------- measuring


def flops_per_image(pipe: Any, sc: Any, prompt: str = "a red circle") -> float:
    """FLOPs of sampling one image at batch 1, text to pixels (torch's FlopCounterMode: matmuls,
    convolutions, attention; elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    # torch counts the CUDA attention kernels but not the CPU one (torch 2.13); same formula
    def cpu_sdpa(q, k, v, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(q, k, v)

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        pipe.sample([prompt], n=1, settings=sc, batch_size=1)
    return float(counter.get_total_flops())


def parameter_counts(run: Run, device: str | None, progress: bool = True) -> dict:
    ar = open_sampler(run, "generator", device=device, progress=progress)
    base = open_sampler(run, "baseline", device=device, progress=progress)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"generator": count(ar.model), "tokenizer": count(ar.tokenizer),
            "baseline": count(base.model), "baseline_unet": count(base.model.unet),
            "baseline_text_encoder": count(base.model.text)}


def _decoder(sc: Any) -> str:
    """The generator's decoder in words (as pipelines.ARPipeline.describe names it)."""
    cache = (" static cache" + (" compiled" if sc.compile else "")) if sc.cache == "static" else ""
    if sc.decoder == "jacobi":
        return f"jacobi {sc.jacobi_window} {sc.jacobi_init}{cache}"
    if sc.decoder == "zipar":
        return f"zipar {sc.zipar_window}"
    return cache.strip() or "plain"


def _point_name(model: str, p: dict, sc: Any) -> str:
    """A directory name for a sampling setting `sc`, naming what the point `p` sets."""
    if model == "generator":
        decoder = "" if sc.decoder == "plain" and sc.cache == "dynamic" else "_" + re.sub(r"[^a-z0-9]+", "-", _decoder(sc))
        return f"ar_cfg{sc.cfg_scale:g}" + "".join(f"_{k.replace('_', '')}{p[k]:g}"
                                                   for k in ("top_k", "top_p", "min_p", "temperature") if k in p) + decoder
    return f"{sc.sampler.replace('+', 'p')}_{sc.steps}steps" + (f"_cfg{sc.cfg_scale:g}" if "cfg_scale" in p else "")


def _point_label(model: str, p: dict, sc: Any) -> str:
    if model == "generator":
        decoder = "" if sc.decoder == "plain" and sc.cache == "dynamic" else f", {_decoder(sc)}"
        other = "".join(f", {k.replace('_', '-')} {p[k]:g}" for k in ("top_p", "min_p", "temperature") if k in p)
        return f"guidance {sc.cfg_scale:g}" + (f", top-k {sc.top_k}" if sc.top_k else "") + other + decoder
    return f"{sc.sampler.upper()} {sc.steps}" + (f", guidance {sc.cfg_scale:g}" if "cfg_scale" in p else "")


def _eval_config(model: str, p: dict, cfg: BenchConfig, sweep: bool) -> Any:
    from eval.harness import EvalConfig

    return EvalConfig(model=model, sampling=dict(p), seed=cfg.seed, device=cfg.device, progress=cfg.progress,
                      suites=None if cfg.suites is None else list(cfg.suites), n=cfg.sweep_n if sweep else cfg.n,
                      fid_images=cfg.sweep_fid_images if sweep else cfg.fid_images,
                      speed_images=cfg.sweep_speed_images if sweep else cfg.speed_images,
                      speed_batch_sizes=[1, cfg.large_batch], tokenizer=not sweep,
                      batch_size=max(64, cfg.large_batch))


def _summarise(result: Any, flops: float, large_batch: int) -> dict:
    """The numbers the tables and plots use, from one eval.harness result."""
    rows = {r["batch_size"]: r for r in result.speed["rows"]}
    f = result.faithfulness
    return {
        "faithfulness": f["accuracy"], "faithfulness_ci": f["ci95"],
        "categories": {k: v["accuracy"] for k, v in f["categories"].items()},
        # the text suites: strings exactly right, and characters right (eval.faithfulness._text)
        "text": {k: {"exact": v["exact_rate"], "chars": v["char_accuracy"]} for k, v in f["categories"].items()
                 if v.get("strings")},
        "images": f["n"],
        "fid": result.fid["fid"] if result.fid else None,
        "precision": result.fid["precision"] if result.fid else None,
        "recall": result.fid["recall"] if result.fid else None,
        "images_per_s_b1": rows[1]["images_per_s"], "images_per_s_large": rows[large_batch]["images_per_s"],
        "nfe_per_image": rows[1]["nfe_per_image"], "steps_per_image": result.speed["steps_per_image"],
        "flops_per_image": flops,
    }


def _measure(run: Run, model: str, p: dict, cfg: BenchConfig, out: Path, sweep: bool) -> dict:
    from eval.harness import evaluate_run

    ecfg = _eval_config(model, p, cfg, sweep)
    pipe = open_sampler(run, model, device=cfg.device, progress=cfg.progress)
    sc = pipe.settings(**ecfg.sampling, seed=ecfg.seed)
    label = _point_label(model, p, sc)
    where = out / "eval" / ("sweep" if sweep else "main") / _point_name(model, p, sc)
    log.info("bench: evaluating %s %s (%s)", model, label, "sweep" if sweep else "main")
    t = time.perf_counter()
    result = evaluate_run(run.root, ecfg, out_dir=where)
    # the same FLOPs compiled or not; the counter's dispatch mode and torch.compile's tracing do not mix
    flop_sc = replace(sc, compile=False) if getattr(sc, "compile", False) else sc
    summary = _summarise(result, flops_per_image(pipe, flop_sc), cfg.large_batch)
    summary.update({"model": model, "setting": p, "settings": result.sampling, "label": label, "sweep": sweep,
                    "seconds": round(time.perf_counter() - t, 1), "report": str(where.relative_to(out) / "report.md")})
    if not sweep and result.tokenizer:
        summary["tokenizer"] = {k: result.tokenizer[k] for k in ("scene_preservation", "psnr", "ssim")}
    return summary


# ---------------------------------------------------------------- the whole bench


def run_bench(run_dir: str | Path, cfg: BenchConfig, out_dir: str | Path | None = None) -> dict:
    """Train what `run_dir` lacks, evaluate both models and the sweep, write the report; returns bench.json's dict."""
    from eval.speed import machine_info

    t0 = time.perf_counter()
    run = Run(run_dir)
    out = Path(out_dir) if out_dir else run.bench_dir
    training = ensure_trained(run, cfg)
    t_train = time.perf_counter() - t0
    if expands(run):  # the baseline reads the expansions the generator reads (one expander, one answer)
        cfg = replace(cfg, diffusion_main={"expand": True, **cfg.diffusion_main},
                      diffusion_points=[{"expand": True, **p} for p in cfg.diffusion_points])
    main = [_measure(run, "generator", cfg.ar_main, cfg, out, sweep=False),
            _measure(run, "baseline", cfg.diffusion_main, cfg, out, sweep=False)]
    sweep = [_measure(run, "generator", p, cfg, out, sweep=True) for p in cfg.ar_points]
    sweep += [_measure(run, "baseline", p, cfg, out, sweep=True) for p in cfg.diffusion_points]
    report = {
        "version": BENCH_VERSION, "run": str(run.root), "config": asdict(cfg),
        "machine": machine_info(resolve_device(cfg.device)), "training": training,
        "parameters": parameter_counts(run, cfg.device, cfg.progress), "main": main, "sweep": sweep,
        "seconds": {"training": round(t_train, 1), "total": round(time.perf_counter() - t0, 1)},
        "date": time.strftime("%Y-%m-%d"),
    }
    write_report(report, out)
    return report


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    plots = plot_tradeoffs(report, out)
    write_atomic(out / "bench.json", json.dumps(report, indent=2) + "\n")
    write_atomic(out / "report.md", render_markdown(report, plots))


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _num(x: float | None, fmt: str = "{:.3g}") -> str:
    return "—" if x is None else fmt.format(x)


def render_markdown(report: dict, plots: list[str]) -> str:
    from eval.speed import describe_machine

    ar, df = report["main"]
    tr, par, c = report["training"], report["parameters"], report["config"]
    lb = c["large_batch"]
    cats = list(dict.fromkeys([*ar["categories"], *df["categories"]]))
    lines = [
        "# Autoregressive generator vs diffusion baseline",
        "",
        f"- run: `{report['run']}`; machine: {describe_machine(report['machine'])}; torch {report['machine']['torch']}; "
        f"{report['date']}",
        f"- budget: the same training wall-clock on this machine. AR side: tokenizer {tr['tokenizer_seconds']:.0f} s "
        f"({tr['steps']['tokenizer']} steps) + generator {tr['generator_seconds']:.0f} s ({tr['steps']['generator']} "
        f"steps) = {tr['ar_seconds']:.0f} s; diffusion: {tr['baseline_seconds']:.0f} s ({tr['steps']['baseline']} "
        "steps). Same scenes, captions and text ids; data preparation not counted on either side."
        + (f" Both read the same prompt expander's expansions (trained {tr['expander_seconds']:.0f} s, "
           f"{tr['steps']['expander']} steps, counted on neither side)." if "expander_seconds" in tr else ""),
        f"- main settings: AR {ar['label']} (temperature {ar['settings']['temperature']:g}); diffusion "
        f"{df['label']} steps, guidance {df['settings']['cfg_scale']:g}. {c['n']} samples per prompt, "
        f"seed {c['seed']}; FID on {c['fid_images']} images (the harness's classifier features).",
        f"- bench time: {report['seconds']['total'] / 60:.1f} min ({report['seconds']['training'] / 60:.1f} training)",
        "",
        "| | autoregressive | diffusion |",
        "|---|---:|---:|",
    ]
    for cat in cats:
        lines.append(f"| faithfulness: {cat} (%) | {_pct(ar['categories'].get(cat))} | "
                     f"{_pct(df['categories'].get(cat))} |")
    for cat in dict.fromkeys([*ar.get("text", {}), *df.get("text", {})]):  # reports written before text: none
        for key, what in (("exact", "strings exact"), ("chars", "characters right")):
            lines.append(f"| {cat}: {what} (%) | {_pct(ar.get('text', {}).get(cat, {}).get(key))} | "
                         f"{_pct(df.get('text', {}).get(cat, {}).get(key))} |")
    lines += [
        f"| **faithfulness: all (%)** | **{_pct(ar['faithfulness'])}** ({_pct(ar['faithfulness_ci'][0])}–"
        f"{_pct(ar['faithfulness_ci'][1])}) | **{_pct(df['faithfulness'])}** ({_pct(df['faithfulness_ci'][0])}–"
        f"{_pct(df['faithfulness_ci'][1])}) |",
        f"| FID (classifier features) | {_num(ar['fid'], '{:.3f}')} | {_num(df['fid'], '{:.3f}')} |",
        f"| precision / recall | {_num(ar['precision'], '{:.3f}')} / {_num(ar['recall'], '{:.3f}')} | "
        f"{_num(df['precision'], '{:.3f}')} / {_num(df['recall'], '{:.3f}')} |",
        f"| images/s, batch 1 | {ar['images_per_s_b1']:.2f} | {df['images_per_s_b1']:.2f} |",
        f"| images/s, batch {lb} | {ar['images_per_s_large']:.2f} | {df['images_per_s_large']:.2f} |",
        f"| GFLOPs per image | {ar['flops_per_image'] / 1e9:.3f} | {df['flops_per_image'] / 1e9:.3f} |",
        f"| network evaluations per image | {ar['nfe_per_image']} | {df['nfe_per_image']} |",
        f"| sequential steps per image | {ar['steps_per_image']} | {df['steps_per_image']} |",
        f"| parameters | {par['generator'] / 1e6:.2f}M generator (+ {par['tokenizer'] / 1e6:.2f}M tokenizer) | "
        f"{par['baseline'] / 1e6:.2f}M ({par['baseline_unet'] / 1e6:.2f}M UNet + "
        f"{par['baseline_text_encoder'] / 1e6:.2f}M text encoder) |",
        f"| training time (s) | {tr['ar_seconds']:.0f} | {tr['baseline_seconds']:.0f} |",
        "",
        "Network evaluations count guidance's two rows; FLOPs are counted by torch's FlopCounterMode on one "
        "batch-1 sample (matmuls, convolutions, attention), the AR side's tokenizer decoder included.",
        "",
        "## Sampling settings (the trade-off curves)",
        "",
        f"A lighter protocol than the table above ({c['sweep_n']} samples per prompt, FID on "
        f"{c['sweep_fid_images']} images): compare these rows with each other.",
        "",
        f"| model | setting | faithfulness (%) | FID | images/s b1 | images/s b{lb} | NFE / image | GFLOPs / image |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for p in report["sweep"]:
        lines.append(f"| {'AR' if p['model'] == 'generator' else 'diffusion'} | {p['label']} | {_pct(p['faithfulness'])} | "
                     f"{_num(p['fid'], '{:.3f}')} | {p['images_per_s_b1']:.2f} | {p['images_per_s_large']:.2f} | "
                     f"{p['nfe_per_image']} | {p['flops_per_image'] / 1e9:.3f} |")
    lines += [""] + [f"![{Path(p).stem}]({p})" for p in plots]
    lines += ["", "Each evaluation's own report (per-category intervals, per-constraint failures, sample grids): "
              + ", ".join(f"[{m['label']}]({m['report']})" for m in report["main"])]
    return "\n".join(lines) + "\n"


def _series(p: dict) -> str:
    if p["model"] == "generator":
        if p["setting"].get("decoder", "plain") != "plain" or p["setting"].get("cache", "dynamic") != "dynamic":
            return "AR: decoders"  # other ways to draw the same model's codes: points, not a curve
        return "AR: top-k" if p["setting"].get("top_k") else "AR: guidance"
    return f"diffusion: {p['settings']['sampler'].upper()} steps"


def plot_tradeoffs(report: dict, out: Path) -> list[str]:
    """faithfulness_vs_speed.png and fid_vs_speed.png over the sweep, speed at batch 1 and at the large batch side by
    side (the decoders differ most at batch 1); returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    lb = report["config"]["large_batch"]
    names = []
    for key, ylabel, fname in (("faithfulness", "faithfulness (fraction of images)", "faithfulness_vs_speed.png"),
                               ("fid", "FID (classifier features, lower is better)", "fid_vs_speed.png")):
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
        series: dict[str, list[dict]] = {}
        for p in report["sweep"]:
            if p[key] is not None:
                series.setdefault(_series(p), []).append(p)
        for ax, speed, batch in zip(axes, ("images_per_s_b1", "images_per_s_large"), (1, lb)):
            for name, pts in series.items():
                pts = sorted(pts, key=lambda p: p[speed])
                marker = "o" if name.startswith("AR") else "s"
                style = {"linestyle": "none", "marker": "D"} if name == "AR: decoders" else {"marker": marker}
                ax.plot([p[speed] for p in pts], [p[key] for p in pts], label=name, **style)
                for p in pts:
                    ax.annotate(p["label"], (p[speed], p[key]), fontsize=6, xytext=(3, 3), textcoords="offset points")
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # a short range labels its minor ticks
            ax.margins(x=0.3)  # room for the labels of the fastest points
            ax.set_xlabel(f"images/s at batch {batch} (log scale)")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel(ylabel)
        if key == "fid":
            axes[0].set_yscale("symlog", linthresh=0.1)
        axes[1].legend(fontsize=8)
        fig.suptitle(f"{key} vs sampling speed ({report['machine'].get('gpu') or 'CPU'})")
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
        names.append(fname)
    return names


__all__ = ["BENCH_VERSION", "BenchConfig", "BenchError", "PRESETS", "ensure_trained", "flops_per_image",
           "from_preset", "split_assignments",
           "render_markdown", "run_bench", "training_seconds", "write_report"]
