"""The one training loop every stage uses (tokenizer, generator, diffusion baseline).

A stage describes itself as a `Task` (its model, how to build batch `i`, its
loss); `train_loop` owns everything else: device, precision (train.precision),
gradient accumulation, AdamW with warmup + cosine, EMA (train.ema), the
processes' share of the model (train.parallel), a progress bar, the metrics log
(train.tracking) and atomic checkpoints with resume (train.checkpoint).
`optimizer_step` is the step body, shared by the loop and by `steps_for_seconds`,
which times it to fit a run into a wall-clock budget.

Resume is exact: a batch is a pure function of (step, micro-batch index), and
every RNG is saved with the weights, so a run killed at any point and restarted
reaches the same weights as an uninterrupted one (bitwise on the CPU).

Validation: a task that holds rows out of training (`split_rows`, the stages'
`data.val_split`) and has `validate()` is measured on them every `val_every` steps
and at the end, on the weights the stage exports (the EMA's when there is one), in
eval mode, without gradients and with every RNG restored afterwards, so a run
trains bitwise the same with or without validation. The log gets a row
{"step", "val_loss", ..., "epoch"}; every row carries the epoch (passes over the
training rows so far). With `keep_best` the weights of the lowest validation
loss are kept in state/<stage>/best/ and are what the loop returns.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Protocol, Sequence

import torch
from tqdm.auto import tqdm

from pipelines import Run, resolve_device, write_atomic
from train import distributed
from train.checkpoint import (DamagedCheckpointError, latest_checkpoint, read_best, read_checkpoint, rng_state,
                              save_best, save_checkpoint, set_rng_state)
from train.distributed import PARALLEL
from train.ema import EMA
from train.errors import ResumeError, TrainConfigError
from train.parallel import ParallelModel, enable_activation_checkpointing
from train.precision import PRECISIONS, autocast, uses_bf16
from train.tracking import LOGGERS, Tracker

logger = logging.getLogger(__name__)  # not `log`: LoopConfig has a field of that name


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
    # when the latest checkpoint is damaged (a file truncated or not the bytes written), resume from the newest
    # intact one with a warning; off: stop with an error naming it, so no training is redone unasked
    resume_intact: bool = False
    val_every: int = 0  # steps between validation passes over the held-out rows (data.val_split); 0 = never
    keep_best: bool = False  # export the weights of the lowest validation loss (state/<stage>/best/), not the last
    # the most passes over the training rows: caps `steps` by the data's size (`capped_steps`); None = the
    # stage's default (the generator on own data: a cap that stops before samples become copies of training
    # rows, docs/DATA.md; the shapes world: none); 0 = no cap
    max_epochs: float | None = None

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
        for name in ("compile", "activation_checkpointing", "resume_intact", "keep_best"):
            if not isinstance(getattr(self, name), bool):
                raise TrainConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if int(self.sample_every) < 0:
            raise TrainConfigError(f"sample_every must be >= 0, got {self.sample_every!r}")
        if int(self.val_every) < 0:
            raise TrainConfigError(f"val_every must be >= 0, got {self.val_every!r}")
        if self.max_epochs is not None and not (isinstance(self.max_epochs, (int, float)) and self.max_epochs >= 0):
            raise TrainConfigError(f"max_epochs must be a number >= 0 (0: no cap), got {self.max_epochs!r}")
        if self.keep_best and not self.val_every:
            raise TrainConfigError("keep_best needs validation: set loop.val_every (and the stage's data.val_split)")

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
    # optional `cost(step) -> float`: the relative cost of step's batch (its padded tokens; steps_for_seconds)
    # optional `train_rows: int`: examples per epoch (the log's epoch count); optional `validate() ->
    # {"val_loss": ..., ...}`: metrics on held-out rows through `self.model` (the loop calls it without
    # gradients, in eval mode, every LoopConfig.val_every steps; None: the task holds no rows out)

    def batch(self, step: int, micro: int, batch_size: int) -> Any:
        """Micro-batch `micro` (of grad_accum, counted over all processes) of step `step`; depends on nothing else."""

    def loss(self, batch: Any, step: int) -> LossOutput: ...

    def items(self, batch: Any) -> int:
        """How many examples the batch holds (for images/s)."""


def split_rows(n: int, val: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training rows, validation rows) of `n` examples, disjoint and each sorted: `val` < 1 is a fraction of
    the rows (rounded, at least one when positive), `val` >= 1 a count, 0 none; which rows is fixed by `seed`
    alone (not by the training seed), so every stage and every rerun holds the same rows out."""
    if val < 0 or (val >= 1 and val != int(val)):
        raise TrainConfigError(f"data.val_split must be a fraction in [0, 1) or a whole count, got {val!r}")
    k = int(val) if val >= 1 else (max(1, round(val * n)) if val > 0 else 0)
    if k >= n:
        raise TrainConfigError(f"data.val_split={val!r} holds out {k} of {n} rows: nothing is left to train on")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + 17))
    return perm[k:].sort().values, perm[:k].sort().values


