// Device helpers shared by the mma.sync and wgmma attention kernels (torch-free).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "attention/attention_api.h"

namespace samplers {
namespace attention {
namespace detail {

constexpr float kLog2e = 1.4426950408889634f;

template <typename T>
struct TypeOps;

template <>
struct TypeOps<__half> {
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  __device__ __forceinline__ static float to_float(__half x) { return __half2float(x); }
  __device__ __forceinline__ static float2 unpack(uint32_t u) {
    __half2 h = *reinterpret_cast<__half2*>(&u);
    return __half22float2(h);
  }
};

template <>
struct TypeOps<__nv_bfloat16> {
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  __device__ __forceinline__ static float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
  __device__ __forceinline__ static float2 unpack(uint32_t u) {
    __nv_bfloat162 h = *reinterpret_cast<__nv_bfloat162*>(&u);
    return __bfloat1622float2(h);
  }
};

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global->shared copy; when !valid the destination is zero-filled and nothing is read
// (tails of Q/K/V tiles must hold finite values: zeros times a zero probability stay zero).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  const int src_size = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_size) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Byte offset of 16-byte chunk `chunk` of row `row` in a tile stored as column blocks of 64
// elements (128 bytes per row), each block [rows][128 B] with the 128-byte XOR swizzle
// (chunk ^ row%8). The wgmma descriptors read exactly this layout (SWIZZLE_128B); the mma.sync
// kernel uses it too because ldmatrix over 8 rows of one logical chunk is then conflict-free.
template <int ROWS>
__device__ __forceinline__ uint32_t swizzle_offset(int row, int chunk) {
  const int blk = chunk >> 3;
  const int c = (chunk & 7) ^ (row & 7);
  return static_cast<uint32_t>(blk * (ROWS * 128) + row * 128 + c * 16);
}

// Copies rows [row0, row0 + ROWS) x D of a [len, D] matrix (row stride `ld` elements) into the
// swizzled tile at smem address `dst`; rows >= len are zero-filled. NTHREADS threads take part;
// each keeps one 16-byte column chunk and walks rows NTHREADS / (D/8) apart, so its addresses
// are one pointer plus a constant step (few live registers).
template <int ROWS, int D, int NTHREADS, typename T>
__device__ __forceinline__ void load_tile(uint32_t dst, const T* __restrict__ src, int64_t ld, int row0, int len,
                                          int tid) {
  constexpr int kChunksPerRow = D / 8;
  constexpr int kRowStep = NTHREADS / kChunksPerRow;
  static_assert(NTHREADS % kChunksPerRow == 0 && ROWS % kRowStep == 0 && kRowStep % 8 == 0,
                "tile must split evenly over the threads, 8-row aligned");
  const int r0 = tid / kChunksPerRow;
  const int ch = tid % kChunksPerRow;
  const T* g = src + static_cast<int64_t>(row0 + r0) * ld + ch * 8;
  const uint32_t d0 = dst + swizzle_offset<ROWS>(r0, ch);
#pragma unroll
  for (int it = 0; it < ROWS / kRowStep; ++it) {
    // kRowStep is a multiple of 8, so every row this thread copies has the same swizzle phase.
    const bool valid = row0 + r0 + it * kRowStep < len;
    cp_async16(d0 + it * kRowStep * 128, valid ? g : src, valid);
    g += kRowStep * ld;
  }
}

// Applies the masks to one 16-row slice of raw scores q.k. `s` holds NT n8-tiles in the
// mma/wgmma accumulator layout: s[4*nt + i] is row (i < 2 ? row_a : row_b), column
// col_base + 8*nt + (i & 1). The additive mask is divided by the softmax scale here so that the one multiply by
// scale*log2(e) inside the exponent, fused into an FMA, gives scale*q.k + mask in log2 units. Key padding and columns
// >= len_k (tile tail) become -inf.
template <typename T, int NT>
__device__ __forceinline__ void mask_scores(float* s, const AttnParams& p, int b, int h, int row_a, int row_b,
                                            int col_base, bool tail) {
  if (p.mask != nullptr) {
    const float inv_scale = 1.f / p.scale;  // here, not hoisted: one register fewer in the loop
    const T* mbase = static_cast<const T*>(p.mask) + b * p.mask_stride_b + h * p.mask_stride_h;
    const int ra = min(row_a, p.len_q - 1);
    const int rb = min(row_b, p.len_q - 1);
    const T* ma = mbase + static_cast<int64_t>(ra) * p.mask_stride_q;
    const T* mb = mbase + static_cast<int64_t>(rb) * p.mask_stride_q;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int col = col_base + nt * 8 + e;
        if (col < p.len_k) {
          const int64_t off = static_cast<int64_t>(col) * p.mask_stride_k;
          s[4 * nt + e] = fmaf(TypeOps<T>::to_float(ma[off]), inv_scale, s[4 * nt + e]);
          s[4 * nt + 2 + e] = fmaf(TypeOps<T>::to_float(mb[off]), inv_scale, s[4 * nt + 2 + e]);
        }
      }
    }
  }
  if (p.key_padding != nullptr) {
    const uint8_t* kp = p.key_padding + b * p.kp_stride_b;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int col = col_base + nt * 8 + e;
        if (col < p.len_k && kp[col]) {
          s[4 * nt + e] = -INFINITY;
          s[4 * nt + 2 + e] = -INFINITY;
        }
      }
    }
  }
  if (tail) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        if (col_base + nt * 8 + e >= p.len_k) {
          s[4 * nt + e] = -INFINITY;
          s[4 * nt + 2 + e] = -INFINITY;
        }
      }
    }
  }
}

