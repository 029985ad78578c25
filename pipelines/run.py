"""`Run`: the one place that knows the layout of a run directory.

    runs/<name>/
      tokenizer/            config.json + model.safetensors                (vqtok)
      text_tokenizer/       the text tokenizer the codes were made with
      codes/                pre-tokenized Arrow data + tessera_codes.json   (codes.partial/ while in progress)
      generator/            HF model directory + layout + tessera_sampling.json (ar_model)
      baseline/             the diffusion baseline + tessera_sampling.json  (baseline)
      <stage>_stage.json    the config a stage was started with
      state/<stage>/        checkpoints for exact resume
      metrics/<stage>.jsonl one JSON line per log step
      samples/<stage>/      sample grids written during training
      eval/, eval-baseline/ `tessera eval` reports;  bench/  `tessera bench`'s report

Every other package reaches these paths through a `Run`; nothing else joins
strings onto a run directory. The loaders raise `MissingPartError` naming the
command that makes a missing part.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.errors import MissingPartError, RunError

STAGES = ("tokenizer", "generator", "baseline")  # the training stages, in the order a run goes through them
SAMPLING_NAME = "tessera_sampling.json"  # a trained model's recommended sampling settings, beside its weights
# what trains each part, for the error a missing one gives
_MADE_BY = {
    "tokenizer": "tessera train-tokenizer",
    "text_tokenizer": "tessera tokenize or tessera train",
    "codes": "tessera tokenize or tessera train",
    "generator": "tessera train",
    "baseline": "tessera train-baseline",
    "expander": "tessera train-expander",
}


def write_atomic(path: Path, text: str) -> Path:
    """Write `text` to a temporary name beside `path` and rename it into place (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


class Run:
    """A run directory: paths of its parts, its recorded configs, and loading what it trained."""

    def __init__(self, root: "str | Path | Run"):
        self.root = Path(root)  # a Run is path-like too: Run(run) is the same run

    def __repr__(self) -> str:
        return f"Run({str(self.root)!r})"

    def __fspath__(self) -> str:
        return str(self.root)

    # ------------------------------------------------------------------ trained parts
    def part(self, name: str) -> Path:
        """The directory of a trained part: tokenizer, text_tokenizer, codes, generator or baseline."""
        if name not in _MADE_BY:
            raise RunError(f"unknown run part {name!r} (known: {', '.join(_MADE_BY)})")
        return self.root / name

    def has(self, name: str) -> bool:
        return self.part(name).is_dir()

    def require(self, name: str) -> Path:
        """The part's directory, or a MissingPartError that says which command makes it."""
        path = self.part(name)
        if not path.is_dir():
            raise MissingPartError(f"{path} does not exist: {self.root} is not a trained run with a {name} "
                                   f"(make it with `{_MADE_BY[name]}`)")
        return path

    @property
    def tokenizer(self) -> Path:
        return self.part("tokenizer")

    @property
    def text_tokenizer(self) -> Path:
        return self.part("text_tokenizer")

    @property
    def codes(self) -> Path:
        return self.part("codes")

    @property
    def generator(self) -> Path:
        return self.part("generator")

    @property
    def baseline(self) -> Path:
        return self.part("baseline")

    # ------------------------------------------------------------------ training stages
    def stage_config_path(self, stage: str) -> Path:
        return self.root / f"{stage}_stage.json"

    def recorded_config(self, stage: str) -> dict | None:
        """The config `stage` was started with, as recorded (None when it never ran here)."""
        path = self.stage_config_path(stage)
        return json.loads(path.read_text()) if path.is_file() else None

    def recorded_data(self, stage: str) -> dict:
        """The data section of `stage`'s recorded config ({} when there is none)."""
        return (self.recorded_config(stage) or {}).get("data", {})

    def state_dir(self, stage: str | None) -> Path:
        """Checkpoints of `stage` (None: a run of one stage, as tests and benchmarks make)."""
        return self.root / "state" / stage if stage else self.root / "state"

    def metrics_path(self, stage: str | None) -> Path:
        return self.root / "metrics" / f"{stage}.jsonl" if stage else self.root / "metrics.jsonl"

    def samples_dir(self, stage: str | None = None) -> Path:
        """Sample grids: written during training by `stage`, or by the demo (None)."""
        return self.root / "samples" / stage if stage else self.root / "samples"

    # ------------------------------------------------------------------ reports
    def eval_dir(self, model: str) -> Path:
        """Where `tessera eval` writes the report of `model` (generator or baseline)."""
        return self.root / ("eval" if model == "generator" else f"eval-{model}")

    @property
    def bench_dir(self) -> Path:
        return self.root / "bench"

    def file(self, name: str) -> Path:
        """A file at the top of the run (summary.json, tokenizer_eval.json, ...)."""
        return self.root / name

    # ------------------------------------------------------------------ sampling settings
    def recorded_sampling(self, model: str) -> dict:
        """The sampling settings recorded with `model` when it was trained ({} for runs made before they were)."""
        path = self.part(model) / SAMPLING_NAME
        if not path.is_file():
            return {}
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise RunError(f"cannot read {path}: {e}") from e

    # ------------------------------------------------------------------ loading
    def load_tokenizer(self, device: Any = "cpu") -> Any:
        from vqtok import load_tokenizer

        return load_tokenizer(self.require("tokenizer"), device=device)

    def load_generator(self, progress: bool = True) -> Any:
        from ar_model import load_generator

        return load_generator(self.require("generator"), progress=progress)

    def load_baseline(self) -> tuple[Any, Any]:
        """The diffusion baseline and the text tokenizer its ids come from."""
        from ar_model import load_text_tokenizer
        from baseline import load_baseline

        path = self.require("baseline")
        return load_baseline(path), load_text_tokenizer(path / "text_tokenizer")


def sampling_file(settings: dict) -> dict[str, str]:
    """{file name: text} recording a model's recommended sampling settings, for its exporter's `extra_files`
    (ar_model.save_generator, baseline.save_baseline), so they land in the model directory with the weights."""
    return {SAMPLING_NAME: json.dumps(settings, indent=2) + "\n"}


def record_sampling(model_dir: str | Path, settings: dict) -> Path:
    """Record (or change) a trained model's recommended sampling settings beside its weights."""
    return write_atomic(Path(model_dir) / SAMPLING_NAME, sampling_file(settings)[SAMPLING_NAME])


__all__ = ["SAMPLING_NAME", "STAGES", "Run", "record_sampling", "sampling_file", "write_atomic"]
