"""Prompt faithfulness: does a generated image show what its prompt asked for?

The shapes world makes this exact, GenEval-style but without a detector: each
prompt carries the constraints it states (the meaning of a description in the world's
caption grammar, train.data.grammar: a Mention per object and relations), the image is
read back with `shapes.parse`, and the image is faithful when its objects can be matched
one to one with the prompt's mentions so that every constraint holds:

    count     exactly as many objects as the prompt names (a missing or extra object fails)
    colour    each object's colour, where the prompt names one
    shape     each object's shape, where the prompt names one
    size      each object's size, where the prompt names one
    position  each object's cell (or row, or column), where the prompt names one
    relation  above / below / left of / right of / next to between two named objects (or an
              object and a string)
    text      each string the prompt asks for (train.data.glyphs): exactly its characters, where
              the prompt puts it, on a sign when it says so; a missing or an extra string fails it

A prompt that names no cell ("a red circle") leaves the position free, one that names
no colour ("a circle in the top left") leaves the colour free, and so on. Jitter is never
scored, but parse sees everything: two objects in one cell are two objects, an object
straddling two cells (shapes.placed) and a blob no shape fits are extra objects that
match no mention.

When an image fails, the matching that satisfies the most constraints is the one
reported (a maximum-weight assignment), and the reason lists each failure it has:
"missing ...", "extra object ...", "wrong colour / shape / size / position ...",
"relation ...". The report counts, per category and per kind of constraint, how often
they held, with 95% Wilson intervals (an attribute is checked only on objects that were
found: a missing object fails the count), the share of named objects drawn right
(per-object accuracy), and the same per group within a category (the counting suite's
groups are the counts).

The demo's 48 prompts (`demo_prompts`, used by `tessera demo` and by the accuracy
targets in docs/RESULTS.md: >= 80% on held-out single objects, >= 90% on seen ones) come
in three categories:
    single_heldout  one object at its (colour, shape) pair's held-out cell, never
                    seen in training: compositional generalisation
    single_seen     one object at a cell seen in training for its pair
    two_object      two seen objects in different cells: binding colour and
                    shape to the right object and cell
The evaluation suites of `tessera eval` are in `eval.suites`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from scipy.optimize import linear_sum_assignment

from train.data import grammar, shapes
from train.data.glyphs import Text
from train.data.grammar import Description, Form, Mention, Relation, TextMention

SINGLE_HELDOUT = "single_heldout"
SINGLE_SEEN = "single_seen"
TWO_OBJECT = "two_object"
CATEGORIES: tuple[str, ...] = (SINGLE_HELDOUT, SINGLE_SEEN, TWO_OBJECT)
KINDS: tuple[str, ...] = ("count", "colour", "shape", "size", "position", "relation", "text")  # constraint kinds

MAX_FAILURES = 50  # failures listed per category: enough to read, small enough for a JSON summary
PROMPT_SIZE = "large"  # size of target scenes; any size is faithful, the larger renders more robustly
SEEN_OFFSET = 4  # single_seen cell = held-out cell + 4 (mod cells): a shift, so as many pairs per cell
N_TWO_OBJECT = 12
Z95 = 1.959964  # two-sided 95% normal quantile, for the Wilson intervals

PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for c in shapes.COLOURS for s in shapes.SHAPES)  # 18
ObjectSpec = Mention  # what the prompt says of one object (the grammar's type)


def heldout_cell(grid: int = shapes.GRID) -> dict[tuple[str, str], int]:
    """(colour, shape) -> its held-out cell index on a grid x grid world."""
    return shapes.heldout_cells(grid)


HELDOUT_CELL: dict[tuple[str, str], int] = heldout_cell()


@dataclass(frozen=True)
class PromptSpec:
    text: str  # what the generator is given
    target: shapes.Scene  # one scene that satisfies the prompt (rendered in tests and reports); its grid is the world's
    category: str  # one of CATEGORIES for the demo prompts, a suite category otherwise
    objects: tuple[Mention, ...] = ()  # the constraints; () = every object of `target` exactly
    relations: tuple[Relation, ...] = ()
    group: str = ""  # a finer class within the category, reported apart (the counting suite: "n=3")
    texts: tuple[TextMention, ...] | None = None  # the strings asked for; None = the target's, exactly

    def __post_init__(self):
        if not self.objects:  # frozen: fill in once
            object.__setattr__(self, "objects", tuple(Mention.exact(o) for o in self.target.objects))
        if self.texts is None:
            object.__setattr__(self, "texts", tuple(TextMention.of(t, sign=True) for t in self.target.texts))

    @property
    def grid(self) -> int:
        return self.target.grid

    @classmethod
    def from_scene(cls, scene: shapes.Scene, category: str, group: str = "") -> PromptSpec:
        """The prompt naming every object's colour, shape and cell (the demo's form)."""
        return cls(prompt_text(scene), scene, category, group=group)

    @classmethod
    def of(cls, desc: Description, target: shapes.Scene, category: str, form: Form = Form(), group: str = "") -> PromptSpec:
        """The prompt saying `desc` in `form`; `target` must satisfy it."""
        return cls(grammar.realise(desc, form), target, category, desc.mentions, desc.relations, group, desc.texts)

    def kinds(self) -> tuple[str, ...]:
        """The kinds of constraint this prompt states, in KINDS order (count always)."""
        named = {"count"} | {"relation" for _ in self.relations[:1]} | {"text" for _ in self.texts[:1]}
        for o in self.objects:
            named |= {k for k in ("colour", "shape", "size") if getattr(o, k) is not None}
            named |= {"position"} if o.positioned() else set()
        return tuple(k for k in KINDS if k in named)


@dataclass
class Verdict:
    ok: bool
    reason: str  # "" when ok, else every failure found, joined with "; "
    failed: tuple[str, ...] = ()  # the KINDS that failed, in KINDS order
    checked: tuple[str, ...] = ()  # the KINDS that could be checked: count, relations, and each attribute
    # named for an object that was found (a missing object's colour is neither right nor wrong)
    objects: int = 0  # objects the prompt names
    objects_right: int = 0  # of them, found with every named attribute right
    chars: int = 0  # characters the prompt's strings hold
    chars_right: int = 0  # of them, drawn in their place (the i-th character of the string matched to it)
    texts_exact: int = 0  # strings found with exactly the characters asked for (placement aside)
    texts_placed: int = 0  # strings found where the prompt puts them (characters aside)


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


def _objects(named: int, right: int) -> dict:
    """Per-object accuracy: of the objects prompts named, the share drawn with every named attribute right."""
    lo, hi = wilson(right, named)
    return {"objects": named, "objects_right": right, "object_accuracy": right / named if named else 0.0,
            "object_ci95": [round(lo, 4), round(hi, 4)]}


def _text(chars: int, right: int, strings: int, exact: int, placed: int) -> dict:
    """Text metrics (only where prompts asked for strings): character accuracy, exact strings, strings in place."""
    if not strings:
        return {}
    lo, hi = wilson(right, chars)
    elo, ehi = wilson(exact, strings)
    return {"chars": chars, "chars_right": right, "char_accuracy": right / chars, "char_ci95": [round(lo, 4), round(hi, 4)],
            "strings": strings, "strings_exact": exact, "exact_rate": exact / strings,
            "exact_ci95": [round(elo, 4), round(ehi, 4)], "strings_placed": placed, "placed_rate": placed / strings}


def _counts(n: int, correct: int) -> dict:
    lo, hi = wilson(correct, n)
    return {"n": n, "correct": correct, "accuracy": correct / n if n else 0.0, "ci95": [round(lo, 4), round(hi, 4)]}


@dataclass
class FaithfulnessReport:
    categories: dict[str, dict]  # category -> _counts() + _objects() + {"failed": {kind: images}}, first-seen order
    n: int  # images scored
    correct: int  # faithful images
    accuracy: float  # correct / n, 0.0 when n == 0
    ci95: list[float] = field(default_factory=lambda: [0.0, 1.0])  # Wilson interval of `accuracy`
    constraints: dict[str, dict] = field(default_factory=dict)  # kind -> {"n": images where checked, "held", "rate"}
    failures: list[dict] = field(default_factory=list)  # {"prompt", "category", "sample", "reason"}, MAX_FAILURES per category
    groups: dict[str, dict[str, dict]] = field(default_factory=dict)  # category -> group -> _counts() + _objects()

    def to_dict(self) -> dict:
        return asdict(self)

    def to_markdown(self) -> str:
        rows = [*self.categories.items(), ("all", {"n": self.n, "correct": self.correct, "accuracy": self.accuracy,
                                                   "ci95": self.ci95})]
        lines = ["| category | samples | correct | accuracy | 95% CI | objects right |", "|---|---:|---:|---:|---|---:|"]
        lines += [f"| {name} | {c['n']} | {c['correct']} | {c['accuracy']:.1%} | "
                  f"{c['ci95'][0]:.1%}-{c['ci95'][1]:.1%} | "
                  + (f"{c['object_accuracy']:.1%} of {c['objects']} |" if c.get("objects") else "— |") for name, c in rows]
        return "\n".join(lines)

    def groups_markdown(self, category: str) -> str:
        """The table of one category's groups (the counting suite: accuracy per count)."""
        lines = [f"| {category} | samples | correct | accuracy | 95% CI | objects right |", "|---|---:|---:|---:|---|---:|"]
        lines += [f"| {g} | {c['n']} | {c['correct']} | {c['accuracy']:.1%} | {c['ci95'][0]:.1%}-{c['ci95'][1]:.1%} | "
                  f"{c['object_accuracy']:.1%} |" for g, c in self.groups.get(category, {}).items()]
        return "\n".join(lines)

    def text_markdown(self) -> str:
        """Per category whose prompts asked for strings: strings exact, characters right, strings in place."""
        lines = ["| category | strings | exact | 95% CI | characters right | 95% CI | in place |",
                 "|---|---:|---:|---|---:|---|---:|"]
        lines += [f"| {name} | {c['strings']} | {c['exact_rate']:.1%} | {c['exact_ci95'][0]:.1%}-{c['exact_ci95'][1]:.1%} | "
                  f"{c['char_accuracy']:.1%} of {c['chars']} | {c['char_ci95'][0]:.1%}-{c['char_ci95'][1]:.1%} | "
                  f"{c['placed_rate']:.1%} |" for name, c in self.categories.items() if c.get("strings")]
        return "\n".join(lines) if len(lines) > 2 else ""

    def constraints_markdown(self) -> str:
        lines = ["| constraint | images where checked | held | rate |", "|---|---:|---:|---:|"]
        lines += [f"| {k} | {c['n']} | {c['held']} | {c['rate']:.1%} |" for k, c in self.constraints.items()]
        return "\n".join(lines)


