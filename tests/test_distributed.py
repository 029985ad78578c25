"""Several processes under torchrun (gloo, on the CPU): the same run as one process, and resumable across counts.

Each launch starts real processes (`python -m torch.distributed.run`), the way a user runs it;
the toy task is tests/dist_toy.py.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
import dist_toy  # noqa: E402
from tiny import GEN, TOK, set_args  # noqa: E402

from train.errors import TrainConfigError  # noqa
from train.loop import train_loop  # noqa: E402

SCRIPT = Path(__file__).parent / "dist_toy.py"


def _launch(run: Path, nproc: int, *args: str, expect_ok: bool = True) -> None:
    if nproc == 1:
        cmd = [sys.executable, str(SCRIPT), str(run), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(SCRIPT), str(run), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if expect_ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    else:
        assert proc.returncode != 0, "the run was meant to die mid-way"


def _losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def _assert_same_run(a: Path, b: Path) -> None:
    la, lb = _losses(a), _losses(b)
    assert [s for s, _ in la] == [s for s, _ in lb] == list(range(1, 13))
    for (_, x), (_, y) in zip(la, lb):
        assert abs(x - y) <= 1e-6 * max(1.0, abs(x)), (la, lb)
    wa, wb = load_file(str(a / "final.safetensors")), load_file(str(b / "final.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One process, global batch 16 (2 micro-batches of 8), 12 steps."""
    run = tmp_path_factory.mktemp("dist") / "one"
    _launch(run, 1)
    return run


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_follow_the_one_process_loss_curve(reference, tmp_path, parallel):
    run = tmp_path / parallel
    _launch(run, 2, "--parallel", parallel)
    _assert_same_run(reference, run)
    assert (run / "state" / "step-00000012" / "model.safetensors").is_file()


@pytest.mark.parametrize("first,then", [((2, "fsdp"), (1, "ddp")), ((1, "ddp"), (2, "ddp"))])
def test_a_killed_run_resumes_on_another_process_count(reference, tmp_path, first, then):
    run = tmp_path / "run"
    _launch(run, first[0], "--parallel", first[1], "--kill-at", "7", expect_ok=False)
    assert (run / "state" / "latest").read_text().strip() == "step-00000006"
    assert not (run / "final.safetensors").exists()
    _launch(run, then[0], "--parallel", then[1])
    _assert_same_run(reference, run)  # and bitwise on this CPU in practice: the resume is exact


def test_grad_accum_must_split_over_the_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(TrainConfigError, match="multiple of the 3 processes"):
        train_loop(dist_toy.ToyTask(), dist_toy.config(), tmp_path)


# --------------------------------------------------------------------------- the generator, through the CLI
GEN_DIST = {**GEN, "loop.batch_size": 4, "loop.grad_accum": 2}  # 2 micro-batches: one per process


def _tessera(nproc: int, *args: str, **popen) -> subprocess.Popen:
    """`tessera ARGS` in 1 process, or `torchrun --nproc_per_node N -m tessera.cli -- ARGS`."""
    launcher = [sys.executable, "-m", "tessera.cli"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
        "tessera.cli", "--"]  # `--`: torchrun's own options (--run-path, --log-dir) would swallow ours
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.Popen([*launcher, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **popen)


def _ok(proc: subprocess.Popen) -> None:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory) -> Path:
    """A run holding a tiny tokenizer (its generator is trained by each test in a copy)."""
    run = tmp_path_factory.mktemp("cli") / "tok"
    _ok(_tessera(1, "train-tokenizer", "--run", str(run), "--no-progress", *set_args(TOK)))
    return run


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _generator_losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (run / "metrics" / "generator.jsonl").read_text().splitlines())]


def test_torchrun_tessera_train_fsdp_matches_one_process(tokenized, tmp_path):
    one, two = _copy(tokenized, tmp_path / "one"), _copy(tokenized, tmp_path / "two")
    args = ["--no-progress", *set_args({**GEN_DIST, "loop.steps": 6, "loop.ckpt_every": 2})]
    _ok(_tessera(1, "train", "--run", str(one), *args))
    _ok(_tessera(2, "train", "--run", str(two), *args, "--parallel", "fsdp"))
    a, b = _generator_losses(one), _generator_losses(two)
    assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3, 4, 5, 6]
    for (_, x), (_, y) in zip(a, b):
        assert abs(x - y) <= 1e-5 * abs(x), (a, b)
    wa = load_file(str(one / "generator" / "model.safetensors"))
    wb = load_file(str(two / "generator" / "model.safetensors"))  # exported whole from the shards
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)


def test_torchrun_training_killed_resumes_in_one_process(tokenized, tmp_path):
    """Kill a 2-process DDP run once it has a checkpoint, finish it in one process: the same run as unbroken."""
    import signal
    import time

    ref, run = _copy(tokenized, tmp_path / "ref"), _copy(tokenized, tmp_path / "run")
    args = ["--no-progress", *set_args({**GEN_DIST, "loop.steps": 150, "loop.ckpt_every": 5, "loop.log_every": 5})]
    proc = _tessera(2, "train", "--run", str(run), *args)
    latest = run / "state" / "generator" / "latest"
    deadline = time.monotonic() + 240
    while not (latest.exists() and latest.read_text().strip() >= "step-00000010") and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    # as a scheduler preempting the job: torchrun passes SIGTERM on to its workers, which die mid-step
    # (SIGKILL to the launcher alone would leave its workers running in their own sessions)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    killed_at = int(latest.read_text().strip().split("-")[1])
    assert killed_at < 150 and not (run / "generator").exists(), "the run finished before it could be killed"
    _ok(_tessera(1, "train", "--run", str(run), *args))
    _ok(_tessera(1, "train", "--run", str(ref), *args))
    assert _generator_losses(run) == _generator_losses(ref)  # steps logged once each, the same numbers
    wa = load_file(str(ref / "generator" / "model.safetensors"))
    wb = load_file(str(run / "generator" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)
