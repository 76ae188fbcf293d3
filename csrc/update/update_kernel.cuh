// CUDA kernels of the fused sampler update and of the in-op noise (no torch includes).
//
// One thread handles one 16-byte pack per tensor (4 float32 or 8 float16/bfloat16 elements, so a
// pack is one or two whole Philox groups), loading and storing with 16-byte vector accesses;
// math is float32 whatever the storage. Blocks are laid out (packs of a sample, sample) so a
// block's coefficients and seed are uniform loads; both axes are grid-stride loops. Each
// combination of optional inputs is its own instantiation (update_dispatch.h): no per-element
// branches, and an input a variant does not use is never read. Brownian noise descends the tree
// per Philox group (brownian.h); its branches depend on the sample's times only. When a
// pointer is not 16-byte aligned, or a sample's size is not a multiple of the pack, a scalar kernel
// (one Philox group of 4 elements per thread, bounds-checked) runs instead.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "brownian.h"
#include "philox.h"
#include "update_dispatch.h"
#include "update_math.h"
#include "update_params.h"

namespace samplers {
namespace cuda {

constexpr int kThreads = 256;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

template <typename T>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / sizeof(T);
  T v[kSize];
};

template <typename T>
__device__ __forceinline__ Pack<T> load_pack(const T* base, int64_t pack_index) {
  const uint4 raw = __ldg(reinterpret_cast<const uint4*>(base) + pack_index);
  Pack<T> out;
  memcpy(&out, &raw, sizeof(out));
  return out;
}

template <typename T>
__device__ __forceinline__ void store_pack(T* base, int64_t pack_index, const Pack<T>& pack) {
  uint4 raw;
  memcpy(&raw, &pack, sizeof(raw));
  reinterpret_cast<uint4*>(base)[pack_index] = raw;
}

// Pointer to history[j], or null when the variant reads fewer history tensors.
template <class V, int j>
__device__ __forceinline__ const typename V::T* history_at(const UpdateParams& p) {
  return j < V::num_history ? static_cast<const typename V::T*>(p.history[j]) : nullptr;
}

// The in-op noise of one sample: Philox stream or Brownian path and interval (uniform over a block).
struct SampleNoise {
  uint64_t seed, stream;
  float t0, t1;
};

template <class V>
__device__ __forceinline__ SampleNoise sample_noise(const UpdateParams& p, const CoeffRow& k, int64_t b) {
  SampleNoise s = {0, 0, 0.0f, 0.0f};
  if (V::noise == NoiseMode::kPhilox || V::noise == NoiseMode::kBrownian) {
    s.seed = static_cast<uint64_t>(p.seeds[b]);
    s.stream = row_stream(k[kStream], p.noise_stream);
    s.t0 = k[kBt0];
    s.t1 = k[kBt1];
  }
  return s;
}

// The four in-op normals of Philox group `group` of the sample.
template <class V>
__device__ __forceinline__ Normal4 noise_group(const SampleNoise& s, uint32_t group) {
  if (V::noise == NoiseMode::kBrownian) return brownian_normal4(s.seed, s.stream, s.t0, s.t1, group);
  return philox_normal4(s.seed, s.stream, group);
}

template <class V, bool kUnitDiv, int kPack>
__device__ __forceinline__ void update_pack(const CoeffRow& k, const Pack<typename V::T>& xv,
                                            const Pack<typename V::T>& ov, const Pack<typename V::T>& uv,
                                            const Pack<typename V::T>& nv, const Pack<typename V::T>* hv,
                                            const float* z, Pack<typename V::T>* pv, Pack<typename V::T>* x0v) {
  using T = typename V::T;
#pragma unroll
  for (int j = 0; j < kPack; ++j) {
    const float zj = V::noise == NoiseMode::kTensor ? to_float(nv.v[j]) : z[j];
    float h[kMaxHistory] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int s = 0; s < V::num_history; ++s) h[s] = to_float(hv[s].v[j]);
    float x0f;
    const float r = update_element<V::uncond, V::noise, V::num_history, kUnitDiv>(
        k, to_float(xv.v[j]), to_float(ov.v[j]), V::uncond ? to_float(uv.v[j]) : 0.0f, zj, h[0], h[1], h[2], h[3],
        &x0f);
    pv->v[j] = from_float<T>(r);
    x0v->v[j] = from_float<T>(x0f);
  }
}

