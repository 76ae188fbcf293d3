// CUDA kernels of the fused sampler update and of the Philox normals (no torch includes).
//
// One thread handles one 16-byte pack per tensor (4 float32 or 8 float16/bfloat16 elements, so a
// pack is one or two whole Philox groups), loading and storing with 16-byte vector accesses;
// math is float32 whatever the storage. Blocks are laid out (packs of a sample, sample) so a
// block's coefficients and seed are uniform loads; both axes are grid-stride loops. Each
// combination of optional inputs is its own instantiation: no per-element branches. When a
// pointer is not 16-byte aligned, or a sample's size is not a multiple of the pack, a scalar kernel
// (one Philox group of 4 elements per thread, bounds-checked) runs instead.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "philox.h"
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

template <typename T, bool kUncond, int kNoise, bool kHist0, bool kHist1, bool kWriteX0>
__global__ void __launch_bounds__(kThreads) update_vec_kernel(const UpdateParams p) {
  constexpr int V = Pack<T>::kSize;
  static_assert(V % 4 == 0, "a pack must hold whole Philox groups");
  const int64_t n = p.numel_per_sample;
  const int64_t packs = n / V;  // the launcher guarantees n % V == 0
  const T* __restrict__ x = static_cast<const T*>(p.x);
  const T* __restrict__ mo = static_cast<const T*>(p.model_output);
  const T* __restrict__ un = static_cast<const T*>(p.uncond);
  const T* __restrict__ nz = static_cast<const T*>(p.noise);
  const T* __restrict__ g0 = static_cast<const T*>(p.history0);
  const T* __restrict__ g1 = static_cast<const T*>(p.history1);
  T* __restrict__ prev = static_cast<T*>(p.prev);
  T* __restrict__ x0 = static_cast<T*>(p.x0);

  for (int64_t b = blockIdx.y; b < p.batch; b += gridDim.y) {
    const CoeffRow k = load_coeff_row(p.coeffs + b * p.coeff_row_stride);
    const bool unit_div = k.div == 1.0f;  // no thresholding: x0 needs no division
    const uint64_t seed = kNoise == kNoisePhilox ? static_cast<uint64_t>(p.seeds[b]) : 0;
    const int64_t first_pack = b * packs;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < packs; i += (int64_t)gridDim.x * blockDim.x) {
      const int64_t pi = first_pack + i;
      const Pack<T> xv = load_pack(x, pi);
      const Pack<T> ov = load_pack(mo, pi);
      Pack<T> uv, nv, h0v, h1v;
      if (kUncond) uv = load_pack(un, pi);
      if (kNoise == kNoiseTensor) nv = load_pack(nz, pi);
      if (kHist0) h0v = load_pack(g0, pi);
      if (kHist1) h1v = load_pack(g1, pi);
      float z[V];
      if (kNoise == kNoisePhilox) {
#pragma unroll
        for (int g = 0; g < V / 4; ++g) {
          const Normal4 r = philox_normal4(seed, p.noise_stream, static_cast<uint32_t>(i * (V / 4) + g));
          z[4 * g + 0] = r.n0;
          z[4 * g + 1] = r.n1;
          z[4 * g + 2] = r.n2;
          z[4 * g + 3] = r.n3;
        }
      }
      Pack<T> pv, x0v;
      if (unit_div) {  // block-uniform: one branch per pack, none per element
#pragma unroll
        for (int j = 0; j < V; ++j) {
          const float zj = kNoise == kNoiseTensor ? to_float(nv.v[j]) : (kNoise == kNoisePhilox ? z[j] : 0.0f);
          float x0f;
          const float r = update_element<kUncond, kNoise, kHist0, kHist1, true>(
              k, to_float(xv.v[j]), to_float(ov.v[j]), kUncond ? to_float(uv.v[j]) : 0.0f, zj,
              kHist0 ? to_float(h0v.v[j]) : 0.0f, kHist1 ? to_float(h1v.v[j]) : 0.0f, &x0f);
          pv.v[j] = from_float<T>(r);
          x0v.v[j] = from_float<T>(x0f);
        }
      } else {
#pragma unroll
        for (int j = 0; j < V; ++j) {
          const float zj = kNoise == kNoiseTensor ? to_float(nv.v[j]) : (kNoise == kNoisePhilox ? z[j] : 0.0f);
          float x0f;
          const float r = update_element<kUncond, kNoise, kHist0, kHist1, false>(
              k, to_float(xv.v[j]), to_float(ov.v[j]), kUncond ? to_float(uv.v[j]) : 0.0f, zj,
              kHist0 ? to_float(h0v.v[j]) : 0.0f, kHist1 ? to_float(h1v.v[j]) : 0.0f, &x0f);
          pv.v[j] = from_float<T>(r);
          x0v.v[j] = from_float<T>(x0f);
        }
      }
      store_pack(prev, pi, pv);
      if (kWriteX0) store_pack(x0, pi, x0v);
    }
  }
}

