// Flash-attention forward with wgmma and the Tensor Memory Accelerator (TMA), sm_90a only.
//
// Same math and register layout as attention_wgmma.cuh, but no thread spends time on copies and
// there is no CTA-wide barrier per key tile:
//   * Q, K and V tiles arrive by cp.async.bulk.tensor (4-D tensor maps over [B, H, L, D], 128-byte
//     swizzle, zero fill past the sequence end), each completing a transaction-count mbarrier;
//   * K and V have two stages each with their own "full" mbarriers; a warp that is done with a
//     stage (its wgmma has completed) bumps a per-stage counter in shared memory, and lane 0 of
//     the last of the CTA's warps to do so refills the stage at once (K_{j+2} after S_j, V_{j+1}
//     after P V_{j-1}). Nobody waits for "empty", so the two warpgroups drift freely (up to
//     about two tiles), and one's softmax overlaps the other's tensor-core work.
#pragma once

#include <cudaTypedefs.h>

#include "attention/attention_common.cuh"
#include "attention/wgmma_ops.cuh"

namespace samplers {
namespace attention {
namespace detail {

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
// Spins until the phase with parity `parity` of the barrier has completed.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "LAB_WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
      "@p bra.uni DONE;\n"
      "bra.uni LAB_WAIT;\n"
      "DONE:\n"
      "}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const CUtensorMap* map, uint32_t bar, int c0, int c1, int c2,
                                            int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, %6}], "
      "[%2];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}

template <int D, int Bc, int NWG>
struct WgmmaTmaConfig {
  static constexpr int kBr = 64 * NWG;
  static constexpr int kThreads = 128 * NWG;
  static constexpr int kWarps = 4 * NWG;
  static constexpr int kQBytes = kBr * D * 2;
  static constexpr int kKVBytes = Bc * D * 2;
  static constexpr int kBarOffset = kQBytes + 4 * kKVBytes;  // after Q, K0, K1, V0, V1
  // 5 mbarriers (Q, K full x2, V full x2) + 4 release counters, then 1024 B of alignment slack.
  static constexpr int kSmemBytes = kBarOffset + 5 * 8 + 4 * 4 + 1024;
};

// Loads rows [row0, row0 + ROWS) of head (b, h) into the swizzled tile at dst: one TMA box per
// 64-column block, all completing on `bar`. The host orders the map's outer dims by stride (so
// any [B,H,L,D] view is a valid map); `perm` says where L, H and B went (2 bits each, 1..3).
template <int ROWS, int D>
__device__ __forceinline__ void tma_tile(uint32_t dst, const CUtensorMap* map, uint32_t perm, uint32_t bar, int row0,
                                         int h, int b) {
  const uint32_t pl = perm & 3u, ph = (perm >> 2) & 3u;
  const int c1 = pl == 1 ? row0 : (ph == 1 ? h : b);
  const int c2 = pl == 2 ? row0 : (ph == 2 ? h : b);
  const int c3 = pl == 3 ? row0 : (ph == 3 ? h : b);
  mbar_expect_tx(bar, ROWS * D * 2);
#pragma unroll
  for (int blk = 0; blk < D / 64; ++blk) tma_load_4d(dst + blk * ROWS * 128, map, bar, blk * 64, c1, c2, c3);
}

template <typename T, int D, int Bc, int NWG, int MinBlocks>
__global__ void __launch_bounds__(128 * NWG, MinBlocks)
    attn_fwd_wgmma_tma_kernel(const __grid_constant__ AttnParams p, const __grid_constant__ CUtensorMap tm_q,
                              const __grid_constant__ CUtensorMap tm_k, const __grid_constant__ CUtensorMap tm_v,
                              uint32_t perms) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Cfg = WgmmaTmaConfig<D, Bc, NWG>;
  constexpr int kBr = Cfg::kBr;
  constexpr int NS = Bc / 8;
  constexpr int ND = D / 8;
  constexpr int KQ = D / 16;
  constexpr int KP = Bc / 16;
  static_assert(D == 64 || D == 128, "head dim");
  static_assert(Bc == 64 || Bc == 128, "key tile");

  extern __shared__ uint8_t smem_raw[];
  const uint32_t base = (smem_u32(smem_raw) + 1023u) & ~1023u;
  uint8_t* base_ptr = smem_raw + (base - smem_u32(smem_raw));
  const uint32_t sQ = base;
  const uint32_t sK0 = sQ + Cfg::kQBytes, sK1 = sK0 + Cfg::kKVBytes;
  const uint32_t sV0 = sK1 + Cfg::kKVBytes, sV1 = sV0 + Cfg::kKVBytes;
  const uint32_t bar_q = base + Cfg::kBarOffset;
  const uint32_t bar_k0 = bar_q + 8, bar_k1 = bar_q + 16, bar_v0 = bar_q + 24, bar_v1 = bar_q + 32;
  unsigned int* release = reinterpret_cast<unsigned int*>(base_ptr + Cfg::kBarOffset + 40);  // k0 k1 v0 v1

