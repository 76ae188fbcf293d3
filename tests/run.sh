#!/usr/bin/env bash
# The test command from the README: sets up .venv (CPU torch 2.13.0 first, so no CUDA build is
# pulled), installs samplers with its test extra, and runs the whole suite (GPU tests skip
# themselves without a GPU). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "torch==2.13.0"
fi
.venv/bin/python -m pip install -q -e ".[test,lint]"
# k-diffusion parity tests load its sampling module only: --no-deps keeps torch at the CPU build
# (k-diffusion's own requirements would pull torchvision and a CUDA torch).
.venv/bin/python -m pip install -q --no-deps k-diffusion==0.1.1.post1 torchsde==0.2.6 torchdiffeq==0.2.5 trampoline==0.1.2
# The house style is checked before the tests: lint and format (ruff), C++/CUDA format (clang-format),
# types (mypy over samplers/, configured in pyproject.toml).
.venv/bin/ruff check .
.venv/bin/ruff format --check .
find csrc \( -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' \) -print0 | xargs -0 .venv/bin/clang-format --dry-run --Werror
.venv/bin/mypy samplers
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
