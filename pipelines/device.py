"""The one place that turns a device setting into a `torch.device`."""

from __future__ import annotations

import torch

AUTO = "auto"


def resolve_device(name: str | torch.device | None = AUTO) -> torch.device:
    """"auto" or None -> cuda when this torch sees a GPU, else cpu; anything else as torch reads it."""
    if name is None or name == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


__all__ = ["AUTO", "resolve_device"]
