"""The shared training loop: resume equals an uninterrupted run, checkpoints are atomic."""

import json
import time

import pytest
import torch

from train.checkpoint import latest_checkpoint
from train.errors import ResumeError
from train.config import config_from_dict
from train.errors import TrainConfigError
from train.loop import LoopConfig, LossOutput, steps_for_seconds, train_loop
from train.precision import uses_bf16


class ToyTask:
    """A small MLP with dropout regressing a fixed random target: exercises RNG state too."""

    def __init__(self, seed: int = 0):
        torch.manual_seed(seed)
        self.model = torch.nn.Sequential(
            torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Dropout(0.2), torch.nn.Linear(32, 1)
        )
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(64, 8, generator=g)
        self.y = self.x @ torch.randn(8, 1, generator=g)  # learnable: a linear target

    def batch(self, step, micro, batch_size):
        g = torch.Generator().manual_seed(step * 1000 + micro)  # a pure function of (step, micro)
        idx = torch.randint(0, len(self.x), (batch_size,), generator=g)
        return self.x[idx], self.y[idx]

    def loss(self, batch, step):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.model(x), y)
        return LossOutput(loss, {"loss": loss.item()})

    def items(self, batch):
        return len(batch[0])


def _cfg(**kw):
    base = dict(steps=12, batch_size=8, grad_accum=2, lr=1e-2, warmup_steps=3, ckpt_every=4,
                log_every=2, ema_decay=0.9, progress=False, device="cpu")
    base.update(kw)
    return LoopConfig(**base)


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


class Interrupt(Exception):
    pass


def test_loop_runs_on_cpu_and_learns(tmp_path):
    task = ToyTask()
    task.model.eval()
    first = task.loss(task.batch(0, 0, 64), 0).loss.item()
    res = train_loop(task, _cfg(steps=60, ema_decay=0.0), tmp_path)
    task.model.eval()  # disables dropout for the comparison
    assert res.step == 60 and res.resumed_from == 0
    assert task.loss(task.batch(0, 0, 64), 0).loss.item() < 0.3 * first
    rows = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(2, 61, 2))
    assert all({"loss", "lr", "items_per_s", "grad_norm"} <= set(r) for r in rows)


@pytest.mark.parametrize("kill_at", [5, 8, 11])
def test_resume_equals_uninterrupted(tmp_path, kill_at):
    ref = ToyTask()
    train_loop(ref, _cfg(), tmp_path / "ref")

    def die(step):
        if step == kill_at:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_loop(ToyTask(), _cfg(), tmp_path / "run", on_step=die)
    resumed_task = ToyTask(seed=99)  # different init: everything must come from the checkpoint
    res = train_loop(resumed_task, _cfg(), tmp_path / "run")
    assert res.resumed_from == (kill_at // 4) * 4
    a, b = _weights(ref.model), _weights(resumed_task.model)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bitwise on the CPU
    # the log holds each step once, as an uninterrupted run would have written it
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(2, 13, 2))


def test_half_written_checkpoint_is_ignored(tmp_path):
    train_loop(ToyTask(), _cfg(steps=4), tmp_path)
    state = tmp_path / "state"
    # a run killed while writing step 8 leaves only a temporary directory behind
    (state / ".tmp-step-00000008").mkdir()
    (state / ".tmp-step-00000008" / "model.safetensors").write_bytes(b"partial")
    assert latest_checkpoint(state).name == "step-00000004"
    res = train_loop(ToyTask(), _cfg(steps=8), tmp_path)
    assert res.resumed_from == 4
    assert latest_checkpoint(state).name == "step-00000008"
    assert sorted(p.name for p in state.glob("step-*")) == ["step-00000004", "step-00000008"]


def test_foreign_checkpoint_refused(tmp_path):
    train_loop(ToyTask(), _cfg(steps=4), tmp_path)
    other = ToyTask()
    other.model = torch.nn.Sequential(torch.nn.Linear(8, 4))  # another architecture
    with pytest.raises(ResumeError, match="do not match"):
        train_loop(other, _cfg(steps=8), tmp_path)


def test_config_errors_name_the_key():
    with pytest.raises(TrainConfigError, match="'stpes'"):
        config_from_dict(LoopConfig, {"stpes": 10})
    with pytest.raises(TrainConfigError, match="precision"):
        LoopConfig(precision="fp8")
    with pytest.raises(TrainConfigError, match="batch_size"):
        LoopConfig(batch_size=0)


