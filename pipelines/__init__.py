"""pipelines: the run layer, between the libraries (vqtok, ar_model, baseline) and train / eval / the CLI.

- `Run` owns every path and recorded config of a run directory and loads what it trained;
- `ImageSampler` is the sampling interface (a Protocol), with one batching and seeding rule
  (`sample_in_batches`); `ARPipeline` and `DiffusionPipeline` implement it;
- `open_sampler(run, model)` opens the run's generator or baseline by name;
- `save_pngs` / `save_grid` / `sample_to_dir` write images, each signed with a C2PA manifest
  (`pipelines.provenance`: the signer, the development credentials, `verify_file`);
- `resolve_device` is the one device resolver; `RunError` the package's base error.

    from pipelines import open_sampler, save_pngs
    pipe = open_sampler("runs/demo", "generator")
    result = pipe.sample(["a red circle in the top left"], n=4, settings=pipe.settings(seed=0))
    save_pngs(result, "out/")
"""

from __future__ import annotations

from pathlib import Path
from pipelines.autoregressive import ARPipeline, EditResult
from pipelines.device import AUTO, resolve_device
from pipelines.errors import EditError, MissingPartError, RunError
from pipelines.diffusion import DiffusionPipeline
from pipelines.interface import ImageEditor, ImageSampler, SampleResult, sample_in_batches
from pipelines.png import SampleFiles, sample_to_dir, save_grid, save_pngs
from pipelines.run import SAMPLING_NAME, STAGES, Run, record_sampling, sampling_file, write_atomic

# model name (as `tessera eval --model` and the training stages call it) -> its ImageSampler
SAMPLERS: dict[str, type] = {"generator": ARPipeline, "baseline": DiffusionPipeline}


def open_sampler(run: str | Path | Run, model: str = "generator", device: str | None = None,
                 progress: bool = True) -> ImageSampler:
    """The run's `model` ("generator" or "baseline") as an ImageSampler on `device` (default: cuda when present)."""
    if model not in SAMPLERS:
        raise RunError(f"unknown model {model!r} (known: {', '.join(SAMPLERS)})")
    return SAMPLERS[model].from_run(run, device=device, progress=progress)


__all__ = ["AUTO", "SAMPLERS", "SAMPLING_NAME", "STAGES", "ARPipeline", "DiffusionPipeline", "EditError", "EditResult",
           "ImageEditor", "ImageSampler",
           "MissingPartError", "Run", "RunError", "SampleResult", "open_sampler", "record_sampling",
           "resolve_device", "SampleFiles", "sampling_file", "sample_in_batches", "sample_to_dir", "save_grid", "save_pngs",
           "write_atomic"]
