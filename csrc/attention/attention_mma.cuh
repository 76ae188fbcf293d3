// Flash-attention forward with warp-level tensor-core MMA (mma.sync m16n8k16), sm_80 and newer.
//
// One CTA = 4 warps = 128 query rows (32 per warp, two m16 slices, so every K/V fragment read
// from shared memory feeds two MMAs). K and V tiles of kBc keys stream through shared memory
// with cp.async: V_j is fetched while S = Q K_j^T and its softmax run, K_{j+1} while O += P V_j
// runs (single buffers, two barriers per tile). Scores never leave registers: the S accumulator
// is rescaled, exponentiated and repacked as the A operand of the P V product (online softmax,
// fp32 accumulation). Tiles use the 128-byte XOR swizzle so ldmatrix reads are conflict-free.
#pragma once

#include "attention/attention_common.cuh"

namespace samplers {
namespace attention {
namespace detail {

template <typename T>
__device__ __forceinline__ void mma16816(float* c, const uint32_t* a, uint32_t b0, uint32_t b1);

template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma16816<__half>(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t* r, uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

template <int D>
struct MmaConfig {
  static constexpr int kBr = 128;
  static constexpr int kBc = 64;
  static constexpr int kThreads = 128;
  // Q fragments stay in registers for D=64 (32 regs); for D=128 they would cost 64, so Q is
  // re-read from shared memory with ldmatrix on every K tile instead.
  static constexpr bool kQInRegs = D == 64;
  static constexpr int kSmemBytes = (kBr + 2 * kBc) * D * 2;
};

template <typename T, int D>
__global__ void __launch_bounds__(128) attn_fwd_mma_kernel(const __grid_constant__ AttnParams p) {
  using Cfg = MmaConfig<D>;
  constexpr int kBr = Cfg::kBr, kBc = Cfg::kBc, kThreads = Cfg::kThreads;
  constexpr int NS = kBc / 8;   // n8 tiles of a score row slice
  constexpr int ND = D / 8;     // n8 tiles of an output row slice
  constexpr int KQ = D / 16;    // k16 steps of Q K^T
  constexpr int KP = kBc / 16;  // k16 steps of P V
  constexpr bool kQInRegs = Cfg::kQInRegs;

  extern __shared__ __align__(1024) uint8_t smem[];
  const uint32_t sQ = smem_u32(smem);
  const uint32_t sK = sQ + kBr * D * 2;
  const uint32_t sV = sK + kBc * D * 2;

  const int tid = threadIdx.x;
  const int warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t = lane & 3;
  const int bh = blockIdx.y;
  const int b = bh / p.heads, h = bh % p.heads;
  const int q0 = blockIdx.x * kBr;

  const T* qg = static_cast<const T*>(p.q) + b * p.q_stride_b + h * p.q_stride_h;
  const T* kg = static_cast<const T*>(p.k) + b * p.k_stride_b + h * p.k_stride_h;
  const T* vg = static_cast<const T*>(p.v) + b * p.v_stride_b + h * p.v_stride_h;
  T* og = static_cast<T*>(p.out) + b * p.o_stride_b + h * p.o_stride_h;

  load_tile<kBr, D, kThreads>(sQ, qg, p.q_stride_l, q0, p.len_q, tid);
  load_tile<kBc, D, kThreads>(sK, kg, p.k_stride_l, 0, p.len_k, tid);
  cp_async_commit();

  float o[2][ND * 4];
  float m[2][2], l[2][2];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int i = 0; i < ND * 4; ++i) o[mt][i] = 0.f;
    m[mt][0] = m[mt][1] = -INFINITY;
    l[mt][0] = l[mt][1] = 0.f;
  }
  uint32_t qf[2][kQInRegs ? KQ : 1][4];

  const float scale_log2 = p.scale * kLog2e;
  const int n_tiles = (p.len_k + kBc - 1) / kBc;
  const int row_base = warp * 32;

