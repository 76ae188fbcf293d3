// Torch-side glue shared by the CPU registration (update_ops.cpp) and the CUDA one
// (update_cuda.cu): argument checks, layout handling and UpdateParams filling. The device code
// itself only ever sees UpdateParams / NoiseParams.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

#include "update/update_params.h"

namespace samplers {

// Runs the update / the noise described by params on the device of `like` (throws on failure).
using UpdateLauncher = void (*)(const UpdateParams& params, const at::Tensor& like);
using NoiseLauncher = void (*)(const NoiseParams& params, const at::Tensor& like);

std::tuple<at::Tensor, at::Tensor> sampler_update_impl(const at::Tensor& x, const at::Tensor& model_output,
                                                       const at::Tensor& coeffs,
                                                       const std::optional<at::Tensor>& uncond,
                                                       const std::optional<at::Tensor>& noise,
                                                       const std::optional<at::Tensor>& seeds, int64_t noise_stream,
                                                       at::TensorList history, bool write_x0, bool brownian,
                                                       UpdateLauncher launch);

at::Tensor philox_normal_impl(const at::Tensor& seeds, int64_t noise_stream, int64_t numel_per_sample,
                              const std::optional<at::Tensor>& streams, NoiseLauncher launch);

at::Tensor brownian_normal_impl(const at::Tensor& seeds, const at::Tensor& path, const at::Tensor& t0,
                                const at::Tensor& t1, int64_t numel_per_sample, NoiseLauncher launch);

}  // namespace samplers
