"""Prompt faithfulness: does a generated image show what its prompt asked for?

The shapes world makes this exact, GenEval-style but without a detector: each
prompt carries the constraints it states, the image is read back with
`shapes.parse`, and the image is faithful when its objects can be matched one to
one with the prompt's object specs so that every constraint holds:

    count     exactly as many objects as the prompt names (a missing or extra object fails)
    colour    each object's colour, where the prompt names one
    shape     each object's shape, where the prompt names one
    position  each object's cell, where the prompt names one
    relation  "above / below / to the left of / to the right of" between two named objects

A prompt that names no cell ("a red circle") leaves the position free, one that
names no colour ("a circle in the top left") leaves the colour free, and so on.
Size is never scored (prompts do not name it), nor jitter (scene equality ignores it).

When an image fails, the matching that satisfies the most constraints is the one
reported, and the reason lists each failure it has: "missing ...", "extra object ...",
"wrong colour / shape / position ...", "relation ...". The report counts, per
category and per kind of constraint, how often they held, with 95% Wilson intervals
(an attribute is checked only on objects that were found: a missing object fails the count).

The demo's 48 prompts (`demo_prompts`, used by `tessera demo` and by the accuracy
targets in docs/RESULTS.md: >= 80% on held-out single objects, >= 90% on seen ones) come
in three categories:
    single_heldout  one object at its (colour, shape) pair's held-out cell, never
                    seen in training: compositional generalisation
    single_seen     one object at a cell seen in training for its pair
    two_object      two seen objects in different cells: binding colour and
                    shape to the right object and cell
The evaluation suites of `tessera eval` are in `eval.suites`.

Two objects parsed into one cell cannot be told apart: parse keeps the larger.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from train.data import shapes

SINGLE_HELDOUT = "single_heldout"
SINGLE_SEEN = "single_seen"
TWO_OBJECT = "two_object"
CATEGORIES: tuple[str, ...] = (SINGLE_HELDOUT, SINGLE_SEEN, TWO_OBJECT)
KINDS: tuple[str, ...] = ("count", "colour", "shape", "position", "relation")  # constraint kinds

MAX_FAILURES = 50  # failures listed per category: enough to read, small enough for a JSON summary
PROMPT_SIZE = "large"  # size of target scenes; any size is faithful, the larger renders more robustly
SEEN_OFFSET = 4  # single_seen cell = held-out cell + 4 (mod 9): a shift, so 2 pairs per cell
N_TWO_OBJECT = 12
Z95 = 1.959964  # two-sided 95% normal quantile, for the Wilson intervals

_CELLS = shapes.GRID * shapes.GRID
PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for c in shapes.COLOURS for s in shapes.SHAPES)  # 18
HELDOUT_CELL: dict[tuple[str, str], int] = {(c, s): r * shapes.GRID + k for c, s, r, k in shapes.HELDOUT}


@dataclass(frozen=True)
class ObjectSpec:
    """What the prompt says of one object; None leaves that attribute free."""

    colour: str | None = None
    shape: str | None = None
    cell: tuple[int, int] | None = None  # (row, col)

    @classmethod
    def exact(cls, o: shapes.Obj) -> ObjectSpec:
        return cls(o.colour, o.shape, (o.row, o.col))

    def describe(self) -> str:
        """'red circle at (0,2)', 'red shape', 'circle', 'object'."""
        noun = " ".join(x for x in (self.colour, self.shape or ("shape" if self.colour else "object")) if x)
        return noun + (f" at {_cell(self.cell)}" if self.cell else "")


@dataclass(frozen=True)
class Relation:
    a: int  # index of an ObjectSpec of the prompt
    kind: str  # a key of shapes.RELATIONS: above, below, left_of, right_of
    b: int


@dataclass(frozen=True)
class PromptSpec:
    text: str  # what the generator is given
    target: shapes.Scene  # one scene that satisfies the prompt (rendered in tests and reports)
    category: str  # one of CATEGORIES for the demo prompts, a suite category otherwise
    objects: tuple[ObjectSpec, ...] = ()  # the constraints; () = every object of `target` exactly
    relations: tuple[Relation, ...] = ()

    def __post_init__(self):
        if not self.objects:  # frozen: fill in once
            object.__setattr__(self, "objects", tuple(ObjectSpec.exact(o) for o in self.target.objects))

    @classmethod
    def from_scene(cls, scene: shapes.Scene, category: str) -> PromptSpec:
        """The prompt naming every object's colour, shape and cell (the demo's form)."""
        return cls(prompt_text(scene), scene, category)

    def kinds(self) -> tuple[str, ...]:
        """The kinds of constraint this prompt states, in KINDS order (count always)."""
        named = {"count"}
        for o in self.objects:
            named |= {k for k, v in (("colour", o.colour), ("shape", o.shape), ("position", o.cell)) if v is not None}
        if self.relations:
            named.add("relation")
        return tuple(k for k in KINDS if k in named)


@dataclass
class Verdict:
    ok: bool
    reason: str  # "" when ok, else every failure found, joined with "; "
    failed: tuple[str, ...] = ()  # the KINDS that failed, in KINDS order
    checked: tuple[str, ...] = ()  # the KINDS that could be checked: count, relations, and each attribute
    # named for an object that was found (a missing object's colour is neither right nor wrong)


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion; (0, 1) when n == 0.

    Images of one prompt are not independent samples, so the interval is a lower
    bound on the real uncertainty when a prompt's samples agree with each other.
    """
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _counts(n: int, correct: int) -> dict:
    lo, hi = wilson(correct, n)
    return {"n": n, "correct": correct, "accuracy": correct / n if n else 0.0, "ci95": [round(lo, 4), round(hi, 4)]}