# ---------------------------------------------------------------- prompts


def prompt_text(scene: shapes.Scene) -> str:
    """'a red circle in the top left and a blue square in the center': colour, shape and cell, in (row, col) order."""
    return grammar.realise(grammar.complete(scene))


def make_obj(pair: tuple[str, str], cell: int, grid: int = shapes.GRID) -> shapes.Obj:
    colour, shape = pair
    row, col = divmod(cell, grid)
    return shapes.Obj(shape, colour, PROMPT_SIZE, row, col)


def seen_cell(pair: tuple[str, str], start: int, taken: tuple[int, ...] = (), grid: int = shapes.GRID) -> int:
    """The first cell from `start` on (mod cells) that is seen in training for `pair` and not taken."""
    cells = grid * grid
    for step in range(cells):
        cell = (start + step) % cells
        if cell != heldout_cell(grid)[pair] and cell not in taken:
            return cell
    raise ValueError(f"no free seen cell for {pair} (taken: {taken})")


def demo_prompts(grid: int = shapes.GRID) -> list[PromptSpec]:
    """48 fixed prompts: 18 single_heldout, 18 single_seen, 12 two_object (see the module docstring)."""
    held, cells = heldout_cell(grid), grid * grid
    scene = lambda *objs: shapes.Scene(objs, grid)  # noqa: E731
    specs = [PromptSpec.from_scene(scene(make_obj(pair, held[pair], grid)), SINGLE_HELDOUT) for pair in PAIRS]
    # at 3x3 every cell is held out for exactly two pairs, so shifting every held-out cell by the
    # same offset puts exactly two pairs in each cell, none at its held-out one
    specs += [PromptSpec.from_scene(scene(make_obj(pair, (held[pair] + SEEN_OFFSET) % cells, grid)), SINGLE_SEEN)
              for pair in PAIRS]
    for j in range(N_TWO_OBJECT):
        a, b = PAIRS[5 * j % 18], PAIRS[(5 * j + 7) % 18]  # 5 is coprime to 18: 12 distinct first pairs; a != b
        cell_a = seen_cell(a, 2 * j % cells, grid=grid)
        cell_b = seen_cell(b, (2 * j + 1 + j % 4) % cells, taken=(cell_a,), grid=grid)  # varied gaps: same row or not
        specs.append(PromptSpec.from_scene(scene(make_obj(a, cell_a, grid), make_obj(b, cell_b, grid)), TWO_OBJECT))
    return specs


