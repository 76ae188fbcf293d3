#!/usr/bin/env bash
# CI check of the attention kernels on machines without a GPU (and without a CUDA build of torch):
# compile the torch-free translation units in csrc/attention/ with this machine's nvcc for sm_80,
# sm_90 and sm_90a (the wgmma kernels have real bodies only in the sm_90a pass), warnings as
# errors, and report registers / spills of every kernel. Nothing built here runs; the extension is
# built and tested on a GPU machine (benchmarks/gpu_attention.sh).
# Exits 0 with a message when nvcc is absent. Usage: .ci/compile_cuda_attention.sh [out_dir]
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-$(command -v nvcc || true)}
if [[ -z "$NVCC" ]]; then
  echo "SKIP: nvcc not found; attention kernels not compiled"
  exit 0
fi
OUT=${1:-$(mktemp -d)}
mkdir -p "$OUT"
"$NVCC" --version | tail -1
GENCODE=(-gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90a,code=sm_90a)
FLAGS=(-O3 -std=c++17 -Icsrc --expt-relaxed-constexpr -Werror all-warnings -Xptxas -v)
pids=()
for src in csrc/attention/attention_launch.cu csrc/attention/attention_mma.cu csrc/attention/attention_wgmma.cu; do
  obj="$OUT/$(basename "${src%.cu}").o"
  ("$NVCC" "${FLAGS[@]}" "${GENCODE[@]}" -c "$src" -o "$obj" > "$obj.log" 2>&1 || { grep -v "^ptxas info\|^    [0-9]* bytes stack" "$obj.log"; exit 1; }) &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
[[ $status -eq 0 ]] || { echo "FAIL: nvcc could not compile the attention kernels"; exit 1; }
# ptxas falls back to serialized wgmma (slow, but silent in the exit code) when it cannot prove
# the asynchronous accumulators safe: treat that as a failure.
if grep -q "wgmma.mma_async instructions are serialized" "$OUT"/attention_wgmma.o.log; then
  grep "serialized" "$OUT"/attention_wgmma.o.log | head -5
  echo "FAIL: wgmma serialized by ptxas"
  exit 1
fi
"$NVCC" "${GENCODE[@]}" -dlink "$OUT"/attention_*.o -o "$OUT/attention_dlink.o"
# Per kernel entry with a real body (placeholders use 4 registers): target, registers, spills.
awk '/Compiling entry function/ {fn=$7; arch=$9} /bytes stack frame/ {spill=$5 " B spilled"}
     /Used [0-9]+ registers/ {if ($5 > 4) print arch, $5 " regs,", spill, fn}' \
  "$OUT"/attention_mma.o.log "$OUT"/attention_wgmma.o.log | sed "s/'//g; s/_ZN8samplers9attention6detail//" | sort -u \
  > "$OUT/kernels.txt"
cat "$OUT/kernels.txt"
kernels=$(grep -c "Compiling entry function" "$OUT"/*.log | awk -F: '{s += $2} END {print s}')
maxreg=$(grep -ho "Used [0-9]* registers" "$OUT"/*.log | awk '{if ($2 > m) m = $2} END {print m}')
spilling=$(grep -h "bytes spill stores" "$OUT"/*.log | grep -vc "^ *0 bytes stack frame, 0 bytes spill stores" || true)
echo "OK: compiled $kernels kernel entries (sm_80 + sm_90 + sm_90a), at most $maxreg registers per thread, $spilling with a spill"
