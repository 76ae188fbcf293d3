// CUDA registrations of samplers::sampler_update, samplers::philox_normal and
// samplers::brownian_normal: the torch-side checks and layout handling are shared with the CPU
// kernel (update_ops.cpp); here we only pick the device and stream, launch the torch-free kernels
// (csrc/update/update_kernel.cuh) and check the launch error. Compiled only when torch has CUDA.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "bindings/update_binding.h"
#include "update/update_kernel.cuh"

namespace samplers {
namespace {

void launch_cuda(const UpdateParams& p, const at::Tensor& like) {
  const c10::cuda::CUDAGuard guard(like.device());
  const cudaError_t err = launch_sampler_update(p, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "samplers::sampler_update: CUDA launch failed: ", cudaGetErrorString(err));
}

void launch_philox_cuda(const NoiseParams& p, const at::Tensor& like) {
  const c10::cuda::CUDAGuard guard(like.device());
  const cudaError_t err = launch_philox_normal(p, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "samplers::philox_normal: CUDA launch failed: ", cudaGetErrorString(err));
}

void launch_brownian_cuda(const NoiseParams& p, const at::Tensor& like) {
  const c10::cuda::CUDAGuard guard(like.device());
  const cudaError_t err = launch_brownian_normal(p, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "samplers::brownian_normal: CUDA launch failed: ", cudaGetErrorString(err));
}

std::tuple<at::Tensor, at::Tensor> sampler_update_cuda_kernel(const at::Tensor& x, const at::Tensor& model_output,
                                                              const at::Tensor& coeffs,
                                                              const std::optional<at::Tensor>& uncond,
                                                              const std::optional<at::Tensor>& noise,
                                                              const std::optional<at::Tensor>& seeds,
                                                              int64_t noise_stream, at::TensorList history,
                                                              bool write_x0, bool brownian) {
  const c10::cuda::CUDAGuard guard(x.device());  // for the allocations and copies made before the launch
  return sampler_update_impl(x, model_output, coeffs, uncond, noise, seeds, noise_stream, history, write_x0, brownian,
                             launch_cuda);
}

at::Tensor philox_normal_cuda_kernel(const at::Tensor& seeds, int64_t noise_stream, int64_t numel_per_sample,
                                     const std::optional<at::Tensor>& streams) {
  const c10::cuda::CUDAGuard guard(seeds.device());
  return philox_normal_impl(seeds, noise_stream, numel_per_sample, streams, launch_philox_cuda);
}

at::Tensor brownian_normal_cuda_kernel(const at::Tensor& seeds, const at::Tensor& path, const at::Tensor& t0,
                                       const at::Tensor& t1, int64_t numel_per_sample) {
  const c10::cuda::CUDAGuard guard(seeds.device());
  return brownian_normal_impl(seeds, path, t0, t1, numel_per_sample, launch_brownian_cuda);
}

}  // namespace
}  // namespace samplers

TORCH_LIBRARY_IMPL(samplers, CUDA, m) {
  m.impl("sampler_update", &samplers::sampler_update_cuda_kernel);
  m.impl("philox_normal", &samplers::philox_normal_cuda_kernel);
  m.impl("brownian_normal", &samplers::brownian_normal_cuda_kernel);
}
