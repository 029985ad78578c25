#!/usr/bin/env bash
# The GPU check: the GPU presets for a few steps, training MFU, sampling speed per decoder, the batch-1
# memory bound; one table (benchmarks/gpu_check.py says what each row is). Run it whenever a CUDA GPU is
# available and record the table in docs/RESULTS.md. Arguments go to gpu_check.py (--out DIR, --smoke).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
exec "$PY" benchmarks/gpu_check.py "$@"
