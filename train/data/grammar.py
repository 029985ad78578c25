"""Captions as a grammar: every true description of a shapes-world scene is a prompt.

A description's meaning is a `Description`: the objects it mentions, each a `Mention`
naming any of its colour, shape, size and position (the exact cell, or only the row or
the column), and relations between mentioned objects. It claims the scene holds exactly
those objects: "a red circle" is one red circle anywhere, of any size, and nothing else;
"three squares" is three squares of any colours; "a red circle above a blue square" is
two objects, one above the other. The eval judge reads the same types as constraints
(eval.faithfulness), so what a caption means in training is what a prompt is scored on.

    kinds of description (sample_description, DESCRIPTION_KINDS)
    complete   "a large red circle in the top left and a blue square in the center"
    partial    "a red shape in the top row and a circle"     any attributes left out
    count      "three red circles and two squares"           position-free mentions, grouped
    relation   "a red circle above a blue square"            two objects: above, below,
                                                             left of, right of, next to
    binding    "a red circle and a blue square"              colour and shape, no position

The text of a description is `realise(description, form)`: a `Form` picks one of several
phrasings (a frame such as "there is ..." or "a picture of ...", the place before the
object, another word for a relation, "is"). HELDOUT_FORMS names combinations of choices
that training never uses; each is a recombination of words training does use, and
`tessera eval`'s `phrasings` suite scores them apart from the rest.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from train.data.glyphs import Text
from train.data.shapes import COL_NAMES, COLOURS, NUMBERS, ROW_NAMES, SHAPES, SIZES, Obj, Scene


# ---------------------------------------------------------------- meaning


@dataclass(frozen=True)
class Mention:
    """What a description says of one object; None leaves that attribute free."""

    colour: str | None = None
    shape: str | None = None
    cell: tuple[int, int] | None = None  # (row, col)
    row: int | None = None  # the row alone ("in the top row"); None when cell is named
    col: int | None = None  # the column alone ("in the left column")
    size: str | None = None

    @classmethod
    def of(cls, o: Obj, colour: bool = True, shape: bool = True, position: str = "cell", size: bool = False) -> Mention:
        """A true mention of `o` naming the chosen attributes; position: "cell", "row", "col" or "none"."""
        return cls(o.colour if colour else None, o.shape if shape else None,
                   (o.row, o.col) if position == "cell" else None, o.row if position == "row" else None,
                   o.col if position == "col" else None, o.size if size else None)

    @classmethod
    def exact(cls, o: Obj) -> Mention:
        """Colour, shape and cell: what a complete prompt names (size is left free)."""
        return cls.of(o)

    def positioned(self) -> bool:
        return self.cell is not None or self.row is not None or self.col is not None

    def checks(self, o: Obj) -> dict[str, bool]:
        """{kind: held} for each attribute named: colour, shape, size, position."""
        out = {}
        if self.colour is not None:
            out["colour"] = o.colour == self.colour
        if self.shape is not None:
            out["shape"] = o.shape == self.shape
        if self.size is not None:
            out["size"] = o.size == self.size
        if self.positioned():
            out["position"] = ((self.cell is None or (o.row, o.col) == self.cell)
                               and (self.row is None or o.row == self.row) and (self.col is None or o.col == self.col))
        return out

    def describe(self) -> str:
        """'red circle at (0,2)', 'red shape in row 0', 'circle', 'object' (for failure reasons)."""
        noun = " ".join(x for x in (self.size, self.colour, self.shape or ("shape" if self.colour else "object")) if x)
        if self.cell is not None:
            return f"{noun} at ({self.cell[0]},{self.cell[1]})"
        return noun + (f" in row {self.row}" if self.row is not None else "") + (
            f" in column {self.col}" if self.col is not None else "")


@dataclass(frozen=True)
class TextMention:
    """What a description says of one string: its exact characters, and optionally where it starts and its sign.

    `row` alone: "in the top row"; `row` and `col`: its first character's cell; `sign` True: "a sign that reads",
    None: a sign or not."""

    string: str
    row: int | None = None
    col: int | None = None
    sign: bool | None = None

    @classmethod
    def of(cls, t: Text, position: str = "cell", sign: bool = False) -> TextMention:
        """A true mention of `t`; position "cell", "row" or "none"; `sign` names the plate (only true of a sign)."""
        return cls(t.string, t.row if position != "none" else None, t.col if position == "cell" else None,
                   True if sign and t.sign else None)

    def placed(self, t: Text) -> bool:
        return (self.row is None or t.row == self.row) and (self.col is None or t.col == self.col)

    def describe(self) -> str:
        where = f" at ({self.row},{self.col})" if self.col is not None else f" in row {self.row}" if self.row is not None else ""
        return f"{'sign ' if self.sign else 'text '}{self.string!r}{where}"


def _end(x) -> int:
    """The last column a thing covers: an object its cell's, a Text its last character's."""
    return x.end if isinstance(x, Text) else x.col


def _next_to(a, b) -> bool:
    return a.row == b.row and (_end(a) + 1 == b.col or _end(b) + 1 == a.col)


# Relations between two things' cells (objects, or a string's run of cells): kind -> (the words for it,
# training's first; holds(a, b)). "next to" is horizontal: the same row, neighbouring cells.
RELATIONS: dict[str, tuple[tuple[str, ...], Callable[[Obj | Text, Obj | Text], bool]]] = {
    "above": (("above", "over"), lambda a, b: a.row < b.row),
    "below": (("below", "under"), lambda a, b: a.row > b.row),
    "left_of": (("to the left of", "left of"), lambda a, b: _end(a) < b.col),
    "right_of": (("to the right of", "right of"), lambda a, b: a.col > _end(b)),
    "next_to": (("next to", "beside"), _next_to),
}


@dataclass(frozen=True)
class Relation:
    a: int  # index of a Mention of the description (or, from len(mentions) on, of its TextMentions)
    kind: str  # a key of RELATIONS
    b: int

    def holds(self, a: Obj | Text, b: Obj | Text) -> bool:
        return RELATIONS[self.kind][1](a, b)


@dataclass(frozen=True)
class Description:
    """The meaning of a caption: exactly these objects, with these relations, on a grid x grid world."""

    mentions: tuple[Mention, ...]
    relations: tuple[Relation, ...] = ()
    grid: int = 3
    texts: tuple[TextMention, ...] = ()  # exactly these strings (none: no text at all)

    def kind(self) -> str:
        """Which of DESCRIPTION_KINDS this is (for a description built by hand: the closest)."""
        if self.texts:
            return "text"
        if self.relations:
            return "relation"
        if all(m.colour and m.shape and m.cell for m in self.mentions):
            return "complete"
        if len({m for m in self.mentions}) < len(self.mentions):
            return "count"
        if len(self.mentions) > 1 and all(m.colour and m.shape and not m.positioned() for m in self.mentions):
            return "binding"
        return "partial"


# ---------------------------------------------------------------- phrasing


FRAMES: dict[str, tuple[str, str]] = {  # name -> (singular, plural) template; {} is the body
    "": ("{}", "{}"),
    "there": ("there is {}", "there are {}"),
    "image": ("an image of {}", "an image of {}"),
    "picture": ("a picture of {}", "a picture of {}"),
    "background": ("{} on a black background", "{} on a black background"),
}


@dataclass(frozen=True)
class Form:
    """Phrasing choices; the default is the plain form ("a red circle in the top left")."""

    frame: str = ""  # a key of FRAMES
    place_first: bool = False  # "in the top left, a red circle" (descriptions of at most two mentions)
    word: int = 0  # which of the relation's words (RELATIONS[kind][0])
    copula: bool = False  # "a red circle is above a blue square"
    text_word: int = 0  # which of TEXT_WORDS names a string (0 for a string of digits: "the number 42")
    text_first: bool = False  # strings before objects ("the word "OK" and a red circle")


# Combinations training never uses, each a recombination of words it does use (see the module docstring)
HELDOUT_FORMS: dict[str, Callable[[Form, Description], bool]] = {
    "picture_relation": lambda f, d: f.frame == "picture" and bool(d.relations),
    "copula_second_word": lambda f, d: f.copula and f.word == 1 and bool(d.relations),
    "there_place_first": lambda f, d: f.frame == "there" and f.place_first,
    "image_count": lambda f, d: f.frame == "image" and d.kind() == "count",
    "background_binding": lambda f, d: f.frame == "background" and d.kind() == "binding",
}


def heldout_form(form: Form, desc: Description) -> str | None:
    """The name of the held-out combination `form` makes with `desc`, or None when training may use it."""
    return next((name for name, hit in HELDOUT_FORMS.items() if hit(form, desc)), None)


def with_article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def join_phrases(parts: Sequence[str]) -> str:
    parts = list(parts)
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def cell_words(row: int, col: int, grid: int = 3) -> str:
    """'top left', 'center' (the middle of a 3x3 grid), 'upper center left' (4x4)."""
    if grid == 3 and (row, col) == (1, 1):
        return "center"
    return f"{ROW_NAMES[grid][row]} {COL_NAMES[grid][col]}"


def place_phrases(grid: int = 3) -> list[str]:
    """The world's place names of two or more words: every cell's ('upper center left') and column's ('center
    left'). A text tokenizer may make each one token (`data.place_tokens`, ar_model.text's `phrases`)."""
    names = [cell_words(r, c, grid) for r in range(grid) for c in range(grid)] + [*COL_NAMES[grid], *ROW_NAMES[grid]]
    return [n for n in dict.fromkeys(names) if len(n.split()) > 1]


def cell_phrase(o: Obj, grid: int = 3) -> str:
    """The exact cell: 'in the top left', 'in the center', 'in the middle right'."""
    return f"in the {cell_words(o.row, o.col, grid)}"


def _place(m: Mention, grid: int) -> str:
    if m.cell is not None:
        return f"in the {cell_words(*m.cell, grid)}"
    if m.row is not None:
        return f"in the {ROW_NAMES[grid][m.row]} row"
    if m.col is not None:
        return f"in the {COL_NAMES[grid][m.col]} column"
    return ""


def _noun(m: Mention, n: int = 1) -> str:
    """'a large red circle', 'a red shape', 'a circle', 'an object'; plural for n > 1: 'three red circles'."""
    head = m.shape or ("shape" if m.colour else "object")
    words = " ".join(x for x in (m.size, m.colour, head) if x)
    return with_article(words) if n == 1 else f"{NUMBERS[n]} {words}s"


TEXT_WORDS = ("the word", "the text", "the string")
SIGN_WORDS = ("a sign that reads", "a sign saying")


def _text_phrase(t: TextMention, grid: int, word: int = 0) -> str:
    """'the word "TAXI" in the top row', 'a sign that reads "OK" starting in the upper left', 'the number 42'."""
    if t.sign:
        noun = f'{SIGN_WORDS[word % len(SIGN_WORDS)]} "{t.string}"'
    elif t.string.isdigit() and word == 0:
        noun = f"the number {t.string}"
    else:
        noun = f'{TEXT_WORDS[word % len(TEXT_WORDS)]} "{t.string}"'
    if t.row is not None and t.col is not None:
        return f"{noun} {'in' if len(t.string) == 1 else 'starting in'} the {cell_words(t.row, t.col, grid)}"
    if t.row is not None:
        return f"{noun} in the {ROW_NAMES[grid][t.row]} row"
    return noun


def _mention_phrase(m: Mention, grid: int, place_first: bool, n: int = 1) -> str:
    where = _place(m, grid)
    if not where:
        return _noun(m, n)
    return f"{where}, {_noun(m, n)}" if place_first else f"{_noun(m, n)} {where}"


def realise(desc: Description, form: Form = Form()) -> str:
    """The text of `desc` in `form`. Identical position-free mentions are counted ("three red circles")."""
    if not desc.mentions and not desc.texts:
        return "nothing"
    first_plural = False
    texts = [_text_phrase(t, desc.grid, form.text_word) for t in desc.texts]
    if desc.relations:  # one relation between two mentions: "A [is] above B"
        (r,) = desc.relations
        items = [_mention_phrase(m, desc.grid, False) for m in desc.mentions] + texts  # sampled ones name no place
        word = RELATIONS[r.kind][0][form.word]
        body = f"{items[r.a]} {'is ' if form.copula else ''}{word} {items[r.b]}"
    else:
        groups: dict[Mention, int] = {}
        for m in desc.mentions:
            groups[m] = groups.get(m, 0) + (1 if not m.positioned() else 0)
        parts, done = [], set()
        for m in desc.mentions:
            if m.positioned():
                parts.append(_mention_phrase(m, desc.grid, form.place_first))
            elif m not in done:
                done.add(m)
                parts.append(_noun(m, groups[m]))
        if desc.mentions:
            first = desc.mentions[0]
            first_plural = not first.positioned() and groups[first] > 1 and not (texts and form.text_first)
        body = join_phrases(texts + parts if form.text_first else parts + texts)
    return FRAMES[form.frame][int(first_plural)].format(body)


# ---------------------------------------------------------------- scenes to descriptions


def complete(scene: Scene, size: bool = False) -> Description:
    """Every object's colour, shape and cell (and size), in the scene's (row, col) order; every string and its start."""
    return Description(tuple(Mention.of(o, size=size) for o in scene.objects), (), scene.grid,
                       tuple(TextMention.of(t, sign=True) for t in scene.texts))


def describe(scene: Scene) -> str:
    """Canonical complete caption: every object's size, colour, shape and cell, in (row, col) order."""
    return realise(complete(scene, size=True))


