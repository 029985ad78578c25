"""The one training loop every stage uses (tokenizer now; generator and baseline later).

A stage describes itself as a `Task` (its model, how to build batch `i`, its
loss); `train_loop` owns everything else: device, bf16 autocast on GPU,
gradient accumulation, AdamW with warmup + cosine, EMA, a progress bar, the
metrics jsonl and atomic checkpoints with resume.

Resume is exact: a batch is a pure function of (step, micro-batch index), and
every RNG is saved with the weights, so a run killed at any point and restarted
reaches the same weights as an uninterrupted one (bitwise on the CPU).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, NamedTuple, Protocol

import torch
from tqdm.auto import tqdm

from train import distributed
from train.checkpoint import (
    check_keys,
    latest_checkpoint,
    read_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from train.distributed import PARALLEL
from train.tracking import LOGGERS, Tracker

logger = logging.getLogger(__name__)  # not `log`: train_loop names its metrics file that


class TrainConfigError(ValueError):
    """A training option that does not exist or has a bad value."""


def config_from_dict(cls, data: dict, what: str | None = None):
    """Build dataclass `cls` from `data`, naming any key it does not know."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise TrainConfigError(
            f"unknown {what or cls.__name__} key {unknown[0]!r} (known: {', '.join(sorted(known))})"
        )
    return cls(**data)


def override_sections(d: dict, assignments: dict[str, object], open_sections: tuple[str, ...] = ()) -> dict:
    """Apply {"section.name": value} to a stage's dict of sections, naming any unknown key.

    Sections in `open_sections` accept new names (their validation happens later,
    e.g. the generator's `model` section is checked by GeneratorConfig).
    """
    for key, value in assignments.items():
        section, _, name = key.partition(".")
        if section not in d or not name:
            raise TrainConfigError(
                f"unknown setting {key!r}: use section.name with section in {', '.join(sorted(d))}"
            )
        if name not in d[section] and section not in open_sections:
            raise TrainConfigError(f"unknown setting {key!r} (known in {section}: {', '.join(sorted(d[section]))})")
        d[section][name] = value
    return d


PRECISIONS = ("auto", "bf16-native", "fp32", "bf16")
# how a run executes, not what it computes: a resumed run may change these (and the process count)
EXECUTION_KEYS = ("device", "precision", "progress", "parallel", "compile", "activation_checkpointing", "log",
                  "sample_every")


