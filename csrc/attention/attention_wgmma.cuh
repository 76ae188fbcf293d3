// Flash-attention forward with Hopper warpgroup MMA (wgmma), sm_90a only.
//
// One CTA = NWG warpgroups; each owns 64 query rows (Br = 64 * NWG) and computes
//   S_j = Q K_j^T   wgmma m64 n{Bc} k16, Q and K read by descriptor from shared memory,
//   O  += P V_j     wgmma m64 n{D}  k16, P from registers, V transposed by the descriptor.
// Q/K/V tiles live in shared memory in the 128-byte-swizzled K-major layout that the
// descriptors describe, filled by all threads with cp.async (K and V double-buffered, one
// barrier per key tile). Inside a warpgroup the P V_{j-1} product runs on the tensor cores
// while the softmax of S_j runs on the ALUs (issue S_j and PV_{j-1}, wait for S_j only).
// Scores never leave registers; fp32 accumulation; online softmax in the log2 domain.
#pragma once

#include "attention/attention_common.cuh"
#include "attention/wgmma_ops.cuh"

namespace samplers {
namespace attention {
namespace detail {

template <int D, int Bc, int NWG>
struct WgmmaConfig {
  static constexpr int kBr = 64 * NWG;
  static constexpr int kBc = Bc;
  static constexpr int kThreads = 128 * NWG;
  static constexpr int kQBytes = kBr * D * 2;
  static constexpr int kKVBytes = Bc * D * 2;
  // Q + 2 K stages + 2 V stages, plus slack to round the base up to 1024 bytes (the swizzle
  // atom: descriptors assume every tile starts on a 1024-byte boundary).
  static constexpr int kSmemBytes = kQBytes + 4 * kKVBytes + 1024;
};

template <typename T, int D, int Bc, int NWG, int MinBlocks>
__global__ void __launch_bounds__(128 * NWG, MinBlocks) attn_fwd_wgmma_kernel(const __grid_constant__ AttnParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Cfg = WgmmaConfig<D, Bc, NWG>;
  constexpr int kBr = Cfg::kBr, kThreads = Cfg::kThreads;
  constexpr int NS = Bc / 8;   // n8 tiles of a score row slice (S has NS*4 regs per thread)
  constexpr int ND = D / 8;    // n8 tiles of an output row slice
  constexpr int KQ = D / 16;   // k16 steps of Q K^T
  constexpr int KP = Bc / 16;  // k16 steps of P V
  static_assert(D == 64 || D == 128, "head dim");
  static_assert(Bc == 64 || Bc == 128, "key tile");

  extern __shared__ uint8_t smem_raw[];
  const uint32_t base = (smem_u32(smem_raw) + 1023u) & ~1023u;
  const uint32_t sQ = base;
  const uint32_t sK0 = sQ + Cfg::kQBytes, sK1 = sK0 + Cfg::kKVBytes;
  const uint32_t sV0 = sK1 + Cfg::kKVBytes, sV1 = sV0 + Cfg::kKVBytes;

  const int tid = threadIdx.x;
  const int wg = tid >> 7;
  const int warp = (tid >> 5) & 3;
  const int lane = tid & 31;
  const int g = lane >> 2, t = lane & 3;
  const int bh = blockIdx.y;
  const int b = bh / p.heads, h = bh % p.heads;
  const int q0 = blockIdx.x * kBr;

  const T* qg = static_cast<const T*>(p.q) + b * p.q_stride_b + h * p.q_stride_h;
  const T* kg = static_cast<const T*>(p.k) + b * p.k_stride_b + h * p.k_stride_h;
  const T* vg = static_cast<const T*>(p.v) + b * p.v_stride_b + h * p.v_stride_h;
  T* og = static_cast<T*>(p.out) + b * p.o_stride_b + h * p.o_stride_h;

  load_tile<kBr, D, kThreads>(sQ, qg, p.q_stride_l, q0, p.len_q, tid);
  load_tile<Bc, D, kThreads>(sK0, kg, p.k_stride_l, 0, p.len_k, tid);
  cp_async_commit();

  float s[NS * 4];
  float o[ND * 4];
  uint32_t pf[KP * 4];
#pragma unroll
  for (int i = 0; i < NS * 4; ++i) s[i] = 0.f;
#pragma unroll
  for (int i = 0; i < ND * 4; ++i) o[i] = 0.f;
#pragma unroll
  for (int i = 0; i < KP * 4; ++i) pf[i] = 0u;
  float m[2] = {-INFINITY, -INFINITY};
  float l[2] = {0.f, 0.f};

  const int row_a = q0 + wg * 64 + warp * 16 + g;
  const float scale_log2 = p.scale * kLog2e;
  const int n_tiles = (p.len_k + Bc - 1) / Bc;

  // Descriptors. Q/K (K-major): 8-row groups 1024 B apart (SBO), LBO unused by the swizzled
  // K-major layout; k16 steps move 32 B inside a 128-byte row, then to the next 64-column block.
  // V (N-major, transposed by the instruction): 64-column blocks Bc*128 B apart (LBO), 8-key
  // groups 1024 B apart (SBO); a k16 step moves 16 rows = 2048 B.
  const uint64_t desc_q = make_smem_desc(sQ + wg * 64 * 128, 16, 1024);
  const uint64_t desc_k0 = make_smem_desc(sK0, 16, 1024);
  const uint64_t desc_k1 = make_smem_desc(sK1, 16, 1024);
  const uint64_t desc_v0 = make_smem_desc(sV0, Bc * 128, 1024);
  const uint64_t desc_v1 = make_smem_desc(sV1, Bc * 128, 1024);

  auto issue_s = [&](uint64_t desc_k) {
#pragma unroll
    for (int kk = 0; kk < KQ; ++kk) {
      const uint64_t da = desc_q + static_cast<uint64_t>(((kk >> 2) * kBr * 128 + (kk & 3) * 32) >> 4);
      const uint64_t db = desc_k + static_cast<uint64_t>(((kk >> 2) * Bc * 128 + (kk & 3) * 32) >> 4);
      Wgmma<T, Bc>::ss(s, da, db, kk > 0 ? 1 : 0);
    }
  };
  auto issue_pv = [&](uint64_t desc_v) {
#pragma unroll
    for (int kk = 0; kk < KP; ++kk) {
      const uint64_t db = desc_v + static_cast<uint64_t>((kk * 16 * 128) >> 4);
      Wgmma<T, D>::rs(o, &pf[4 * kk], db, 1);
    }
  };
  auto softmax = [&](int kv0, float* alpha) {
    mask_scores<T, NS>(s, p, b, h, row_a, row_a + 8, kv0 + 2 * t, kv0 + Bc > p.len_k);
    online_softmax<NS>(s, scale_log2, m, l, alpha);
  };
  auto pack_p = [&]() {
#pragma unroll
    for (int kk = 0; kk < KP; ++kk) {
      pf[4 * kk + 0] = TypeOps<T>::pack(s[8 * kk + 0], s[8 * kk + 1]);
      pf[4 * kk + 1] = TypeOps<T>::pack(s[8 * kk + 2], s[8 * kk + 3]);
      pf[4 * kk + 2] = TypeOps<T>::pack(s[8 * kk + 4], s[8 * kk + 5]);
      pf[4 * kk + 3] = TypeOps<T>::pack(s[8 * kk + 6], s[8 * kk + 7]);
    }
  };

  // Tile 0: S_0 and its softmax (O is still zero, nothing to rescale).
  cp_async_wait<0>();
  fence_proxy_async();
  __syncthreads();
  load_tile<Bc, D, kThreads>(sV0, vg, p.v_stride_l, 0, p.len_k, tid);
  if (n_tiles > 1) load_tile<Bc, D, kThreads>(sK1, kg, p.k_stride_l, Bc, p.len_k, tid);
  cp_async_commit();
  fence_regs<NS * 4>(s);
  wgmma_fence();
  issue_s(desc_k0);
  wgmma_commit();
  wgmma_wait<0>();
  fence_regs<NS * 4>(s);
  {
    float alpha[2];
    softmax(0, alpha);
  }
  pack_p();

  for (int j = 1; j < n_tiles; ++j) {
    const int cur = j & 1;
    cp_async_wait<0>();
    fence_proxy_async();
    // K_j and V_{j-1} visible to wgmma; every warpgroup has finished S_{j-1} and PV_{j-2},
    // so K buffer (j+1)%2 and V buffer j%2 may be overwritten.
    __syncthreads();
    load_tile<Bc, D, kThreads>(cur ? sV1 : sV0, vg, p.v_stride_l, j * Bc, p.len_k, tid);
    if (j + 1 < n_tiles) load_tile<Bc, D, kThreads>(cur ? sK0 : sK1, kg, p.k_stride_l, (j + 1) * Bc, p.len_k, tid);
    cp_async_commit();

    fence_regs<NS * 4>(s);
    fence_regs<ND * 4>(o);
    fence_regs<KP * 4>(pf);
    wgmma_fence();
    issue_s(cur ? desc_k1 : desc_k0);
    wgmma_commit();
    issue_pv(cur ? desc_v0 : desc_v1);  // V_{j-1} sits in buffer (j-1)%2
    wgmma_commit();
    wgmma_wait<1>();  // S_j done; PV_{j-1} may still run
    fence_regs<NS * 4>(s);
    float alpha[2];
    softmax(j * Bc, alpha);
    wgmma_wait<0>();  // PV_{j-1} done: O and the P registers are free
    fence_regs<ND * 4>(o);
    fence_regs<KP * 4>(pf);
#pragma unroll
    for (int nt = 0; nt < ND; ++nt) {
      o[4 * nt + 0] *= alpha[0];
      o[4 * nt + 1] *= alpha[0];
      o[4 * nt + 2] *= alpha[1];
      o[4 * nt + 3] *= alpha[1];
    }
    pack_p();
  }

  cp_async_wait<0>();
  fence_proxy_async();
  __syncthreads();  // V_{n-1} visible
  fence_regs<ND * 4>(o);
  fence_regs<KP * 4>(pf);
  wgmma_fence();
  issue_pv(((n_tiles - 1) & 1) ? desc_v1 : desc_v0);
  wgmma_commit();
  wgmma_wait<0>();
  fence_regs<ND * 4>(o);

  const float inv_a = row_inverse_sum(l[0]);
  const float inv_b = row_inverse_sum(l[1]);
  store_rows<T, ND>(o, og, p.o_stride_l, row_a, row_a + 8, p.len_q, 2 * t, inv_a, inv_b);
#endif
}

}  // namespace detail
}  // namespace attention
}  // namespace samplers
