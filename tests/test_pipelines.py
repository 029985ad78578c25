"""The run layer: Run's paths and errors, the shared batching / seeding rule, opening samplers by name."""

from __future__ import annotations

import dataclasses
import numpy as np
import pytest

from pipelines import (
    SAMPLERS,
    ImageSampler,
    MissingPartError,
    Run,
    RunError,
    open_sampler,
    record_sampling,
    sample_in_batches,
)


@dataclasses.dataclass(frozen=True)
class Settings:
    seed: int | None = 0


def test_batches_are_prompt_major_and_seeded_by_batch_index():
    calls = []

    def draw(rows, settings):
        calls.append((rows, settings.seed))
        return np.full((len(range(6)[rows]), 2, 2, 3), settings.seed or 0, np.uint8)  # the rows of the batch

    rows, images = sample_in_batches(["a", "b", "c"], n=2, settings=Settings(seed=10), batch_size=4, draw=draw)
    assert rows == ["a", "a", "b", "b", "c", "c"]
    assert [(c[0].start, c[1]) for c in calls] == [(0, 10), (4, 11)]  # batch b gets seed + b
    assert images.shape == (6, 2, 2, 3) and images[:4].max() == 10 and images[4:].min() == 11
    calls.clear()
    sample_in_batches(["a"], 1, Settings(seed=None), 4, draw)
    assert calls[0][1] is None  # no seed stays no seed: fresh randomness


@pytest.mark.parametrize("bad", [dict(n=0), dict(batch_size=0), dict(prompts="a prompt")])
def test_bad_batching_arguments_are_refused(bad):
    args = {"prompts": ["a"], "n": 1, "settings": Settings(), "batch_size": 1, "draw": lambda r, s: None, **bad}
    with pytest.raises((ValueError, TypeError)):
        sample_in_batches(**args)


def test_run_owns_the_paths_and_names_what_is_missing(tmp_path):
    run = Run(tmp_path / "r")
    assert run.generator == tmp_path / "r" / "generator"
    assert run.state_dir("generator") == tmp_path / "r" / "state" / "generator"
    assert run.metrics_path("baseline") == tmp_path / "r" / "metrics" / "baseline.jsonl"
    assert run.eval_dir("generator").name == "eval" and run.eval_dir("baseline").name == "eval-baseline"
    assert run.recorded_config("generator") is None and run.recorded_data("generator") == {}
    with pytest.raises(MissingPartError, match="tessera train-baseline"):
        run.require("baseline")
    with pytest.raises(FileNotFoundError):  # a MissingPartError is a FileNotFoundError too
        run.load_tokenizer()
    with pytest.raises(RunError, match="unknown run part"):
        run.part("weights")
    with pytest.raises(RunError, match="unknown model 'maskgit'"):
        open_sampler(run, "maskgit")


def test_recorded_sampling_settings_round_trip(tmp_path):
    run = Run(tmp_path)
    (tmp_path / "generator").mkdir()
    assert run.recorded_sampling("generator") == {}  # a run from before they were recorded
    record_sampling(tmp_path / "generator", {"cfg_scale": 2.0, "temperature": 0.0})
    assert run.recorded_sampling("generator") == {"cfg_scale": 2.0, "temperature": 0.0}
    (tmp_path / "generator" / "tessera_sampling.json").write_text("{not json")
    with pytest.raises(RunError, match="tessera_sampling.json"):
        run.recorded_sampling("generator")


def test_every_registered_sampler_implements_the_interface():
    methods = {n for n, v in vars(ImageSampler).items()
               if not n.startswith("_") and (callable(v) or isinstance(v, property))}
    assert {"sample", "settings", "describe", "steps_per_image", "resolution"} <= methods
    for name, cls in SAMPLERS.items():
        missing = {m for m in methods if not hasattr(cls, m)}
        assert not missing, (name, missing)
        assert isinstance(cls.kind, str) and hasattr(cls, "from_run")
