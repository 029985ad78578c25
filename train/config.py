"""One config machinery for every training stage.

A stage config is a dataclass of named sections (`vq`, `model`, `loop`, `data`, `sample`),
each a dataclass or, for sections a library validates later, a plain dict.
`StageConfig` writes `to_dict` / `from_dict` / `override` once for all of them:

    cfg = GeneratorStageConfig.from_dict(PRESETS["cpu"]).override({"loop.lr": 1e-3, "model.size": "S"})

`--set SECTION.KEY=VALUE` on the command line becomes one such assignment
(`parse_assignments`), and `check_run_config` is the one place that records a
stage's config in its run and refuses to resume under another.
"""

from __future__ import annotations

import json
import math
import types
import typing
from dataclasses import asdict, fields, is_dataclass
from typing import Any, ClassVar

from pipelines import Run, write_atomic
from train import distributed
from train.errors import TrainConfigError

# how a run executes, not what it computes: a resumed run may change these (and the process count)
EXECUTION_KEYS = ("device", "precision", "progress", "parallel", "compile", "activation_checkpointing", "log",
                  "sample_every", "resume_intact")


def config_from_dict(cls: type, data: dict, what: str | None = None) -> Any:
    """Build dataclass `cls` from `data`, naming any key it does not know and any value of the wrong type."""
    what = what or cls.__name__
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise TrainConfigError(f"unknown {what} key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    check_types(cls, data, what)
    try:
        return cls(**data)
    except TrainConfigError:
        raise
    except (TypeError, ValueError, OverflowError) as e:  # a validator meeting a value it did not expect
        raise TrainConfigError(f"{what}: {e}") from None


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON-like value fits a field's type hint (int, float, str, bool, X | None, list[X], tuple[X, ...])."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis and len(value) != len(args):
            return False
        inner = args[:1] if origin is list or (args and args[-1] is Ellipsis) else args
        return all(_fits(v, inner[0] if len(inner) == 1 else h) for v, h in zip(value, inner * len(value)))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True  # a type this check does not know: the dataclass's own validation decides


def check_types(cls: type, data: dict, what: str) -> None:
    """A TrainConfigError naming the first value of `data` that does not fit its field's type in `cls`."""
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        if key in hints and not _fits(value, hints[key]):
            hint = hints[key]
            shown = str(hint).replace("typing.", "") if typing.get_origin(hint) else getattr(hint, "__name__", hint)
            raise TrainConfigError(f"{what}.{key} must be {shown}, got {value!r}")


def override_sections(d: dict, assignments: dict[str, object], open_sections: tuple[str, ...] = ()) -> dict:
    """Apply {"section.name": value} to a stage's dict of sections, naming any unknown key.

    Sections in `open_sections` accept new names (their validation happens later,
    e.g. the generator's `model` section is checked by GeneratorConfig).
    """
    for key, value in assignments.items():
        section, _, name = key.partition(".")
        if section not in d or not name:
            raise TrainConfigError(
                f"unknown setting {key!r}: use section.name with section in {', '.join(sorted(d))}"
            )
        if name not in d[section] and section not in open_sections:
            raise TrainConfigError(f"unknown setting {key!r} (known in {section}: {', '.join(sorted(d[section]))})")
        d[section][name] = value
    return d


def parse_assignments(items: list[str] | None) -> dict[str, object]:
    """The command line's `--set KEY=VALUE` items as {KEY: value}; values are JSON when they parse, else strings."""
    out: dict[str, object] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise TrainConfigError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def split_assignments(assignments: dict[str, object], heads: tuple[str, ...]) -> dict[str, dict[str, object]]:
    """{"generator.loop.steps": 5} -> {"generator": {"loop.steps": 5}} for commands that set several stages."""
    out: dict[str, dict[str, object]] = {h: {} for h in heads}
    for key, value in assignments.items():
        head, _, rest = key.partition(".")
        if head not in out or not rest:
            raise TrainConfigError(f"--set keys here start with {', '.join(h + '.' for h in heads)} got {key!r}")
        out[head][rest] = value
    return out


def _section_dict(value: Any) -> dict:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return asdict(value) if is_dataclass(value) else dict(value)


class StageConfig:
    """Mixin for a stage's config dataclass: sections by field, (de)serialised and overridden alike.

    A section's type is that of its default: a dataclass is built with its own
    `from_dict` when it has one (e.g. `vqtok.VQConfig`) or field by field; a dict
    section (`OPEN_SECTIONS`) takes any key and is validated by the library it configures.
    """

    STAGE: ClassVar[str]  # the stage's name in the run directory
    OPEN_SECTIONS: ClassVar[tuple[str, ...]] = ()  # dict sections: any key
    FREE_SECTIONS: ClassVar[tuple[str, ...]] = ()  # sections a resumed run may change (they do not affect training)

    def to_dict(self) -> dict:
        return {f.name: _section_dict(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> Any:
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise TrainConfigError(f"unknown {cls.STAGE}-stage section {unknown[0]!r} (known: {', '.join(sorted(names))})")
        defaults = cls()
        sections = {}
        for name in names:
            default = getattr(defaults, name)
            data = d.get(name)
            if data is None:
                sections[name] = default
            elif not isinstance(data, dict):
                raise TrainConfigError(f"{cls.STAGE}-stage section {name!r} must be a mapping, got {data!r}")
            elif isinstance(default, dict):
                sections[name] = dict(data)
            elif hasattr(type(default), "from_dict"):  # a library config (vqtok.VQConfig): its own errors
                check_types(type(default), {k: v for k, v in data.items() if k in {f.name for f in fields(default)}},
                            name)
                sections[name] = type(default).from_dict(data)
            else:
                sections[name] = config_from_dict(type(default), data, name)
        return cls(**sections)

    def override(self, assignments: dict[str, object]) -> Any:
        """A copy with dotted keys replaced, e.g. {"loop.lr": 1e-3, "model.size": "S"}."""
        return type(self).from_dict(override_sections(self.to_dict(), assignments, self.OPEN_SECTIONS))


def preset(cls: type, presets: dict[str, dict], name: str) -> Any:
    """Stage config `cls` from the named preset of `presets`."""
    if name not in presets:
        raise TrainConfigError(f"unknown {cls.STAGE} preset {name!r} (known: {', '.join(presets)})")
    return cls.from_dict(presets[name])


def check_run_config(run: Run | str, cfg: StageConfig) -> None:
    """Record `cfg` in a new run; refuse to resume a run started with another config.

    A setting the recorded config lacks (added to Tessera since the run began)
    counts as its default, so that older runs still resume. The step count may
    grow, how the run executes may change (EXECUTION_KEYS), and so may the split of
    a step's batch into micro-batches when the global batch stays the same.
    """
    run = Run(run)
    path = run.stage_config_path(cfg.STAGE)
    new = json.loads(json.dumps(cfg.to_dict()))  # as stored: tuples become lists, or every resume would differ
    old = run.recorded_config(cfg.STAGE)
    if old is not None:
        default = json.loads(json.dumps(type(cfg)().to_dict()))
        diff = [f"{s}.{k}" for s in new if s not in cfg.FREE_SECTIONS for k in new[s]
                if old.get(s, {}).get(k, default.get(s, {}).get(k)) != new[s][k]]
        diff = [d for d in diff if d != "loop.steps" and d.removeprefix("loop.") not in EXECUTION_KEYS]
        # the data order depends only on the global batch (train.loop.EpochOrder)
        old_loop = {**default["loop"], **old.get("loop", {})}
        if old_loop["batch_size"] * old_loop["grad_accum"] == new["loop"]["batch_size"] * new["loop"]["grad_accum"]:
            diff = [d for d in diff if d not in ("loop.batch_size", "loop.grad_accum")]
        if diff:
            raise TrainConfigError(
                f"{run.root} was started with a different config (differs in: {', '.join(diff)}); "
                "use a new --run directory, or the same settings to resume"
            )
    if distributed.world().main:  # process 0 records it
        write_atomic(path, json.dumps(new, indent=2))


def check_share(name: str, value: Any) -> None:
    """Raise TrainConfigError unless `value` is a number in [0, 1] (a share of the data)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise TrainConfigError(f"{name} must be a number in [0, 1], got {value!r}")


__all__ = ["EXECUTION_KEYS", "StageConfig", "check_run_config", "check_share", "config_from_dict", "override_sections",
           "parse_assignments", "preset", "split_assignments"]
