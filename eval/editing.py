"""The `edit` suite: does an editor make the asked change, exactly, and keep everything else?

Cases are drawn once from a fixed seed on the run's world (train.data.edits): single edits,
`per_kind` of each kind, and chains of `turns` edits. A method edits the rendered source; each
turn of a chain is conditioned on the method's own previous output. Every output is read back
with the shapes world's parse and scored against the ground-truth chain's scenes:

    success     the asked change happened exactly: every object the edit creates is there
                (colour, shape, size, cell and tone), and every object it removes or changes
                is gone
    preserved   per object: each object the edit does not touch is there exactly (its tone,
                the identity detail no text names, included)
    clean       nothing else appears (no object outside the expected scene)
    right       the whole image is the expected scene

Turn t of a chain is scored against the ground truth after t edits, so an early mistake
counts at every later turn (`chain right` = every turn so far right). Rates come with 95%
Wilson intervals. Methods other than the editor (a regenerating baseline, SDEdit) score
through `score_turn` the same way.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eval.faithfulness import wilson
from train.data import edits, shapes

EDIT = "edit"  # the suite's name in `tessera eval --suite`
EDIT_SEED = 20261201  # fixed: the cases are part of the suite's definition
EDIT_SUITE_VERSION = 2  # 2: `n` scales the number of cases, one sample each (1: n samples of 56 + 24 cases)
PER_KIND = 8  # single edits of each kind per unit of `n`
CHAINS = 24  # chains per unit of `n`


@dataclass(frozen=True)
class EditCase:
    steps: tuple[edits.Step, ...]  # the ground-truth chain: steps[0].before is the source scene
    group: str  # "single" or "chain"

    @property
    def kind(self) -> str:
        return self.steps[0].edit.kind

    @property
    def instructions(self) -> list[str]:
        return [s.instruction for s in self.steps]


def edit_cases(grid: int = 3, max_objects: int = 5, per_kind: int = 8, chains: int = 24, turns: int = 3,
               seed: int = EDIT_SEED) -> list[EditCase]:
    """`per_kind` single edits of every kind, then `chains` chains of `turns` edits; fixed by `seed`."""
    rng = np.random.default_rng([seed, grid])
    cases = []
    for kind in edits.EDIT_KINDS:
        made = 0
        while made < per_kind:
            scene = edits.sample_edit_scene(rng, grid, max_objects)
            if kind not in edits.possible_kinds(scene, max_objects):
                continue
            edit = edits.sample_edit(scene, rng, max_objects, kind)
            cases.append(EditCase((edits.Step(edit.instruction(scene, rng), edit, scene, edit.apply(scene)),), "single"))
            made += 1
    for _ in range(chains):
        start = edits.sample_edit_scene(rng, grid, max_objects)
        cases.append(EditCase(tuple(edits.sample_chain(start, rng, turns, max_objects)), "chain"))
    return cases


def suite_cases(grid: int, max_objects: int, n: int, turns: int = 3) -> list[EditCase]:
    """The suite at size `n`: n x PER_KIND single edits of each kind and n x CHAINS chains, each to be
    sampled once. Distinct cases rather than n samples of the same case, so that every scored output is
    independent and the intervals mean what they say (greedy sampling repeats one image n times)."""
    return edit_cases(grid, max_objects, per_kind=PER_KIND * n, chains=CHAINS * n, turns=turns)


@dataclass(frozen=True)
class TurnScore:
    success: bool
    kept: int  # untouched objects there exactly
    untouched: int
    extras: int  # parsed objects outside the expected scene
    right: bool

    @property
    def preserved(self) -> bool:
        return self.kept == self.untouched and self.extras == 0


def score_turn(step: edits.Step, parsed: shapes.Scene) -> TurnScore:
    """One output (read back by parse) against one ground-truth step."""
    before, expected = Counter(step.before.objects), Counter(step.after.objects)
    got = Counter(parsed.objects)
    new, gone = expected - before, before - expected  # what the edit creates, what it removes or changes
    success = all(got[o] >= k for o, k in new.items()) and not any(got[o] > expected[o] for o in gone)
    untouched = [o for o in step.before.objects if o not in step.edit.touched()]
    kept = sum(1 for o in untouched if got[o] > 0)
    extras = sum((got - expected).values())
    return TurnScore(success, kept, len(untouched), extras, parsed == step.after)


def _rate(hits: int, n: int) -> dict:
    lo, hi = wilson(hits, n)
    return {"n": n, "hits": hits, "rate": hits / n if n else 0.0, "ci95": [round(lo, 4), round(hi, 4)]}


def summarise(scores: list[TurnScore]) -> dict:
    """Rates of one set of scored outputs: success, preserved objects, clean images, entirely right."""
    return {
        "success": _rate(sum(s.success for s in scores), len(scores)),
        "objects_preserved": _rate(sum(s.kept for s in scores), sum(s.untouched for s in scores)),
        "images_preserved": _rate(sum(s.preserved for s in scores), len(scores)),
        "right": _rate(sum(s.right for s in scores), len(scores)),
    }


@dataclass
class EditReport:
    single: dict  # summarise() over every single edit, and per kind under "kinds"
    chains: list[dict]  # per turn t: summarise() of turn t, plus "chain_right" (every turn up to t right)
    failures: list[str] = field(default_factory=list)  # the first few, with what went wrong

    def to_dict(self) -> dict:
        return {"version": EDIT_SUITE_VERSION, "single": self.single, "chains": self.chains, "failures": self.failures}

    def to_markdown(self) -> str:
        def pct(r: dict) -> str:
            return f"{r['rate']:.1%} [{r['ci95'][0]:.1%}, {r['ci95'][1]:.1%}]"

        lines = ["| single edits | n | success | objects preserved | images preserved | right |",
                 "|---|---:|---:|---:|---:|---:|"]
        for name, r in [("all", self.single), *self.single["kinds"].items()]:
            lines.append(f"| {name} | {r['success']['n']} | {pct(r['success'])} | {pct(r['objects_preserved'])} | "
                         f"{pct(r['images_preserved'])} | {pct(r['right'])} |")
        lines += ["", "| chain turn | n | success | objects preserved | images preserved | right | chains right so far |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for t, r in enumerate(self.chains, start=1):
            lines.append(f"| {t} | {r['success']['n']} | {pct(r['success'])} | {pct(r['objects_preserved'])} | "
                         f"{pct(r['images_preserved'])} | {pct(r['right'])} | {pct(r['chain_right'])} |")
        return "\n".join(lines)


def _describe(score: TurnScore, step: edits.Step, parsed: shapes.Scene) -> str:
    what = []
    if not score.success:
        what.append("the change was not made exactly")
    if score.kept < score.untouched:
        what.append(f"{score.untouched - score.kept} untouched object(s) changed or lost")
    if score.extras:
        what.append(f"{score.extras} object(s) appeared")
    return f"{step.instruction!r}: " + ("; ".join(what) or "not the expected scene") + f" (parsed {len(parsed.objects)})"


def score_outputs(cases: list[EditCase], outputs: list[list[Any]], n: int, grid: int,
                  max_failures: int = 20) -> EditReport:
    """outputs[i]: the images (turns, R, R, 3) of sample i, case-major (case c's samples at c * n ... + n - 1)."""
    singles: dict[str, list[TurnScore]] = {}
    turns: list[list[TurnScore]] = []
    chain_right: list[list[bool]] = []
    failures = []
    for i, images in enumerate(outputs):
        case = cases[i // n]
        ok_so_far = True
        for t, (step, image) in enumerate(zip(case.steps, images)):
            parsed = shapes.parse(np.asarray(image), grid)
            score = score_turn(step, parsed)
            if not score.right and len(failures) < max_failures:
                failures.append(f"[{case.group} {case.kind}, turn {t + 1}, sample {i % n}] "
                                + _describe(score, step, parsed))
            if case.group == "single":
                singles.setdefault(case.kind, []).append(score)
                continue
            while len(turns) <= t:
                turns.append([])
                chain_right.append([])
            ok_so_far = ok_so_far and score.right
            turns[t].append(score)
            chain_right[t].append(ok_so_far)
    single = summarise([s for v in singles.values() for s in v])
    single["kinds"] = {k: summarise(v) for k, v in singles.items()}
    chains = [{**summarise(ts), "chain_right": _rate(sum(cr), len(cr))} for ts, cr in zip(turns, chain_right)]
    return EditReport(single, chains, failures)


def evaluate_editor(pipe: Any, cases: list[EditCase], n: int, settings: Any, grid: int, batch_size: int = 64,
                    progress: bool = False) -> EditReport:
    """The run's editor (pipelines.ARPipeline.edit) on every case, `n` samples each, scored."""
    outputs: list[Any] = [None] * (len(cases) * n)
    by_turns: dict[int, list[int]] = {}
    for c, case in enumerate(cases):
        by_turns.setdefault(len(case.steps), []).append(c)
    for _, idx in sorted(by_turns.items()):  # one batched call per chain length
        rows = [c for c in idx for _ in range(n)]
        sources = shapes.render_batch([cases[c].steps[0].before for c in rows], pipe.resolution)
        result = pipe.edit(sources, [cases[c].instructions for c in rows], settings=settings, batch_size=batch_size,
                           progress=progress)
        for j, c in enumerate(rows):
            outputs[c * n + j % n] = result.images[j]
    return score_outputs(cases, outputs, n, grid)


def evaluate_regenerate(pipe: Any, cases: list[EditCase], n: int, settings: Any, grid: int, batch_size: int = 64,
                        progress: bool = False) -> EditReport:
    """Baseline (a): no image in context; every turn drawn anew from the complete description of the scene
    it should show (grammar.describe: sizes, colours, shapes and cells, never tones), by any ImageSampler."""
    from train.data.grammar import describe

    prompts = [describe(step.after) for case in cases for step in case.steps]  # case-major, turn-minor
    images = pipe.sample(prompts, n=n, settings=settings, batch_size=batch_size, progress=progress).images
    outputs, k = [], 0  # images: each prompt's n samples together
    for case in cases:
        turns = len(case.steps)
        block = images[k * n : (k + turns) * n].reshape(turns, n, *images.shape[1:])  # (turns, n, R, R, 3)
        outputs += [block[:, j] for j in range(n)]
        k += turns
    return score_outputs(cases, outputs, n, grid)


def evaluate_sdedit(pipe: Any, cases: list[EditCase], n: int, settings: Any, grid: int, strength: float,
                    batch_size: int = 64) -> EditReport:
    """Baseline (b): the diffusion baseline made image-conditioned the standard way (SDEdit): each turn
    noises the previous image (the rendered source, then its own output) to `strength` and denoises it
    towards the complete description of the scene it should show."""
    from train.data.grammar import describe

    rows = [c for c in range(len(cases)) for _ in range(n)]
    current = shapes.render_batch([cases[c].steps[0].before for c in rows], pipe.resolution)
    made = [[] for _ in rows]
    for t in range(max(len(c.steps) for c in cases)):
        live = [i for i, c in enumerate(rows) if t < len(cases[c].steps)]
        prompts = [describe(cases[rows[i]].steps[t].after) for i in live]
        seed = None if settings.seed is None else settings.seed + 1000 * t
        out = pipe.sdedit(current[live], prompts, strength, dataclasses.replace(settings, seed=seed), batch_size)
        for i, image in zip(live, out):
            made[i].append(image)
            current[i] = image
    return score_outputs(cases, [np.stack(m) for m in made], n, grid)


__all__ = ["CHAINS", "EDIT", "EDIT_SEED", "EDIT_SUITE_VERSION", "PER_KIND", "EditCase", "EditReport", "TurnScore",
           "edit_cases", "suite_cases", "evaluate_editor", "evaluate_regenerate", "evaluate_sdedit", "score_outputs", "score_turn", "summarise"]
