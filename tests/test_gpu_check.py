"""benchmarks/gpu_check.sh end to end at toy sizes on the CPU (--smoke): every step runs and lands in the table."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_step_on_the_cpu(tmp_path):
    out = tmp_path / "check"
    p = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--smoke", "--device", "cpu", "--out",
                        str(out)], capture_output=True, text=True, timeout=900,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    table = json.loads((out / "gpu_check.json").read_text())["rows"]
    failed = [r for r in table if not r["ok"]]
    assert p.returncode == 0 and not failed, (failed, p.stdout[-2000:], p.stderr[-2000:])
    steps = [r["step"] for r in table]
    assert steps[0].startswith("tokenizer") and any(s.startswith("generator tiny") for s in steps)
    assert any(s.startswith("diffusion baseline") for s in steps) and any(s.startswith("training MFU") for s in steps)
    assert sum(s.startswith("sampling: jacobi") for s in steps) == 4  # 2 jacobi decoders x 2 batch sizes
    assert "| step | ok |" in (out / "gpu_check.md").read_text()


def test_gpu_check_refuses_a_machine_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "no CUDA GPU" in p.stderr
