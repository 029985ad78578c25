"""Which float format a training step computes in: bf16 autocast or fp32, per device and setting."""

from __future__ import annotations

import torch

PRECISIONS = ("auto", "bf16-native", "fp32", "bf16")


def cpu_has_native_bf16() -> bool:
    """True when this CPU does bf16 matmuls in hardware (AMX tiles or AVX512-BF16).

    torch has no public query for this; its private `torch.cpu._is_*_supported` helpers are
    read through getattr so a torch without them answers False (fp32, the safe choice).
    """
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def uses_bf16(device: torch.device, precision: str) -> bool:
    """Whether `precision` means bf16 autocast on `device` (see LoopConfig.precision)."""
    if precision == "bf16":
        return True
    if precision == "fp32" or device.type not in ("cuda", "cpu"):
        return False
    if device.type == "cuda":
        return True  # auto and bf16-native
    # emulated bf16 on a CPU without AMX / AVX512-BF16 (e.g. AVX2 only) ran ~8x slower than fp32
    return precision == "bf16-native" and cpu_has_native_bf16()


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on `device` when `enabled`, else a no-op context."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


__all__ = ["PRECISIONS", "autocast", "cpu_has_native_bf16", "uses_bf16"]
