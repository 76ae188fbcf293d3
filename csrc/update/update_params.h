// Arguments of the fused sampler update, as plain pointers and sizes (no torch types), shared by
// the CPU implementation, the CUDA kernels and the torch bindings.
//
// Per element, in float32 whatever the storage (see samplers/ops/reference.py, the contract):
//   out  = uncond + w * (model_output - uncond)        if uncond, else model_output
//   x0   = clamp(p * x + q * out, -lim, lim) / div
//   prev = a * x + b * x0 + e * out [+ c * noise] [+ h0 * history0] [+ h1 * history1]
// where noise is an explicit tensor or Philox normals keyed by (seeds[b], noise_stream, element).
#pragma once

#include <stdint.h>

namespace samplers {

enum CoeffColumn : int {
  kP = 0,
  kQ = 1,
  kLim = 2,
  kDiv = 3,
  kA = 4,
  kB = 5,
  kE = 6,
  kC = 7,
  kH0 = 8,
  kH1 = 9,
  kW = 10,
  kNumCoeffs = 11
};

enum class DType : int32_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

struct UpdateParams {
  // Dense row-major [batch, numel_per_sample] buffers of `dtype` (the bindings make them so).
  const void* x = nullptr;
  const void* model_output = nullptr;
  const void* uncond = nullptr;    // used when has_uncond
  const void* noise = nullptr;     // used when has_noise
  const void* history0 = nullptr;  // used when has_history0
  const void* history1 = nullptr;  // used when has_history1
  const int64_t* seeds = nullptr;  // [batch] Philox keys, used when has_seeds (and not has_noise)
  const float* coeffs = nullptr;   // float32 rows of kNumCoeffs; row b at coeffs + b * coeff_row_stride
  void* prev = nullptr;            // output [batch, numel_per_sample]
  void* x0 = nullptr;              // output, written when write_x0

  int64_t numel_per_sample = 0;
  int64_t batch = 0;
  int64_t coeff_row_stride = 0;  // 0: one row broadcast to every sample; kNumCoeffs: one row each
  uint64_t noise_stream = 0;     // Philox counter words 2 and 3 (e.g. the step index)
  DType dtype = DType::kFloat32;

  bool has_uncond = false;
  bool has_noise = false;
  bool has_seeds = false;
  bool has_history0 = false;
  bool has_history1 = false;
  bool write_x0 = false;
};

// Philox normals [batch, numel_per_sample] float32 (the op samplers::philox_normal).
struct NoiseParams {
  const int64_t* seeds = nullptr;
  float* out = nullptr;
  int64_t numel_per_sample = 0;
  int64_t batch = 0;
  uint64_t noise_stream = 0;
};

// Noise source of one launch, a template parameter of the kernels.
enum NoiseMode : int { kNoNoise = 0, kNoiseTensor = 1, kNoisePhilox = 2 };

}  // namespace samplers
