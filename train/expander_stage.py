"""The prompt expander's training stage (ar_model.expander): prompts of the generator's scenes -> plans.

    run/text_tokenizer/      shared with the generator stage (made by whichever stage runs first)
    run/expander_stage.json  the stage config (a resumed run must keep it)
    run/state/expander/      the shared loop's checkpoints (resume)
    run/metrics/expander.jsonl
    run/expander/            the exported expander + its text tokenizer

The data section is the generator stage's (`GeneratorDataConfig`: its world, grid and text tokenizer); the
`pairs` section draws the expander's own training scenes of that world (never a held-out composition, see
PairsConfig), each described `pairs.per_scene` times by the grammar in training phrasings (never a held-out
one). A pair is (the description, the plan): the complete description of the objects the description names,
in the order it names them (`grammar.plan`), or [SAME] when the description is complete already. The expander
exists for the shapes world's grammar; own data has no complete descriptions to learn from and is refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ar_model.expander import ExpanderConfig, Ids, build_expander, encode_pairs, pair_loss, save_expander
from pipelines import Run
from train.config import StageConfig, check_run_config, preset
from train.data import grammar, own, shapes
from train.errors import TrainConfigError
from train.generator_stage import PRESETS as GENERATOR_PRESETS
from train.generator_stage import GeneratorDataConfig, prepare_text_tokenizer, training_rows
from train.loop import EpochOrder, LoopConfig, LossOutput, fit_budget, resume_budget, train_loop

log = logging.getLogger(__name__)


# the expander's own mix of descriptions: what it has to work out (counts, relations, binding, partial prompts);
# complete ones only teach it to answer [SAME]
PAIR_KINDS = {"complete": 0.1, "partial": 0.3, "count": 0.3, "relation": 0.15, "binding": 0.15}


@dataclass
class PairsConfig:
    """The expander's training pairs. Its scenes are training scenes of the data section's world (never a held-out
    composition), `max_objects` at most (`count_weights`: the weight of each count from 1), `uniform_scenes` of
    them of one kind (counts of ten need such scenes);
    `kinds` weighs the descriptions; `complete_share` more pairs, as many as that share of `scenes`, describe
    scenes of the data section's own counts (up to 16 objects) completely, to be answered [SAME];
    `relation_share` more two-object scenes, as many as that share of `scenes`, are described by a relation
    (relations are drawn of two-object scenes only and are what the expander learns last: where the first
    object goes depends on a word after it), `adjacent_share` of them side by side in a row (where "next to"
    is true: one random pair in ten, so without them the expander sees "next to" about a sixth as often as
    each other relation);
    `single_share` more one-object scenes, as many as that share of `scenes`, are described partially ("a red
    shape in the upper left", "a circle"): the commonest prompt, and one whose cell the expander must copy with
    nothing else to go on (drawn among the scenes above alone they are ~1% of pairs, and at that share the
    expander moved a cell named with only a colour or only a shape one column in 11 of 36 suite prompts)."""

    scenes: int = 60000
    per_scene: int = 2  # descriptions drawn for each scene (each with its plan)
    max_objects: int = 10
    count_weights: list[float] | None = None  # None: uniform
    uniform_scenes: float = 0.4
    kinds: dict = field(default_factory=lambda: dict(PAIR_KINDS))
    complete_share: float = 0.15
    relation_share: float = 0.5
    adjacent_share: float = 0.25
    single_share: float = 0.1
    seed: int = 2
    temperature: float = 0.0  # the sampling temperature recorded with the expander (0: greedy)

    def __post_init__(self):
        for name in ("scenes", "per_scene", "max_objects"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise TrainConfigError(f"pairs.{name} must be an integer >= 1, got {v!r}")
        for name in ("uniform_scenes", "complete_share", "relation_share", "adjacent_share", "single_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise TrainConfigError(f"pairs.{name} must be in [0, 1], got {getattr(self, name)!r}")
        if self.count_weights is not None and (len(self.count_weights) != self.max_objects
                                               or min(self.count_weights) < 0 or not sum(self.count_weights) > 0):
            raise TrainConfigError(f"pairs.count_weights needs one weight >= 0 per count 1..{self.max_objects}, "
                                   f"not all 0; got {self.count_weights!r}")
        if not 0 <= self.temperature <= 10:
            raise TrainConfigError(f"pairs.temperature must be in [0, 10], got {self.temperature!r}")
        try:
            grammar.check_kinds(self.kinds)
        except ValueError as e:
            raise TrainConfigError(f"pairs.kinds: {e}") from None


@dataclass
class ExpanderStageConfig(StageConfig):
    STAGE = "expander"

    model: ExpanderConfig = field(default_factory=ExpanderConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    data: GeneratorDataConfig = field(default_factory=GeneratorDataConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)

    def __post_init__(self):
        if self.data.source != own.SHAPES or self.data.task != "text-to-image" or self.data.text:
            raise TrainConfigError("the prompt expander learns the shapes world's grammar (objects, no strings): "
                                   "data.source 'shapes', data.task 'text-to-image' and data.text 0 only")


PRESETS: dict[str, dict] = {
    # the cpu-long generator preset's world (4x4, up to 16 objects, a token per place name); a 4-layer, 128-wide
    # Llama (~0.9M parameters). 2,400 steps: ~14 minutes on 2 cores plus ~2 to draw the pairs; it plans every
    # suite prompt right (runs/long8, docs/RESULTS.md "Issue 17", session 24)
    "cpu-long": {
        "model": {"hidden_size": 128, "intermediate_size": 384},
        "loop": {"steps": 2400, "batch_size": 64, "lr": 2e-3, "warmup_steps": 150, "weight_decay": 0.01,
                 "betas": [0.9, 0.95], "min_lr_ratio": 0.05, "ema_decay": 0.0, "ckpt_every": 500,
                 "log_every": 50},
        "data": GENERATOR_PRESETS["cpu-long"]["data"],
    },
}
PRESETS["cpu"] = {**PRESETS["cpu-long"], "data": GENERATOR_PRESETS["cpu"]["data"]}


def preset_config(name: str) -> ExpanderStageConfig:
    return preset(ExpanderStageConfig, PRESETS, name)


def _plan(desc: grammar.Description, objs) -> str | None:
    """The expander's target for `desc`: None ([SAME]) for a complete description, else grammar.plan."""
    return None if desc.kind() == "complete" else grammar.plan(desc, objs)


def _adjacent_scenes(n: int, seed: int, grid: int) -> list[shapes.Scene]:
    """`n` two-object training scenes whose objects are neighbours in a row (the first such scenes of a
    seeded stream; about one in ten are)."""
    rng, found = np.random.default_rng(seed), []  # sample_scenes(..., seed)'s stream, filtered
    while len(found) < n:
        scene = shapes.sample_scene(rng, "train", 2, 2, None, grid)
        if grammar.RELATIONS["next_to"][1](*scene.objects):
            found.append(scene)
    return found


def expander_pairs(cfg: ExpanderStageConfig) -> tuple[list[str], list[str | None]]:
    """(captions, plans) of the stage's training scenes (PairsConfig), deterministic in pairs.seed; a plan of
    None is [SAME]."""
    d, pc = cfg.data, cfg.pairs
    top = min(pc.max_objects, d.max_objects)
    weights = pc.count_weights[d.min_objects - 1 : top] if pc.count_weights is not None else None
    scenes = shapes.sample_scenes(pc.scenes, pc.seed, "train", top, d.min_objects, weights, d.grid, pc.uniform_scenes)
    complete = shapes.sample_scenes(round(pc.scenes * pc.complete_share), pc.seed + 1, "train", d.max_objects,
                                    d.min_objects, d.count_weights, d.grid, d.uniform_scenes)
    n_related = round(pc.scenes * pc.relation_share)
    n_adjacent = round(n_related * pc.adjacent_share)
    related = shapes.sample_scenes(n_related - n_adjacent, pc.seed + 2, "train", 2, 2, None, d.grid)
    related += _adjacent_scenes(n_adjacent, pc.seed + 4, d.grid)
    singles = shapes.sample_scenes(round(pc.scenes * pc.single_share), pc.seed + 3, "train", 1, 1, None, d.grid)
    kinds = grammar.check_kinds(pc.kinds)
    rng = np.random.default_rng([pc.seed, 2])
    captions, plans = [], []
    for scene in scenes:
        for _ in range(pc.per_scene):
            desc, objs = grammar.described(scene, rng, kinds)
            captions.append(grammar.realise(desc, grammar.sample_form(desc, rng)))
            plans.append(_plan(desc, objs))
    extra = [(s, "complete") for s in complete] + [(s, "relation") for s in related] + [(s, "partial") for s in singles]
    for scene, only in extra:
        desc, objs = grammar.described(scene, rng, {only: 1.0})
        captions.append(grammar.realise(desc, grammar.sample_form(desc, rng)))
        plans.append(_plan(desc, objs))
    return captions, plans


class ExpanderTask:
    """The expander as a `train.loop.Task` over in-memory (prompt, plan) rows."""

    def __init__(self, cfg: ExpanderStageConfig, ids: Ids, rows: torch.Tensor, heads: torch.Tensor):
        self.model = build_expander(cfg.model, ids, seed=cfg.loop.seed)
        self.rows, self.heads, self.pad = rows, heads, ids.pad
        self.train_rows = len(rows)
        self.lengths = (rows != ids.pad).sum(1)
        self.order = EpochOrder(len(rows), cfg.loop.seed, cfg.loop.grad_accum, lengths=self.lengths,
                                block=cfg.loop.batch_size)
        self.batch_size, self.accum = cfg.loop.batch_size, cfg.loop.grad_accum
        self.validate = None

    def cost(self, step: int) -> float:
        """The tokens step's batch trains on (each micro-batch cut to its longest row)."""
        return float(sum(len(i) * int(self.lengths[i].max())
                         for i in (self.order.indices(step, m, self.batch_size) for m in range(self.accum))))

    def batch(self, step: int, micro: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.order.indices(step, micro, batch_size)
        device = next(self.model.parameters()).device
        return self.rows[idx].to(device), self.heads[idx].to(device)

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor], step: int) -> LossOutput:
        loss = pair_loss(self.model, batch[0], batch[1], self.pad)
        return LossOutput(loss, {"loss": float(loss.detach())})

    def items(self, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
        return batch[0].shape[0]


def train_expander(cfg: ExpanderStageConfig, run_dir: str | Path, seconds: float | None = None) -> Path:
    """Train (or resume) the prompt expander of `run_dir`; returns the exported expander directory. With
    `seconds`, the step count that fills that much wall-clock here (as the other stages' budgets)."""
    run = Run(run_dir)
    recorded = run.recorded_config("expander")
    if seconds is not None and recorded is not None:
        cfg = resume_budget(cfg, recorded)
        seconds = None
    if seconds is None:
        check_run_config(run, cfg)
    # the shared text tokenizer: made from the generator's captions when this stage runs first
    text_tok = prepare_text_tokenizer(cfg, run, training_rows(cfg, 8 * cfg.data.grid)["text"]
                                      if not run.text_tokenizer.is_dir() else [])
    captions, plans = expander_pairs(cfg)
    rows, heads = encode_pairs(text_tok, cfg.model, captions, plans)
    task = ExpanderTask(cfg, Ids.of(text_tok), rows, heads)
    if seconds is not None:
        cfg = fit_budget(cfg, task, seconds)
        check_run_config(run, cfg)
        log.info("expander: %d steps for a budget of %.0f s", cfg.loop.steps, seconds)
    log.info("expander: %d parameters, %d (prompt, plan) pairs", sum(p.numel() for p in task.model.parameters()),
             len(rows))
    result = train_loop(task, cfg.loop, run, desc="expander", stage="expander")
    log.info("expander: %d steps in %.1fs (resumed from %d)", result.step, result.seconds, result.resumed_from)
    out = run.part("expander")
    save_expander(task.model.eval(), cfg.model, text_tok, out, {"temperature": cfg.pairs.temperature})
    return out


__all__ = ["ExpanderStageConfig", "ExpanderTask", "PRESETS", "PairsConfig", "expander_pairs", "preset_config",
           "train_expander"]