class EpochOrder:
    """Which examples micro-batch (step, micro) holds: a pure function of its arguments.

    The examples are read in epochs, each a fresh permutation of range(n) seeded by
    (seed, epoch), so a resumed run sees exactly the batches an uninterrupted one would.

    With `lengths` (n,) and `block` (the batch size), each run of BUCKET blocks of the
    permutation is sorted by length, cut into blocks and the blocks shuffled: every batch
    then holds examples of similar lengths (length bucketing, as in fairseq / HF's
    group_by_length samplers), still a pure function of (seed, epoch).

    With `rows` (the training rows of a split, `split_rows`) the epochs run over those rows only
    and `indices` returns rows of the whole set; the rest are never read.
    """

    BUCKET = 16  # blocks sorted together

    def __init__(self, n: int, seed: int, grad_accum: int = 1, lengths: torch.Tensor | None = None, block: int = 0,
                 rows: torch.Tensor | None = None):
        self.rows = rows
        if rows is not None:
            n, lengths = len(rows), (lengths[rows] if lengths is not None else None)
        if n < 1:
            raise TrainConfigError("the training set is empty")
        self.n, self.seed, self.accum = n, seed, grad_accum
        self.lengths, self.block = lengths, block
        self._perm: dict[int, torch.Tensor] = {}  # the current epoch's permutation only

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perm:
            g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            perm = torch.randperm(self.n, generator=g)
            if self.lengths is not None and self.block > 0:
                perm = self._bucketed(perm, g)
            self._perm = {epoch: perm}
        return self._perm[epoch]

    def _bucketed(self, perm: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        out = []
        for chunk in perm.split(self.block * self.BUCKET):
            chunk = chunk[torch.argsort(self.lengths[chunk], stable=True)]
            blocks = chunk.split(self.block)
            out += [blocks[i] for i in torch.randperm(len(blocks), generator=g).tolist()]
        return torch.cat(out)

    def indices(self, step: int, micro: int, batch_size: int) -> torch.Tensor:
        """(batch_size,) long indices into the training set."""
        start = (step * self.accum + micro) * batch_size  # the example's place in the whole run
        idx = torch.stack([self._permutation(g // self.n)[g % self.n] for g in range(start, start + batch_size)])
        return idx if self.rows is None else self.rows[idx]


class LoopResult(NamedTuple):
    step: int  # steps completed
    resumed_from: int  # 0 when the run started fresh
    seconds: float  # wall time of this invocation
    last_metrics: dict[str, float]


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



def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines past `step` (written by a run that died after its last checkpoint)."""
    if not path.exists():
        return
    kept = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    write_atomic(path, "".join(ln + "\n" for ln in kept))


class StepOutput(NamedTuple):
    metrics: dict[str, float]  # the loss terms averaged over the step's micro-batches, and grad_norm
    items: int  # examples this process saw in the step


def optimizer_step(task: Task, par: ParallelModel, optimizer: torch.optim.Optimizer, cfg: LoopConfig, step: int,
                   micros: Sequence[int], device: torch.device, bf16: bool) -> StepOutput:
    """One optimizer step over this process's micro-batches `micros`: forward, backward, clip, AdamW.

    The gradient all-reduce (DDP / FSDP) runs on the last micro-batch only; the loss
    of each is divided by their number, so the step sees the mean gradient.
    """
    optimizer.zero_grad(set_to_none=True)
    sums: dict[str, float] = {}
    items = 0
    for m, micro in enumerate(micros):
        batch = task.batch(step, micro, cfg.batch_size)
        with par.no_sync(last=m == len(micros) - 1):
            with autocast(device, bf16):
                out = task.loss(batch, step)
            (out.loss / len(micros)).backward()  # DDP / FSDP average over processes
        items += task.items(batch)
        for k, v in out.metrics.items():
            sums[k] = sums.get(k, 0.0) + v / len(micros)
    if cfg.grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(par.model.parameters(), cfg.grad_clip)
        sums["grad_norm"] = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    optimizer.step()
    return StepOutput(sums, items)


def capped_steps(cfg: LoopConfig, rows: int, max_epochs: float) -> int:
    """`cfg.steps`, or fewer: the steps of at most `max_epochs` passes over `rows` training rows (0: no cap)."""
    if max_epochs <= 0 or rows <= 0:
        return cfg.steps
    return max(1, min(cfg.steps, math.ceil(max_epochs * rows / (cfg.batch_size * cfg.grad_accum))))


COST_HORIZON = 1000  # batches whose mean cost stands for a run's (steps_for_seconds, tasks with a `cost`)


def steps_for_seconds(task: Task, cfg: LoopConfig, seconds: float, probe: int = 10) -> int:
    """How many optimizer steps of `task` fit in `seconds` on this machine: `probe` whole steps
    (`optimizer_step` with every micro-batch, then the EMA update) timed after warm-up ones, with a
    throwaway optimizer and EMA; the weights and RNGs are restored afterwards, so the run that follows
    is the one it would have been. Used to give two models one wall-clock budget (`tessera train
    --minutes`, `tessera bench`); checkpoint and logging time is not in it. With `cfg.compile` the probe
    runs compiled (three warm-up steps: the compile, then the recompile for varying shapes) and the
    compile's time comes off the budget, as the run compiles again. A task whose batches differ in cost
    gives `cost(step) -> float` (e.g. the padded tokens of step's batch): the probe then measures seconds
    per unit of cost, and the step time is that times the mean cost of the first COST_HORIZON batches."""
    if seconds <= 0:
        raise TrainConfigError(f"a training budget must be positive, got {seconds} s")
    device = resolve_device(cfg.device)
    model = task.model.to(device)
    model.train()
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    par = ParallelModel(model, cfg, distributed.world(), device)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
    ema = EMA(model, cfg.ema_decay).to(device) if cfg.ema_decay > 0 else None
    warm = 3 if cfg.compile else 1
    times = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # dropout draws from these
        for i in range(warm + probe):
            t = time.perf_counter()
            optimizer_step(task, par, optimizer, cfg, i, range(cfg.grad_accum), device, uses_bf16(device, cfg.precision))
            if ema is not None:
                ema.update(model)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t)
    model.load_state_dict(saved)
    model.zero_grad(set_to_none=True)
    cost = getattr(task, "cost", None)
    if cost is not None:
        # batches of different lengths (trimmed text, length buckets) cost different times, and a dozen of them
        # say little about the mean: seconds per unit of cost from the probe, times the mean cost of the run's
        # first COST_HORIZON batches (a pure function of the step). A mean of the probes' times alone set
        # 1.6-1.7x too many steps (runs/long6, runs/long7: docs/RESULTS.md).
        rate = sum(times[warm:]) / sum(cost(i) for i in range(warm, warm + probe))
        per_step = rate * sum(cost(i) for i in range(COST_HORIZON)) / COST_HORIZON
        warm_steps = rate * sum(cost(i) for i in range(warm))  # what the warm-up steps cost uncompiled
    else:
        # the mean without the slowest probe (a recompile, a hiccup): not the median
        kept = sorted(times[warm:])[:-1] if probe > 2 else times[warm:]
        per_step = sum(kept) / len(kept)
        warm_steps = warm * per_step
    logger.debug("probe steps (s): warm-up %s, timed %s", " ".join(f"{t:.3f}" for t in times[:warm]),
                 " ".join(f"{t:.3f}" for t in times[warm:]))
    compiling = max(0.0, sum(times[:warm]) - warm_steps) if cfg.compile else 0.0
    steps = max(1, round((seconds - compiling) / per_step))
    logger.info("%.3f s per step%s: %d steps fill %.0f s", per_step,
                f" after {compiling:.0f} s of compiling" if cfg.compile else "", steps, seconds)
    return steps


def fit_budget(cfg: Any, task: Task, seconds: float) -> Any:
    """The stage config `cfg` with the steps that fill `seconds` (steps_for_seconds), its warmup capped
    at a tenth of them."""
    steps = steps_for_seconds(task, cfg.loop, seconds)
    return cfg.override({"loop.steps": steps, "loop.warmup_steps": min(cfg.loop.warmup_steps, steps // 10)})


def resume_budget(cfg: Any, recorded: dict[str, Any]) -> Any:
    """The stage config `cfg` with the step count and warmup a budgeted run recorded when it began
    (the schedule depends on them, so a resume never probes again)."""
    return cfg.override({f"loop.{k}": recorded["loop"][k] for k in ("steps", "warmup_steps") if k in recorded["loop"]})


class _Resumed(NamedTuple):
    step: int  # the step the checkpoint was written after (0: a fresh run)
    seconds: float  # training wall-clock of the invocations before this one


def _resume(run: Run, stage: str | None, par: ParallelModel, optimizer: torch.optim.Optimizer, scheduler: Any,
            ema: EMA | None, world: distributed.World, desc: str, resume_intact: bool = False) -> _Resumed:
    """Load the latest checkpoint of `stage` into the model, optimizer, scheduler, EMA and RNGs, if there is one.

    Process 0 picks the checkpoint and every process reads it. A damaged latest checkpoint is a
    DamagedCheckpointError naming the newest intact one; with `resume_intact`, that one is used instead,
    with a warning (the steps after it are trained again).
    """
    def pick() -> tuple[Path | None, Any]:
        """Process 0: the checkpoint to resume from and its contents (None, None: a fresh run)."""
        try:
            latest = latest_checkpoint(run.state_dir(stage))
            return latest, read_checkpoint(latest, ema=ema is not None) if latest is not None else None
        except DamagedCheckpointError as e:
            if not resume_intact or e.intact is None:
                raise
            logger.warning("%s: %s is damaged: %s; resuming from the newest intact checkpoint, %s, as "
                           "resume_intact is set: the steps after it are trained again", desc, e.path, e.problem,
                           e.intact)
            return e.intact, read_checkpoint(e.intact, ema=ema is not None)

    ckpt, data, failure = None, None, None
    if world.main:
        try:
            ckpt, data = pick()
        except ResumeError as e:
            failure = e
    ckpt, message = distributed.broadcast_object((ckpt, None if failure is None else str(failure)))
    if failure is not None:
        raise failure
    if message is not None:  # every process stops with process 0's error instead of waiting for it
        raise ResumeError(message)
    if ckpt is None:
        return _Resumed(0, 0.0)
    if data is None:  # the other processes read the checkpoint process 0 picked
        data = read_checkpoint(ckpt, ema=ema is not None)
    par.load_model_state(data.model, ckpt)
    if ema is not None:
        ema.load_full_state(data.ema, ckpt)
    state = data.train_state
    par.load_optimizer_state(optimizer, state["optimizer"], state.get("optimizer_format"))
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    if world.main:
        _truncate_metrics(run.metrics_path(stage), int(state["step"]))
    logger.info("%s: resumed from %s", desc, ckpt)
    return _Resumed(int(state["step"]), float(state.get("seconds", 0.0)))  # older checkpoints lack seconds


def _save(run: Run, stage: str | None, done: int, par: ParallelModel, optimizer: torch.optim.Optimizer,
          scheduler: Any, ema: EMA | None, world: distributed.World, seconds: float, keep: int) -> None:
    """A checkpoint after step `done` (collectives: every process calls this; process 0 writes)."""
    train_state = {"step": done, "optimizer": par.optimizer_state(optimizer), "optimizer_format": "by_name",
                   "scheduler": scheduler.state_dict(), "rng": rng_state(), "seconds": seconds,
                   "processes": world.size}
    model_state = par.model_state()
    ema_state = ema.full_state() if ema is not None else None
    if world.main:
        save_checkpoint(run.state_dir(stage), done, model_state, train_state, ema_state, keep=keep)
    distributed.barrier()  # the checkpoint is on disk before any process goes on


def _preview(task: Task, par: ParallelModel, tracker: Tracker | None, done: int) -> None:
    """Sample grids from the plain model in eval mode (every process: an FSDP model needs all of them)."""
    task.model = par.model
    par.model.eval()
    images, captions = task.preview(done)
    par.model.train()
    task.model = par.train_model
    if tracker is not None:
        from train.tracking import image_grid

        tracker.images(done, image_grid(images, cols=max(1, len(images) // max(1, len(set(captions))))), captions)


def _validate(task: Task, par: ParallelModel, ema: EMA | None, device: torch.device) -> dict[str, float]:
    """task.validate() on the weights the stage exports (the EMA's, when there is one), in eval mode, without
    gradients, with every RNG stream restored afterwards (every process calls it: an FSDP model needs all)."""
    model = par.model
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()} if ema is not None else None
    if ema is not None:
        ema.copy_to(model)
    task.model = model
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            metrics = task.validate()
    finally:
        model.train()
        task.model = par.train_model
        if saved is not None:
            model.load_state_dict(saved)
    return metrics


class _Best:
    """The lowest validation loss so far and its weights in state/<stage>/best/ (LoopConfig.keep_best)."""

    def __init__(self, run: Run, stage: str | None, start: int):
        self.dir = run.state_dir(stage)
        found = read_best(self.dir, weights=False)
        # a best found after the checkpoint resumed from is recomputed (bitwise the same) when its step comes again
        self.loss = float(found[0]["val_loss"]) if found and int(found[0]["step"]) <= start else math.inf

    def offer(self, done: int, loss: float, par: ParallelModel, ema: EMA | None, world: distributed.World) -> None:
        if not loss < self.loss:
            return
        self.loss = loss
        weights = ema.full_state() if ema is not None else par.model_state()  # collectives: every process
        if world.main:
            save_best(self.dir, done, loss, weights)
        distributed.barrier()

    def restore(self, par: ParallelModel, ema: EMA | None, desc: str) -> None:
        found = read_best(self.dir)
        if found is None:
            return
        meta, weights = found
        if ema is not None:  # the best holds the EMA's weights (what the stage exports)
            ema.load_full_state(weights, self.dir / "best")
            ema.copy_to(par.model)
        else:
            par.load_model_state(weights, self.dir / "best")
        logger.info("%s: the weights of step %d (validation loss %.4f, the lowest) are the result", desc,
                    meta["step"], meta["val_loss"])


class _Overfitting:
    """One warning when the validation loss has risen well above its lowest after many passes over the data."""

    EPOCHS = 4.0  # passes over the training rows before a rise counts
    RISE = 0.02  # relative to the lowest validation loss so far

    def __init__(self, desc: str, keep_best: bool):
        self.desc, self.keep_best, self.low, self.low_step, self.warned = desc, keep_best, math.inf, 0, False

    def see(self, done: int, loss: float, epoch: float | None) -> None:
        if loss < self.low:
            self.low, self.low_step = loss, done
        elif (not self.warned and epoch is not None and epoch >= self.EPOCHS
              and loss > self.low * (1 + self.RISE)):
            self.warned = True
            logger.warning(
                "%s: the validation loss rose to %.4f from %.4f at step %d after %.1f passes over the training "
                "data: the model is fitting the training rows rather than the data (memorising). Fewer steps, more "
                "data%s would help", self.desc, loss, self.low, self.low_step, epoch,
                "" if self.keep_best else ", or loop.keep_best=true (export the weights of the lowest validation loss)")


def _check_accum(cfg: LoopConfig, world: distributed.World) -> None:
    if cfg.grad_accum % world.size:
        raise TrainConfigError(
            f"loop.grad_accum ({cfg.grad_accum}) counts micro-batches over all processes and must be a multiple "
            f"of the {world.size} processes; e.g. loop.grad_accum={world.size} with loop.batch_size="
            f"{max(1, cfg.batch_size * cfg.grad_accum // world.size)} keeps this global batch"
        )


class _Setup(NamedTuple):
    device: torch.device
    world: distributed.World
    par: ParallelModel
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: EMA | None
    micros: list[int]  # this process's micro-batches of each step
    bf16: bool  # autocast (under FSDP, bf16 is FSDP's own mixed precision instead)


def _setup(task: Task, cfg: LoopConfig, desc: str) -> _Setup:
    """Join the process group, place and wrap the model, build AdamW, the schedule and the EMA."""
    device = resolve_device(cfg.device)
    _check_accum(cfg, distributed.world())
    world = distributed.init(device.type)
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)  # one GPU per process
    plain = task.model.to(device)
    plain.train()
    if cfg.activation_checkpointing:
        enable_activation_checkpointing(plain)
    par = ParallelModel(plain, cfg, world, device, unused_parameters=getattr(task, "unused_parameters", False))
    logger.info("%s on %s%s, %s%s", desc, device, f" x {world.size} processes ({cfg.parallel})" if world.distributed else "",
                "bf16" if uses_bf16(device, cfg.precision) else "fp32", ", compiled" if cfg.compile else "")
    optimizer = torch.optim.AdamW(param_groups(plain, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    ema = EMA(plain, cfg.ema_decay).to(device) if cfg.ema_decay > 0 else None  # sharded like the model under FSDP
    local_accum = cfg.grad_accum // world.size
    micros = [world.rank * local_accum + m for m in range(local_accum)]  # this process's share of a step
    return _Setup(device, world, par, optimizer, scheduler, ema, micros, par.autocast_on(device, cfg.precision))


class _Meter:
    """Throughput since the last log line, and training wall-clock summed over resumes."""

    def __init__(self, elapsed: float):
        self.elapsed, self.seen = elapsed, 0
        self.t_train = self.t_log = time.perf_counter()

    def seconds(self) -> float:
        return self.elapsed + time.perf_counter() - self.t_train

    def row(self, done: int, metrics: dict[str, float], lr: float, device: torch.device) -> dict:
        """The log line of step `done` (all processes: the metrics and item counts are reduced)."""
        metrics = distributed.all_reduce_mean(metrics, device)  # grad_norm is the same everywhere
        rate = distributed.all_reduce_sum(self.seen, device) / max(time.perf_counter() - self.t_log, 1e-9)
        self.seen, self.t_log = 0, time.perf_counter()
        return {"step": done, "lr": lr, **metrics, "items_per_s": rate, "seconds": round(self.seconds(), 3)}


def train_loop(
    task: Task,
    cfg: LoopConfig,
    run_dir: str | Path | Run,
    on_step: Callable[[int], None] | None = None,
    desc: str = "train",
    stage: str | None = None,
) -> LoopResult:
    """Train `task.model` for `cfg.steps` steps, resuming from the run's checkpoints if present.

    With `stage` (several stages share a run directory) the checkpoints go to
    `state/<stage>/` and the log to `metrics/<stage>.jsonl`; without it, to
    `state/` and `metrics.jsonl` (pipelines.Run owns these paths). Under torchrun
    every process calls this with the same arguments (train/distributed.py);
    process 0 writes the log and the checkpoints, and `task.model` is the whole
    trained model on every process afterwards. `on_step(step)` is called after each
    completed optimizer step (after any checkpoint for that step is on disk).
    """
    t0 = time.perf_counter()
    run = Run(run_dir)
    s = _setup(task, cfg, desc)
    if s.world.main:
        run.metrics_path(stage).parent.mkdir(parents=True, exist_ok=True)
    start, elapsed = _resume(run, stage, s.par, s.optimizer, s.scheduler, s.ema, s.world, desc, cfg.resume_intact)
    distributed.barrier()  # nobody trains before every process has loaded (and the log is truncated)
    tracker = None
    if s.world.main:
        tracker = Tracker.open(cfg.log, run.metrics_path(stage), run.samples_dir(stage),
                               run_name=f"{run.root.name}/{stage or desc}",
                               config={"loop": cfg.to_dict(), "stage": stage, "processes": s.world.size})
    bar = tqdm(total=cfg.steps, initial=start, desc=desc, disable=not (cfg.progress and s.world.main),
               dynamic_ncols=True, leave=False)
    meter, last = _Meter(elapsed), {}
    validates = bool(cfg.val_every) and callable(getattr(task, "validate", None))
    if cfg.val_every and not validates:
        logger.warning("%s: loop.val_every is set but the task holds no rows out (set data.val_split): "
                       "no validation", desc)
    best = _Best(run, stage, start) if cfg.keep_best and validates else None
    watch = _Overfitting(desc, cfg.keep_best)
    rows = getattr(task, "train_rows", None)
    epoch = (lambda done: round(done * cfg.batch_size * cfg.grad_accum / rows, 4)) if rows else (lambda done: None)
    task.model = s.par.train_model  # loss() runs the forward through the wrapper (gradient averaging)
    try:
        for step in range(start, cfg.steps):
            out = optimizer_step(task, s.par, s.optimizer, cfg, step, s.micros, s.device, s.bf16)
            s.scheduler.step()
            if s.ema is not None:
                s.ema.update(s.par.model)
            done, last, meter.seen = step + 1, out.metrics, meter.seen + out.items
            bar.update(1)
            if done % cfg.log_every == 0 or done == cfg.steps:
                row = meter.row(done, out.metrics, s.scheduler.get_last_lr()[0], s.device)
                last = {k: v for k, v in row.items() if k in out.metrics}
                if rows:
                    row["epoch"] = epoch(done)
                if tracker is not None:
                    tracker.log(row)
                bar.set_postfix(loss=f"{row.get('loss', 0.0):.4f}", ips=f"{row['items_per_s']:.0f}")
            if validates and (done % cfg.val_every == 0 or done == cfg.steps):
                val = _validate(task, s.par, s.ema, s.device)
                if tracker is not None:
                    tracker.log({"step": done, **val, **({"epoch": epoch(done)} if rows else {})})
                logger.info("%s: step %d, %s", desc, done, ", ".join(f"{k} {v:.4f}" for k, v in val.items()))
                if best is not None:
                    best.offer(done, float(val["val_loss"]), s.par, s.ema, s.world)
                watch.see(done, float(val["val_loss"]), epoch(done))
            if cfg.sample_every and hasattr(task, "preview") and (done % cfg.sample_every == 0 or done == cfg.steps):
                _preview(task, s.par, tracker, done)
            if done % cfg.ckpt_every == 0 or done == cfg.steps:
                _save(run, stage, done, s.par, s.optimizer, s.scheduler, s.ema, s.world, meter.seconds(),
                      cfg.keep_checkpoints)
            if on_step is not None:
                on_step(done)
    finally:
        task.model = s.par.model
        bar.close()
        if tracker is not None:
            tracker.close()
    if s.ema is not None:
        s.ema.copy_to(s.par.model)  # the model leaves the loop with its averaged weights
    if best is not None:
        best.restore(s.par, s.ema, desc)  # ... or, with keep_best, with those of the lowest validation loss
    task.model = s.par.unwrapped()
    return LoopResult(cfg.steps, start, time.perf_counter() - t0, last)


__all__ = ["EpochOrder", "LoopConfig", "LoopResult", "LossOutput", "StepOutput", "Task", "capped_steps", "lr_lambda",
           "fit_budget", "optimizer_step", "param_groups", "resume_budget", "split_rows", "steps_for_seconds",
           "train_loop"]