@dataclass
class LoopConfig:
    steps: int = 1000  # optimizer steps; the stage presets set this
    batch_size: int = 32  # per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 3e-4  # peak learning rate (AdamW)
    weight_decay: float = 0.0  # applied to >=2-D weights only; the tokenizer wants none
    betas: tuple[float, float] = (0.9, 0.99)  # 0.99: small batches, faster second-moment adaption
    warmup_steps: int = 100  # linear warmup from 0, then cosine
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of lr
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    ema_decay: float = 0.0  # 0 = no EMA copy; the generator uses ~0.999
    log_every: int = 10  # steps between metrics.jsonl lines
    ckpt_every: int = 200  # steps between checkpoints (and one at the end)
    keep_checkpoints: int = 2  # complete checkpoints kept in state/
    seed: int = 0  # seeds init, data order and every RNG
    device: str = "auto"  # auto = cuda when present, else cpu
    # auto = bf16 autocast on cuda, fp32 on cpu; bf16-native = bf16 on cuda and on CPUs with
    # native bf16 (AMX / AVX512-BF16), fp32 on other CPUs (emulated bf16 was 8x slower on an
    # AVX2 CPU, docs/RESULTS.md); or fp32 / bf16 everywhere
    precision: str = "auto"
    progress: bool = True  # tqdm bar with loss and throughput
    # several processes (torchrun): "ddp" replicates the model, "fsdp" shards weights, gradients and
    # optimizer state (FSDP2) for models too big to replicate; ignored in a single process
    parallel: str = "ddp"
    compile: bool = False  # torch.compile the model: faster steps on GPUs after a compile of a minute or so
    activation_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% more compute
    log: str = "jsonl"  # "wandb" also sends the metrics and sample grids to wandb (mode from WANDB_MODE)
    sample_every: int = 0  # steps between sample grids in samples/<stage>/ (and wandb); 0 = never

    def __post_init__(self):
        self.betas = tuple(self.betas)
        for name in ("steps", "batch_size", "grad_accum", "log_every", "ckpt_every", "keep_checkpoints"):
            if int(getattr(self, name)) < 1:
                raise TrainConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.lr <= 0:
            raise TrainConfigError(f"lr must be > 0, got {self.lr!r}")
        if not 0 <= self.ema_decay < 1:
            raise TrainConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if self.precision not in PRECISIONS:
            raise TrainConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.device != "auto" and not self.device.startswith(("cpu", "cuda", "mps")):
            raise TrainConfigError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        if self.parallel not in PARALLEL:
            raise TrainConfigError(f"parallel must be one of {', '.join(PARALLEL)}, got {self.parallel!r}")
        if self.log not in LOGGERS:
            raise TrainConfigError(f"log must be one of {', '.join(LOGGERS)}, got {self.log!r}")
        for name in ("compile", "activation_checkpointing"):
            if not isinstance(getattr(self, name), bool):
                raise TrainConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if int(self.sample_every) < 0:
            raise TrainConfigError(f"sample_every must be >= 0, got {self.sample_every!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class LossOutput(NamedTuple):
    loss: torch.Tensor  # scalar to minimise
    metrics: dict[str, float]  # logged as they are


class Task(Protocol):
    """What a training stage provides to `train_loop`.

    During training the loop may put a wrapped module in `task.model` (DDP,
    torch.compile) and puts the plain one back afterwards, so `loss` must run the
    model through `self.model(...)` -- its forward -- for gradients to be averaged
    over processes. An optional `preview(step) -> (images (N, H, W, 3) uint8,
    captions)` is called every `sample_every` steps on every process (an FSDP model
    needs all of them) and process 0 saves the grid.
    """

    model: torch.nn.Module  # everything trainable (e.g. tokenizer + discriminator)
    # optional `unused_parameters = True`: some parameters get no gradient in some steps (DDP must know)

    def batch(self, step: int, micro: int, batch_size: int) -> Any:
        """Micro-batch `micro` (of grad_accum, counted over all processes) of step `step`; depends on nothing else."""

    def loss(self, batch: Any, step: int) -> LossOutput: ...

    def items(self, batch: Any) -> int:
        """How many examples the batch holds (for images/s)."""


class EpochOrder:
    """Which examples micro-batch (step, micro) holds: a pure function of its arguments.

    The examples are read in epochs, each a fresh permutation of range(n) seeded by
    (seed, epoch), so a resumed run sees exactly the batches an uninterrupted one would.
    """

    def __init__(self, n: int, seed: int, grad_accum: int = 1):
        if n < 1:
            raise TrainConfigError("the training set is empty")
        self.n, self.seed, self.accum = n, seed, grad_accum
        self._perm: dict[int, torch.Tensor] = {}  # the current epoch's permutation only

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perm:
            g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            self._perm = {epoch: torch.randperm(self.n, generator=g)}
        return self._perm[epoch]

    def indices(self, step: int, micro: int, batch_size: int) -> torch.Tensor:
        """(batch_size,) long indices into the training set."""
        start = (step * self.accum + micro) * batch_size  # the example's place in the whole run
        return torch.stack([self._permutation(g // self.n)[g % self.n] for g in range(start, start + batch_size)])


class LoopResult(NamedTuple):
    step: int  # steps completed
    resumed_from: int  # 0 when the run started fresh
    seconds: float  # wall time of this invocation
    last_metrics: dict[str, float]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def lr_lambda(cfg: LoopConfig) -> Callable[[int], float]:
    """Linear warmup, then cosine from 1 down to `min_lr_ratio` at `steps`."""

    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices and conv kernels; never biases, norms or 1-D parameters."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


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
    return precision == "bf16-native" and cpu_has_native_bf16()


def steps_for_seconds(task: Task, cfg: LoopConfig, seconds: float, probe: int = 5) -> int:
    """How many optimizer steps of `task` fit in `seconds` on this machine: `probe` whole steps
    (every micro-batch, clipping, an AdamW update, the EMA update) timed after one warm-up, with a
    throwaway optimizer and EMA; the weights and RNGs are restored afterwards, so the run that follows
    is the one it would have been. Used to give two models one wall-clock budget; checkpoint and
    logging time is not in it."""
    if seconds <= 0:
        raise TrainConfigError(f"a training budget must be positive, got {seconds} s")
    device = resolve_device(cfg.device)
    model = task.model.to(device)
    model.train()
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
    ema = EMA(model, cfg.ema_decay).to(device) if cfg.ema_decay > 0 else None
    times = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # dropout draws from these
        for i in range(probe + 1):
            t = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            for micro in range(cfg.grad_accum):
                batch = task.batch(i, micro, cfg.batch_size)
                with _autocast(device, cfg.precision):
                    loss = task.loss(batch, i).loss
                (loss / cfg.grad_accum).backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            if ema is not None:
                ema.update(model)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:
                times.append(time.perf_counter() - t)
    model.load_state_dict(saved)
    model.zero_grad(set_to_none=True)
    per_step = sorted(times)[len(times) // 2]  # the median probe
    steps = max(1, round(seconds / per_step))
    logger.info("%.3f s per step: %d steps fill %.0f s", per_step, steps, seconds)
    return steps


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=uses_bf16(device, precision))


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines past `step` (written by a run that died after its last checkpoint)."""
    if not path.exists():
        return
    kept = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(ln + "\n" for ln in kept))
    tmp.replace(path)


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


class _Parallel:
    """The loop's model as the processes share it: plain, DDP or FSDP2 (train/distributed.py)."""

    def __init__(self, model: torch.nn.Module, cfg: LoopConfig, world: distributed.World, device: torch.device,
                 unused_parameters: bool = False):
        self.model, self.world = model, world  # `model`: the plain module, whose names the checkpoints use
        self.fsdp = world.distributed and cfg.parallel == "fsdp"
        self.skeleton = None
        if self.fsdp:
            import copy

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
        if cfg.compile:
            self.train_model = torch.compile(self.train_model)

    def autocast_on(self, device: torch.device, precision: str) -> bool:
        # under FSDP, bf16 is FSDP's own mixed precision (shard_model), not autocast
        return uses_bf16(device, precision) and not self.fsdp

    def no_sync(self, last: bool):
        """Skip the gradient all-reduce on all but the last micro-batch of a step."""
        import contextlib

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


def _ema_state(ema: EMA | None) -> dict[str, torch.Tensor] | None:
    """The EMA's full tensors (gathered from shards under FSDP; every process calls this)."""
    if ema is None:
        return None
    return dict(distributed.full_tensors(dict(ema.state_dict())))


@torch.no_grad()
def _load_ema_state(ema: EMA, state: dict[str, torch.Tensor], path: Path) -> None:
    own = ema.state_dict()
    check_keys(set(own), set(state), path, "EMA weights")
    for name, p in ema.params.items():
        p.copy_(distributed.shard_like(state[f"params.{name}"], p))


def train_loop(
    task: Task,
    cfg: LoopConfig,
    run_dir: str | Path,
    on_step: Callable[[int], None] | None = None,
    desc: str = "train",
    stage: str | None = None,
) -> LoopResult:
    """Train `task.model` for `cfg.steps` steps, resuming from `run_dir/state` if present.

    With `stage` (several stages share a run directory) the checkpoints go to
    `run_dir/state/<stage>/` and the log to `run_dir/metrics/<stage>.jsonl`;
    without it, to `run_dir/state/` and `run_dir/metrics.jsonl`.

    Under torchrun every process calls this with the same arguments
    (train/distributed.py); process 0 writes the log and the checkpoints, and
    `task.model` is the whole trained model on every process afterwards.

    `on_step(step)` is called after each completed optimizer step (after any
    checkpoint for that step is on disk); tests use it to interrupt a run.
    """
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    device = resolve_device(cfg.device)
    world = distributed.world()
    if cfg.grad_accum % world.size:
        raise TrainConfigError(
            f"loop.grad_accum ({cfg.grad_accum}) counts micro-batches over all processes and must be a multiple "
            f"of the {world.size} processes; e.g. loop.grad_accum={world.size} with loop.batch_size="
            f"{max(1, cfg.batch_size * cfg.grad_accum // world.size)} keeps this global batch"
        )
    world = distributed.init(device.type)
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)  # one GPU per process
    local_accum = cfg.grad_accum // world.size
    if stage:
        state_dir, metrics_path = run_dir / "state" / stage, run_dir / "metrics" / f"{stage}.jsonl"
        samples_dir = run_dir / "samples" / stage
    else:
        state_dir, metrics_path, samples_dir = run_dir / "state", run_dir / "metrics.jsonl", run_dir / "samples"
    if world.main:
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
    plain = task.model.to(device)
    plain.train()
    if cfg.activation_checkpointing:
        enable_activation_checkpointing(plain)
    par = _Parallel(plain, cfg, world, device, unused_parameters=getattr(task, "unused_parameters", False))
    bf16 = par.autocast_on(device, cfg.precision)
    logger.info("%s on %s%s, %s%s", desc, device, f" x {world.size} processes ({cfg.parallel})" if world.distributed else "",
                "bf16" if uses_bf16(device, cfg.precision) else "fp32", ", compiled" if cfg.compile else "")

    optimizer = torch.optim.AdamW(param_groups(plain, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    ema = EMA(plain, cfg.ema_decay).to(device) if cfg.ema_decay > 0 else None  # sharded like the model under FSDP

    start, elapsed = 0, 0.0  # elapsed: training seconds of earlier invocations (resume)
    ckpt = distributed.broadcast_object(latest_checkpoint(state_dir) if world.main else None)
    if ckpt is not None:
        data = read_checkpoint(ckpt, ema=ema is not None)
        par.load_model_state(data.model, ckpt)
        if ema is not None:
            _load_ema_state(ema, data.ema, ckpt)
        state = data.train_state
        par.load_optimizer_state(optimizer, state["optimizer"], state.get("optimizer_format"))
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start = int(state["step"])
        elapsed = float(state.get("seconds", 0.0))  # older checkpoints lack it
        if world.main:
            _truncate_metrics(metrics_path, start)
        logger.info("%s: resumed from %s", desc, ckpt)
    distributed.barrier()  # nobody trains before every process has loaded (and the log is truncated)

    tracker = None
    if world.main:
        tracker = Tracker.open(cfg.log, metrics_path, samples_dir, run_name=f"{run_dir.name}/{stage or desc}",
                               config={"loop": cfg.to_dict(), "stage": stage, "processes": world.size})
    last: dict[str, float] = {}
    bar = tqdm(total=cfg.steps, initial=start, desc=desc, disable=not (cfg.progress and world.main),
               dynamic_ncols=True, leave=False)
    seen, t_log = 0, time.perf_counter()
    t_train = t_log  # "seconds" in the log: training wall-clock so far, summed over resumes
    task.model = par.train_model  # loss() runs the forward through the wrapper (gradient averaging)
    try:
        for step in range(start, cfg.steps):
            optimizer.zero_grad(set_to_none=True)
            sums: dict[str, float] = {}
            for m in range(local_accum):
                micro = world.rank * local_accum + m  # this process's share of the step's global batch
                batch = task.batch(step, micro, cfg.batch_size)
                with par.no_sync(last=m == local_accum - 1):
                    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
                        out = task.loss(batch, step)
                    (out.loss / local_accum).backward()  # DDP / FSDP average over processes
                seen += task.items(batch)
                for k, v in out.metrics.items():
                    sums[k] = sums.get(k, 0.0) + v / local_accum
            if cfg.grad_clip > 0:
                norm = torch.nn.utils.clip_grad_norm_(plain.parameters(), cfg.grad_clip)
                sums["grad_norm"] = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update(plain)
            done = step + 1
            last = sums
            bar.update(1)
            if done % cfg.log_every == 0 or done == cfg.steps:
                last = sums = distributed.all_reduce_mean(sums, device)  # grad_norm is the same everywhere
                items = distributed.all_reduce_sum(seen, device)
                dt = time.perf_counter() - t_log
                rate = items / dt if dt > 0 else 0.0
                row = {"step": done, "lr": scheduler.get_last_lr()[0], **sums, "items_per_s": rate,
                       "seconds": round(elapsed + time.perf_counter() - t_train, 3)}
                if tracker is not None:
                    tracker.log(row)
                bar.set_postfix(loss=f"{sums.get('loss', 0.0):.4f}", ips=f"{rate:.0f}")
                seen, t_log = 0, time.perf_counter()
            if cfg.sample_every and hasattr(task, "preview") and (done % cfg.sample_every == 0 or done == cfg.steps):
                task.model = plain
                plain.eval()
                images, captions = task.preview(done)
                plain.train()
                task.model = par.train_model
                if tracker is not None:
                    from train.tracking import image_grid

                    tracker.images(done, image_grid(images, cols=max(1, len(images) // max(1, len(set(captions))))),
                                   captions)
            if done % cfg.ckpt_every == 0 or done == cfg.steps:
                train_state = {
                    "step": done,
                    "optimizer": par.optimizer_state(optimizer),
                    "optimizer_format": "by_name",
                    "scheduler": scheduler.state_dict(),
                    "rng": rng_state(),
                    "seconds": elapsed + time.perf_counter() - t_train,
                    "processes": world.size,
                }
                model_state, ema_state = par.model_state(), _ema_state(ema)  # collectives: every process
                if world.main:
                    save_checkpoint(state_dir, done, model_state, train_state, ema_state, keep=cfg.keep_checkpoints)
                distributed.barrier()  # the checkpoint is on disk before any process goes on
            if on_step is not None:
                on_step(done)
    finally:
        task.model = plain
        bar.close()
        if tracker is not None:
            tracker.close()
    if ema is not None:
        ema.copy_to(plain)  # the model leaves the loop with its averaged weights
    task.model = par.unwrapped()
    return LoopResult(cfg.steps, start, time.perf_counter() - t0, last)