@dataclass
class FaithfulnessReport:
    categories: dict[str, dict]  # category -> _counts() + {"failed": {kind: images}}, first-seen order
    n: int  # images scored
    correct: int  # faithful images
    accuracy: float  # correct / n, 0.0 when n == 0
    ci95: list[float] = field(default_factory=lambda: [0.0, 1.0])  # Wilson interval of `accuracy`
    constraints: dict[str, dict] = field(default_factory=dict)  # kind -> {"n": images where checked, "held", "rate"}
    failures: list[dict] = field(default_factory=list)  # {"prompt", "category", "sample", "reason"}, MAX_FAILURES per category

    def to_dict(self) -> dict:
        return asdict(self)

    def to_markdown(self) -> str:
        rows = [*self.categories.items(), ("all", {"n": self.n, "correct": self.correct, "accuracy": self.accuracy,
                                                   "ci95": self.ci95})]
        lines = ["| category | samples | correct | accuracy | 95% CI |", "|---|---:|---:|---:|---|"]
        lines += [f"| {name} | {c['n']} | {c['correct']} | {c['accuracy']:.1%} | "
                  f"{c['ci95'][0]:.1%}-{c['ci95'][1]:.1%} |" for name, c in rows]
        return "\n".join(lines)

    def constraints_markdown(self) -> str:
        lines = ["| constraint | images where checked | held | rate |", "|---|---:|---:|---:|"]
        lines += [f"| {k} | {c['n']} | {c['held']} | {c['rate']:.1%} |" for k, c in self.constraints.items()]
        return "\n".join(lines)


# ---------------------------------------------------------------- prompts


def prompt_text(scene: shapes.Scene) -> str:
    """'a red circle in the top left and a blue square in the center': captions()' 4th form, in (row, col) order."""
    return shapes.join_phrases([f"{shapes.noun_phrase(o)} {shapes.cell_phrase(o)}" for o in scene.objects])


def make_obj(pair: tuple[str, str], cell: int) -> shapes.Obj:
    colour, shape = pair
    row, col = divmod(cell, shapes.GRID)
    return shapes.Obj(shape, colour, PROMPT_SIZE, row, col)


def seen_cell(pair: tuple[str, str], start: int, taken: tuple[int, ...] = ()) -> int:
    """The first cell from `start` on (mod 9) that is seen in training for `pair` and not taken."""
    for step in range(_CELLS):
        cell = (start + step) % _CELLS
        if cell != HELDOUT_CELL[pair] and cell not in taken:
            return cell
    raise ValueError(f"no free seen cell for {pair} (taken: {taken})")


