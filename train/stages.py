"""The training stages by name, and building a stage's config the way the command line asks for it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from train import diffusion_stage, expander_stage, generator_stage, tokenizer_stage
from train.config import StageConfig

# stage name (as the run directory and `--set STAGE.` call it) -> (its module's preset_config, config class, trainer)
STAGES = {
    "tokenizer": (tokenizer_stage.preset_config, tokenizer_stage.TokenizerStageConfig, tokenizer_stage.train_tokenizer),
    "generator": (generator_stage.preset_config, generator_stage.GeneratorStageConfig, generator_stage.train_generator),
    "baseline": (diffusion_stage.preset_config, diffusion_stage.BaselineStageConfig, diffusion_stage.train_baseline),
    "expander": (expander_stage.preset_config, expander_stage.ExpanderStageConfig, expander_stage.train_expander),
}


def stage_config(stage: str, preset: str = "cpu", config_file: str | Path | None = None,
                 assignments: dict[str, Any] | None = None) -> StageConfig:
    """The stage's preset, or the full config in `config_file`, with `assignments` ({"loop.lr": 1e-3}) applied."""
    preset_config, cls, _ = STAGES[stage]
    cfg = preset_config(preset)
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        cfg = cls.from_dict(json.loads(path.read_text()))
    return cfg.override(assignments) if assignments else cfg


def train_stage(stage: str, cfg: StageConfig, run_dir: str | Path, **kwargs: Any) -> Path:
    """Train (or resume) `stage` of the run; returns the exported model directory."""
    return STAGES[stage][2](cfg, run_dir, **kwargs)


__all__ = ["STAGES", "stage_config", "train_stage"]
