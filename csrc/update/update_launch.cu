// Host entry points of the CUDA update (torch-free): dtype dispatch and the noise kernel launch.
#include "update_kernel.cuh"

namespace samplers {
namespace cuda {

// Defined here, in one translation unit (a non-template kernel in the header would be defined
// once per file that includes it).
__global__ void __launch_bounds__(kThreads) philox_normal_kernel(const NoiseParams p) {
  const int64_t n = p.numel_per_sample;
  const int64_t groups = (n + 3) / 4;
  for (int64_t b = blockIdx.y; b < p.batch; b += gridDim.y) {
    const uint64_t seed = static_cast<uint64_t>(p.seeds[b]);
    float* __restrict__ out = p.out + b * n;
    const bool aligned = (n % 4 == 0) && (reinterpret_cast<uintptr_t>(p.out) % 16 == 0);
    for (int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += (int64_t)gridDim.x * blockDim.x) {
      const Normal4 r = philox_normal4(seed, p.noise_stream, static_cast<uint32_t>(g));
      if (aligned) {
        reinterpret_cast<float4*>(out)[g] = make_float4(r.n0, r.n1, r.n2, r.n3);
      } else {
        const int64_t left = n - g * 4;
        out[g * 4] = r.n0;
        if (left > 1) out[g * 4 + 1] = r.n1;
        if (left > 2) out[g * 4 + 2] = r.n2;
        if (left > 3) out[g * 4 + 3] = r.n3;
      }
    }
  }
}

}  // namespace cuda

cudaError_t launch_sampler_update(const UpdateParams& params, cudaStream_t stream) {
  if (params.has_seeds && !params.has_noise && params.numel_per_sample > (int64_t(1) << 34))
    return cudaErrorInvalidValue;
  switch (params.dtype) {
    case DType::kFloat32:
      return cuda::launch_update_f32(params, stream);
    case DType::kFloat16:
      return cuda::launch_update_f16(params, stream);
    case DType::kBFloat16:
      return cuda::launch_update_bf16(params, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_philox_normal(const NoiseParams& params, cudaStream_t stream) {
  if (params.numel_per_sample <= 0 || params.batch <= 0) return cudaSuccess;
  if (params.numel_per_sample > (int64_t(1) << 34)) return cudaErrorInvalidValue;
  cuda::philox_normal_kernel<<<cuda::grid_for((params.numel_per_sample + 3) / 4, params.batch), cuda::kThreads, 0,
                               stream>>>(params);
  return cudaGetLastError();
}

}  // namespace samplers