def complete_captions(scene: Scene) -> list[str]:
    """The phrasings that give every object's colour, shape and cell: describe() and the same without sizes."""
    return list(dict.fromkeys([describe(scene), realise(complete(scene))]))


DESCRIPTION_KINDS: dict[str, float] = {  # kind -> weight in the training mix (relation: two-object scenes only)
    "complete": 0.35, "partial": 0.25, "count": 0.2, "relation": 0.1, "binding": 0.1,
}
_ATTRS = ((True, True), (True, False), (False, True), (False, False))  # (colour, shape) named
_ATTR_P = (0.55, 0.15, 0.2, 0.1)
_POSITIONS = ("cell", "row", "col", "none")
_POSITION_P = (0.4, 0.15, 0.15, 0.3)


def _choice(rng: np.random.Generator, options: Sequence, p: Sequence[float] | None = None):
    return options[int(rng.choice(len(options), p=None if p is None else np.asarray(p) / np.sum(p)))]


def _partial(o: Obj, rng: np.random.Generator, level: tuple | None) -> Mention:
    colour, shape = level[0] if level else _choice(rng, _ATTRS, _ATTR_P)
    position = level[1] if level else _choice(rng, _POSITIONS, _POSITION_P)
    return Mention.of(o, colour, shape, position, size=bool(rng.random() < 0.2))