@pytest.mark.parametrize("amx, avx512_bf16, expected", [(False, False, False), (True, False, True), (False, True, True)])
def test_bf16_native_follows_the_cpu(monkeypatch, amx, avx512_bf16, expected):
    # emulated bf16 on an AVX2 CPU made tokenizer steps 8x slower: bf16-native must fall back to fp32
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert uses_bf16(cpu, "bf16-native") is expected
    assert uses_bf16(cuda, "bf16-native") and uses_bf16(cuda, "auto")
    assert not uses_bf16(cpu, "auto") and not uses_bf16(cuda, "fp32")
    assert uses_bf16(cpu, "bf16")
    LoopConfig(precision="bf16-native")  # a valid value


def test_log_records_training_seconds_across_a_resume(tmp_path):
    def die(step):
        if step == 6:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_loop(ToyTask(), _cfg(), tmp_path, on_step=die)
    before = [json.loads(ln)["seconds"] for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_loop(ToyTask(), _cfg(), tmp_path)
    seconds = [json.loads(ln)["seconds"] for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(seconds) == 6 and seconds[:2] == before[:2]  # steps 2, 4 kept; 6 redone from checkpoint 4
    assert all(b >= a for a, b in zip(seconds, seconds[1:])) and seconds[0] > 0  # cumulative over the resume


def test_steps_for_seconds_leaves_the_run_unchanged(tmp_path):
    ref = ToyTask()
    train_loop(ref, _cfg(), tmp_path / "ref")
    probed = ToyTask()
    steps = steps_for_seconds(probed, _cfg(), seconds=3600.0)
    few = steps_for_seconds(probed, _cfg(), seconds=0.001)
    assert steps > 1000 and few == 1  # an hour holds many toy steps; a millisecond rounds up to one
    train_loop(probed, _cfg(), tmp_path / "probed")  # dropout RNG and weights as if never probed
    for k, v in _weights(ref.model).items():
        assert torch.equal(v, _weights(probed.model)[k]), k
    with pytest.raises(TrainConfigError, match="budget must be positive"):
        steps_for_seconds(probed, _cfg(), seconds=0)


class UnevenTask(ToyTask):
    """Steps whose time follows their batch's cost: the probe's first batches are cheap, later ones dear."""

    def cost(self, step):
        return 1.0 if step < 20 else 9.0

    def loss(self, batch, step):
        time.sleep(0.002 * UnevenTask.cost(self, step))
        return super().loss(batch, step)


def test_a_task_with_uneven_batches_is_budgeted_by_its_mean_cost():
    """The probe's batches (steps 0-12, cost 1) are cheaper than the run's (mean cost over 1,000 batches 8.84):
    seconds per unit of cost times the mean cost, where the probes' mean time alone gives ~8.84x the steps."""
    steps = steps_for_seconds(UnevenTask(), _cfg(), seconds=2.0)
    blind = UnevenTask()
    blind.cost = None  # the same steps, their costs unknown: the probes' mean
    naive = steps_for_seconds(blind, _cfg(), seconds=2.0)
    assert 8.84 / 1.5 < naive / steps < 8.84 * 1.5, (naive, steps)


def test_epoch_order_buckets_by_length():
    """With lengths, batches hold examples of similar lengths; still a permutation, still a pure function."""
    from train.loop import EpochOrder

    lengths = torch.randint(1, 200, (1000,))
    order = EpochOrder(1000, seed=3, lengths=lengths, block=10)
    epoch = torch.cat([order.indices(s, 0, 10) for s in range(100)])
    assert sorted(epoch.tolist()) == list(range(1000))  # every example once an epoch
    spread = [int(lengths[order.indices(s, 0, 10)].max() - lengths[order.indices(s, 0, 10)].min()) for s in range(100)]
    plain = EpochOrder(1000, seed=3)
    plain_spread = [int(lengths[plain.indices(s, 0, 10)].max() - lengths[plain.indices(s, 0, 10)].min())
                    for s in range(100)]
    assert sum(spread) * 4 < sum(plain_spread)
    again = EpochOrder(1000, seed=3, lengths=lengths, block=10)
    assert torch.equal(again.indices(57, 0, 10), order.indices(57, 0, 10))  # a resumed run sees the same batches
    maxima = [int(lengths[order.indices(s, 0, 10)].max()) for s in range(16)]
    assert maxima != sorted(maxima)  # the blocks are shuffled, not short-to-long
