// The per-element math of the fused update and float16/bfloat16 storage conversions, for the host
// and the device. Every operation is an explicitly rounded float32 multiply/add/divide in the order
// samplers/ops/reference.py evaluates it, so that the fused op reproduces the reference's float32
// result (bit for bit when the noise is given as a tensor) on any compiler and on CUDA.
#pragma once

#include <stdint.h>

#include "philox.h"
#include "update_params.h"

namespace samplers {

struct CoeffRow {
  float p, q, lim, div, a, b, e, c, h0, h1, w;
};

SAMPLERS_HD CoeffRow load_coeff_row(const float* row) {
  CoeffRow k;
  k.p = row[kP];
  k.q = row[kQ];
  k.lim = row[kLim];
  k.div = row[kDiv];
  k.a = row[kA];
  k.b = row[kB];
  k.e = row[kE];
  k.c = row[kC];
  k.h0 = row[kH0];
  k.h1 = row[kH1];
  k.w = row[kW];
  return k;
}

// One element: returns prev, stores x0 (float32) in *x0. kUnitDiv: the caller knows div == 1, and
// v / 1 == v exactly, so the (costly) IEEE division is skipped without changing a bit.
template <bool kUncond, int kNoise, bool kHist0, bool kHist1, bool kUnitDiv = false>
SAMPLERS_HD float update_element(const CoeffRow& k, float x, float o, float u, float z, float g0, float g1, float* x0) {
  float out = o;
  if (kUncond) out = fadd_rn(u, fmul_rn(k.w, fsub_rn(o, u)));
  float v = fadd_rn(fmul_rn(k.p, x), fmul_rn(k.q, out));
  // torch.clamp(v, -lim, lim): NaN in v (or in lim) stays NaN.
  const float lo = -k.lim;
  v = v < lo ? lo : v;
  v = v > k.lim ? k.lim : v;
  v = k.lim != k.lim ? k.lim : v;
  const float xz = kUnitDiv ? v : fdiv_rn(v, k.div);
  float prev = fadd_rn(fmul_rn(k.a, x), fmul_rn(k.b, xz));
  prev = fadd_rn(prev, fmul_rn(k.e, out));
  if (kNoise != kNoNoise) prev = fadd_rn(prev, fmul_rn(k.c, z));
  if (kHist0) prev = fadd_rn(prev, fmul_rn(k.h0, g0));
  if (kHist1) prev = fadd_rn(prev, fmul_rn(k.h1, g1));
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
