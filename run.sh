#!/usr/bin/env bash
# One entry point for a fresh machine with only Python 3.10+:
#   ./run.sh demo   -> create .venv, install, run `tessera demo`
#   ./run.sh test   -> create .venv, install (with dev extras), run the test suite
#   ./run.sh bench  -> create .venv, install (with the baseline and metrics extras), run `tessera bench`
# Extra arguments are passed on (e.g. ./run.sh demo --out runs/demo).
# Dependencies install at the versions pinned in constraints.txt (all but torch, which is
# installed first as a CPU build); docs/DEPENDENCIES.md says why and how to bump them.
set -euo pipefail
cd "$(dirname "$0")"
cmd="${1:-}"; shift || true
PY="${PYTHON:-python3}"
VENV="${TESSERA_VENV:-.venv}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1

if ! python -c "import torch" 2>/dev/null; then
    # A CPU build of torch: a local wheel if pip's find-links has one, otherwise
    # PyTorch's CPU index. A bare `pip install torch` would pull a multi-GB CUDA build.
    TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
    if ! pip install -q --no-index --no-deps "torch==${TORCH_VERSION}" 2>/dev/null; then
        pip install -q "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu
    fi
fi

case "$cmd" in
    demo)
        pip install -q -c constraints.txt -e .
        exec tessera demo "$@"
        ;;
    bench)
        pip install -q -c constraints.txt -e ".[metrics,baseline]"
        exec tessera bench "$@"
        ;;
    test)
        pip install -q -c constraints.txt -e ".[dev,metrics,baseline]"
        export HF_HUB_OFFLINE=1 WANDB_MODE=disabled
        lint-imports  # the import contracts in pyproject.toml ([tool.importlinter])
        exec python -m pytest -q --durations=15 "$@"  # the slowest tests, to keep the suite near 10 minutes
        ;;
    *)
        echo "usage: ./run.sh demo|test|bench [args...]" >&2
        exit 2
        ;;
esac
