"""Prompt faithfulness: does a generated image show what its prompt asked for?

The shapes world makes this exact. Each prompt comes with its target scene, the
image is read back with `shapes.parse`, and an image is faithful when it has
exactly the prompt's objects: for every target object, an object in the same
(row, col) cell with the same shape and colour, and no object in any other cell.
The number of objects is therefore checked too (a missing or an extra object fails).

Size is not scored: the prompts use the world's "a red circle in the top left"
phrasing (the 4th form of `shapes.captions`, seen in training), which does not
mention size, so either size is a faithful answer. Jitter is not scored either;
scene equality already ignores it.

Prompts come in three categories (`demo_prompts`):
    single_heldout  one object at its (colour, shape) pair's held-out cell, never
                    seen in training: compositional generalisation
    single_seen     one object at a cell seen in training for its pair
    two_object      two seen objects in different cells: binding colour and
                    shape to the right object and cell

Two objects parsed into one cell cannot be told apart: parse keeps the larger.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from train.data import shapes

SINGLE_HELDOUT = "single_heldout"
SINGLE_SEEN = "single_seen"
TWO_OBJECT = "two_object"
CATEGORIES: tuple[str, ...] = (SINGLE_HELDOUT, SINGLE_SEEN, TWO_OBJECT)

MAX_FAILURES = 50  # failures kept in a report: enough to read, small enough for a JSON summary
PROMPT_SIZE = "large"  # size of the demo targets; any size is faithful, the larger renders more robustly
SEEN_OFFSET = 4  # single_seen cell = held-out cell + 4 (mod 9): a shift, so 2 pairs per cell
N_TWO_OBJECT = 12

_CELLS = shapes.GRID * shapes.GRID
_PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for c in shapes.COLOURS for s in shapes.SHAPES)  # 18
_HELDOUT_CELL: dict[tuple[str, str], int] = {(c, s): r * shapes.GRID + k for c, s, r, k in shapes.HELDOUT}


@dataclass(frozen=True)
class PromptSpec:
    text: str  # what the generator is given
    target: shapes.Scene  # what a faithful image parses to (sizes not checked)
    category: str  # one of CATEGORIES for the demo prompts; any label for others

    @classmethod
    def from_scene(cls, scene: shapes.Scene, category: str) -> PromptSpec:
        return cls(prompt_text(scene), scene, category)


@dataclass
class Verdict:
    ok: bool
    reason: str  # "" when ok, else every failure found, joined with "; "


@dataclass
class FaithfulnessReport:
    categories: dict[str, dict]  # category -> {"n": int, "correct": int, "accuracy": float}, first-seen order
    n: int  # images scored
    correct: int  # faithful images
    accuracy: float  # correct / n, 0.0 when n == 0
    failures: list[dict] = field(default_factory=list)  # {"prompt", "sample", "reason"}, the first MAX_FAILURES

    def to_dict(self) -> dict:
        return asdict(self)

    def to_markdown(self) -> str:
        rows = [*self.categories.items(), ("all", {"n": self.n, "correct": self.correct, "accuracy": self.accuracy})]
        lines = ["| category | samples | correct | accuracy |", "|---|---:|---:|---:|"]
        lines += [f"| {name} | {c['n']} | {c['correct']} | {c['accuracy']:.1%} |" for name, c in rows]
        return "\n".join(lines)


# ---------------------------------------------------------------- prompts


def prompt_text(scene: shapes.Scene) -> str:
    """'a red circle in the top left and a blue square in the center': captions()' 4th form, in (row, col) order."""
    return shapes._join([f"{shapes._np(o)} {shapes._where(o)}" for o in scene.objects])  # Scene keeps (row, col) order


def _obj(pair: tuple[str, str], cell: int) -> shapes.Obj:
    colour, shape = pair
    row, col = divmod(cell, shapes.GRID)
    return shapes.Obj(shape, colour, PROMPT_SIZE, row, col)


def _seen_cell(pair: tuple[str, str], start: int, taken: tuple[int, ...] = ()) -> int:
    """The first cell from `start` on (mod 9) that is seen in training for `pair` and not taken."""
    for step in range(_CELLS):
        cell = (start + step) % _CELLS
        if cell != _HELDOUT_CELL[pair] and cell not in taken:
            return cell
    raise AssertionError("unreachable: each pair has 8 seen cells")


