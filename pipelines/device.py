"""The one place that turns a device setting into a `torch.device`, and refuses one this torch cannot use."""

from __future__ import annotations

import torch

from pipelines.errors import RunError

AUTO = "auto"


def available_devices() -> list[str]:
    """What this torch can run on: cpu, each visible CUDA GPU, mps."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append("mps")
    return out


def resolve_device(name: str | torch.device | None = AUTO) -> torch.device:
    """"auto" or None -> cuda when this torch sees a GPU, else cpu; otherwise the named device, checked.

    A device this torch cannot use (a typo, cuda on a CPU-only build, a GPU index past
    the last one) is a RunError naming what is available, not a failure deep inside torch.
    """
    if name is None or name == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    available = available_devices()
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise RunError(f"unknown device {str(name)!r} (available here: {', '.join(available)})") from None
    usable = (device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_available()
                                       and (device.index is None or device.index < torch.cuda.device_count()))
              or (device.type == "mps" and "mps" in available))
    if not usable:
        raise RunError(f"device {str(name)!r} is not available to this torch {torch.__version__} "
                       f"(available here: {', '.join(available)})")
    return device


__all__ = ["AUTO", "available_devices", "resolve_device"]
