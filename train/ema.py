"""An exponential moving average of a model's parameters, kept beside it during training."""

from __future__ import annotations

from pathlib import Path

import torch

from train import distributed
from train.checkpoint import check_keys


class EMA(torch.nn.Module):
    """Exponential moving average of a model's parameters; buffers are copied.

    Written here rather than torch.optim.swa_utils.AveragedModel because that
    either averages buffers too (which scrambles a VQ codebook whose dead codes
    are re-seeded) or leaves them stale; we want parameters averaged and buffers
    (codebooks, cluster sizes) taken as they are.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        super().__init__()
        self.decay = decay
        self.params = torch.nn.ParameterDict()
        self._names = []
        for n, p in model.named_parameters():
            if p.requires_grad:
                self._names.append(n)
                self.params[n.replace(".", "__")] = torch.nn.Parameter(p.detach().clone(), requires_grad=False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        named = dict(model.named_parameters())
        for n in self._names:
            self.params[n.replace(".", "__")].lerp_(named[n].detach(), 1 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Load the averaged parameters into `model` (buffers stay the model's own)."""
        named = dict(model.named_parameters())
        for n in self._names:
            named[n].copy_(self.params[n.replace(".", "__")])

    def full_state(self) -> dict[str, torch.Tensor]:
        """Full tensors by name (gathered from shards under FSDP; every process calls this)."""
        return dict(distributed.full_tensors(dict(self.state_dict())))

    @torch.no_grad()
    def load_full_state(self, state: dict[str, torch.Tensor], path: Path) -> None:
        """Load full tensors (as `full_state` gives them) into this EMA, sharded like its own."""
        check_keys(set(self.state_dict()), set(state), path, "EMA weights")
        for name, p in self.params.items():
            p.copy_(distributed.shard_like(state[f"params.{name}"], p))


__all__ = ["EMA"]
