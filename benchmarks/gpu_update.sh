#!/usr/bin/env bash
# The fused sampler update on a GPU machine, in one script: JIT-build the extension, run the CUDA
# tests, run compute-sanitizer memcheck on a script exercising every kernel variant family, and
# benchmark (bench_update.py) 16x4x128x128 fp16 and 64x4x128x128 fp32 / fp16. Logs and JSON go
# to $OUT (default out/gpu_update). Run from anywhere; it works in the repository root.
#
#   OUT=/tmp/out bash benchmarks/gpu_update.sh [all|build|test|memcheck|quick|bench]...   (default: all)
#   BENCH_CONFIGS="64x4x128x128 fp32,16x4x128x128 fp16" ... bench     (the shapes bench runs)
#   BENCH_ARGS="--reps 30"                                              (extra bench_update.py flags)
#
# diffusers is not installed there: wheels in .whl/ (see /work/.library/device/README.md's notes)
# are installed into /tmp/site first. A library built by an earlier run can be reused: put
# samplers_update.so (the file this script copies to $OUT) in build/gpu/ and the build is skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/out/gpu_update}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export TORCH_EXTENSIONS_DIR=$ROOT/build/torch_extensions
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
phases=("$@")
[[ ${#phases[@]} -eq 0 ]] && phases=(all)
want() { for p in "${phases[@]}"; do [[ $p == all || $p == "$1" ]] && return 0; done; return 1; }
status=0
note() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$OUT/summary.log"; }

if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site || note "wheel install failed (diffusers rows will be skipped)"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv >> "$OUT/summary.log" 2>&1
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" | tee -a "$OUT/summary.log"

if [[ -f build/gpu/samplers_update.so ]]; then
  cp build/gpu/samplers_update.so samplers/_C_update.so  # imported as the prebuilt samplers._C_update
  note "reusing build/gpu/samplers_update.so as samplers._C_update"
fi

if want build || want all; then
  note "build (JIT)"
  start=$SECONDS
  SAMPLERS_VERBOSE_BUILD=1 $PY - <<'PY' > "$OUT/build.log" 2>&1
import torch
from samplers.ops import _build, update
ok = update._ops_loaded()
st = _build.BUILD_STATUS[update.EXTENSION]
print("loaded:", ok, st)
print("cuda kernel:", torch._C._dispatch_has_kernel_for_dispatch_key("samplers::sampler_update", "CUDA"))
assert ok and st.cuda, "the CUDA extension did not build"
PY
  rc=$?
  grep -i "error\|loaded:\|cuda kernel:" "$OUT/build.log" | tail -n 20
  [[ $rc -eq 0 ]] || status=1
  note "build exit code $rc, took $((SECONDS - start)) s"
  so=$(ls "$TORCH_EXTENSIONS_DIR"/samplers_update/samplers_update.so 2>/dev/null | head -1)
  [[ -n "$so" ]] && cp "$so" "$OUT/samplers_update.so"
fi

if want memcheck || want all; then
  note "compute-sanitizer memcheck"
  cat > /tmp/memcheck_update.py <<'PY'
# Every kernel family once: vector and scalar paths, each dtype, each noise mode, CFG, history,
# write_x0 on/off, per-sample and broadcast coefficients, odd sizes, a misaligned view, the noise op.
import torch
from samplers.ops import update
from samplers.ops.reference import NUM_COEFFS, batch_seeds
torch.manual_seed(0)
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    for shape in [(2, 4, 16, 16), (3, 5, 7), (1, 1), (5, 1023)]:
        x = torch.randn(shape, device="cuda", dtype=dtype)
        for per_sample in (False, True):
            c = torch.randn(shape[0] if per_sample else 1, NUM_COEFFS, device="cuda")
            c[:, 3] = 1.5
            for kw in [dict(), dict(uncond=x * 2, seeds=batch_seeds(1, shape[0], device="cuda")),
                       dict(noise=x * 3, history=[x + 1, x - 1]), dict(history=[x, x - 2, x + 2, x * 0.5], seeds=batch_seeds(2, shape[0], device="cuda"))]:
                for wx in (True, False):
                    update.sampler_update(x, x * 0.5, c, write_x0=wx, backend="fused", **kw)
        buf = torch.randn(x.numel() + 1, device="cuda", dtype=dtype)
        xm = buf[1:].view(shape)
        update.sampler_update(xm, xm, c, seeds=batch_seeds(3, shape[0], device="cuda"), backend="fused")
        if len(shape) == 4:
            xc = x.contiguous(memory_format=torch.channels_last)
            update.sampler_update(xc, xc, c, seeds=batch_seeds(4, shape[0], device="cuda"), backend="fused")
for n in (1, 5, 4096):
    torch.ops.samplers.philox_normal(batch_seeds(1, 3, device="cuda"), 2, n)
torch.cuda.synchronize()
print("memcheck script done")
PY
  if command -v compute-sanitizer >/dev/null; then
    compute-sanitizer --tool memcheck --error-exitcode 3 --print-limit 20 $PY /tmp/memcheck_update.py > "$OUT/memcheck.log" 2>&1
    rc=$?
    [[ $rc -eq 0 ]] || status=1
    tail -n 3 "$OUT/memcheck.log" | tee -a "$OUT/summary.log"
    note "memcheck exit code $rc"
  else
    note "compute-sanitizer not found"
  fi
fi

if want test || want all; then
  note "CUDA tests"
  $PY -m pytest -q -p no:cacheprovider -m cuda tests/test_ops_update.py tests/test_ops_noise.py 2>&1 | tee "$OUT/tests_cuda.log" | tail -n 15
  [[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
  tail -n 1 "$OUT/tests_cuda.log" >> "$OUT/summary.log"
fi

if want quick; then  # fused op, copy and eager only: a fast look at the kernel's bandwidth
  for cfg in "64x4x128x128 fp32" "16x4x128x128 fp16"; do
    set -- $cfg
    note "quick bench $1 $2"
    $PY benchmarks/bench_update.py --device cuda --shape "$1" --dtype "$2" --no-compile --no-diffusers --reps 20 \
      2>&1 | tee -a "$OUT/quick.log" | tail -n 22
  done
fi

if want bench || want all; then
  IFS=',' read -r -a configs <<< "${BENCH_CONFIGS:-16x4x128x128 fp16,64x4x128x128 fp32,64x4x128x128 fp16}"
  for cfg in "${configs[@]}"; do
    set -- $cfg
    note "bench $1 $2"
    $PY benchmarks/bench_update.py --device cuda --shape "$1" --dtype "$2" --json "$OUT/bench_$1_$2.json" ${BENCH_ARGS:-} \
      2>&1 | grep -v "scale_model_input" | tee "$OUT/bench_$1_$2.log" | tail -n 26
    [[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
  done
fi
note "done, status $status"
exit $status
