"""`tessera eval`: one trained run measured the same way every time.

    result = evaluate_run("runs/demo", EvalConfig())      # writes runs/demo/eval/{result.json, report.md, grids/}

Four parts, each optional:
    faithfulness  every prompt of the chosen suites (eval.suites), `n` samples each with
                  fixed seeds, scored by the shapes world's parse (eval.faithfulness):
                  accuracy per category and per constraint, 95% intervals, failures with reasons
    fid           images generated from `fid_images` captions of fresh training-distribution
                  scenes vs the world's renders of the same scenes, on features (eval.fid:
                  the harness's own classifier by default, Inception from a local file, or a callable)
    tokenizer     scene preservation, PSNR, SSIM, reconstruction FID, codebook usage/perplexity
                  (the generator's tokenizer; the diffusion baseline has none)
    speed         images/s, s/image, steps/s, network evaluations and peak memory at fixed
                  batch sizes (eval.speed)

A run trained on own data (`data.source` a path) is measured for memorisation
(eval.memorisation: distances of samples to their nearest training rows, near copies,
distinct samples per prompt, with the held-out rows as the reference); the shapes-world
suites, FID on the shapes classifier and the tokenizer's shapes metrics do not apply to
it unless asked for.

A run trained for editing (`data.task` "edit") is measured by the `edit` suite
(eval.editing: edit success, preservation of everything else, chains of turns; `n` scales
the number of cases, each sampled once), its default; the text-to-image suites and FID do
not apply to it unless asked for, and its speed is that of one edit turn.

`model` picks what is measured: the run's generator (default) or its diffusion baseline
(`tessera train-baseline`), with the same suites, seeds and features. Both are opened
through the sampling interface (`pipelines.open_sampler`), sampled with the settings
recorded with the model when it was trained, overridden by `sampling`.

Each suite is sampled on its own with the same seed (batch b of a suite uses seed + b),
so a suite's numbers do not depend on which other suites ran beside it, and two runs
with the same config give the same faithfulness numbers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from eval import editing, faithfulness, suites
from eval.errors import EvalConfigError
from pipelines import SAMPLERS, Run, open_sampler, write_atomic

log = logging.getLogger(__name__)

RESULT_VERSION = 1
GRID_TILES = 8  # images per grid row in the report
MODELS = tuple(SAMPLERS)  # "generator", "baseline"


@dataclass
class EvalConfig:
    model: str = "generator"  # the run's autoregressive generator, or its diffusion baseline (pipelines.SAMPLERS)
    # suite names (eval.suites, and "edit"); None: the run's default (DEFAULT_SUITES, or "edit" for an editor)
    suites: list[str] | None = None
    n: int = 4  # samples per prompt: GenEval's 4
    seed: int = 0
    # overrides of the model's recorded sampling settings: the generator's ar_model.SampleConfig fields
    # (cfg_scale, temperature, top_k, top_p), the baseline's baseline.DiffusionSampleConfig (sampler, steps, cfg_scale)
    sampling: dict = field(default_factory=dict)
    batch_size: int = 64
    fid: bool = True
    fid_images: int = 500  # Fréchet distance is biased at small N: compare runs at the same N only
    fid_seed: int = 4321  # scenes no training run draws (training uses seeds 0 and 1)
    features: Any = "classifier"  # "classifier", "inception:PATH" or a callable (eval.fid.resolve_features)
    tokenizer: bool = True
    tokenizer_images: int = 500
    speed: bool = True
    speed_batch_sizes: list[int] = field(default_factory=lambda: [1, 32])
    speed_images: int = 32
    device: str | None = None  # default: cuda when present
    progress: bool = True
    memorisation: bool | None = None  # None: on for runs trained on own data (eval.memorisation)

    def __post_init__(self):
        if self.suites is not None:
            self.suites = list(dict.fromkeys(self.suites))
        if self.model not in MODELS:
            raise EvalConfigError(f"eval model must be one of {', '.join(MODELS)}, got {self.model!r}")
        for name in ("n", "batch_size", "fid_images", "tokenizer_images", "speed_images"):
            if int(getattr(self, name)) < 1:
                raise EvalConfigError(f"eval {name} must be >= 1, got {getattr(self, name)!r}")
        if self.fid and self.fid_images < 5:
            raise EvalConfigError(f"eval fid_images must be >= 5 (precision/recall use 3 neighbours), got {self.fid_images}")
        if isinstance(self.features, str) and not (
            self.features == "classifier" or (self.features.startswith("inception:") and len(self.features) > 10)
        ):
            raise EvalConfigError(f"eval features must be 'classifier' or 'inception:PATH', got {self.features!r}")
        suites.get_suites(self.image_suites(self.suites or []))  # unknown suite names fail here, before any work

    @staticmethod
    def image_suites(names: list[str]) -> list[str]:
        """The text-to-image suites among `names` (all but "edit")."""
        return [n for n in names if n != editing.EDIT]

    def to_dict(self) -> dict:
        d = asdict(self)
        if callable(self.features):
            d["features"] = getattr(self.features, "__name__", "custom")
        return d


@dataclass
class EvalResult:
    version: int
    run: str
    config: dict
    machine: dict
    sampling: dict  # the settings every image was drawn with (the recorded ones, overridden), seed of batch 0
    suite_version: int
    faithfulness: dict  # faithfulness.FaithfulnessReport.to_dict() over every suite's images
    fid: dict | None
    tokenizer: dict | None
    speed: dict | None
    seconds: dict
    editing: dict | None = None  # eval.editing.EditReport.to_dict() when the edit suite ran
    memorisation: dict | None = None  # eval.memorisation.MemorisationReport.to_dict() for own-data runs

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_run(run_dir: str | Path, cfg: EvalConfig | None = None, out_dir: str | Path | None = None) -> EvalResult:
    """Evaluate the trained run in `run_dir`; write result.json, report.md and grids/ to out_dir (default run/eval)."""
    cfg = cfg or EvalConfig()
    run = Run(run_dir)
    out = Path(out_dir) if out_dir else run.eval_dir(cfg.model)
    pipe = open_sampler(run, cfg.model, device=cfg.device, progress=cfg.progress)
    editor = bool(getattr(pipe, "edits", False))
    from train.data.own import SHAPES

    own_data = run.recorded_data("generator").get("source", SHAPES) != SHAPES
    default = [editing.EDIT] if editor else ([] if own_data else list(suites.DEFAULT_SUITES))
    if not editor and not own_data and run.recorded_data(cfg.model).get("text", 0):  # a run that learnt to write
        default = [*suites.TEXT_SUITES, *default]
    names = cfg.suites if cfg.suites is not None else default
    if editing.EDIT in names and not editor:
        raise EvalConfigError(f"the {editing.EDIT} suite needs a run trained for editing (data.task edit); "
                              f"{run.root}'s {cfg.model} is text-to-image")
    defaulted = cfg.suites is None  # FID and the tokenizer's metrics are on the shapes world: off for the others
    cfg = dataclasses.replace(cfg, suites=names, fid=cfg.fid and not ((editor or own_data) and defaulted),
                              tokenizer=cfg.tokenizer and not (own_data and defaulted),
                              memorisation=own_data if cfg.memorisation is None else cfg.memorisation)
    if cfg.memorisation and not run.has("codes"):
        raise EvalConfigError(f"the memorisation measure needs the run's pre-tokenized rows ({run.part('codes')})")
    grid = int(run.recorded_data(cfg.model).get("grid", 3))  # the shapes world's grid the model was trained on
    sc = pipe.settings(**{**cfg.sampling, "seed": cfg.seed})
    measure_tokenizer = cfg.tokenizer and pipe.tokenizer is not None  # a pixel-space sampler has no tokenizer
    seconds: dict[str, float] = {}
    features = None
    if cfg.fid or measure_tokenizer:  # first: a bad weights file fails before sampling
        from eval.fid import resolve_features

        t = time.perf_counter()
        features = resolve_features(cfg.features, progress=cfg.progress)  # may train the classifier once (~1 min)
        seconds["features"] = time.perf_counter() - t

    # ---- faithfulness, suite by suite
    t = time.perf_counter()
    report, grids = _faithfulness(pipe, cfg, sc, out, grid)
    seconds["faithfulness"] = time.perf_counter() - t

    # ---- editing
    edit_report = None
    if editing.EDIT in names:
        t = time.perf_counter()
        data = run.recorded_data(cfg.model)
        cases = editing.suite_cases(grid, int(data.get("max_objects", 5)), cfg.n)  # n scales the cases
        log.info("eval: suite %s, %d cases, one sample each", editing.EDIT, len(cases))
        edit_report = editing.evaluate_editor(pipe, cases, 1, sc, grid, cfg.batch_size, cfg.progress)
        seconds["editing"] = time.perf_counter() - t

    # ---- memorisation (own data)
    memo = None
    if cfg.memorisation:
        from eval.memorisation import evaluate_memorisation

        t = time.perf_counter()
        memo = evaluate_memorisation(pipe, run, cfg.n, sc, cfg.batch_size, cfg.seed, progress=cfg.progress)
        seconds["memorisation"] = time.perf_counter() - t

    # ---- FID on generated vs rendered scenes
    fid = None
    if cfg.fid:
        t = time.perf_counter()
        fid = _generation_fid(pipe, cfg, sc, features, run.recorded_data(cfg.model))
        seconds["fid"] = time.perf_counter() - t

    # ---- tokenizer
    tok = None
    if measure_tokenizer:
        from eval.tokenizer_metrics import evaluate_tokenizer, heldout_images

        t = time.perf_counter()
        res = pipe.tokenizer.cfg.resolution
        world = run.recorded_data("tokenizer")  # the scenes the tokenizer was trained on
        tones = bool(world.get("tones", False))  # an editing world's tokenizer
        text = float(world.get("text", 0.0))  # a text world's: glyphs measured too
        tok = evaluate_tokenizer(pipe.tokenizer, heldout_images(cfg.tokenizer_images, res, grid=grid, tones=tones,
                                                                text=text, max_objects=world.get("max_objects")),
                                 progress=cfg.progress, features=features, grid=grid).to_dict()
        seconds["tokenizer"] = time.perf_counter() - t

    # ---- speed
    speed = None
    if cfg.speed:
        from eval.speed import measure_sampling

        t = time.perf_counter()
        if editor:  # an editor is timed editing: one turn of the suite's single edits
            from train.data import shapes

            singles = [c for c in editing.suite_cases(grid, int(run.recorded_data(cfg.model).get("max_objects", 5)), 1)
                       if c.group == "single"]
            prompts = [c.instructions[0] for c in singles]
            sources = shapes.render_batch([c.steps[0].before for c in singles], pipe.resolution)
            name = "one edit turn, " + pipe.describe(sc)
        elif own_data and run.has("codes") and run.has("text_tokenizer"):  # the run's own captions (the shapes
            # world's prompts mean nothing to it and may not fit its text length)
            from ar_model import load_text_tokenizer
            from train.pretokenize import load_codes

            text_tok = load_text_tokenizer(run.part("text_tokenizer"))
            prompts = [text_tok.decode(t.tolist(), skip_special_tokens=True) for t in load_codes(run.part("codes"))[1][:16]]
            sources, name = None, pipe.describe(sc)
        else:
            prompts, sources = [p.text for p in suites.get_suites(["position"], grid)["position"]], None
            name = pipe.describe(sc)
        speed = measure_sampling(pipe, prompts, {name: sc}, cfg.speed_batch_sizes, cfg.speed_images,
                                 sources=sources).to_dict()
        seconds["speed"] = time.perf_counter() - t

    from eval.speed import machine_info

    result = EvalResult(
        version=RESULT_VERSION, run=str(run.root), config=cfg.to_dict(), machine=machine_info(pipe.device),
        sampling=asdict(sc), suite_version=suites.SUITE_VERSION, faithfulness=report.to_dict(), fid=fid,
        tokenizer=tok, speed=speed, seconds={k: round(v, 1) for k, v in seconds.items()},
        editing=edit_report.to_dict() if edit_report else None, memorisation=memo.to_dict() if memo else None,
    )
    write_atomic(out / "result.json", json.dumps(result.to_dict(), indent=2) + "\n")
    write_atomic(out / "report.md", render_markdown(result, report, grids))
    return result


def _faithfulness(pipe: Any, cfg: EvalConfig, sc: Any, out: Path,
                  grid: int) -> tuple[faithfulness.FaithfulnessReport, dict]:
    """Every suite sampled on its own (same seed), scored, aggregated; grids of good and failed samples."""
    from pipelines import save_grid

    specs, images, sample_index = [], [], []
    names = EvalConfig.image_suites(cfg.suites)
    for name, prompts in (suites.get_suites(names, grid) if names else {}).items():
        log.info("eval: suite %s, %d prompts x %d samples", name, len(prompts), cfg.n)
        result = pipe.sample([p.text for p in prompts], n=cfg.n, settings=sc, batch_size=cfg.batch_size,
                             progress=cfg.progress)
        specs += [p for p in prompts for _ in range(cfg.n)]
        images += list(result.images)
        sample_index += [i % cfg.n for i in range(len(result.images))]
    verdicts = faithfulness.score_all(images, specs)
    report = faithfulness.aggregate(verdicts, specs, sample_index)
    return report, _save_grids(out / "grids", images, specs, verdicts, sample_index, save_grid)


def _generation_fid(pipe: Any, cfg: EvalConfig, sc: Any, features: Any, data: dict) -> dict:
    """Generated images for complete captions of fresh scenes vs the world's renders of those scenes.

    The scenes are drawn like the run's training scenes (`data`: its object counts), but fresh.
    """
    from eval.fid import quality_metrics
    from train.data import grammar, shapes

    scenes = shapes.sample_scenes(
        cfg.fid_images, seed=cfg.fid_seed, split="train", max_objects=data.get("max_objects", shapes.MAX_OBJECTS),
        min_objects=data.get("min_objects", 1), count_weights=data.get("count_weights"), grid=data.get("grid", 3),
        text=data.get("text", 0.0),  # a text run's scenes hold strings as often as its training scenes
    )
    real = shapes.render_batch(scenes, pipe.resolution)
    fake = pipe.sample([grammar.describe(s) for s in scenes], n=1, settings=sc, batch_size=cfg.batch_size,
                       progress=cfg.progress).images
    return quality_metrics(real, fake, features).to_dict()


def _save_grids(out: Path, images: list, specs: list, verdicts: list, sample_index: list,
                save_grid: Callable) -> dict[str, dict]:
    """Per category: one row of good samples and one of failed ones (the first GRID_TILES of each)."""
    grids: dict[str, dict] = {}
    for cat in dict.fromkeys(s.category for s in specs):
        entry: dict[str, Any] = {}
        for kind, want in (("good", True), ("failed", False)):
            idx = [i for i, (s, v) in enumerate(zip(specs, verdicts)) if s.category == cat and v.ok == want]
            idx = idx[:GRID_TILES]
            if not idx:
                continue
            blank = np.full_like(images[idx[0]], 128)  # grey tiles pad a short row
            row = [images[i] for i in idx] + [blank] * (GRID_TILES - len(idx))
            path = save_grid([np.stack(row)], out / f"{cat}_{kind}.png")
            entry[kind] = {"path": str(Path("grids") / path.name),
                           "tiles": [{"prompt": specs[i].text, "sample": sample_index[i],
                                      "reason": verdicts[i].reason} for i in idx]}
        grids[cat] = entry
    return grids


def render_markdown(result: EvalResult, report: faithfulness.FaithfulnessReport, grids: dict[str, dict]) -> str:
    from eval.speed import describe_machine

    c = result.config
    lines = [
        f"# Evaluation of {result.run} ({c['model']})",
        "",
        f"- machine: {describe_machine(result.machine)}; torch {result.machine['torch']}",
        "- sampling: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in result.sampling.items())
        + f"; {c['n']} samples per prompt",
        f"- suites (version {result.suite_version}): {', '.join(c['suites'])}",
        "- seconds: " + ", ".join(f"{k} {v:g}" for k, v in result.seconds.items()),
        "",
    ]
    if report.n:
        lines += [
            "## Faithfulness per category",
            "",
            report.to_markdown(),
            "",
            "Failures by constraint (images), per category: " + "; ".join(
                f"{cat}: " + (", ".join(f"{k} {n}" for k, n in v["failed"].items()) or "none")
                for cat, v in report.categories.items()),
            "",
            "## Per constraint",
            "",
            report.constraints_markdown(),
        ]
        if report.text_markdown():
            lines += ["", "## Text (the strings prompts asked for)", "",
                      "Exact: every character of a string right; characters right: the i-th character of each "
                      "asked string matched in the string found for it (a missing string: none right); in place: "
                      "found where the prompt puts it. 95% Wilson intervals.", "", report.text_markdown()]
    if result.editing:
        e = result.editing
        lines += ["## Editing (the edit suite)", "",
                  "Success: the asked change made exactly; objects preserved: each untouched object there with its "
                  "colour, shape, size, cell and tone; images preserved: all of them and nothing else; right: the "
                  "whole expected scene. Each chain turn is conditioned on the model's own previous output and "
                  "scored against the ground truth after that many edits. 95% Wilson intervals.", "",
                  editing.EditReport(e["single"], e["chains"], e["failures"]).to_markdown()]
        if e["failures"]:
            lines += ["", "Failures (first %d):" % len(e["failures"]), ""] + [f"- {f}" for f in e["failures"]]
    if result.memorisation:
        from eval.memorisation import MemorisationReport

        lines += ["", "## Memorisation (own data)", "", MemorisationReport(**result.memorisation).to_markdown()]
    for cat in report.groups:  # counting per count, many_objects per count, phrasings per held-out form
        lines += ["", f"## {cat} by group", "", report.groups_markdown(cat)]
    if result.fid:
        f = result.fid
        lines += ["", "## Image quality (generated vs rendered scenes)", "",
                  f"features: {f['feature_name']} ({f['feature_dim']}-d); {f['n_real']} real, {f['n_fake']} generated",
                  "", "| FID | KID (x1000) | precision | recall |", "|---:|---:|---:|---:|",
                  f"| {f['fid']:.3f} | {1000 * f['kid_mean']:.2f} ± {1000 * f['kid_std']:.2f} | "
                  f"{f['precision']:.3f} | {f['recall']:.3f} |"]
    if result.tokenizer:
        t = result.tokenizer
        rfid = f"{t['rfid']['fid']:.3f}" if t.get("rfid") else "—"
        lines += ["", "## Tokenizer (held-out scenes)", "",
                  "| images | scene preserved | PSNR (dB) | SSIM | rFID | codebook usage | perplexity |",
                  "|---:|---:|---:|---:|---:|---:|---:|",
                  f"| {t['images']} | {t['scene_preservation']:.1%} | {t['psnr']:.2f} | {t['ssim']:.4f} | {rfid} | "
                  f"{t['codebook_usage']:.1%} | {t['perplexity']:.1f} |"]
        if t.get("glyph_preservation") is not None:
            lines += ["", f"Glyphs: {t['glyph_preservation']:.1%} of the {t['chars']} characters written in these "
                          "scenes read back as the same character in the same cell."]
    if result.speed:
        from eval.speed import SpeedReport, SpeedRow

        s = result.speed
        speed = SpeedReport(s["machine"], s["cfg_scale"], s["steps_per_image"], [SpeedRow(**r) for r in s["rows"]],
                            s.get("expanded", False))
        lines += ["", "## Sampling speed", "", speed.to_markdown()]
    lines += ["", "## Samples", ""]
    for cat, entry in grids.items():
        for kind in ("good", "failed"):
            if kind not in entry:
                continue
            lines += [f"### {cat}: {kind}", "", f"![{cat} {kind}]({entry[kind]['path']})", ""]
            lines += [f"{i + 1}. {t['prompt']!r} (sample {t['sample']})" + (f": {t['reason']}" if t["reason"] else "")
                      for i, t in enumerate(entry[kind]["tiles"])]
            lines.append("")
    if report.failures:
        lines += ["## Failures (first %d)" % len(report.failures), ""]
        lines += [f"- [{f['category']}] {f['prompt']!r} #{f['sample']}: {f['reason']}" for f in report.failures]
    return "\n".join(lines) + "\n"


__all__ = ["MODELS", "EvalConfig", "EvalResult", "evaluate_run", "render_markdown"]
