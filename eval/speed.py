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


@dataclass
class SpeedReport:
    machine: dict
    cfg_scale: float
    steps_per_image: int  # sequential network calls per image: image tokens, or denoising steps
    rows: list[SpeedRow] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_markdown(self) -> str:
        lines = [f"machine: {describe_machine(self.machine)}; guidance {self.cfg_scale:g}; "
                 f"{self.steps_per_image} sequential steps per image", "",
                 "| batch | setting | images/s | s/image | steps/s | network evals / image | peak memory (MB) |",
                 "|---:|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {r.batch_size} | {r.setting} | {r.images_per_s:.2f} | {r.seconds_per_image:.4f} | "
                  f"{r.steps_per_s:.0f} | {r.nfe_per_image} | {r.peak_memory_mb:.0f} |" for r in self.rows]
        return "\n".join(lines)


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure_sampling(
    pipe: Any, prompts: Sequence[str], settings: dict[str, Any], batch_sizes: Sequence[int] = (1, 32),
    images: int = 32,
) -> SpeedReport:
    """Time `pipe` (a `pipelines.ImageSampler`: `ARPipeline` or `DiffusionPipeline`) sampling `images`
    images (whole batches) with each named sample config of `settings`, at each batch size.

    Settings run interleaved in one process, so ratios between them share the machine's state.
    All settings should share one guidance scale (the report states the first's).
    """
    if not prompts or not settings:
        raise ValueError("measure_sampling needs at least one prompt and one setting")
    device = pipe.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    first = next(iter(settings.values()))
    report = SpeedReport(machine_info(device), first.cfg_scale, pipe.steps_per_image(first))
    for bs in batch_sizes:
        batches = max(1, -(-images // bs))
        texts = [prompts[i % len(prompts)] for i in range(bs)]
        for name, sc in settings.items():
            pipe.sample(texts, n=1, settings=sc, batch_size=bs)  # warm-up: allocator, kernels, caches
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync()
            t = time.perf_counter()
            for b in range(batches):
                pipe.sample(texts, n=1, settings=dataclasses.replace(sc, seed=b), batch_size=bs)
            sync()
            dt = time.perf_counter() - t
            n, steps = batches * bs, pipe.steps_per_image(sc)
            rows = 2 if sc.cfg_scale != 1 else 1  # guidance: a conditional and an unconditional row
            report.rows.append(SpeedRow(bs, name, n, round(dt, 4), n / dt, dt / n, n * steps / dt,
                                        steps * rows, _peak_mb(device)))
    return report


__all__ = ["SpeedReport", "SpeedRow", "describe_machine", "machine_info", "measure_sampling"]