// Online-softmax update for one 16-row slice (two rows per thread, spread over a lane quad).
// s holds raw (masked) scores; scale_log2 = softmax scale * log2(e) > 0, so the row max of the
// raw scores times scale_log2 is the max in log2 units (m). On return s holds
// exp2(s * scale_log2 - m), one FMA and one MUFU.EX2 per score; l the thread-partial row sums;
// alpha the factor by which the running output must be rescaled. A row with no finite score yet
// keeps m = -inf and uses 0 as the shift, so there is no inf - inf.
template <int NT>
__device__ __forceinline__ void online_softmax(float* s, float scale_log2, float* m, float* l, float* alpha) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(s[4 * nt + 2 * r], s[4 * nt + 2 * r + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(m[r], mx * scale_log2);
    const float shift = m_new == -INFINITY ? 0.f : m_new;
    alpha[r] = fast_exp2(m[r] - shift);
    m[r] = m_new;
    float sum = 0.f;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const float p0 = fast_exp2(fmaf(s[4 * nt + 2 * r], scale_log2, -shift));
      const float p1 = fast_exp2(fmaf(s[4 * nt + 2 * r + 1], scale_log2, -shift));
      s[4 * nt + 2 * r] = p0;
      s[4 * nt + 2 * r + 1] = p1;
      sum += p0 + p1;
    }
    l[r] = l[r] * alpha[r] + sum;
  }
}

// Final normaliser of a row from the thread-partial sums of its quad (0 for fully masked rows).
__device__ __forceinline__ float row_inverse_sum(float l) {
  l += __shfl_xor_sync(0xffffffffu, l, 1);
  l += __shfl_xor_sync(0xffffffffu, l, 2);
  return l > 0.f ? 1.f / l : 0.f;
}

// Stores one 16-row slice of the output accumulator (NT n8-tiles, same layout as the scores).
template <typename T, int NT>
__device__ __forceinline__ void store_rows(const float* o, T* __restrict__ out, int64_t ld, int row_a, int row_b,
                                           int len_q, int col_base, float inv_a, float inv_b) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const int col = col_base + nt * 8;
    if (row_a < len_q)
      *reinterpret_cast<uint32_t*>(out + static_cast<int64_t>(row_a) * ld + col) =
          TypeOps<T>::pack(o[4 * nt] * inv_a, o[4 * nt + 1] * inv_a);
    if (row_b < len_q)
      *reinterpret_cast<uint32_t*>(out + static_cast<int64_t>(row_b) * ld + col) =
          TypeOps<T>::pack(o[4 * nt + 2] * inv_b, o[4 * nt + 3] * inv_b);
  }
}

}  // namespace detail
}  // namespace attention
}  // namespace samplers
