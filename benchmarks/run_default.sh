#!/usr/bin/env bash
# The README's main command: set up .venv like tests/run.sh, then run `samplers bench` on its
# built-in default problem (several schedulers on a 2-D Gaussian mixture, CPU, under a minute).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[bench]"
exec .venv/bin/samplers bench "$@"
