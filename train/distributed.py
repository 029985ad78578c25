"""Several processes, one training run: what `train_loop` needs from torch.distributed.

Launched with `torchrun --nproc_per_node N ...` (or any launcher that sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT), every process runs the same
loop; without those variables nothing here touches torch.distributed and the loop
is the single-process one.

How the work is split (the loop's side of it is in train/loop.py):

- `loop.grad_accum` counts the micro-batches of one optimizer step *over all
  processes*: each of N processes runs grad_accum / N of them, and process r runs
  the global micro-batches r * (grad_accum / N) ... . A task's batch is a pure
  function of (step, micro), so the global batch of a step -- and the loss curve --
  does not depend on how many processes share it, and a run can resume on another
  process count (tests/test_distributed.py).
- `parallel="ddp"` (default): `DistributedDataParallel`, each process holds the
  whole model, gradients are averaged as backward runs.
  `parallel="fsdp"`: FSDP2 `fully_shard` (torch.distributed.fsdp), parameters,
  gradients and optimizer state sharded over the processes; each decoder block is
  its own unit when the model has `model.layers` (HF Llama), else the whole model.
- Checkpoints hold full (unsharded) tensors keyed by parameter name, written by
  process 0 (torch.distributed.checkpoint.state_dict gathers them), so they load
  on any process count and with either strategy.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

PARALLEL = ("ddp", "fsdp")


@dataclass(frozen=True)
class World:
    """This process's place among the processes of a run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Process 0 writes checkpoints, logs and exported models."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world() -> World:
    """The launcher's view (torchrun's environment variables), whether or not the group is up yet."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return World(rank, size, int(os.environ.get("LOCAL_RANK", rank)))


def init(device_type: str) -> World:
    """Join the process group when launched by torchrun: NCCL for CUDA, gloo for the CPU.

    Idempotent (a stage calls it before preparing data, the loop again). One CUDA
    device per process: process `local_rank` takes `cuda:local_rank`.
    """
    w = world()
    if not w.distributed or dist.is_initialized():
        return w
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch has no torch.distributed")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(w.local_rank)
    dist.init_process_group(backend=backend)
    log.info("process %d of %d joined the %s group", w.rank, w.size, backend)
    return world()


def barrier() -> None:
    """Wait for every process (no-op in a single-process run)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average a dict of floats over the processes (every process passes the same keys)."""
    if not (dist.is_available() and dist.is_initialized()) or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def all_reduce_sum(value: float, device: torch.device) -> float:
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def broadcast_object(obj, src: int = 0):
    """Process `src`'s Python object on every process (e.g. a checkpoint path)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def shard_model(model: torch.nn.Module, mixed_bf16: bool) -> torch.nn.Module:
    """FSDP2 in place: each decoder block a unit (when the model exposes `model.layers`), then the root.

    With bf16, FSDP's own mixed precision (bf16 compute, fp32 gradient reduction and
    master weights) rather than autocast, as the FSDP2 docs advise.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_bf16 else None
    kw = {"mp_policy": mp} if mp is not None else {}
    layers = getattr(getattr(model, "model", None), "layers", None)  # HF decoder blocks
    for block in layers or []:
        fully_shard(block, **kw)
    fully_shard(model, **kw)
    return model


def full_tensors(tensors: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor on the CPU): gathers DTensor shards (FSDP); a collective, every process calls it."""
    for name, t in tensors.items():
        if hasattr(t, "full_tensor"):  # a DTensor
            t = t.full_tensor()
        yield name, t.detach().cpu()


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` laid out as `like` (a DTensor shard under FSDP, or a plain tensor)."""
    if hasattr(like, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements)
    return full.to(like.device, like.dtype)


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = [
    "PARALLEL",
    "World",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "destroy",
    "full_tensors",
    "init",
    "shard_like",
    "shard_model",
    "world",
]
