// Runtime flags of one update -> the template instance that runs it, for the CPU loops
// (update_cpu.cpp) and the CUDA kernels (update_kernel.cuh) alike. Torch-free, host-only.
//
// Every combination of storage type, guidance, noise source, number of history tensors and
// write_x0 is its own instance (no per-element branches), described by an UpdateVariant type:
//
//   dispatch_storage<float, Half, BFloat16>(p.dtype, kUnsupported, [&](auto storage) {
//     using T = typename decltype(storage)::type;
//     return dispatch_update_variant<T>(p, [&](auto variant) { return run<decltype(variant)>(p); });
//   });
//
// The storage types are the caller's (host structs on the CPU, __half / __nv_bfloat16 on CUDA).
// Callers validate p first (update_params_error): an out-of-range history count is not dispatched.
#pragma once

#include "update_params.h"

namespace samplers {

// One instance of the update: what the kernels read and write.
template <typename Storage, bool kUncond, NoiseMode kNoise, int kNumHistory, bool kWriteX0>
struct UpdateVariant {
  using T = Storage;                               // element type of x, model_output, ... and outputs
  static constexpr bool uncond = kUncond;          // read uncond, guide with column w
  static constexpr NoiseMode noise = kNoise;       // noise source
  static constexpr int num_history = kNumHistory;  // history[0 .. num_history) read, weighed by h0 ...
  static constexpr bool write_x0 = kWriteX0;       // store the estimate
  static_assert(kNumHistory >= 0 && kNumHistory <= kMaxHistory, "at most kMaxHistory history tensors");
};

template <typename Storage>
struct StorageTag {
  using type = Storage;
};

// fn(StorageTag<the type for dtype>{}); `unsupported` for a dtype with no storage type.
template <typename Float32, typename Float16, typename BFloat16, typename Result, typename Fn>
Result dispatch_storage(DType dtype, Result unsupported, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat32:
      return fn(StorageTag<Float32>{});
    case DType::kFloat16:
      return fn(StorageTag<Float16>{});
    case DType::kBFloat16:
      return fn(StorageTag<BFloat16>{});
  }
  return unsupported;
}

namespace variant_dispatch {

template <typename T, bool kUncond, NoiseMode kNoise, int kNumHistory, typename Fn>
auto with_write_x0(const UpdateParams& p, Fn&& fn) {
  if (p.write_x0) return fn(UpdateVariant<T, kUncond, kNoise, kNumHistory, true>{});
  return fn(UpdateVariant<T, kUncond, kNoise, kNumHistory, false>{});
}

template <typename T, bool kUncond, NoiseMode kNoise, typename Fn>
auto with_num_history(const UpdateParams& p, Fn&& fn) {
  switch (p.num_history) {
    case 1:
      return with_write_x0<T, kUncond, kNoise, 1>(p, fn);
    case 2:
      return with_write_x0<T, kUncond, kNoise, 2>(p, fn);
    case 3:
      return with_write_x0<T, kUncond, kNoise, 3>(p, fn);
    case 4:
      return with_write_x0<T, kUncond, kNoise, 4>(p, fn);
    default:  // 0 (the callers rejected anything outside 0 .. kMaxHistory)
      return with_write_x0<T, kUncond, kNoise, 0>(p, fn);
  }
}
static_assert(kMaxHistory == 4, "with_num_history lists one case per history count");

template <typename T, bool kUncond, typename Fn>
auto with_noise(const UpdateParams& p, Fn&& fn) {
  switch (p.noise_mode) {
    case NoiseMode::kTensor:
      return with_num_history<T, kUncond, NoiseMode::kTensor>(p, fn);
    case NoiseMode::kPhilox:
      return with_num_history<T, kUncond, NoiseMode::kPhilox>(p, fn);
    case NoiseMode::kBrownian:
      return with_num_history<T, kUncond, NoiseMode::kBrownian>(p, fn);
    case NoiseMode::kNone:
      break;
  }
  return with_num_history<T, kUncond, NoiseMode::kNone>(p, fn);
}

}  // namespace variant_dispatch

// fn(UpdateVariant<T, ...>{}) for the flags of p (uncond, noise source, history count, write_x0);
// returns what fn returns (the same type for every variant).
template <typename T, typename Fn>
auto dispatch_update_variant(const UpdateParams& p, Fn&& fn) {
  if (p.has_uncond) return variant_dispatch::with_noise<T, true>(p, fn);
  return variant_dispatch::with_noise<T, false>(p, fn);
}

}  // namespace samplers