  for (int j = 0; j < n_tiles; ++j) {
    const int kv0 = j * kBc;
    cp_async_wait<0>();
    __syncthreads();  // K_j (and Q) visible; every warp is done with V_{j-1}
    load_tile<kBc, D, kThreads>(sV, vg, p.v_stride_l, kv0, p.len_k, tid);
    cp_async_commit();

    if constexpr (kQInRegs) {
      if (j == 0) {
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
          for (int kk = 0; kk < KQ; ++kk)
            ldmatrix_x4(qf[mt][kk], sQ + swizzle_offset<kBr>(row_base + mt * 16 + (lane & 15), kk * 2 + (lane >> 4)));
      }
    }

    float s[2][NS * 4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int i = 0; i < NS * 4; ++i) s[mt][i] = 0.f;

#pragma unroll
    for (int kk = 0; kk < KQ; ++kk) {
      uint32_t a[2][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        if constexpr (kQInRegs) {
#pragma unroll
          for (int i = 0; i < 4; ++i) a[mt][i] = qf[mt][kQInRegs ? kk : 0][i];
        } else {
          ldmatrix_x4(a[mt], sQ + swizzle_offset<kBr>(row_base + mt * 16 + (lane & 15), kk * 2 + (lane >> 4)));
        }
      }
#pragma unroll
      for (int np = 0; np < NS / 2; ++np) {
        uint32_t bf[4];
        ldmatrix_x4(bf,
                    sK + swizzle_offset<kBc>(np * 16 + (lane & 7) + ((lane >> 4) << 3), kk * 2 + ((lane >> 3) & 1)));
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          mma16816<T>(&s[mt][4 * (2 * np)], a[mt], bf[0], bf[1]);
          mma16816<T>(&s[mt][4 * (2 * np + 1)], a[mt], bf[2], bf[3]);
        }
      }
    }

    const bool tail = kv0 + kBc > p.len_k;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
      const int row_a = q0 + row_base + mt * 16 + g;
      mask_scores<T, NS>(s[mt], p, b, h, row_a, row_a + 8, kv0 + 2 * t, tail);
      float alpha[2];
      online_softmax<NS>(s[mt], scale_log2, m[mt], l[mt], alpha);
#pragma unroll
      for (int nt = 0; nt < ND; ++nt) {
        o[mt][4 * nt + 0] *= alpha[0];
        o[mt][4 * nt + 1] *= alpha[0];
        o[mt][4 * nt + 2] *= alpha[1];
        o[mt][4 * nt + 3] *= alpha[1];
      }
    }

    cp_async_wait<0>();
    __syncthreads();  // V_j visible; every warp is done with K_j
    if (j + 1 < n_tiles) {
      load_tile<kBc, D, kThreads>(sK, kg, p.k_stride_l, kv0 + kBc, p.len_k, tid);
      cp_async_commit();
    }

#pragma unroll
    for (int kk = 0; kk < KP; ++kk) {
      uint32_t a[2][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        a[mt][0] = TypeOps<T>::pack(s[mt][8 * kk + 0], s[mt][8 * kk + 1]);
        a[mt][1] = TypeOps<T>::pack(s[mt][8 * kk + 2], s[mt][8 * kk + 3]);
        a[mt][2] = TypeOps<T>::pack(s[mt][8 * kk + 4], s[mt][8 * kk + 5]);
        a[mt][3] = TypeOps<T>::pack(s[mt][8 * kk + 6], s[mt][8 * kk + 7]);
      }
#pragma unroll
      for (int dp = 0; dp < ND / 2; ++dp) {
        uint32_t bf[4];
        ldmatrix_x4_trans(
            bf, sV + swizzle_offset<kBc>(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), dp * 2 + (lane >> 4)));
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          mma16816<T>(&o[mt][4 * (2 * dp)], a[mt], bf[0], bf[1]);
          mma16816<T>(&o[mt][4 * (2 * dp + 1)], a[mt], bf[2], bf[3]);
        }
      }
    }
  }
  cp_async_wait<0>();

#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
    const int row_a = q0 + row_base + mt * 16 + g;
    const float inv_a = row_inverse_sum(l[mt][0]);
    const float inv_b = row_inverse_sum(l[mt][1]);
    store_rows<T, ND>(o[mt], og, p.o_stride_l, row_a, row_a + 8, p.len_q, 2 * t, inv_a, inv_b);
  }
}

}  // namespace detail
}  // namespace attention
}  // namespace samplers
