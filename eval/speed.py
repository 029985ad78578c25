"""Sampling speed of a trained run: images/s, seconds per image, tokens/s and peak memory per batch size.

Measured end to end as a user sees it: text -> image codes (with guidance, so two rows
per image when the scale is not 1) -> pixels, after one warm-up batch. On a GPU the
kernels are synchronised before the clock stops and the peak is CUDA's allocator peak
for the setting; on the CPU the peak is the process's resident-set high-water mark
(`ru_maxrss`), which never goes down, so it bounds the run so far rather than the setting.
"""

from __future__ import annotations

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
    kv_cache: bool
    images: int
    seconds: float
    images_per_s: float
    seconds_per_image: float
    tokens_per_s: float  # image tokens sampled per second (guidance's second row not counted)
    peak_memory_mb: float  # see the module docstring


@dataclass
class SpeedReport:
    machine: dict
    cfg_scale: float
    image_tokens: int  # tokens sampled per image
    rows: list[SpeedRow] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_markdown(self) -> str:
        lines = [f"machine: {describe_machine(self.machine)}; guidance {self.cfg_scale:g}; "
                 f"{self.image_tokens} image tokens per image", "",
                 "| batch | KV cache | images/s | s/image | tokens/s | peak memory (MB) |",
                 "|---:|---|---:|---:|---:|---:|"]
        lines += [f"| {r.batch_size} | {'on' if r.kv_cache else 'off'} | {r.images_per_s:.2f} | "
                  f"{r.seconds_per_image:.4f} | {r.tokens_per_s:.0f} | {r.peak_memory_mb:.0f} |" for r in self.rows]
        return "\n".join(lines)


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure_sampling(
    pipe: Any, prompts: Sequence[str], batch_sizes: Sequence[int] = (1, 32), images: int = 32,
    cfg_scale: float = 1.5, kv_cache: Sequence[bool] = (True,),
) -> SpeedReport:
    """Time `pipe` (a tessera.pipeline.Pipeline) sampling `images` images (whole batches) per setting.

    Settings run interleaved in one process, so ratios between them share the machine's state.
    """
    from ar_model import SampleConfig

    if not prompts:
        raise ValueError("measure_sampling needs at least one prompt")
    device = pipe.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    report = SpeedReport(machine_info(device), cfg_scale, pipe.layout.num_image_tokens)
    for bs in batch_sizes:
        batches = max(1, -(-images // bs))
        texts = [prompts[i % len(prompts)] for i in range(bs)]
        for use_cache in kv_cache:
            sc = SampleConfig(cfg_scale=cfg_scale, seed=0, use_cache=use_cache)
            pipe.sample(texts, n=1, sc=sc, batch_size=bs)  # warm-up: allocator, kernels, caches
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync()
            t = time.perf_counter()
            for b in range(batches):
                pipe.sample(texts, n=1, sc=sc.replace(seed=b), batch_size=bs)
            sync()
            dt = time.perf_counter() - t
            n = batches * bs
            report.rows.append(SpeedRow(bs, use_cache, n, round(dt, 4), n / dt, dt / n,
                                        n * pipe.layout.num_image_tokens / dt, _peak_mb(device)))
    return report


__all__ = ["SpeedReport", "SpeedRow", "describe_machine", "machine_info", "measure_sampling"]