  const int tid = threadIdx.x;
  const int wg = tid >> 7;
  const int warp = (tid >> 5) & 3;
  const int lane = tid & 31;
  const int g = lane >> 2, t = lane & 3;
  const int bh = blockIdx.y;
  const int b = bh / p.heads, h = bh % p.heads;
  const int q0 = blockIdx.x * kBr;
  const int n_tiles = (p.len_k + Bc - 1) / Bc;
  const uint32_t perm_q = perms & 0xffu, perm_k = (perms >> 8) & 0xffu, perm_v = (perms >> 16) & 0xffu;

  if (tid == 0) {
    mbar_init(bar_q, 1);
    mbar_init(bar_k0, 1);
    mbar_init(bar_k1, 1);
    mbar_init(bar_v0, 1);
    mbar_init(bar_v1, 1);
    release[0] = release[1] = release[2] = release[3] = 0u;
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    fence_proxy_async();
    tma_tile<kBr, D>(sQ, &tm_q, perm_q, bar_q, q0, h, b);
    tma_tile<Bc, D>(sK0, &tm_k, perm_k, bar_k0, 0, h, b);
    tma_tile<Bc, D>(sV0, &tm_v, perm_v, bar_v0, 0, h, b);
    if (n_tiles > 1) {
      tma_tile<Bc, D>(sK1, &tm_k, perm_k, bar_k1, Bc, h, b);
      tma_tile<Bc, D>(sV1, &tm_v, perm_v, bar_v1, Bc, h, b);
    }
  }
  __syncthreads();  // barriers initialised before anyone waits on them

  // Called by every warp once its wgmma reads of a stage are complete; the last of the CTA's
  // warps refills the stage with tile `next` (if there is one).
  auto release_stage = [&](int which, uint32_t dst, const CUtensorMap* map, uint32_t perm, uint32_t bar, int next) {
    if (lane == 0) {
      __threadfence_block();
      const unsigned int old = atomicAdd(&release[which], 1u);
      __threadfence_block();
      if ((old + 1) % Cfg::kWarps == 0 && next < n_tiles) tma_tile<Bc, D>(dst, map, perm, bar, next * Bc, h, b);
    }
    __syncwarp();
  };

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

  // Tile j sits in stage j % 2; its fill is that stage's (j / 2)-th phase.
  mbar_wait(bar_q, 0);
  mbar_wait(bar_k0, 0);
  fence_regs<NS * 4>(s);
  wgmma_fence();
  issue_s(desc_k0);
  wgmma_commit();
  wgmma_wait<0>();
  fence_regs<NS * 4>(s);
  release_stage(0, sK0, &tm_k, perm_k, bar_k0, 2);
  {
    float alpha[2];
    softmax(0, alpha);
  }
  pack_p();

  for (int j = 1; j < n_tiles; ++j) {
    const int cur = j & 1;
    const uint32_t phase_j = (j >> 1) & 1;
    const uint32_t phase_prev = ((j - 1) >> 1) & 1;
    mbar_wait(cur ? bar_k1 : bar_k0, phase_j);
    mbar_wait(cur ? bar_v0 : bar_v1, phase_prev);  // V_{j-1} sits in stage (j-1)%2
    fence_regs<NS * 4>(s);
    fence_regs<ND * 4>(o);
    fence_regs<KP * 4>(pf);
    wgmma_fence();
    issue_s(cur ? desc_k1 : desc_k0);
    wgmma_commit();
    issue_pv(cur ? desc_v0 : desc_v1);
    wgmma_commit();
    wgmma_wait<1>();  // S_j done
    fence_regs<NS * 4>(s);
    release_stage(cur, cur ? sK1 : sK0, &tm_k, perm_k, cur ? bar_k1 : bar_k0, j + 2);
    float alpha[2];
    softmax(j * Bc, alpha);
    wgmma_wait<0>();  // PV_{j-1} done
    fence_regs<ND * 4>(o);
    fence_regs<KP * 4>(pf);
    release_stage(2 + (cur ^ 1), cur ? sV0 : sV1, &tm_v, perm_v, cur ? bar_v0 : bar_v1, j + 1);
#pragma unroll
    for (int nt = 0; nt < ND; ++nt) {
      o[4 * nt + 0] *= alpha[0];
      o[4 * nt + 1] *= alpha[0];
      o[4 * nt + 2] *= alpha[1];
      o[4 * nt + 3] *= alpha[1];
    }
    pack_p();
  }

  const int last = n_tiles - 1;
  mbar_wait((last & 1) ? bar_v1 : bar_v0, (last >> 1) & 1);
  fence_regs<ND * 4>(o);
  fence_regs<KP * 4>(pf);
  wgmma_fence();
  issue_pv((last & 1) ? desc_v1 : desc_v0);
  wgmma_commit();
  wgmma_wait<0>();
  fence_regs<ND * 4>(o);

  const float inv_a = row_inverse_sum(l[0]);
  const float inv_b = row_inverse_sum(l[1]);
  T* og = static_cast<T*>(p.out) + b * p.o_stride_b + h * p.o_stride_h;
  store_rows<T, ND>(o, og, p.o_stride_l, row_a, row_a + 8, p.len_q, 2 * t, inv_a, inv_b);
#endif
}

}  // namespace detail
}  // namespace attention
}  // namespace samplers
