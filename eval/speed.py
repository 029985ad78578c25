"""Sampling speed of a trained model: images/s, seconds per image, steps/s, network evaluations, peak memory.

Measured end to end as a user sees it: text -> image (the generator: codes one token at a
time, then the tokenizer's decoder; the diffusion baseline: its denoising steps), with
guidance as two rows per image when the scale is not 1, after one warm-up batch. A
"step" is one sequential network call: an image token for the generator, a denoising
step for diffusion; network evaluations per image = steps x rows. On a GPU the
kernels are synchronised before the clock stops and the peak is CUDA's allocator peak
for the setting; on the CPU the peak is the process's resident-set high-water mark
(`ru_maxrss`), which never goes down, so it bounds the run so far rather than the setting.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import resource
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch


def machine_info(device: torch.device) -> dict:
    """What the numbers were measured on: device, its name, threads, torch version."""
    info = {"device": device.type, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "cpu": _cpu_name()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(info: dict) -> str:
    """One line: 'NVIDIA H100 ...' or 'cpu, 2 threads (AMD EPYC ...)'."""
    if info.get("gpu"):
        return info["gpu"]
    return f"cpu, {info['torch_threads']} threads ({info['cpu']})"


@dataclass
class SpeedRow:
    batch_size: int
    setting: str  # e.g. "kv cache on", "ddim 25 steps"
    images: int
    seconds: float
    images_per_s: float
    seconds_per_image: float
    steps_per_s: float  # images x steps per second: tokens/s for the generator, image-steps/s for diffusion
    nfe_per_image: int  # network evaluations per image: steps x rows (2 with guidance)
    peak_memory_mb: float  # see the module docstring
    sequential_passes: int = 0  # sequential network calls per batch (all its images at once): measured when the
    # sampler counts them (the jacobi decoder's depend on the data), else steps_per_image


@dataclass
class SpeedReport:
    machine: dict
    cfg_scale: float
    steps_per_image: int  # sequential network calls per image: image tokens, or denoising steps
    rows: list[SpeedRow] = field(default_factory=list)
    expanded: bool = False  # prompts read through the run's prompt expander (sample.expand) first

    def to_dict(self) -> dict:
        return asdict(self)

    def to_markdown(self) -> str:
        lines = [f"machine: {describe_machine(self.machine)}; guidance {self.cfg_scale:g}; "
                 f"{self.steps_per_image} sequential steps per image", "",
                 "| batch | setting | images/s | s/image | steps/s | sequential passes | network evals / image | "
                 "peak memory (MB) |",
                 "|---:|---|---:|---:|---:|---:|---:|---:|"]
        if self.expanded:
            lines[0] += ("; prompts expanded first: the expander's time is in images/s and s/image, its own token "
                         "steps are not in the sequential passes or network evaluations")
        lines += [f"| {r.batch_size} | {r.setting} | {r.images_per_s:.2f} | {r.seconds_per_image:.4f} | "
                  f"{r.steps_per_s:.0f} | {r.sequential_passes or self.steps_per_image} | {r.nfe_per_image} | "
                  f"{r.peak_memory_mb:.0f} |" for r in self.rows]
        return "\n".join(lines)


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure_sampling(
    pipe: Any, prompts: Sequence[str], settings: dict[str, Any], batch_sizes: Sequence[int] = (1, 32),
    images: int = 32, sources: Any = None,
) -> SpeedReport:
    """Time `pipe` (a `pipelines.ImageSampler`: `ARPipeline` or `DiffusionPipeline`) sampling `images`
    images (whole batches) with each named sample config of `settings`, at each batch size.

    With `sources` (uint8 images (S, R, R, 3), S >= 1) `pipe` is an editor (`pipelines.ImageEditor`)
    and an image is one edit turn of a source with a prompt as the instruction, as a user sees it:
    the source encoded, the codes sampled with the source in context, the result decoded; with image
    guidance (`image_cfg_scale` != 1) three rows per image.

    Settings run interleaved in one process, so ratios between them share the machine's state.
    All settings should share one guidance scale (the report states the first's).
    """
    if not prompts or not settings or (sources is not None and not len(sources)):
        raise ValueError("measure_sampling needs at least one prompt, one setting and (editing) one source")

    def run(texts: list[str], sc: Any, bs: int) -> None:
        if sources is None:
            pipe.sample(texts, n=1, settings=sc, batch_size=bs)
        else:
            batch = np.stack([sources[i % len(sources)] for i in range(len(texts))])  # (bs, R, R, 3)
            pipe.edit(batch, [[t] for t in texts], settings=sc, batch_size=bs)

    device = pipe.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    first = next(iter(settings.values()))
    report = SpeedReport(machine_info(device), first.cfg_scale, pipe.steps_per_image(first),
                         expanded=bool(getattr(first, "expand", False)))
    for bs in batch_sizes:
        batches = max(1, -(-images // bs))
        texts = [prompts[i % len(prompts)] for i in range(bs)]
        for name, sc in settings.items():
            run(texts, sc, bs)  # warm-up: allocator, kernels, caches
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync()
            counted = dict(getattr(pipe, "passes", {}))  # a sampler that counts its forward passes (ARPipeline)
            t = time.perf_counter()
            for b in range(batches):
                run(texts, dataclasses.replace(sc, seed=b), bs)
            sync()
            dt = time.perf_counter() - t
            n, steps = batches * bs, pipe.steps_per_image(sc)
            after = getattr(pipe, "passes", {})
            if after.get("batches", 0) > counted.get("batches", 0):  # measured: passes per batch (a batch's images
                steps = round((after["forward_passes"] - counted.get("forward_passes", 0))  # share its passes)
                              / (after["batches"] - counted.get("batches", 0)))
            # guidance: a conditional and an unconditional row; an editor's image guidance a third
            image_guided = sources is not None and getattr(sc, "image_cfg_scale", 1.0) != 1
            rows = 3 if image_guided else 2 if sc.cfg_scale != 1 else 1
            report.rows.append(SpeedRow(bs, name, n, round(dt, 4), n / dt, dt / n, n * steps / dt,
                                        steps * rows, _peak_mb(device), steps))
    return report


__all__ = ["SpeedReport", "SpeedRow", "describe_machine", "machine_info", "measure_sampling"]
