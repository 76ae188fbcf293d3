// Arguments of the fused sampler update, as plain pointers and sizes (no torch types), shared by
// the CPU implementation, the CUDA kernels and the torch bindings.
//
// Per element, in float32 whatever the storage (see samplers/ops/reference.py, the contract):
//   out  = uncond + w * (model_output - uncond)        if uncond, else model_output
//   x0   = clamp(p * x + q * out, -lim, lim) / div
//   prev = a * x + b * x0 + e * out + u * (uncond or model_output) [+ c * noise]
//          [+ h0 * history[0]] ... [+ h3 * history[3]]
// where noise is an explicit tensor, Philox normals keyed by (seeds[b], noise_stream + stream,
// element), or the normalised increment of a Brownian path over the row's [bt0, bt1].
#pragma once

#include <stdint.h>

namespace samplers {

// The coefficient columns, in order: the one list (samplers/ops/reference.py's COEFF_NAMES must
// equal it; tests/test_ops_update.py checks through the op samplers::update_coeff_names). Each
// entry is X(enumerator, name); the enum and the names table below are generated from it.
#define SAMPLERS_COEFF_COLUMNS(X)                                                     \
  X(kP, p) /* x0 = clamp(p x + q out, -lim, lim) / div: the call's estimate */        \
  X(kQ, q)                                                                            \
  X(kLim, lim)                                                                        \
  X(kDiv, div)                                                                        \
  X(kA, a) /* prev = a x + b x0 + e out + u uncond + c noise + sum_j hj history[j] */ \
  X(kB, b)                                                                            \
  X(kE, e)                                                                            \
  X(kC, c)                                                                            \
  X(kH0, h0)                                                                          \
  X(kH1, h1)                                                                          \
  X(kH2, h2)                                                                          \
  X(kH3, h3)                                                                          \
  X(kW, w) /* guidance weight: out = uncond + w (model_output - uncond) */            \
  X(kU, u)                                                                            \
  X(kStream, stream) /* Philox stream / Brownian path of the row, an integer */       \
  X(kBt0, bt0)       /* Brownian times in [0, 1] of the row's increment */            \
  X(kBt1, bt1)

#define SAMPLERS_COEFF_ENUM_ENTRY(enumerator, name) enumerator,
enum CoeffColumn : int { SAMPLERS_COEFF_COLUMNS(SAMPLERS_COEFF_ENUM_ENTRY) kNumCoeffs };
#undef SAMPLERS_COEFF_ENUM_ENTRY

#define SAMPLERS_COEFF_NAME_ENTRY(enumerator, name) #name,
// Column names, indexed by CoeffColumn (error messages, and the names test).
constexpr const char* kCoeffNames[kNumCoeffs] = {SAMPLERS_COEFF_COLUMNS(SAMPLERS_COEFF_NAME_ENTRY)};
#undef SAMPLERS_COEFF_NAME_ENTRY

// History tensors weighed by h0 .. h3; the kernels index the weights as kH0 + j.
constexpr int kMaxHistory = 4;
static_assert(kH1 == kH0 + 1 && kH2 == kH0 + 2 && kH3 == kH0 + 3, "history weights must be adjacent columns");

// In-op noise numbers Philox blocks of 4 elements with the 32-bit counter word 0.
constexpr int64_t kMaxNoiseNumelPerSample = int64_t(1) << 34;

// Depth of the virtual Brownian tree (cells of 2^-24 in Brownian time); its draws set the top bit
// of Philox counter word 3, which per-call streams (< 2^24) never do.
constexpr int kBrownianDepth = 24;
constexpr uint64_t kBrownianTag = uint64_t(1) << 63;

enum class DType : int32_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Noise source of one update (a template parameter of the kernels).
enum class NoiseMode : int {
  kNone = 0,      // no noise term
  kTensor = 1,    // the explicit noise tensor
  kPhilox = 2,    // Philox normals keyed by (seed, noise_stream + row stream, element)
  kBrownian = 3,  // normalised Brownian increment over the row's [bt0, bt1], path noise_stream + row stream
};

struct UpdateParams {
  // Dense row-major [batch, numel_per_sample] buffers of `dtype` (the bindings make them so).
  const void* x = nullptr;
  const void* model_output = nullptr;
  const void* uncond = nullptr;           // used when has_uncond
  const void* noise = nullptr;            // used when noise_mode == kTensor
  const void* history[kMaxHistory] = {};  // history[0 .. num_history)
  const int64_t* seeds = nullptr;         // [batch] Philox keys, used for kPhilox / kBrownian
  const float* coeffs = nullptr;          // float32 rows of kNumCoeffs; row b at coeffs + b * coeff_row_stride
  void* prev = nullptr;                   // output [batch, numel_per_sample]
  void* x0 = nullptr;                     // output, written when write_x0

  int64_t numel_per_sample = 0;
  int64_t batch = 0;
  int64_t coeff_row_stride = 0;  // 0: one row broadcast to every sample; kNumCoeffs: one row each
  uint64_t noise_stream = 0;     // added to each row's stream column (Philox counter words 2 and 3)
  DType dtype = DType::kFloat32;

  NoiseMode noise_mode = NoiseMode::kNone;
  int num_history = 0;  // 0 .. kMaxHistory
  bool has_uncond = false;
  bool write_x0 = false;
};

// Normals [batch, numel_per_sample] float32 (the ops samplers::philox_normal and
// samplers::brownian_normal): sample b uses stream (or Brownian path) noise_stream + streams[b]
// (streams optional); the Brownian op draws the normalised increment over [t0[b], t1[b]].
struct NoiseParams {
  const int64_t* seeds = nullptr;
  const int64_t* streams = nullptr;  // optional per-sample streams / paths
  const float* t0 = nullptr;         // [batch], Brownian only
  const float* t1 = nullptr;         // [batch], Brownian only
  float* out = nullptr;
  int64_t numel_per_sample = 0;
  int64_t batch = 0;
  uint64_t noise_stream = 0;
};

// Why the kernels cannot take these arguments (0: they can). Checked by the CPU and CUDA entry
// points alike; the bindings check the same first, with messages that name the argument.
enum ParamsError : int {
  kParamsOk = 0,
  kBadSizes = 1,
  kTooManyNoiseElements = 2,
  kBadHistoryCount = 3,
  kBadDType = 4,
};

inline int update_params_error(const UpdateParams& p) {
  if (p.numel_per_sample < 0 || p.batch < 0) return kBadSizes;
  if (p.num_history < 0 || p.num_history > kMaxHistory) return kBadHistoryCount;
  const bool in_op_noise = p.noise_mode == NoiseMode::kPhilox || p.noise_mode == NoiseMode::kBrownian;
  if (in_op_noise && p.numel_per_sample > kMaxNoiseNumelPerSample) return kTooManyNoiseElements;
  return kParamsOk;
}

inline int noise_params_error(const NoiseParams& p) {
  if (p.numel_per_sample < 0 || p.batch < 0) return kBadSizes;
  if (p.numel_per_sample > kMaxNoiseNumelPerSample) return kTooManyNoiseElements;
  return kParamsOk;
}

}  // namespace samplers