# ---------------------------------------------------------------- scoring


def _at(o: shapes.Obj) -> str:
    return f"({o.row},{o.col})"


def _weight(want: Mention, got: shapes.Obj) -> int | None:
    """How well `got` matches `want`: 4 for the match plus one per attribute held.

    None when two or more attributes are named and none holds: nothing in common, so a missing
    object and an extra one, not a match. A mention naming one attribute ("a red shape") matches
    any object, so that a wrong colour is reported as one.
    """
    held = list(want.checks(got).values())
    if len(held) > 1 and not any(held):
        return None
    return 4 + sum(held)  # a match outweighs any number of attributes


def _best_match(spec: PromptSpec, found: list[shapes.Obj]) -> tuple[int | None, ...]:
    """The matching mention -> found object (None = unmatched) that satisfies the most constraints.

    Without relations this is a maximum-weight assignment (scipy's linear_sum_assignment:
    16 mentions against 16 objects is far past trying every matching). With relations
    (prompts of two objects) every matching is tried, ties going to the first in a fixed order.
    """
    n, m = len(spec.objects), len(found)
    if not spec.relations:
        w = np.zeros((n, m + n))  # the n extra columns are "unmatched", worth 0
        for i, want in enumerate(spec.objects):
            for j, got in enumerate(found):
                wt = _weight(want, got)
                w[i, j] = -1.0 if wt is None else wt
        rows, cols = linear_sum_assignment(w, maximize=True)
        return tuple(int(c) if c < m and w[r, c] > 0 else None for r, c in zip(rows, cols))
    best, best_score = (None,) * n, 0
    for k in range(min(n, m), 0, -1):  # most matched first
        for mentions in itertools.combinations(range(n), k):
            for objs in itertools.permutations(range(m), k):
                match: list[int | None] = [None] * n
                weights = [_weight(spec.objects[i], found[o]) for i, o in zip(mentions, objs)]
                if any(wt is None for wt in weights):
                    continue
                for i, o in zip(mentions, objs):
                    match[i] = o
                score = sum(weights) + sum(1 for r in spec.relations if _relation_holds(r, tuple(match), found))
                if score > best_score:
                    best, best_score = tuple(match), score
    return best


