"""`tessera bench --preset cpu-edit`: the autoregressive editor against its two baselines, on one budget.

    report = run_edit_bench("runs/edit", EditBenchConfig.preset("cpu-edit"))    # writes runs/edit/bench/

What it does, in order (each training skipped when its output is already in the run):

1. trains the editor in RUN: the stages' cpu-edit presets (tokenizer with tones; generator with
   data.task edit, the source image in context);
2. trains baseline (a), *regenerate*, in RUN/regenerate: a generator of the editor's size on the
   same edits' results, each described completely (data.task edit-scenes: every object's size,
   colour, shape and cell; never its tone), on the editor's tokenizer, for the editor's generator
   training wall-clock on this machine (train.loop.steps_for_seconds);
3. trains baseline (b), the diffusion baseline, in RUN/regenerate (its text tokenizer shared) on
   the same described results in pixels, for the editor's tokenizer and generator wall-clock
   together (it has no tokenizer); it edits by SDEdit at each of `strengths`;
4. runs the edit suite (eval.editing.suite_cases at size `n`: the same cases for every method, one
   sample each, each chain turn on the method's own previous output) for the editor, regenerate, and SDEdit at every strength;
5. writes OUT/report.md (one table, and whether the editor beats both baselines on preservation
   at equal or better edit success) and OUT/bench.json (every number).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eval import editing
from eval.bench import from_preset, split_assignments, training_seconds
from eval.errors import BenchError
from pipelines import Run, open_sampler, write_atomic

log = logging.getLogger(__name__)

EDIT_BENCH_VERSION = 1
STAGES = ("tokenizer", "generator", "regenerate", "baseline")  # what --set STAGE.SECTION.KEY=VALUE may name
REGENERATE = "regenerate"  # the regenerate baseline's run, inside the editor's

PRESETS: dict[str, dict] = {
    # the stages' cpu-edit presets (the editor ~45 min on 2 cores, each baseline as long), SDEdit at three
    # strengths; the suite's 56 single edits and 24 chains of 3 turns, 4 samples each
    "cpu-edit": {"stage_preset": "cpu-edit", "strengths": [0.3, 0.5, 0.7], "n": 4},
}


@dataclass
class EditBenchConfig:
    stage_preset: str = "cpu-edit"
    stages: dict = field(default_factory=dict)  # per-stage overrides: {"regenerate": {"loop.lr": 1e-3}}
    strengths: list[float] = field(default_factory=lambda: [0.3, 0.5, 0.7])  # SDEdit noise strengths
    n: int = 4  # the edit suite's size: n x 8 single edits per kind and n x 24 chains, one sample each
    seed: int = 0
    batch_size: int = 64
    device: str | None = None
    progress: bool = True

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> EditBenchConfig:
        return from_preset(cls, PRESETS, name, overrides)

    @classmethod
    def from_assignments(cls, name: str, assignments: dict[str, Any], **overrides: Any) -> EditBenchConfig:
        """The preset with `--set` assignments: bench.FIELD=value, or STAGE.SECTION.KEY=value (STAGES)."""
        stages, bench = split_assignments(assignments, STAGES)
        return cls.preset(name, stages=stages, **overrides, **bench)

    def __post_init__(self):
        if int(self.n) < 1 or int(self.batch_size) < 1:
            raise BenchError(f"bench n and batch_size must be >= 1, got {self.n} and {self.batch_size}")
        unknown = set(self.stages) - set(STAGES)
        if unknown:
            raise BenchError(f"unknown stage {sorted(unknown)[0]!r} (known: {', '.join(STAGES)})")
        if not self.strengths or not all(isinstance(s, (int, float)) and 0 < s <= 1 for s in self.strengths):
            raise BenchError(f"bench strengths must be numbers in (0, 1], got {self.strengths!r}")


def ensure_trained(run: Run, cfg: EditBenchConfig) -> dict:
    """Train whatever is missing: the editor, then both baselines on its budget; returns the seconds."""
    from train import diffusion_stage, generator_stage, tokenizer_stage

    common = {} if cfg.progress else {"loop.progress": False}
    if cfg.device:
        common["loop.device"] = cfg.device

    def stage_cfg(module: Any, stage: str, extra: dict | None = None) -> Any:
        return module.preset_config(cfg.stage_preset).override({**common, **(extra or {}), **cfg.stages.get(stage, {})})

    editor = stage_cfg(generator_stage, "generator")
    if editor.data.task != "edit":
        raise BenchError(f"the {cfg.stage_preset} generator preset trains {editor.data.task}, not an editor")
    if not run.has("tokenizer"):
        log.info("edit bench: training the tokenizer (%s preset)", cfg.stage_preset)
        tokenizer_stage.train_tokenizer(stage_cfg(tokenizer_stage, "tokenizer"), run.root)
    if not run.has("generator"):
        log.info("edit bench: pre-tokenizing and training the editor (%s preset)", cfg.stage_preset)
        generator_stage.train_generator(editor, run.root)
    tok_seconds, gen_seconds = training_seconds(run, "tokenizer"), training_seconds(run, "generator")
    regen = Run(run.root / REGENERATE)
    if not regen.has("tokenizer"):  # the editor's tokenizer: the same codes, the same pixels
        regen.root.mkdir(parents=True, exist_ok=True)
        shutil.copytree(run.tokenizer, regen.tokenizer)
    if not regen.has("generator"):
        described = {"data.task": "edit-scenes", "data.text_len": diffusion_stage.PRESETS[cfg.stage_preset]["data"][
            "text_len"]}
        log.info("edit bench: training the regenerate baseline for the editor's %.0f s", gen_seconds)
        generator_stage.train_generator(stage_cfg(generator_stage, REGENERATE, described), regen.root,
                                        seconds=gen_seconds)
    if not regen.has("baseline"):
        log.info("edit bench: training the diffusion baseline for the editor's %.0f s", tok_seconds + gen_seconds)
        diffusion_stage.train_baseline(stage_cfg(diffusion_stage, "baseline"), regen.root,
                                       seconds=tok_seconds + gen_seconds)
    return {"tokenizer": tok_seconds, "editor": gen_seconds, "regenerate": training_seconds(regen, "generator"),
            "diffusion": training_seconds(regen, "baseline"),
            "steps": {"editor": run.recorded_config("generator")["loop"]["steps"],
                      "regenerate": regen.recorded_config("generator")["loop"]["steps"],
                      "diffusion": regen.recorded_config("baseline")["loop"]["steps"]}}


def run_edit_bench(run_dir: str | Path, cfg: EditBenchConfig | None = None, out_dir: str | Path | None = None) -> dict:
    """Train what is missing, run the edit suite for the editor and both baselines, write the report."""
    cfg = cfg or EditBenchConfig()
    run = Run(run_dir)
    out = Path(out_dir) if out_dir else run.root / "bench"
    seconds = ensure_trained(run, cfg)
    regen = Run(run.root / REGENERATE)
    data = run.recorded_data("generator")
    grid = int(data.get("grid", 3))
    cases = editing.suite_cases(grid, int(data.get("max_objects", 5)), cfg.n)
    methods: dict[str, dict] = {}

    def timed(name: str, settings: Any, fn: Any) -> None:
        log.info("edit bench: the edit suite for %s", name)
        t = time.perf_counter()
        report = fn()
        methods[name] = {**report.to_dict(), "settings": _plain(settings), "seconds": round(time.perf_counter() - t, 1)}

    editor = open_sampler(run, "generator", device=cfg.device, progress=cfg.progress)
    sc = editor.settings(seed=cfg.seed)
    timed("editor", sc, lambda: editing.evaluate_editor(editor, cases, 1, sc, grid, cfg.batch_size, cfg.progress))
    ar = open_sampler(regen, "generator", device=cfg.device, progress=cfg.progress)
    sa = ar.settings(seed=cfg.seed)
    timed("regenerate", sa, lambda: editing.evaluate_regenerate(ar, cases, 1, sa, grid, cfg.batch_size,
                                                                cfg.progress))
    diffusion = open_sampler(regen, "baseline", device=cfg.device, progress=cfg.progress)
    sd = diffusion.settings(seed=cfg.seed)
    for strength in cfg.strengths:
        timed(f"sdedit {strength:g}", {**_plain(sd), "strength": strength},
              lambda s=strength: editing.evaluate_sdedit(diffusion, cases, 1, sd, grid, s, cfg.batch_size))

    from eval.speed import machine_info

    result = {"version": EDIT_BENCH_VERSION, "run": str(run.root), "config": asdict(cfg),
              "machine": machine_info(editor.device), "training_seconds": seconds, "cases": len(cases),
              "methods": methods, "verdict": verdict(methods)}
    write_atomic(out / "bench.json", json.dumps(result, indent=2) + "\n")
    write_atomic(out / "report.md", render_markdown(result))
    return result


def _plain(settings: Any) -> dict:
    return settings if isinstance(settings, dict) else asdict(settings)


def verdict(methods: dict[str, dict]) -> str:
    """Whether the editor beats every baseline on preserved objects at equal or better single-edit success."""
    ed = methods["editor"]["single"]
    lines = []
    for name, m in methods.items():
        if name == "editor":
            continue
        s = m["single"]
        keeps = ed["objects_preserved"]["rate"] > s["objects_preserved"]["rate"]
        succeeds = ed["success"]["rate"] >= s["success"]["rate"]
        lines.append(f"{name}: the editor {'preserves more' if keeps else 'does NOT preserve more'} "
                     f"({ed['objects_preserved']['rate']:.1%} vs {s['objects_preserved']['rate']:.1%} of untouched "
                     f"objects) at {'equal or better' if succeeds else 'LOWER'} edit success "
                     f"({ed['success']['rate']:.1%} vs {s['success']['rate']:.1%})")
    return "; ".join(lines)


def render_markdown(result: dict) -> str:
    from eval.speed import describe_machine

    def pct(r: dict) -> str:
        return f"{r['rate']:.1%} [{r['ci95'][0]:.1%}, {r['ci95'][1]:.1%}]"

    t = result["training_seconds"]
    lines = [
        f"# Editing bench of {result['run']}",
        "",
        f"- machine: {describe_machine(result['machine'])}",
        f"- training wall-clock: tokenizer {t['tokenizer']:.0f} s, editor {t['editor']:.0f} s "
        f"({t['steps']['editor']} steps), regenerate {t['regenerate']:.0f} s ({t['steps']['regenerate']} steps), "
        f"diffusion {t['diffusion']:.0f} s ({t['steps']['diffusion']} steps)",
        f"- the edit suite: {result['cases']} cases, one sample each; chains of "
        f"{len(result['methods']['editor']['chains'])} turns, each on the method's own previous output",
        "",
        "| method | single-edit success | untouched objects preserved | images preserved | right | "
        "chains right (last turn) | eval s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in result["methods"].items():
        s, last = m["single"], (m["chains"][-1]["chain_right"] if m["chains"] else None)
        lines.append(f"| {name} | {pct(s['success'])} | {pct(s['objects_preserved'])} | {pct(s['images_preserved'])} "
                     f"| {pct(s['right'])} | {pct(last) if last else '—'} | {m['seconds']:g} |")
    lines += ["", f"**Verdict**: {result['verdict']}.", ""]
    for name, m in result["methods"].items():
        report = editing.EditReport(m["single"], m["chains"], m["failures"])
        lines += [f"## {name}", "", "settings: " + ", ".join(f"{k} {v}" for k, v in m["settings"].items()), "",
                  report.to_markdown(), ""]
    return "\n".join(lines)


__all__ = ["EDIT_BENCH_VERSION", "PRESETS", "EditBenchConfig", "ensure_trained", "render_markdown",
           "run_edit_bench", "verdict"]
