// Validation, kernel choice and launch of the attention forward (torch-free entry points).
#include <cstdio>
#include <mutex>

#include "attention/attention_launch.h"

namespace samplers {
namespace attention {

namespace {

constexpr int kMaxDevices = 64;

int fail(char* err, size_t errlen, const char* msg) {
  if (err != nullptr && errlen > 0) std::snprintf(err, errlen, "%s", msg);
  return 1;
}

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }

// The wgmma variant kAuto launches, per head dim: the fastest on an H100 in the measurements
// recorded in benchmarks/RESULTS.md (D=64: cp.async loads, 64-key tiles, 2 CTAs per SM;
// D=128: TMA loads, 128-key tiles).
Impl auto_wgmma(int head_dim) { return head_dim == 64 ? Impl::kWgmmaAlt : Impl::kWgmmaTma; }

}  // namespace

int attention_capabilities(int device) {
  static std::mutex mu;
  static int cache[kMaxDevices];
  static bool known[kMaxDevices] = {};
  if (device < 0 || device >= kMaxDevices) return 0;
  std::lock_guard<std::mutex> lock(mu);
  if (known[device]) return cache[device];
  int major = 0, minor = 0, current = 0;
  if (cudaGetDevice(&current) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  int caps = 0;
  if (major >= 8) caps |= kCapMma;
  if (major == 9 && minor == 0) {
    // Function attributes are per device: ask on the device in question.
    if (current != device) cudaSetDevice(device);
    if (detail::wgmma_kernel_registers() > 64) caps |= kCapWgmma;
    if (current != device) cudaSetDevice(current);
  }
  cache[device] = caps;
  known[device] = true;
  return caps;
}

const char* attention_auto_kernel_name(int device) {
  const int caps = attention_capabilities(device);
  if (caps & kCapWgmma)
    return "wgmma (sm_90a): D=64 cp.async loads, 64-key tiles, 2 CTAs/SM; D=128 TMA loads, 128-key tiles";
  if (caps & kCapMma) return "mma.sync (sm_80+)";
  return "none";
}

int attention_forward(const AttnParams& p, Impl impl, void* stream, char* err, size_t errlen) {
  if (p.head_dim != 64 && p.head_dim != 128) return fail(err, errlen, "head_dim must be 64 or 128");
  if (p.batch <= 0 || p.heads <= 0 || p.len_q <= 0 || p.len_k <= 0)
    return fail(err, errlen, "batch, heads, len_q and len_k must be positive");
  if (static_cast<int64_t>(p.batch) * p.heads > 65535)
    return fail(err, errlen, "batch * heads must be at most 65535 (grid y limit)");
  if (!aligned16(p.q) || !aligned16(p.k) || !aligned16(p.v))
    return fail(err, errlen, "q, k and v must be 16-byte aligned");
  if ((reinterpret_cast<uintptr_t>(p.out) & 3u) != 0) return fail(err, errlen, "out must be 4-byte aligned");
  const int64_t strides[] = {p.q_stride_b, p.q_stride_h, p.q_stride_l, p.k_stride_b, p.k_stride_h,
                             p.k_stride_l, p.v_stride_b, p.v_stride_h, p.v_stride_l};
  for (int64_t s : strides)
    if (s % 8 != 0) return fail(err, errlen, "q/k/v strides must be multiples of 8 elements (16 bytes)");
  if (p.o_stride_l % 2 != 0 || p.o_stride_h % 2 != 0 || p.o_stride_b % 2 != 0)
    return fail(err, errlen, "out strides must be even");

  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    cudaGetLastError();
    return fail(err, errlen, "no current CUDA device");
  }
  const int caps = attention_capabilities(device);
  if (impl == Impl::kAuto) impl = (caps & kCapWgmma) ? auto_wgmma(p.head_dim) : Impl::kMma;
  cudaError_t e = cudaSuccess;
  auto s = static_cast<cudaStream_t>(stream);
  switch (impl) {
    case Impl::kMma:
      if (!(caps & kCapMma)) return fail(err, errlen, "the mma.sync attention kernel needs compute capability >= 8.0");
      e = detail::launch_mma(p, s);
      break;
    case Impl::kWgmma:
    case Impl::kWgmmaAlt:
    case Impl::kWgmmaTma:
    case Impl::kWgmmaTmaAlt:
      if (!(caps & kCapWgmma))
        return fail(err, errlen,
                    "the wgmma attention kernel needs a compute capability 9.0 GPU and a build with "
                    "-gencode=arch=compute_90a,code=sm_90a");
      e = detail::launch_wgmma(p, static_cast<int>(impl) - static_cast<int>(Impl::kWgmma), s);
      if (e == cudaErrorNotSupported) {
        return fail(err, errlen, "could not encode the TMA tensor maps (driver entry point or stride/alignment)");
      }
      break;
    default:
      return fail(err, errlen, "unknown kernel choice");
  }
  if (e != cudaSuccess) {
    if (err != nullptr && errlen > 0)
      std::snprintf(err, errlen, "attention kernel launch failed: %s", cudaGetErrorString(e));
    return 2;
  }
  return 0;
}

}  // namespace attention
}  // namespace samplers
