// Host entry points of the CUDA update (torch-free): storage dispatch and the noise kernel launch.
#include "update_kernel.cuh"

namespace samplers {
namespace cuda {

// Defined here, in one translation unit. Philox normals (kBrownian false) or Brownian increments
// of one Philox group per thread; per-sample stream noise_stream + streams[b].
template <bool kBrownian>
__global__ void __launch_bounds__(kThreads) normal_noise_kernel(const NoiseParams p) {
  const int64_t n = p.numel_per_sample;
  const int64_t groups = (n + 3) / 4;
  for (int64_t b = blockIdx.y; b < p.batch; b += gridDim.y) {
    const uint64_t seed = static_cast<uint64_t>(p.seeds[b]);
    const uint64_t stream = p.noise_stream + (p.streams ? static_cast<uint64_t>(p.streams[b]) : 0u);
    const float t0 = kBrownian ? p.t0[b] : 0.0f;
    const float t1 = kBrownian ? p.t1[b] : 0.0f;
    float* __restrict__ out = p.out + b * n;
    const bool aligned = (n % 4 == 0) && (reinterpret_cast<uintptr_t>(p.out) % 16 == 0);
    for (int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += (int64_t)gridDim.x * blockDim.x) {
      const Normal4 r = kBrownian ? brownian_normal4(seed, stream, t0, t1, static_cast<uint32_t>(g))
                                  : philox_normal4(seed, stream, static_cast<uint32_t>(g));
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
  if (update_params_error(params) != kParamsOk) return cudaErrorInvalidValue;
  return dispatch_storage<float, __half, __nv_bfloat16>(params.dtype, cudaErrorInvalidValue, [&](auto storage) {
    return cuda::launch_update_storage(storage, params, stream);
  });
}

namespace {
template <bool kBrownian>
cudaError_t launch_noise(const NoiseParams& params, cudaStream_t stream) {
  if (noise_params_error(params) != kParamsOk) return cudaErrorInvalidValue;
  if (params.numel_per_sample == 0 || params.batch == 0) return cudaSuccess;
  const dim3 grid = cuda::grid_for((params.numel_per_sample + 3) / 4, params.batch);
  cuda::normal_noise_kernel<kBrownian><<<grid, cuda::kThreads, 0, stream>>>(params);
  return cudaGetLastError();
}
}  // namespace

cudaError_t launch_philox_normal(const NoiseParams& params, cudaStream_t stream) {
  return launch_noise<false>(params, stream);
}

cudaError_t launch_brownian_normal(const NoiseParams& params, cudaStream_t stream) {
  return launch_noise<true>(params, stream);
}

}  // namespace samplers