def sample_description(scene: Scene, rng: np.random.Generator, kinds: dict[str, float] | None = None) -> Description:
    """A random true description of `scene`, of a kind drawn from `kinds` (default DESCRIPTION_KINDS; a scene
    that none of the kinds with a weight fits, a single object for "relation" say, is described completely)."""
    return described(scene, rng, kinds)[0]


def described(scene: Scene, rng: np.random.Generator,
              kinds: dict[str, float] | None = None) -> tuple[Description, tuple[Obj, ...]]:
    """sample_description's description (the same draws) and, for a scene without strings, the object each of its
    mentions names, in mention order (what `plan` spells out); for a scene with strings, the scene's objects."""
    if scene.texts:
        return _text_description(scene, rng), tuple(scene.objects)
    objs = list(scene.objects)
    weights = {k: w for k, w in (kinds or DESCRIPTION_KINDS).items() if w > 0}
    if len(objs) != 2:  # two objects in distinct cells always stand in some relation
        weights.pop("relation", None)
    if len(objs) < 2:
        weights.pop("binding", None)
    if not objs or not weights:
        return complete(scene), tuple(objs)
    kind = _choice(rng, list(weights), list(weights.values()))
    if rng.random() < 0.5:  # word order: the scene's (row, col) order or any
        objs = [objs[i] for i in rng.permutation(len(objs))]
    if kind == "complete":
        size = bool(rng.random() < 0.5)
        mentions = [Mention.of(o, size=size) for o in objs]
    elif kind == "partial":
        level = (_choice(rng, _ATTRS, _ATTR_P), _choice(rng, _POSITIONS, _POSITION_P)) if rng.random() < 0.5 else None
        mentions = [_partial(o, rng, level) for o in objs]
    elif kind == "count":
        colour, shape = _choice(rng, _ATTRS, (0.6, 0.15, 0.15, 0.1))
        # a stable sort of (mention, object) pairs by the mention alone: the mentions' order is sorting them alone
        pairs = sorted(((Mention.of(o, colour, shape, "none"), o) for o in objs),
                       key=lambda mo: (mo[0].colour or "", mo[0].shape or ""))
        if rng.random() < 0.5:  # groups in either order
            pairs.reverse()
        mentions, objs = [m for m, _ in pairs], [o for _, o in pairs]
    elif kind == "binding":
        mentions = [Mention.of(o, position="none") for o in objs]
    else:  # relation
        a, b = objs
        true = [k for k in RELATIONS if RELATIONS[k][1](a, b)]
        if not true:
            a, b = b, a
            true = [k for k in RELATIONS if RELATIONS[k][1](a, b)]
        rel = Relation(0, _choice(rng, true), 1)
        level = _choice(rng, _ATTRS, (0.8, 0.07, 0.13, 0.0))
        return Description((Mention.of(a, *level, "none"), Mention.of(b, *level, "none")), (rel,), scene.grid), (a, b)
    return Description(tuple(mentions), (), scene.grid), tuple(objs)