template <class V>
__global__ void __launch_bounds__(kThreads) update_vec_kernel(const UpdateParams p) {
  using T = typename V::T;
  constexpr int kPack = Pack<T>::kSize;
  constexpr int kGroups = kPack / 4;
  constexpr bool kInOpNoise = V::noise == NoiseMode::kPhilox || V::noise == NoiseMode::kBrownian;
  static_assert(kPack % 4 == 0, "a pack must hold whole Philox groups");
  const int64_t n = p.numel_per_sample;
  const int64_t packs = n / kPack;  // the launcher guarantees n % kPack == 0
  const T* __restrict__ x = static_cast<const T*>(p.x);
  const T* __restrict__ mo = static_cast<const T*>(p.model_output);
  const T* __restrict__ un = static_cast<const T*>(p.uncond);
  const T* __restrict__ nz = static_cast<const T*>(p.noise);
  const T* __restrict__ hist[kMaxHistory] = {history_at<V, 0>(p), history_at<V, 1>(p), history_at<V, 2>(p),
                                             history_at<V, 3>(p)};
  T* __restrict__ prev = static_cast<T*>(p.prev);
  T* __restrict__ x0 = static_cast<T*>(p.x0);

  for (int64_t b = blockIdx.y; b < p.batch; b += gridDim.y) {
    const CoeffRow k = load_coeff_row(p.coeffs + b * p.coeff_row_stride);
    const bool unit_div = k[kDiv] == 1.0f;  // no thresholding: x0 needs no division
    const SampleNoise noise = sample_noise<V>(p, k, b);
    const int64_t first_pack = b * packs;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < packs; i += (int64_t)gridDim.x * blockDim.x) {
      const int64_t pi = first_pack + i;
      float z[kPack];
      // Brownian noise is some 50 Philox blocks per group: draw it before loading the inputs,
      // so that they do not hold registers through the descent.
      if (V::noise == NoiseMode::kBrownian) {
#pragma unroll
        for (int g = 0; g < kGroups; ++g) {
          const Normal4 r = noise_group<V>(noise, static_cast<uint32_t>(i * kGroups + g));
          z[4 * g + 0] = r.n0;
          z[4 * g + 1] = r.n1;
          z[4 * g + 2] = r.n2;
          z[4 * g + 3] = r.n3;
        }
      }
      const Pack<T> xv = load_pack(x, pi);
      const Pack<T> ov = load_pack(mo, pi);
      Pack<T> uv, nv, hv[V::num_history > 0 ? V::num_history : 1];
      if (V::uncond) uv = load_pack(un, pi);
      if (V::noise == NoiseMode::kTensor) nv = load_pack(nz, pi);
#pragma unroll
      for (int s = 0; s < V::num_history; ++s) hv[s] = load_pack(hist[s], pi);
      if (V::noise == NoiseMode::kPhilox) {
#pragma unroll
        for (int g = 0; g < kGroups; ++g) {
          const Normal4 r = noise_group<V>(noise, static_cast<uint32_t>(i * kGroups + g));
          z[4 * g + 0] = r.n0;
          z[4 * g + 1] = r.n1;
          z[4 * g + 2] = r.n2;
          z[4 * g + 3] = r.n3;
        }
      }
      if (!kInOpNoise) {
#pragma unroll
        for (int j = 0; j < kPack; ++j) z[j] = 0.0f;
      }
      Pack<T> pv, x0v;
      if (unit_div) {  // block-uniform: one branch per pack, none per element
        update_pack<V, true, kPack>(k, xv, ov, uv, nv, hv, z, &pv, &x0v);
      } else {
        update_pack<V, false, kPack>(k, xv, ov, uv, nv, hv, z, &pv, &x0v);
      }
      store_pack(prev, pi, pv);
      if (V::write_x0) store_pack(x0, pi, x0v);
    }
  }
}

template <class V>
__device__ __forceinline__ void update_scalar_element(const UpdateParams& p, const CoeffRow& k, int64_t e, float z) {
  using T = typename V::T;
  const float zj = V::noise == NoiseMode::kTensor ? to_float(static_cast<const T*>(p.noise)[e]) : z;
  float h[kMaxHistory] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
  for (int s = 0; s < V::num_history; ++s) h[s] = to_float(static_cast<const T*>(p.history[s])[e]);
  float x0f;
  const float r = update_element<V::uncond, V::noise, V::num_history>(
      k, to_float(static_cast<const T*>(p.x)[e]), to_float(static_cast<const T*>(p.model_output)[e]),
      V::uncond ? to_float(static_cast<const T*>(p.uncond)[e]) : 0.0f, zj, h[0], h[1], h[2], h[3], &x0f);
  static_cast<T*>(p.prev)[e] = from_float<T>(r);
  if (V::write_x0) static_cast<T*>(p.x0)[e] = from_float<T>(x0f);
}

