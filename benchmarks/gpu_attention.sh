#!/usr/bin/env bash
# Everything the attention kernels need a GPU for, in one go: build the extension (with sm_90a on
# a compute-capability-9.0 GPU, for the wgmma kernel), run the CUDA tests, check the kernels on
# structured inputs (--diagnose), benchmark against SDPA's backends, and run compute-sanitizer
# memcheck over small calls of every kernel. Logs and JSON go to $OUT (default benchmarks/out).
# Each step is time-boxed and a failing step does not stop the later ones.
#   usage: bash benchmarks/gpu_attention.sh [quick]    (quick: no tests, no memcheck)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/benchmarks/out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
MODE=${1:-full}
if [[ -z "${TORCH_CUDA_ARCH_LIST:-}" ]]; then
  cap=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  # wgmma exists only in the arch-specific sm_90a target; sm_90a code runs on 9.0 devices only.
  [[ "$cap" == "9.0" ]] && export TORCH_CUDA_ARCH_LIST=9.0a || export TORCH_CUDA_ARCH_LIST=$cap
fi
echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST" | tee "$OUT/env.txt"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv | tee -a "$OUT/env.txt"

step() { echo; echo "=== $1 ($(date +%T))"; }

step build
( time timeout 300 $PY -c "
import torch
from samplers.ops import attention as A, _build
print(A._load_kernel(), _build.BUILD_STATUS.get(A._EXT_NAME))
d = torch.cuda.current_device()
print('caps', torch.ops.samplers.attention_caps(d), 'auto kernel:', torch.ops.samplers.attention_kernel_name(d))
" ) 2>&1 | tee "$OUT/build.log"

step diagnose
timeout 120 $PY benchmarks/bench_attention.py --diagnose --json "$OUT/diagnose.json" 2>&1 | tail -80 | tee "$OUT/diagnose.log"

step bench
timeout 300 $PY benchmarks/bench_attention.py --json "$OUT/bench_attention.json" 2>&1 | tee "$OUT/bench.log" | tail -12


if [[ "$MODE" != quick ]]; then
  step tests
  timeout 300 $PY -m pytest -q -p no:cacheprovider -m cuda tests/test_ops_attention.py --maxfail=15 -rf 2>&1 | tail -40 | tee "$OUT/tests.log"
fi

if [[ "$MODE" != quick ]]; then
  step memcheck
  timeout 240 compute-sanitizer --tool memcheck --print-limit 20 $PY benchmarks/bench_attention.py --sanitize \
    > "$OUT/memcheck.log" 2>&1
  echo "exit $?" >> "$OUT/memcheck.log"
  tail -6 "$OUT/memcheck.log"
fi
step done