def plan(desc: Description, objects: Sequence[Obj]) -> str:
    """The complete caption of `objects`, the objects `desc`'s mentions name (`described`), in mention order:
    every object's colour, shape and cell, and its size where its mention names one (the generator picks the
    others, as it does for any caption without sizes). Objects under equal mentions ("three red circles") go in
    (row, col) order among themselves. What a prompt expander (ar_model.expander) learns to write for `desc`: a
    scene the generator renders as it renders any complete caption."""
    objects = list(objects)
    sizes = [True] * len(objects)
    if len(desc.mentions) == len(objects):
        sizes = [m.size is not None for m in desc.mentions]
        slots: dict[Mention, list[int]] = {}
        for i, m in enumerate(desc.mentions):
            slots.setdefault(m, []).append(i)
        for idx in slots.values():
            for i, o in zip(idx, sorted((objects[i] for i in idx), key=lambda o: (o.row, o.col))):
                objects[i] = o
    return realise(Description(tuple(Mention.of(o, size=z) for o, z in zip(objects, sizes)), (), desc.grid))


def read_plan(text: str, grid: int = 3) -> tuple[Mention, ...] | None:
    """The mentions of a complete description in any training or held-out phrasing of `realise` without
    relations or strings (a `plan`, or a complete prompt a prompt expander kept as it was): each object's colour,
    shape, cell and, where named, size; None when `text` is not such a description. The inverse of realise for
    complete descriptions (`benchmarks/expander_plans.py` scores an expander's plans with it, without images)."""
    cells = {cell_words(r, c, grid): (r, c) for r in range(grid) for c in range(grid)}
    where = "|".join(sorted(map(re.escape, cells), key=len, reverse=True))
    noun = (rf"an? (?:(?P<size>{'|'.join(SIZES)}) )?(?P<colour>{'|'.join(COLOURS)}) (?P<shape>{'|'.join(SHAPES)})")
    one = re.compile(rf"(?:in the (?P<before>{where}), )?{noun}(?: in the (?P<after>{where}))?")
    body = text.strip()
    for frame in dict.fromkeys(f for pair in FRAMES.values() for f in pair):  # a description has one frame at most
        head, _, tail = frame.partition("{}")
        if (head or tail) and body.startswith(head) and body.endswith(tail):
            body = body[len(head) : len(body) - len(tail)]
            break
    mentions, at = [], 0
    for k, m in enumerate(one.finditer(body)):
        gap = body[at : m.start()]
        if gap != ("" if k == 0 else ", ") and gap != " and ":
            return None
        cell = m["before"] or m["after"]
        if cell is None or (m["before"] and m["after"]):
            return None
        mentions.append(Mention(m["colour"], m["shape"], cells[cell], size=m["size"]))
        at = m.end()
    return tuple(mentions) if mentions and at == len(body) else None


