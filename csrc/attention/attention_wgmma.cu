// Instantiations and launcher of the wgmma attention kernel (torch-free). The kernel bodies
// exist only in the sm_90a build; for other targets they compile to empty placeholders that
// are never launched (launch_wgmma is reached only when wgmma_kernel_registers() says so).
#include <cudaTypedefs.h>

#include "attention/attention_launch.h"
#include "attention/attention_wgmma.cuh"
#include "attention/attention_wgmma_tma.cuh"

namespace samplers {
namespace attention {
namespace detail {

namespace {

template <typename T, int D, int Bc, int NWG, int MinBlocks>
cudaError_t launch_wgmma_t(const AttnParams& p, cudaStream_t stream) {
  using Cfg = WgmmaConfig<D, Bc, NWG>;
  auto kernel = attn_fwd_wgmma_kernel<T, D, Bc, NWG, MinBlocks>;
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
  if (e != cudaSuccess) return e;
  const dim3 grid((p.len_q + Cfg::kBr - 1) / Cfg::kBr, p.batch * p.heads);
  kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

// The driver's tensor-map encoder, fetched through the runtime (no link against libcuda).
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult status{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault, &status) !=
            cudaSuccess ||
        status != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      ptr = nullptr;
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(ptr);
  }();
  return fn;
}

// 4-D map over [B, H, L, D] (strides in elements; 0 marks a size-1 dim), boxes of 64 columns x
// `box_rows` rows, 128-byte swizzle (the layout the wgmma descriptors read), zeros past the end.
// The outer dims are ordered by increasing stride, so views such as [B, L, H, D].transpose(1, 2)
// give a plain, non-overlapping map; *perm receives the positions (1..3) of L, H and B.
bool make_tensor_map(CUtensorMap* map, uint32_t* perm, const void* ptr, DType dtype, int D, int L, int H, int B,
                     int64_t sl, int64_t sh, int64_t sb, int box_rows) {
  const auto encode = tensor_map_encoder();
  if (encode == nullptr) return false;
  struct Outer {
    cuuint64_t size, stride;
    uint32_t which;  // 0 = L, 1 = H, 2 = B
  };
  const cuuint64_t stride_l = sl != 0 ? static_cast<cuuint64_t>(sl) * 2 : static_cast<cuuint64_t>(D) * 2;
  const cuuint64_t stride_h = sh != 0 ? static_cast<cuuint64_t>(sh) * 2 : stride_l * static_cast<cuuint64_t>(L);
  const cuuint64_t stride_b = sb != 0 ? static_cast<cuuint64_t>(sb) * 2 : stride_h * static_cast<cuuint64_t>(H);
  Outer o[3] = {{static_cast<cuuint64_t>(L), stride_l, 0u},
                {static_cast<cuuint64_t>(H), stride_h, 1u},
                {static_cast<cuuint64_t>(B), stride_b, 2u}};
  for (int i = 1; i < 3; ++i)  // insertion sort of three
    for (int j = i; j > 0 && o[j].stride < o[j - 1].stride; --j) {
      const Outer tmp = o[j];
      o[j] = o[j - 1];
      o[j - 1] = tmp;
    }
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(D), o[0].size, o[1].size, o[2].size};
  const cuuint64_t strides[3] = {o[0].stride, o[1].stride, o[2].stride};
  cuuint32_t box[4] = {64, 1, 1, 1};
  uint32_t pos[3] = {0, 0, 0};
  for (uint32_t i = 0; i < 3; ++i) {
    pos[o[i].which] = i + 1;
    if (o[i].which == 0) box[i + 1] = static_cast<cuuint32_t>(box_rows);
  }
  *perm = pos[0] | (pos[1] << 2) | (pos[2] << 4);
  const cuuint32_t elem_strides[4] = {1, 1, 1, 1};
  const CUresult r =
      encode(map, dtype == DType::kBFloat16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4,
             const_cast<void*>(ptr), dims, strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
             CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS;
}

template <typename T, int D, int Bc, int NWG, int MinBlocks>
cudaError_t launch_wgmma_tma_t(const AttnParams& p, cudaStream_t stream) {
  using Cfg = WgmmaTmaConfig<D, Bc, NWG>;
  CUtensorMap tq, tk, tv;
  uint32_t pq = 0, pk = 0, pv = 0;
  if (!make_tensor_map(&tq, &pq, p.q, p.dtype, D, p.len_q, p.heads, p.batch, p.q_stride_l, p.q_stride_h, p.q_stride_b,
                       Cfg::kBr) ||
      !make_tensor_map(&tk, &pk, p.k, p.dtype, D, p.len_k, p.heads, p.batch, p.k_stride_l, p.k_stride_h, p.k_stride_b,
                       Bc) ||
      !make_tensor_map(&tv, &pv, p.v, p.dtype, D, p.len_k, p.heads, p.batch, p.v_stride_l, p.v_stride_h, p.v_stride_b,
                       Bc)) {
    return cudaErrorNotSupported;
  }
  auto kernel = attn_fwd_wgmma_tma_kernel<T, D, Bc, NWG, MinBlocks>;
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
  if (e != cudaSuccess) return e;
  const dim3 grid((p.len_q + Cfg::kBr - 1) / Cfg::kBr, p.batch * p.heads);
  kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(p, tq, tk, tv, pq | (pk << 8) | (pv << 16));
  return cudaGetLastError();
}

// Tilings <D, Bc, warpgroups, min CTAs per SM> of each variant:
//   0 cp.async, 1 cp.async alternate, 2 TMA, 3 TMA alternate.
template <typename T>
cudaError_t launch_wgmma_typed(const AttnParams& p, int variant, cudaStream_t stream) {
  if (p.head_dim == 64) {
    switch (variant) {
      case 0:
        return launch_wgmma_t<T, 64, 128, 2, 1>(p, stream);
      case 1:
        return launch_wgmma_t<T, 64, 64, 2, 2>(p, stream);
      case 2:
        return launch_wgmma_tma_t<T, 64, 64, 2, 2>(p, stream);
      case 3:
        return launch_wgmma_tma_t<T, 64, 128, 2, 1>(p, stream);
      default:
        return cudaErrorInvalidValue;
    }
  }
  if (p.head_dim == 128) {
    switch (variant) {
      case 0:
        return launch_wgmma_t<T, 128, 128, 2, 1>(p, stream);
      case 1:
        return launch_wgmma_t<T, 128, 64, 2, 1>(p, stream);
      case 2:
        return launch_wgmma_tma_t<T, 128, 128, 2, 1>(p, stream);
      case 3:
        return launch_wgmma_tma_t<T, 128, 64, 2, 1>(p, stream);
      default:
        return cudaErrorInvalidValue;
    }
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_wgmma(const AttnParams& p, int variant, cudaStream_t stream) {
  return p.dtype == DType::kBFloat16 ? launch_wgmma_typed<__nv_bfloat16>(p, variant, stream)
                                     : launch_wgmma_typed<__half>(p, variant, stream);
}

int wgmma_kernel_registers() {
  cudaFuncAttributes attr{};
  if (cudaFuncGetAttributes(&attr, attn_fwd_wgmma_kernel<__nv_bfloat16, 128, 128, 2, 1>) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error so later launches are not blamed for it
    return 0;
  }
  return attr.numRegs;
}

}  // namespace detail
}  // namespace attention
}  // namespace samplers