def score_image(image: np.ndarray, spec: PromptSpec) -> Verdict:
    """Does uint8 (R, R, 3) `image` (R >= 8 px per cell) satisfy every constraint of `spec`?"""
    scene = shapes.parse(image, spec.grid)
    return score_scene(scene, spec)


def score_scene(scene: shapes.Scene, spec: PromptSpec) -> Verdict:
    """score_image on a parsed scene."""
    parsed = scene.objects
    found = [o for o in parsed if o.shape != shapes.BLOB and shapes.placed(o)]  # what a mention may match
    unmatched = [o for o in parsed if o.shape == shapes.BLOB or not shapes.placed(o)]
    text_match = _match_texts(spec.texts, scene.texts)
    if spec.relations and spec.texts:  # relations may name a string: index len(objects) + i
        match = _best_match(replace(spec, relations=()), found)
        items = [found[i] if i is not None else None for i in match] + [
            scene.texts[j] if j is not None else None for j in text_match]
        return _verdict(spec, found, match, unmatched, scene.texts, text_match, items)
    return _verdict(spec, found, _best_match(spec, found), unmatched, scene.texts, text_match)


def score_plans(plans: Sequence[str], specs: Sequence[PromptSpec]) -> list[Verdict]:
    """One Verdict per (plan, spec): the plan, a complete description (a prompt expander's output), read back as
    a scene (grammar.read_plan) and judged as score_scene judges a parsed image: what the generator gets right
    if it draws exactly the plan. Not a complete description, two objects in one cell, or a size the prompt
    names left out (the generator would pick one) fail."""
    out = []
    for text, spec in zip(plans, specs):
        grid = spec.grid
        mentions = grammar.read_plan(text, grid)
        if mentions is None:
            out.append(Verdict(False, f"not a complete description: {text!r}", ("count",), ("count",)))
            continue
        unsized = any(w.size is not None for w in spec.objects) and any(m.size is None for m in mentions)
        objs = tuple(shapes.Obj(m.shape, m.colour, m.size or shapes.SIZES[0], *m.cell) for m in mentions)
        if len({o.row * grid + o.col for o in objs}) < len(objs):  # two objects in one cell: parse sees a blob
            out.append(Verdict(False, f"two objects in one cell: {text!r}", ("count",), ("count",)))
            continue
        v = score_scene(shapes.Scene(objs, grid), spec)
        if unsized and v.ok:
            v = Verdict(False, f"the plan leaves out the size asked for: {text!r}", ("size",), v.checked)
        out.append(v)
    return out