def demo_prompts() -> list[PromptSpec]:
    """48 fixed prompts: 18 single_heldout, 18 single_seen, 12 two_object (see the module docstring)."""
    specs = []
    for pair in _PAIRS:
        scene = shapes.Scene((_obj(pair, _HELDOUT_CELL[pair]),))
        specs.append(PromptSpec.from_scene(scene, SINGLE_HELDOUT))
    for pair in _PAIRS:
        # every cell is held out for exactly two pairs, so shifting every held-out cell
        # by the same offset puts exactly two pairs in each cell, none at its held-out one
        scene = shapes.Scene((_obj(pair, (_HELDOUT_CELL[pair] + SEEN_OFFSET) % _CELLS),))
        specs.append(PromptSpec.from_scene(scene, SINGLE_SEEN))
    for j in range(N_TWO_OBJECT):
        a, b = _PAIRS[5 * j % 18], _PAIRS[(5 * j + 7) % 18]  # 5 is coprime to 18: 12 distinct first pairs; a != b
        cell_a = _seen_cell(a, 2 * j % _CELLS)
        cell_b = _seen_cell(b, (2 * j + 1 + j % 4) % _CELLS, taken=(cell_a,))  # varied gaps: same row or not
        scene = shapes.Scene((_obj(a, cell_a), _obj(b, cell_b)))
        specs.append(PromptSpec.from_scene(scene, TWO_OBJECT))
    return specs


# ---------------------------------------------------------------- scoring


def _at(o: shapes.Obj) -> str:
    return f"({o.row},{o.col})"


def score_image(image: np.ndarray, spec: PromptSpec) -> Verdict:
    """Does uint8 (R, R, 3) `image` (R >= 32) show exactly spec.target's objects, sizes aside?"""
    found = {(o.row, o.col): o for o in shapes.parse(image).objects}  # parse keeps at most one object per cell
    reasons = []
    for want in spec.target.objects:
        got = found.pop((want.row, want.col), None)
        if got is None:
            reasons.append(f"missing {want.colour} {want.shape} at {_at(want)}")
        elif got.colour != want.colour:  # first failure per object only: colour before shape
            reasons.append(f"wrong colour at {_at(want)}: want {want.colour} {want.shape}, got {got.colour}")
        elif got.shape != want.shape:
            reasons.append(f"wrong shape at {_at(want)}: want {want.colour} {want.shape}, got {got.shape}")
    reasons += [f"extra object {o.colour} {o.shape} at {_at(o)}" for o in found.values()]  # cells not asked for
    return Verdict(not reasons, "; ".join(reasons))


def _counts(n: int, correct: int) -> dict:
    return {"n": n, "correct": correct, "accuracy": correct / n if n else 0.0}


def score_images(
    images: Sequence[np.ndarray], specs: Sequence[PromptSpec], sample_index: Sequence[int] | None = None
) -> FaithfulnessReport:
    """Score images[i] against specs[i] and aggregate per category.

    sample_index[i] names images[i] among its prompt's samples in the failures list;
    by default it counts the earlier images with the same prompt text (0, 1, ...).
    """
    if len(images) != len(specs):
        raise ValueError(f"{len(images)} images for {len(specs)} prompt specs")
    if sample_index is not None and len(sample_index) != len(specs):
        raise ValueError(f"{len(sample_index)} sample indices for {len(specs)} prompt specs")
    tally: dict[str, list[int]] = {}  # category -> [n, correct]
    seen: dict[str, int] = {}  # prompt text -> images so far
    failures = []
    for i, (image, spec) in enumerate(zip(images, specs)):
        sample = seen.get(spec.text, 0) if sample_index is None else int(sample_index[i])
        seen[spec.text] = seen.get(spec.text, 0) + 1
        verdict = score_image(image, spec)
        t = tally.setdefault(spec.category, [0, 0])
        t[0] += 1
        t[1] += int(verdict.ok)
        if not verdict.ok and len(failures) < MAX_FAILURES:
            failures.append({"prompt": spec.text, "sample": sample, "reason": verdict.reason})
    n, correct = sum(t[0] for t in tally.values()), sum(t[1] for t in tally.values())
    overall = _counts(n, correct)
    return FaithfulnessReport(
        categories={c: _counts(*t) for c, t in tally.items()},
        n=n,
        correct=correct,
        accuracy=overall["accuracy"],
        failures=failures,
    )
