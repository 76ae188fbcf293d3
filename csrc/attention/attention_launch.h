// Internal launch entry points of the attention kernels (torch-free; CUDA runtime types).
#pragma once

#include <cuda_runtime.h>

#include "attention/attention_api.h"

namespace samplers {
namespace attention {
namespace detail {

// mma.sync kernel (sm_80+). p must already be validated (head dim 64/128, alignment).
cudaError_t launch_mma(const AttnParams& p, cudaStream_t stream);
// wgmma kernel (sm_90a build on a 9.0 device); variant 0 = default tiling, 1 = alternate.
cudaError_t launch_wgmma(const AttnParams& p, int variant, cudaStream_t stream);
// Registers used by the default wgmma kernel as loaded on the current device: a real sm_90a
// body needs well over 64, the placeholder compiled for other targets a handful. Needs no
// launch or allocation, so it is safe while a CUDA graph is being captured.
int wgmma_kernel_registers();

}  // namespace detail
}  // namespace attention
}  // namespace samplers
