"""How the model is shared between processes during training (plain, DDP, FSDP2), and activation checkpointing."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

import torch

from train import distributed
from train.checkpoint import check_keys
from train.errors import TrainConfigError
from train.precision import uses_bf16


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Turn on the libraries' own activation checkpointing in `model` (HF transformers or diffusers parts)."""
    found = False
    for module in model.modules():
        if hasattr(module, "activation_checkpointing_enable") and getattr(module, "supports_gradient_checkpointing", False):
            # transformers >= 5 (gradient_checkpointing_enable is its deprecated name); non-reentrant
            # checkpointing works with DDP, FSDP and inputs that do not require grad
            module.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            found = True
        elif hasattr(module, "enable_gradient_checkpointing") and getattr(module, "_supports_gradient_checkpointing", False):
            module.enable_gradient_checkpointing()  # diffusers
            found = True
    if not found:
        raise TrainConfigError(f"activation_checkpointing: {type(model).__name__} has no transformers or diffusers "
                               "part that supports it")


class ParallelModel:
    """The loop's model as the processes share it: plain, DDP or FSDP2 (train/distributed.py).

    `model` stays the plain module, whose parameter names the checkpoints use;
    `train_model` is what the forward runs through (the DDP wrapper, torch.compile).
    """

    def __init__(self, model: torch.nn.Module, cfg: Any, world: distributed.World, device: torch.device,
                 unused_parameters: bool = False, compile: bool | None = None):
        self.model, self.world = model, world  # `model`: the plain module, whose names the checkpoints use
        self.fsdp = world.distributed and cfg.parallel == "fsdp"
        self.skeleton = None
        if self.fsdp:
            # a weightless copy to export the trained model into (FSDP2 shards the module in place)
            self.skeleton = copy.deepcopy(model).to("meta")
            distributed.shard_model(model, mixed_bf16=uses_bf16(device, cfg.precision))
            self.train_model = model
        elif world.distributed:
            ids = [device.index] if device.type == "cuda" else None
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=ids, find_unused_parameters=unused_parameters)
        else:
            self.train_model = model
        if cfg.compile if compile is None else compile:
            self.train_model = torch.compile(self.train_model)

    def autocast_on(self, device: torch.device, precision: str) -> bool:
        # under FSDP, bf16 is FSDP's own mixed precision (shard_model), not autocast
        return uses_bf16(device, precision) and not self.fsdp

    def no_sync(self, last: bool):
        """Skip the gradient all-reduce on all but the last micro-batch of a step."""
        if not self.world.distributed:
            return contextlib.nullcontext()
        if self.fsdp:
            self.model.set_requires_gradient_sync(last)
            return contextlib.nullcontext()
        ddp = getattr(self.train_model, "_orig_mod", self.train_model)
        return contextlib.nullcontext() if last else ddp.no_sync()

    def model_state(self) -> dict[str, torch.Tensor]:
        """Full tensors by name on process 0 (a collective under FSDP; {} on other processes)."""
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return self.model.state_dict() if self.world.main else {}

    def load_model_state(self, state: dict[str, torch.Tensor], path: Path) -> None:
        check_keys(set(self.model.state_dict()), set(state), path)
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            set_model_state_dict(self.model, state, options=StateDictOptions(full_state_dict=True))
        else:
            self.model.load_state_dict(state)

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        """Keyed by parameter name, full tensors: loads on any process count and with either strategy."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=self.world.distributed)
        return get_optimizer_state_dict(self.model, optimizer, options=opts)

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict, fmt: str | None) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        if fmt != "by_name":  # written before checkpoints keyed the optimizer by name: a single-process run
            if self.fsdp:
                raise TrainConfigError("this checkpoint's optimizer state predates FSDP support; resume it with "
                                       "loop.parallel=ddp or in one process")
            optimizer.load_state_dict(state)
            return
        set_optimizer_state_dict(self.model, optimizer, state, options=StateDictOptions(full_state_dict=True))

    def unwrapped(self) -> torch.nn.Module:
        """The trained model as a plain module (FSDP: its full weights gathered into the skeleton)."""
        if not self.fsdp:
            return self.model
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True))  # every process
        plain = self.skeleton.to_empty(device="cpu")
        plain.load_state_dict({k: v.cpu() for k, v in full.items()})
        for (name, buf), (_, src) in zip(plain.named_buffers(), self.model.named_buffers()):
            buf.copy_(src.detach().cpu())  # non-persistent buffers (e.g. rotary frequencies) too
        return plain


__all__ = ["ParallelModel", "enable_activation_checkpointing"]