template <typename T, bool kUncond, int kNoise, bool kHist0, bool kHist1, bool kWriteX0>
__device__ __forceinline__ void update_scalar_element(const UpdateParams& p, const CoeffRow& k, int64_t e, float z) {
  const T* __restrict__ nz = static_cast<const T*>(p.noise);
  const float zj = kNoise == kNoiseTensor ? to_float(nz[e]) : z;
  float x0f;
  const float r = update_element<kUncond, kNoise, kHist0, kHist1>(
      k, to_float(static_cast<const T*>(p.x)[e]), to_float(static_cast<const T*>(p.model_output)[e]),
      kUncond ? to_float(static_cast<const T*>(p.uncond)[e]) : 0.0f, zj,
      kHist0 ? to_float(static_cast<const T*>(p.history0)[e]) : 0.0f,
      kHist1 ? to_float(static_cast<const T*>(p.history1)[e]) : 0.0f, &x0f);
  static_cast<T*>(p.prev)[e] = from_float<T>(r);
  if (kWriteX0) static_cast<T*>(p.x0)[e] = from_float<T>(x0f);
}

template <typename T, bool kUncond, int kNoise, bool kHist0, bool kHist1, bool kWriteX0>
__global__ void __launch_bounds__(kThreads) update_scalar_kernel(const UpdateParams p) {
  const int64_t n = p.numel_per_sample;
  const int64_t groups = (n + 3) / 4;
  for (int64_t b = blockIdx.y; b < p.batch; b += gridDim.y) {
    const CoeffRow k = load_coeff_row(p.coeffs + b * p.coeff_row_stride);
    const uint64_t seed = kNoise == kNoisePhilox ? static_cast<uint64_t>(p.seeds[b]) : 0;
    const int64_t base = b * n;
    for (int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += (int64_t)gridDim.x * blockDim.x) {
      Normal4 r = {0.0f, 0.0f, 0.0f, 0.0f};
      if (kNoise == kNoisePhilox) r = philox_normal4(seed, p.noise_stream, static_cast<uint32_t>(g));
      const int64_t left = n - g * 4;  // >= 1
      const int64_t e = base + g * 4;
      update_scalar_element<T, kUncond, kNoise, kHist0, kHist1, kWriteX0>(p, k, e, r.n0);
      if (left > 1) update_scalar_element<T, kUncond, kNoise, kHist0, kHist1, kWriteX0>(p, k, e + 1, r.n1);
      if (left > 2) update_scalar_element<T, kUncond, kNoise, kHist0, kHist1, kWriteX0>(p, k, e + 2, r.n2);
      if (left > 3) update_scalar_element<T, kUncond, kNoise, kHist0, kHist1, kWriteX0>(p, k, e + 3, r.n3);
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

template <typename T, bool U, int N, bool H0, bool H1, bool X0>
cudaError_t launch_variant(const UpdateParams& p, cudaStream_t stream) {
  constexpr int V = Pack<T>::kSize;
  const bool vec = p.numel_per_sample % V == 0 && aligned16(p.x) && aligned16(p.model_output) && aligned16(p.prev) &&
                   (!U || aligned16(p.uncond)) && (N != kNoiseTensor || aligned16(p.noise)) &&
                   (!H0 || aligned16(p.history0)) && (!H1 || aligned16(p.history1)) && (!X0 || aligned16(p.x0));
  if (vec) {
    update_vec_kernel<T, U, N, H0, H1, X0><<<grid_for(p.numel_per_sample / V, p.batch), kThreads, 0, stream>>>(p);
  } else {
    update_scalar_kernel<T, U, N, H0, H1, X0>
        <<<grid_for((p.numel_per_sample + 3) / 4, p.batch), kThreads, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

template <typename T, bool U, int N, bool H0, bool H1>
cudaError_t dispatch_x0(const UpdateParams& p, cudaStream_t s) {
  return p.write_x0 ? launch_variant<T, U, N, H0, H1, true>(p, s) : launch_variant<T, U, N, H0, H1, false>(p, s);
}
template <typename T, bool U, int N>
cudaError_t dispatch_hist(const UpdateParams& p, cudaStream_t s) {
  if (p.has_history0)
    return p.has_history1 ? dispatch_x0<T, U, N, true, true>(p, s) : dispatch_x0<T, U, N, true, false>(p, s);
  return p.has_history1 ? dispatch_x0<T, U, N, false, true>(p, s) : dispatch_x0<T, U, N, false, false>(p, s);
}
template <typename T, bool U>
cudaError_t dispatch_noise(const UpdateParams& p, cudaStream_t s) {
  if (p.has_noise) return dispatch_hist<T, U, kNoiseTensor>(p, s);
  if (p.has_seeds) return dispatch_hist<T, U, kNoisePhilox>(p, s);
  return dispatch_hist<T, U, kNoNoise>(p, s);
}

// All variants for one storage type (instantiated once per type, in its own translation unit).
template <typename T>
cudaError_t launch_update_typed(const UpdateParams& p, cudaStream_t s) {
  if (p.numel_per_sample <= 0 || p.batch <= 0) return cudaSuccess;
  return p.has_uncond ? dispatch_noise<T, true>(p, s) : dispatch_noise<T, false>(p, s);
}

cudaError_t launch_update_f32(const UpdateParams& p, cudaStream_t s);
cudaError_t launch_update_f16(const UpdateParams& p, cudaStream_t s);
cudaError_t launch_update_bf16(const UpdateParams& p, cudaStream_t s);

}  // namespace cuda

// Runs the update on `stream`; returns the launch's error (cudaSuccess, or e.g. an invalid argument).
cudaError_t launch_sampler_update(const UpdateParams& params, cudaStream_t stream);

// Philox normals [batch, numel_per_sample] float32 on `stream`.
cudaError_t launch_philox_normal(const NoiseParams& params, cudaStream_t stream);

}  // namespace samplers
