// CPU implementation of the fused sampler update and of the in-op noise ops (no torch types).
#pragma once

#include <stdint.h>

#include "update_params.h"

namespace samplers {

// Runs body(ctx, begin, end) over [0, n) split in pieces of at least `grain` items, possibly in
// parallel. The torch binding passes at::parallel_for (torch's OpenMP pool and thread setting);
// nullptr uses this library's own OpenMP loop (or a serial one without OpenMP).
using ParallelFor = void (*)(int64_t n, int64_t grain, void* ctx, void (*body)(void* ctx, int64_t begin, int64_t end));

// Return 0 on success, else a ParamsError (update_params.h) for arguments they cannot take.
int sampler_update_cpu(const UpdateParams& params, ParallelFor parallel_for = nullptr);

// out[b, i] = the Philox normal of (seeds[b], noise_stream + streams[b], i), float32
// [batch, numel_per_sample].
int philox_normal_cpu(const NoiseParams& params, ParallelFor parallel_for = nullptr);

// out[b, i] = element i of the normalised increment of Brownian path (seeds[b], noise_stream +
// streams[b]) over [t0[b], t1[b]], float32 [batch, numel_per_sample].
int brownian_normal_cpu(const NoiseParams& params, ParallelFor parallel_for = nullptr);

}  // namespace samplers
