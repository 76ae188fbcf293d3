// The per-element math of the fused update and float16/bfloat16 storage conversions, for the host
// and the device. Every operation is an explicitly rounded float32 multiply/add/divide in the order
// samplers/ops/reference.py evaluates it, so that the fused op reproduces the reference's float32
// result (bit for bit when the noise is given as a tensor) on any compiler and on CUDA.
#pragma once

#include <stdint.h>

#include "philox.h"
#include "update_params.h"

namespace samplers {

// One coefficient row in float32, indexed by CoeffColumn (the columns are listed once, in
// update_params.h). On CUDA the loads of columns a variant never reads are dropped.
struct CoeffRow {
  float v[kNumCoeffs];
  SAMPLERS_HD float operator[](int column) const { return v[column]; }
};

SAMPLERS_HD CoeffRow load_coeff_row(const float* row) {
  CoeffRow k;
#if defined(__CUDACC__) || defined(__clang__)
#pragma unroll
#endif
  for (int j = 0; j < kNumCoeffs; ++j) k.v[j] = row[j];
  return k;
}

// One element: returns prev, stores x0 (float32) in *x0. o is the model output, u the
// unconditional output (read only with kUncond), z the noise (unless kNoise is kNone), g0 .. g3
// the history values (the first kNumHistory are read; scalars, not an array, so that the CPU
// loops keep them in vector registers). kUnitDiv: the caller knows div == 1, and v / 1 == v
// exactly, so the (costly) IEEE division is skipped without changing a bit.
template <bool kUncond, NoiseMode kNoise, int kNumHistory, bool kUnitDiv = false>
SAMPLERS_HD float update_element(const CoeffRow& k, float x, float o, float u, float z, float g0, float g1, float g2,
                                 float g3, float* x0) {
  static_assert(kNumHistory >= 0 && kNumHistory <= kMaxHistory, "at most kMaxHistory history terms");
  const float raw = kUncond ? u : o;  // what column u weighs
  float out = o;
  if (kUncond) out = fadd_rn(u, fmul_rn(k[kW], fsub_rn(o, u)));
  float v = fadd_rn(fmul_rn(k[kP], x), fmul_rn(k[kQ], out));
  // torch.clamp(v, -lim, lim): NaN in v (or in lim) stays NaN.
  const float lim = k[kLim];
  const float lo = -lim;
  v = v < lo ? lo : v;
  v = v > lim ? lim : v;
  v = lim != lim ? lim : v;
  const float xz = kUnitDiv ? v : fdiv_rn(v, k[kDiv]);
  float prev = fadd_rn(fmul_rn(k[kA], x), fmul_rn(k[kB], xz));
  prev = fadd_rn(prev, fmul_rn(k[kE], out));
  prev = fadd_rn(prev, fmul_rn(k[kU], raw));
  if (kNoise != NoiseMode::kNone) prev = fadd_rn(prev, fmul_rn(k[kC], z));
  if (kNumHistory > 0) prev = fadd_rn(prev, fmul_rn(k[kH0], g0));
  if (kNumHistory > 1) prev = fadd_rn(prev, fmul_rn(k[kH1], g1));
  if (kNumHistory > 2) prev = fadd_rn(prev, fmul_rn(k[kH2], g2));
  if (kNumHistory > 3) prev = fadd_rn(prev, fmul_rn(k[kH3], g3));
  *x0 = xz;
  return prev;
}

// ---- host-side storage types (the device uses cuda_fp16.h / cuda_bf16.h instead) ---------------
struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

// Branch-free so that the CPU loops vectorize.
inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  const uint32_t em = h & 0x7FFFu;
  const uint32_t normal = (em << 13) + (112u << 23);               // rebias exponent 15 -> 127
  const uint32_t infnan = (em << 13) | 0x7F800000u;                // keep the payload
  const float sub = (float)(int32_t)em * 5.9604644775390625e-08f;  // em * 2^-24, exact
  const uint32_t mag = em >= 0x7C00u ? infnan : (em >= 0x0400u ? normal : float_to_bits(sub));
  return bits_to_float(sign | mag);
}

// Round to nearest even, overflow to inf, NaN stays NaN (quiet).
inline uint16_t float_to_half_bits(float f) {
  const uint32_t u = float_to_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7FFFFFFFu;
  const uint32_t normal = (a - 0x38000000u + 0x0FFFu + ((a >> 13) & 1u)) >> 13;
  // below 2^-14 the result is a multiple of 2^-24: scale (exactly) and round to an integer
  const float scaled = bits_to_float(a) * 16777216.0f;
  const float clipped = scaled < 2048.0f ? scaled : 2048.0f;
  const uint32_t sub = (uint32_t)(int32_t)((clipped + 8388608.0f) - 8388608.0f);  // round half to even
  const uint32_t mag = a > 0x7F800000u    ? 0x7E00u
                       : a >= 0x477FF000u ? 0x7C00u  // >= 65520 rounds to inf
                       : a >= 0x38800000u ? normal
                                          : sub;
  return (uint16_t)(sign | mag);
}

inline float bf16_bits_to_float(uint16_t h) { return bits_to_float((uint32_t)h << 16); }

inline uint16_t float_to_bf16_bits(float f) {
  const uint32_t u = float_to_bits(f);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return (uint16_t)(f != f ? 0x7FC0u : rounded);
}

inline float load_as_float(const float* p, int64_t i) { return p[i]; }
inline float load_as_float(const Half* p, int64_t i) { return half_bits_to_float(p[i].bits); }
inline float load_as_float(const BFloat16* p, int64_t i) { return bf16_bits_to_float(p[i].bits); }
inline void store_from_float(float* p, int64_t i, float v) { p[i] = v; }
inline void store_from_float(Half* p, int64_t i, float v) { p[i].bits = float_to_half_bits(v); }
inline void store_from_float(BFloat16* p, int64_t i, float v) { p[i].bits = float_to_bf16_bits(v); }

}  // namespace samplers
