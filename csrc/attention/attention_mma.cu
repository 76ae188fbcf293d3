// Instantiations and launcher of the mma.sync attention kernel (torch-free).
#include "attention/attention_launch.h"
#include "attention/attention_mma.cuh"

namespace samplers {
namespace attention {
namespace detail {

namespace {

template <typename T, int D>
cudaError_t launch_mma_t(const AttnParams& p, cudaStream_t stream) {
  using Cfg = MmaConfig<D>;
  auto kernel = attn_fwd_mma_kernel<T, D>;
  if (Cfg::kSmemBytes > 48 * 1024) {
    // Per device and cheap; repeated on every launch so a second GPU needs no bookkeeping.
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
    if (e != cudaSuccess) return e;
  }
  const dim3 grid((p.len_q + Cfg::kBr - 1) / Cfg::kBr, p.batch * p.heads);
  kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_mma(const AttnParams& p, cudaStream_t stream) {
  const bool bf16 = p.dtype == DType::kBFloat16;
  if (p.head_dim == 64) return bf16 ? launch_mma_t<__nv_bfloat16, 64>(p, stream) : launch_mma_t<__half, 64>(p, stream);
  if (p.head_dim == 128)
    return bf16 ? launch_mma_t<__nv_bfloat16, 128>(p, stream) : launch_mma_t<__half, 128>(p, stream);
  return cudaErrorInvalidValue;
}

}  // namespace detail
}  // namespace attention
}  // namespace samplers