template <class V>
__global__ void __launch_bounds__(kThreads) update_scalar_kernel(const UpdateParams p) {
  constexpr bool kInOpNoise = V::noise == NoiseMode::kPhilox || V::noise == NoiseMode::kBrownian;
  const int64_t n = p.numel_per_sample;
  const int64_t groups = (n + 3) / 4;
  for (int64_t b = blockIdx.y; b < p.batch; b += gridDim.y) {
    const CoeffRow k = load_coeff_row(p.coeffs + b * p.coeff_row_stride);
    const SampleNoise noise = sample_noise<V>(p, k, b);
    const int64_t base = b * n;
    for (int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += (int64_t)gridDim.x * blockDim.x) {
      Normal4 r = {0.0f, 0.0f, 0.0f, 0.0f};
      if (kInOpNoise) r = noise_group<V>(noise, static_cast<uint32_t>(g));
      const int64_t left = n - g * 4;  // >= 1
      const int64_t e = base + g * 4;
      update_scalar_element<V>(p, k, e, r.n0);
      if (left > 1) update_scalar_element<V>(p, k, e + 1, r.n1);
      if (left > 2) update_scalar_element<V>(p, k, e + 2, r.n2);
      if (left > 3) update_scalar_element<V>(p, k, e + 3, r.n3);
    }
  }
}

inline dim3 grid_for(int64_t work_per_sample, int64_t batch) {
  int64_t bx = (work_per_sample + kThreads - 1) / kThreads;
  bx = bx < 1 ? 1 : (bx > (int64_t(1) << 20) ? (int64_t(1) << 20) : bx);
  const int64_t by = batch > 65535 ? 65535 : batch;
  return dim3(static_cast<unsigned>(bx), static_cast<unsigned>(by), 1);
}

inline bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

template <class V>
cudaError_t launch_variant(const UpdateParams& p, cudaStream_t stream) {
  constexpr int kPack = Pack<typename V::T>::kSize;
  bool vec = p.numel_per_sample % kPack == 0 && aligned16(p.x) && aligned16(p.model_output) && aligned16(p.prev) &&
             (!V::uncond || aligned16(p.uncond)) && (V::noise != NoiseMode::kTensor || aligned16(p.noise)) &&
             (!V::write_x0 || aligned16(p.x0));
  for (int j = 0; j < V::num_history; ++j) vec = vec && aligned16(p.history[j]);
  if (vec) {
    update_vec_kernel<V><<<grid_for(p.numel_per_sample / kPack, p.batch), kThreads, 0, stream>>>(p);
  } else {
    update_scalar_kernel<V><<<grid_for((p.numel_per_sample + 3) / 4, p.batch), kThreads, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

// All variants for one storage type (instantiated once per type, in its own translation unit:
// update_launch_{f32,f16,bf16}.cu define the overloads below with it).
template <typename T>
cudaError_t launch_update_typed(const UpdateParams& p, cudaStream_t s) {
  if (p.numel_per_sample <= 0 || p.batch <= 0) return cudaSuccess;
  return dispatch_update_variant<T>(p, [&](auto variant) { return launch_variant<decltype(variant)>(p, s); });
}

cudaError_t launch_update_storage(StorageTag<float>, const UpdateParams& p, cudaStream_t s);
cudaError_t launch_update_storage(StorageTag<__half>, const UpdateParams& p, cudaStream_t s);
cudaError_t launch_update_storage(StorageTag<__nv_bfloat16>, const UpdateParams& p, cudaStream_t s);

}  // namespace cuda

// Runs the update on `stream`; returns the launch's error (cudaSuccess, or e.g. an invalid argument).
cudaError_t launch_sampler_update(const UpdateParams& params, cudaStream_t stream);

// Philox normals [batch, numel_per_sample] float32 on `stream` (samplers::philox_normal).
cudaError_t launch_philox_normal(const NoiseParams& params, cudaStream_t stream);

// Normalised Brownian increments over [t0[b], t1[b]], float32 on `stream` (samplers::brownian_normal).
cudaError_t launch_brownian_normal(const NoiseParams& params, cudaStream_t stream);

}  // namespace samplers
