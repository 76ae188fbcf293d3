// CPU implementation of the fused sampler update and of the Philox normals (no torch types).
#pragma once

#include <stdint.h>

#include "update_params.h"

namespace samplers {

// Runs body(ctx, begin, end) over [0, n) split in pieces of at least `grain` items, possibly in
// parallel. The torch binding passes at::parallel_for (torch's OpenMP pool and thread setting);
// nullptr uses this library's own OpenMP loop (or a serial one without OpenMP).
using ParallelFor = void (*)(int64_t n, int64_t grain, void* ctx, void (*body)(void* ctx, int64_t begin, int64_t end));

// Returns 0 on success, nonzero for arguments it cannot take (unsupported dtype, bad sizes).
int sampler_update_cpu(const UpdateParams& params, ParallelFor parallel_for = nullptr);

// out[b, i] = Philox normal of (seeds[b], noise_stream, i), float32 [batch, numel_per_sample].
int philox_normal_cpu(const NoiseParams& params, ParallelFor parallel_for = nullptr);

}  // namespace samplers
