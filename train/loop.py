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

from train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

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

    def to_dict(self) -> dict:
        return asdict(self)


class LossOutput(NamedTuple):
    loss: torch.Tensor  # scalar to minimise
    metrics: dict[str, float]  # logged as they are


class Task(Protocol):
    """What a training stage provides to `train_loop`."""

    model: torch.nn.Module  # everything trainable (e.g. tokenizer + discriminator)

    def batch(self, step: int, micro: int, batch_size: int) -> Any:
        """Micro-batch `micro` of optimizer step `step`; must depend on nothing else."""

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

    `on_step(step)` is called after each completed optimizer step (after any
    checkpoint for that step is on disk); tests use it to interrupt a run.
    """
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if stage:
        state_dir, metrics_path = run_dir / "state" / stage, run_dir / "metrics" / f"{stage}.jsonl"
        metrics_path.parent.mkdir(exist_ok=True)
    else:
        state_dir, metrics_path = run_dir / "state", run_dir / "metrics.jsonl"
    device = resolve_device(cfg.device)
    model = task.model.to(device)
    model.train()
    logger.info("%s on %s, %s", desc, device, "bf16 autocast" if uses_bf16(device, cfg.precision) else "fp32")

    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    ema = EMA(model, cfg.ema_decay).to(device) if cfg.ema_decay > 0 else None

    start, elapsed = 0, 0.0  # elapsed: training seconds of earlier invocations (resume)
    ckpt = latest_checkpoint(state_dir)
    if ckpt is not None:
        state = load_checkpoint(ckpt, model, ema)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start = int(state["step"])
        elapsed = float(state.get("seconds", 0.0))  # older checkpoints lack it
        _truncate_metrics(metrics_path, start)

    last: dict[str, float] = {}
    bar = tqdm(
        total=cfg.steps, initial=start, desc=desc, disable=not cfg.progress, dynamic_ncols=True, leave=False
    )
    seen, t_log = 0, time.perf_counter()
    t_train = t_log  # "seconds" in the log: training wall-clock so far, summed over resumes
    with metrics_path.open("a") as log:
        for step in range(start, cfg.steps):
            optimizer.zero_grad(set_to_none=True)
            sums: dict[str, float] = {}
            for micro in range(cfg.grad_accum):
                batch = task.batch(step, micro, cfg.batch_size)
                with _autocast(device, cfg.precision):
                    out = task.loss(batch, step)
                (out.loss / cfg.grad_accum).backward()
                seen += task.items(batch)
                for k, v in out.metrics.items():
                    sums[k] = sums.get(k, 0.0) + v / cfg.grad_accum
            if cfg.grad_clip > 0:
                sums["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update(model)
            done = step + 1
            last = sums
            bar.update(1)
            if done % cfg.log_every == 0 or done == cfg.steps:
                dt = time.perf_counter() - t_log
                rate = seen / dt if dt > 0 else 0.0
                row = {"step": done, "lr": scheduler.get_last_lr()[0], **sums, "items_per_s": rate,
                       "seconds": round(elapsed + time.perf_counter() - t_train, 3)}
                log.write(json.dumps(row) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{sums.get('loss', 0.0):.4f}", ips=f"{rate:.0f}")
                seen, t_log = 0, time.perf_counter()
            if done % cfg.ckpt_every == 0 or done == cfg.steps:
                train_state = {
                    "step": done,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": rng_state(),
                    "seconds": elapsed + time.perf_counter() - t_train,
                }
                save_checkpoint(state_dir, done, model, train_state, ema, keep=cfg.keep_checkpoints)
            if on_step is not None:
                on_step(done)
    bar.close()
    if ema is not None:
        ema.copy_to(model)  # the model leaves the loop with its averaged weights
    return LoopResult(cfg.steps, start, time.perf_counter() - t0, last)