def demo_prompts() -> list[PromptSpec]:
    """48 fixed prompts: 18 single_heldout, 18 single_seen, 12 two_object (see the module docstring)."""
    specs = []
    for pair in PAIRS:
        scene = shapes.Scene((make_obj(pair, HELDOUT_CELL[pair]),))
        specs.append(PromptSpec.from_scene(scene, SINGLE_HELDOUT))
    for pair in PAIRS:
        # every cell is held out for exactly two pairs, so shifting every held-out cell
        # by the same offset puts exactly two pairs in each cell, none at its held-out one
        scene = shapes.Scene((make_obj(pair, (HELDOUT_CELL[pair] + SEEN_OFFSET) % _CELLS),))
        specs.append(PromptSpec.from_scene(scene, SINGLE_SEEN))
    for j in range(N_TWO_OBJECT):
        a, b = PAIRS[5 * j % 18], PAIRS[(5 * j + 7) % 18]  # 5 is coprime to 18: 12 distinct first pairs; a != b
        cell_a = seen_cell(a, 2 * j % _CELLS)
        cell_b = seen_cell(b, (2 * j + 1 + j % 4) % _CELLS, taken=(cell_a,))  # varied gaps: same row or not
        scene = shapes.Scene((make_obj(a, cell_a), make_obj(b, cell_b)))
        specs.append(PromptSpec.from_scene(scene, TWO_OBJECT))
    return specs


# ---------------------------------------------------------------- scoring


def _cell(cell: tuple[int, int]) -> str:
    return f"({cell[0]},{cell[1]})"


def _at(o: shapes.Obj) -> str:
    return _cell((o.row, o.col))


def _attrs(want: ObjectSpec, got: shapes.Obj) -> tuple[bool | None, bool | None, bool | None]:
    """(colour, shape, position) held? None where the spec leaves it free."""
    return (
        None if want.colour is None else got.colour == want.colour,
        None if want.shape is None else got.shape == want.shape,
        None if want.cell is None else (got.row, got.col) == want.cell,
    )


def _assignments(n_specs: int, n_found: int) -> Iterator[tuple[int | None, ...]]:
    """Every partial one-to-one map spec -> found object (None = unmatched), in a fixed order."""
    for k in range(min(n_specs, n_found), -1, -1):  # most matched first
        for specs in itertools.combinations(range(n_specs), k):
            for objs in itertools.permutations(range(n_found), k):
                out: list[int | None] = [None] * n_specs
                for s, o in zip(specs, objs):
                    out[s] = o
                yield tuple(out)


def score_image(image: np.ndarray, spec: PromptSpec) -> Verdict:
    """Does uint8 (R, R, 3) `image` (R >= 24) satisfy every constraint of `spec`?

    Prompts name at most a few objects and parse finds at most 9, so every matching
    is tried (at most 9 * 8 * 7 for three objects); the best one satisfies the most
    constraints, ties going to the first in a fixed order, so scoring is deterministic.
    """
    found = list(shapes.parse(image).objects)  # (row, col) order; at most one per cell
    best, best_score = None, None
    for match in _assignments(len(spec.objects), len(found)):
        score, usable = 0, True
        for want, o in zip(spec.objects, match):
            if o is None:
                continue
            held = [h for h in _attrs(want, found[o]) if h is not None]
            if held and not any(held):  # nothing in common: a missing object and an extra one, not a match
                usable = False
                break
            score += 4 + sum(held)  # a match outweighs any number of attributes
        if not usable:
            continue
        score += sum(1 for r in spec.relations if _relation_holds(r, match, found))
        if best_score is None or score > best_score:
            best, best_score = match, score
    assert best is not None  # the all-unmatched assignment is always usable
    return _verdict(spec, found, best)


def _relation_holds(r: Relation, match: tuple[int | None, ...], found: list[shapes.Obj]) -> bool:
    a, b = match[r.a], match[r.b]
    return a is not None and b is not None and shapes.RELATIONS[r.kind][1](found[a], found[b])