_TEXT_POSITIONS = ("cell", "row", "none")
_TEXT_POSITION_P = (0.5, 0.3, 0.2)


def _text_description(scene: Scene, rng: np.random.Generator) -> Description:
    """A true description of a scene with strings: each string exactly (its start cell, its row or no place,
    its sign named or not), its objects completely or partly, or, with one object and one string, a relation."""
    objs, texts = list(scene.objects), list(scene.texts)
    if len(objs) == 1 and len(texts) == 1 and rng.random() < 0.3:
        a, b = (objs[0], texts[0]) if rng.random() < 0.5 else (texts[0], objs[0])
        kind = _choice(rng, [k for k in RELATIONS if RELATIONS[k][1](a, b)])
        level = _choice(rng, _ATTRS, (0.8, 0.07, 0.13, 0.0))
        mention = Mention.of(objs[0], *level, "none")
        text = TextMention.of(texts[0], "none", sign=bool(rng.random() < 0.7))
        rel = Relation(0, kind, 1) if a is objs[0] else Relation(1, kind, 0)
        return Description((mention,), (rel,), scene.grid, (text,))
    if rng.random() < 0.5:
        mentions = [Mention.of(o, size=bool(rng.random() < 0.3)) for o in objs]
    else:
        mentions = [_partial(o, rng, None) for o in objs]
    if rng.random() < 0.5:
        mentions = [mentions[i] for i in rng.permutation(len(mentions))]
    said = [TextMention.of(t, _choice(rng, _TEXT_POSITIONS, _TEXT_POSITION_P), sign=bool(rng.random() < 0.7))
            for t in texts]
    return Description(tuple(mentions), (), scene.grid, tuple(said))


