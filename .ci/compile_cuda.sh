#!/usr/bin/env bash
# CI check of the CUDA kernels on machines without a GPU (and without a CUDA build of torch):
# compile the torch-free translation units in csrc/update/ with this machine's nvcc for sm_80 and
# sm_90, with warnings as errors, and report registers / spills of every kernel. Nothing built here
# runs; the full extension is built and tested on a GPU machine (benchmarks/gpu_update.sh).
# Exits 0 with a message when nvcc is absent. Usage: .ci/compile_cuda.sh [out_dir]
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-$(command -v nvcc || true)}
if [[ -z "$NVCC" ]]; then
  echo "SKIP: nvcc not found; CUDA kernels not compiled"
  exit 0
fi
OUT=${1:-$(mktemp -d)}
mkdir -p "$OUT"
"$NVCC" --version | tail -1
GENCODE=(-gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90)
FLAGS=(-O3 -std=c++17 -Icsrc --expt-relaxed-constexpr -Xcompiler -fPIC -Werror all-warnings -Xptxas -v)
pids=()
for src in csrc/update/update_launch.cu csrc/update/update_launch_f32.cu csrc/update/update_launch_f16.cu csrc/update/update_launch_bf16.cu; do
  obj="$OUT/$(basename "${src%.cu}").o"
  ("$NVCC" "${FLAGS[@]}" "${GENCODE[@]}" -c "$src" -o "$obj" > "$obj.log" 2>&1 || { grep -v "^ptxas info\|^    [0-9]* bytes stack" "$obj.log"; exit 1; }) &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
[[ $status -eq 0 ]] || { echo "FAIL: nvcc could not compile the kernels"; exit 1; }
# Link the objects into one shared library, as the extension does: duplicate or missing symbols
# between the translation units fail here, not first on the GPU machine.
"$NVCC" "${GENCODE[@]}" -shared "$OUT"/update_launch*.o -o "$OUT/libsamplers_update_kernels.so" -Xlinker --no-undefined
nm -DC --defined-only "$OUT/libsamplers_update_kernels.so" > "$OUT/symbols.txt"
for sym in "samplers::launch_sampler_update(" "samplers::launch_philox_normal("; do
  grep -qF "$sym" "$OUT/symbols.txt" || { echo "FAIL: $sym not exported"; exit 1; }
done
kernels=$(grep -c "Compiling entry function" "$OUT"/*.log | awk -F: '{s += $2} END {print s}')
maxreg=$(grep -ho "Used [0-9]* registers" "$OUT"/*.log | awk '{if ($2 > m) m = $2} END {print m}')
spilling=$(grep -h "bytes spill stores" "$OUT"/*.log | grep -vc "^ *0 bytes stack frame, 0 bytes spill stores" || true)
echo "OK: compiled $kernels kernel entries (sm_80 + sm_90), at most $maxreg registers per thread, $spilling with a small spill"