def _verdict(spec: PromptSpec, found: list[shapes.Obj], match: tuple[int | None, ...]) -> Verdict:
    reasons, failed, checked = [], set(), {"count"} | ({"relation"} if spec.relations else set())
    for want, o in zip(spec.objects, match):
        if o is None:
            reasons.append(f"missing {want.describe()}")
            failed.add("count")
            continue
        got = found[o]
        colour, shape, position = _attrs(want, got)
        checked |= {k for k, held in (("colour", colour), ("shape", shape), ("position", position)) if held is not None}
        noun = ObjectSpec(want.colour, want.shape).describe()
        if colour is False:
            reasons.append(f"wrong colour at {_at(got)}: want {noun}, got {got.colour}")
            failed.add("colour")
        if shape is False:
            reasons.append(f"wrong shape at {_at(got)}: want {noun}, got {got.shape}")
            failed.add("shape")
        if position is False:
            reasons.append(f"wrong position: want {noun} at {_cell(want.cell)}, got {_at(got)}")
            failed.add("position")
    for r in spec.relations:
        if not _relation_holds(r, match, found):
            a, b = (ObjectSpec(s.colour, s.shape).describe() for s in (spec.objects[r.a], spec.objects[r.b]))
            where = ", ".join(_at(found[i]) if i is not None else "missing" for i in (match[r.a], match[r.b]))
            reasons.append(f"relation: want {a} {shapes.RELATIONS[r.kind][0]} {b}, got {where}")
            failed.add("relation")
    matched = {o for o in match if o is not None}
    extra = [o for i, o in enumerate(found) if i not in matched]
    reasons += [f"extra object {o.colour} {o.shape} at {_at(o)}" for o in extra]
    if extra:
        failed.add("count")
    return Verdict(not reasons, "; ".join(reasons), tuple(k for k in KINDS if k in failed),
                   tuple(k for k in KINDS if k in checked))


def score_images(
    images: Sequence[np.ndarray], specs: Sequence[PromptSpec], sample_index: Sequence[int] | None = None
) -> FaithfulnessReport:
    """Score images[i] against specs[i] and aggregate per category and per kind of constraint.

    sample_index[i] names images[i] among its prompt's samples in the failures list;
    by default it counts the earlier images with the same prompt text (0, 1, ...).
    """
    return aggregate(score_all(images, specs), specs, sample_index)


def score_all(images: Sequence[np.ndarray], specs: Sequence[PromptSpec]) -> list[Verdict]:
    if len(images) != len(specs):
        raise ValueError(f"{len(images)} images for {len(specs)} prompt specs")
    return [score_image(image, spec) for image, spec in zip(images, specs)]


def aggregate(
    verdicts: Sequence[Verdict], specs: Sequence[PromptSpec], sample_index: Sequence[int] | None = None
) -> FaithfulnessReport:
    """The report of verdicts[i] (of specs[i]); see score_images."""
    if len(verdicts) != len(specs):
        raise ValueError(f"{len(verdicts)} verdicts for {len(specs)} prompt specs")
    if sample_index is not None and len(sample_index) != len(specs):
        raise ValueError(f"{len(sample_index)} sample indices for {len(specs)} prompt specs")
    tally: dict[str, list[int]] = {}  # category -> [n, correct]
    failed_by_cat: dict[str, dict[str, int]] = {}
    kinds = {k: [0, 0] for k in KINDS}  # kind -> [images where checked, images where it held]
    seen: dict[str, int] = {}  # prompt text -> images so far
    listed: dict[str, int] = {}  # category -> failures so far
    failures = []
    for i, (verdict, spec) in enumerate(zip(verdicts, specs)):
        sample = seen.get(spec.text, 0) if sample_index is None else int(sample_index[i])
        seen[spec.text] = seen.get(spec.text, 0) + 1
        t = tally.setdefault(spec.category, [0, 0])
        t[0] += 1
        t[1] += int(verdict.ok)
        cat_failed = failed_by_cat.setdefault(spec.category, {})
        for k in verdict.checked:
            kinds[k][0] += 1
            kinds[k][1] += int(k not in verdict.failed)
        for k in verdict.failed:
            cat_failed[k] = cat_failed.get(k, 0) + 1
        listed[spec.category] = listed.get(spec.category, 0) + (not verdict.ok)
        if not verdict.ok and listed[spec.category] <= MAX_FAILURES:
            failures.append({"prompt": spec.text, "category": spec.category, "sample": sample,
                             "reason": verdict.reason})
    n, correct = sum(t[0] for t in tally.values()), sum(t[1] for t in tally.values())
    overall = _counts(n, correct)
    return FaithfulnessReport(
        categories={c: {**_counts(*t), "failed": failed_by_cat[c]} for c, t in tally.items()},
        n=n,
        correct=correct,
        accuracy=overall["accuracy"],
        ci95=overall["ci95"],
        constraints={k: {"n": a, "held": h, "rate": h / a} for k, (a, h) in kinds.items() if a},
        failures=failures,
    )
