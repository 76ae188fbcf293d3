#!/usr/bin/env bash
# What is still to measure on a GPU after gpu_update.sh / gpu_attention.sh, in one call that fits
# one device command (10 minutes): build both extensions (JIT), run every CUDA test in tests/,
# time the 50-step sampling loop (issue 3's <= 10 us/step overhead with a CUDA graph, diffusers
# in the same run), time end-to-end sampling with the reference DiT, and look again at DDIM
# eta=0 fp32 against torch.compile. Logs and JSON go to $OUT (default out/gpu_all).
#
#   OUT=/tmp/out bash benchmarks/gpu_all.sh
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/out/gpu_all}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} TORCH_EXTENSIONS_DIR=$ROOT/build/torch_extensions
if [[ -z "${TORCH_CUDA_ARCH_LIST:-}" ]]; then
  cap=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  [[ "$cap" == "9.0" ]] && export TORCH_CUDA_ARCH_LIST=9.0a || export TORCH_CUDA_ARCH_LIST=$cap
fi
if compgen -G ".whl/*.whl" >/dev/null; then  # diffusers is not installed on the GPU machine
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
status=0
step() { echo; echo "=== $1 ($(date -u +%T))" | tee -a "$OUT/summary.log"; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/env.txt"

step "build (JIT) update + attention"
timeout 420 $PY - > "$OUT/build.log" 2>&1 <<'PY' || status=1
import torch
from samplers.ops import _build, attention as A, update
print("update:", update._ops_loaded(), _build.BUILD_STATUS.get(update.EXTENSION))
print("attention:", A._load_kernel(), _build.BUILD_STATUS.get(A._EXT_NAME))
PY
tail -n 3 "$OUT/build.log" | tee -a "$OUT/summary.log"

step "CUDA tests"
timeout 300 $PY -m pytest -q -p no:cacheprovider -rs -m cuda tests 2>&1 | tee "$OUT/tests_cuda.log" | tail -n 15
[[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
tail -n 1 "$OUT/tests_cuda.log" >> "$OUT/summary.log"

step "loop overhead, 1x4x64x64 fp16, 50 steps"
timeout 120 $PY benchmarks/bench_loop.py --device cuda --shape 1x4x64x64 --dtype fp16 --steps 50 \
  --scheduler ddim,ddpm,euler,euler_ancestral --reps 30 --json "$OUT/loop.json" 2>&1 | tee "$OUT/loop.log" | tail -n 14 || status=1

step "DiT end-to-end sampling"
timeout 120 $PY -m samplers bench --problem dit:preset=dit-s --scheduler ddim,euler,heun --steps 10,50 --samples 64 \
  --device cuda --dtype float16 --quiet --json "$OUT/dit_s.json" 2>&1 | tee "$OUT/dit.log" | tail -n 14 || status=1

step "DDIM eta=0 fp32 against torch.compile, 64x4x128x128"
timeout 150 $PY benchmarks/bench_update.py --device cuda --shape 64x4x128x128 --dtype fp32 --reps 30 \
  --json "$OUT/update_64x4_fp32.json" 2>&1 | tee "$OUT/update_fp32.log" | tail -n 26 || status=1
step "done, status $status"
exit $status