def sample_form(desc: Description, rng: np.random.Generator, heldout: bool = False) -> Form:
    """A random phrasing of `desc` that training uses (heldout=False) or that it never does (True: None if none)."""
    for _ in range(64):
        form = Form(
            frame=_choice(rng, list(FRAMES), (0.4, 0.15, 0.15, 0.15, 0.15)),
            place_first=bool(len(desc.mentions) <= 2 and any(m.positioned() for m in desc.mentions)
                             and rng.random() < 0.3),
            word=int(bool(desc.relations) and rng.random() < 0.4),
            copula=bool(desc.relations) and bool(rng.random() < 0.4),
            **({"text_word": int(rng.integers(3)), "text_first": bool(rng.random() < 0.5)} if desc.texts else {}),
        )
        if (heldout_form(form, desc) is not None) == heldout:
            return form
    if heldout:
        raise ValueError(f"no held-out phrasing found for a {desc.kind()} description")
    return Form()  # the plain form is never held out


def random_caption(scene: Scene, rng: np.random.Generator, kinds: dict[str, float] | None = None) -> str:
    """One true description of `scene` in a training phrasing (the "all" caption set); `kinds` as for
    sample_description."""
    desc = sample_description(scene, rng, kinds)
    return realise(desc, sample_form(desc, rng))


def _complete_caption(scene: Scene, rng: np.random.Generator, kinds: dict[str, float] | None = None) -> str:
    if kinds is not None:
        raise ValueError("the complete caption set has one kind of description: kinds weigh the \"all\" set")
    caps = complete_captions(scene)
    return caps[int(rng.integers(len(caps)))]


# Which phrasings a data set draws from. "complete" keeps to describe() and the same without sizes:
# a partial caption such as "a red circle" (shown anywhere but its held-out cell) teaches a model the
# held-out split itself, which the 15-minute demo, trained on held-out cells alone, cannot afford.
CAPTION_SETS: dict[str, Callable[..., str]] = {
    "all": random_caption, "complete": _complete_caption,
}


def check_kinds(kinds: dict[str, float]) -> dict[str, float]:
    """`kinds` as weights of DESCRIPTION_KINDS (any subset, each >= 0, one > 0), or ValueError saying why."""
    if not isinstance(kinds, dict) or not kinds:
        raise ValueError(f"kinds must be a non-empty mapping of description kind to weight, got {kinds!r}")
    unknown = sorted(set(kinds) - set(DESCRIPTION_KINDS))
    if unknown:
        raise ValueError(f"unknown description kind(s) {', '.join(map(repr, unknown))} "
                         f"(known: {', '.join(DESCRIPTION_KINDS)})")
    weights = {}
    for k, w in kinds.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not np.isfinite(w) or w < 0:
            raise ValueError(f"the weight of {k!r} must be a number >= 0, got {w!r}")
        weights[k] = float(w)
    if not any(weights.values()):
        raise ValueError("at least one description kind needs a weight above 0")
    return weights


def caption(scene: Scene, rng: np.random.Generator, which: str = "all",
            kinds: dict[str, float] | None = None) -> str:
    """One caption of `scene` from the caption set `which` (CAPTION_SETS), drawn with rng; `kinds` reweighs
    the kinds of description of the "all" set (DESCRIPTION_KINDS' weights by default; scenes with strings
    have their own mix)."""
    if which not in CAPTION_SETS:
        raise ValueError(f"unknown caption set {which!r} (known: {', '.join(CAPTION_SETS)})")
    return CAPTION_SETS[which](scene, rng, None if kinds is None else check_kinds(kinds))


__all__ = [
    "CAPTION_SETS", "DESCRIPTION_KINDS", "Description", "FRAMES", "Form", "HELDOUT_FORMS", "Mention", "RELATIONS",
    "Relation", "TextMention", "caption", "cell_phrase", "check_kinds", "complete", "complete_captions", "describe",
    "described", "heldout_form", "join_phrases", "place_phrases", "plan", "random_caption", "read_plan", "realise", "sample_description", "sample_form", "with_article",
]