def _chars_right(want: str, got: str) -> int:
    return sum(a == b for a, b in zip(want, got))


def _match_texts(wants: tuple[TextMention, ...], found: tuple[Text, ...]) -> tuple[int | None, ...]:
    """Each wanted string's found Text (None: missing): the one with most characters right, then placed, greedily."""
    out: list[int | None] = []
    free = set(range(len(found)))
    for want in wants:
        scored = [((_chars_right(want.string, found[j].string), want.placed(found[j])), j) for j in sorted(free)]
        best = max(scored, default=None, key=lambda x: x[0])
        if best is None or best[0] == (0, False):
            out.append(None)
            continue
        out.append(best[1])
        free.discard(best[1])
    return tuple(out)


def _relation_holds(r: Relation, match: tuple[int | None, ...], found: list[shapes.Obj]) -> bool:
    a, b = match[r.a], match[r.b]
    return a is not None and b is not None and r.holds(found[a], found[b])


def _verdict(spec: PromptSpec, found: list[shapes.Obj], match: tuple[int | None, ...],
             unmatched: list[shapes.Obj], texts: tuple[Text, ...] = (), text_match: tuple[int | None, ...] = (),
             items: list | None = None) -> Verdict:
    """The verdict of a matching. With `items` (objects then strings, None where missing) relations are read
    from it (a relation may name a string); else from found[match]."""
    reasons, failed, checked = [], set(), {"count"} | ({"relation"} if spec.relations else set())
    right = 0
    for want, o in zip(spec.objects, match):
        if o is None:
            reasons.append(f"missing {want.describe()}")
            failed.add("count")
            continue
        got = found[o]
        checks = want.checks(got)
        checked |= set(checks)
        right += all(checks.values())
        noun = Mention(want.colour, want.shape, size=want.size).describe()
        for kind, held in checks.items():
            if held:
                continue
            failed.add(kind)
            if kind == "position":
                reasons.append(f"wrong position: want {want.describe()}, got {_at(got)}")
            else:
                reasons.append(f"wrong {kind} at {_at(got)}: want {noun}, got {getattr(got, kind)}")
    if items is None:
        items = [found[i] if i is not None else None for i in match]
    for r in spec.relations:
        a, b = items[r.a], items[r.b]
        if a is None or b is None or not r.holds(a, b):
            names = [m.describe() if isinstance(m, TextMention) else Mention(m.colour, m.shape).describe()
                     for m in (*spec.objects, *spec.texts)]
            where = ", ".join("missing" if x is None else _at(x) for x in (a, b))
            reasons.append(f"relation: want {names[r.a]} {grammar.RELATIONS[r.kind][0][0]} {names[r.b]}, got {where}")
            failed.add("relation")
    matched = {o for o in match if o is not None}
    extra = [o for i, o in enumerate(found) if i not in matched]
    reasons += [f"extra object {o.colour} {o.shape} at {_at(o)}" for o in extra]
    reasons += [f"extra object: unreadable {o.colour} blob near {_at(o)}" if o.shape == shapes.BLOB
                else f"extra object: {o.colour} {o.shape} straddling cells near {_at(o)}" for o in unmatched]
    if extra or unmatched:
        failed.add("count")
    chars = chars_right = exact = placed = 0
    if spec.texts or texts:  # strings: exact characters, in place; a missing or an extra one fails "text" too
        checked.add("text")
        for want, j in zip(spec.texts, text_match):
            chars += len(want.string)
            if j is None:
                reasons.append(f"missing {want.describe()}")
                failed.add("text")
                continue
            got = texts[j]
            chars_right += _chars_right(want.string, got.string)
            exact += got.string == want.string
            placed += want.placed(got)
            if got.string != want.string:
                reasons.append(f"wrong text at ({got.row},{got.col}): want {want.string!r}, got {got.string!r}")
                failed.add("text")
            if not want.placed(got):
                reasons.append(f"wrong place: want {want.describe()}, got ({got.row},{got.col})")
                failed.add("text")
            if want.sign is not None and got.sign != want.sign:
                reasons.append(f"wrong sign: want {want.describe()}, got {'a sign' if got.sign else 'no sign'}")
                failed.add("text")
        taken = {j for j in text_match if j is not None}
        for j, t in enumerate(texts):
            if j not in taken:
                reasons.append(f"extra text {t.string!r} at ({t.row},{t.col})")
                failed.add("text")
    return Verdict(not reasons, "; ".join(reasons), tuple(k for k in KINDS if k in failed),
                   tuple(k for k in KINDS if k in checked), len(spec.objects), right, chars, chars_right, exact,
                   placed)


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
    tally: dict[str, list[int]] = {}  # category -> [n, correct, objects named, objects right, chars, chars right,
    # strings asked, strings exact, strings placed]
    groups: dict[str, dict[str, list[int]]] = {}  # category -> group -> the same
    failed_by_cat: dict[str, dict[str, int]] = {}
    kinds = {k: [0, 0] for k in KINDS}  # kind -> [images where checked, images where it held]
    seen: dict[str, int] = {}  # prompt text -> images so far
    listed: dict[str, int] = {}  # category -> failures so far
    failures = []
    for i, (verdict, spec) in enumerate(zip(verdicts, specs)):
        sample = seen.get(spec.text, 0) if sample_index is None else int(sample_index[i])
        seen[spec.text] = seen.get(spec.text, 0) + 1
        for t in (tally.setdefault(spec.category, [0] * 9),
                  *([groups.setdefault(spec.category, {}).setdefault(spec.group, [0] * 9)] if spec.group else [])):
            t[0] += 1
            t[1] += int(verdict.ok)
            t[2] += verdict.objects
            t[3] += verdict.objects_right
            t[4] += verdict.chars
            t[5] += verdict.chars_right
            t[6] += len(spec.texts)
            t[7] += verdict.texts_exact
            t[8] += verdict.texts_placed
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
        categories={c: {**_counts(*t[:2]), **_objects(*t[2:4]), **_text(*t[4:]), "failed": failed_by_cat[c]}
                    for c, t in tally.items()},
        groups={c: {g: {**_counts(*t[:2]), **_objects(*t[2:4]), **_text(*t[4:])} for g, t in gs.items()}
                for c, gs in groups.items()},
        n=n,
        correct=correct,
        accuracy=overall["accuracy"],
        ci95=overall["ci95"],
        constraints={k: {"n": a, "held": h, "rate": h / a} for k, (a, h) in kinds.items() if a},
        failures=failures,
    )
