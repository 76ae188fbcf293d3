// Counter-based normal noise, bit-identical on the host and on CUDA devices.
//
// Element i of a sample with 64-bit key `seed`, on stream `stream`, comes from the Philox4x32-10
// block with counter (i / 4, 0, stream_lo, stream_hi) and key (seed_lo, seed_hi); the four outputs
// (r0, r1, r2, r3) go through Box-Muller as (r0, r1) -> elements 4k, 4k+1 and (r2, r3) -> 4k+2, 4k+3:
//     u1 = ((r >> 8) + 1) * 2^-24 in (0, 1],  u2 = (r >> 8) * 2^-24 in [0, 1)
//     n_even = sqrt(-2 log u1) * cos(2 pi u2),  n_odd = sqrt(-2 log u1) * sin(2 pi u2)
// exactly as samplers/ops/reference.py's philox_normal.
//
// log, sin and cos are our own float32 polynomials (least-squares fits on Chebyshev nodes, checked
// exhaustively over all 2^24 inputs: <= 1 ulp for log and <= 1.5 ulp for sin/cos on this domain)
// written with explicitly rounded multiplies, adds and fused multiply-adds, so that a CUDA device
// and any host compiler (fp contraction off) produce the same bits, and so that the CPU loops
// vectorize (no libm calls, no branches).
// No torch includes: this header is shared by the CPU code, the CUDA kernels and the CI compile.
#pragma once

#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define SAMPLERS_HD __host__ __device__ __forceinline__
#else
#define SAMPLERS_HD inline
#endif

namespace samplers {

// ---- exactly rounded float32 arithmetic (no contraction into FMA on the device) ----------------
SAMPLERS_HD float fmul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
SAMPLERS_HD float fadd_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
SAMPLERS_HD float fsub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
SAMPLERS_HD float fdiv_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
// Fused multiply-add, rounded once: the device instruction, and on the host the hardware FMA
// when the code is compiled for it (the x86-64-v3/v4 clones of the CPU noise loop; every
// ARM64) or libm's correctly rounded fmaf otherwise. Either way the same bits.
SAMPLERS_HD float ffma_rn(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return __builtin_fmaf(a, b, c);
#endif
}
SAMPLERS_HD float fsqrt_rn(float a) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(a);
#else
  return __builtin_sqrtf(a);  // IEEE sqrt instruction; no errno path under -fno-math-errno
#endif
}
SAMPLERS_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  memcpy(&u, &f, sizeof(u));
  return u;
#endif
}
SAMPLERS_HD float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

// ---- Philox4x32-10 ----------------------------------------------------------------------------
struct Philox4 {
  uint32_t r0, r1, r2, r3;
};

SAMPLERS_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return (uint32_t)(((uint64_t)a * (uint64_t)b) >> 32);
#endif
}

SAMPLERS_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
  const uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
  const uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
#if defined(__CUDACC__) || defined(__clang__)
#pragma unroll
#elif defined(__GNUC__)
#pragma GCC unroll 10
#endif
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = mulhi32(c0, M0), lo0 = c0 * M0;
    const uint32_t hi1 = mulhi32(c2, M1), lo1 = c2 * M1;
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += W0;  // the bump after the last round is unused
    k1 += W1;
  }
  Philox4 out = {c0, c1, c2, c3};
  return out;
}

// ---- float32 log on (0, 1] and sincos on [0, 2 pi) --------------------------------------------
// log(m * 2^e) = e ln2 + log1p(f), f = m - 1 in [sqrt(1/2) - 1, sqrt(2) - 1],
// log1p(f) = f - f^2/2 + f^3 P(f). Valid for normal positive inputs (ours are >= 2^-24).
SAMPLERS_HD float log_unit(float x) {
  const uint32_t bits = float_to_bits(x);
  int32_t e = (int32_t)(bits >> 23) - 127;
  float m = bits_to_float((bits & 0x007FFFFFu) | 0x3F800000u);
  const bool big = m > 1.41421356f;
  m = big ? fmul_rn(m, 0.5f) : m;
  e = big ? e + 1 : e;
  const float f = fsub_rn(m, 1.0f);
  const float ef = (float)e;
  float p = 0.06675271689891815f;
  p = ffma_rn(p, f, -0.11646434664726257f);
  p = ffma_rn(p, f, 0.1190471202135086f);
  p = ffma_rn(p, f, -0.12411268800497055f);
  p = ffma_rn(p, f, 0.14217890799045563f);
  p = ffma_rn(p, f, -0.16667643189430237f);
  p = ffma_rn(p, f, 0.20002204179763794f);
  p = ffma_rn(p, f, -0.25000014901161194f);
  p = ffma_rn(p, f, 0.3333331048488617f);
  const float z = fmul_rn(f, f);
  float y = fmul_rn(fmul_rn(z, f), p);
  y = ffma_rn(ef, -2.12194440e-4f, y);  // ln2 - 0.693359375 (low part)
  y = ffma_rn(-0.5f, z, y);
  const float r = fadd_rn(f, y);
  return fadd_rn(r, fmul_rn(ef, 0.693359375f));  // high part of ln2: exact product for |e| <= 2^12
}

// sin and cos of theta in [0, ~2 pi]: theta = j pi/2 + r, |r| <~ pi/4 (three-part Cody-Waite
// reduction with products exact for j <= 4), odd/even polynomials in r, quadrant by bit tricks.
SAMPLERS_HD void sincos_turn(float theta, float* s_out, float* c_out) {
  const int32_t j = (int32_t)fadd_rn(fmul_rn(theta, 0.63661975f), 0.5f);  // theta >= 0: trunc = floor
  const float jf = (float)j;
  float r = ffma_rn(jf, -1.5703125f, theta);  // exact: j * 1.5703125 has few bits
  r = ffma_rn(jf, -4.838705062866211e-4f, r);
  r = ffma_rn(jf, 4.371138828673793e-08f, r);
  const float z = fmul_rn(r, r);
  float ps = -0.00019518169574439526f;
  ps = ffma_rn(ps, z, 0.008332186378538609f);
  ps = ffma_rn(ps, z, -0.16666655242443085f);
  const float s = ffma_rn(fmul_rn(r, z), ps, r);
  float pc = 2.443285302433651e-05f;
  pc = ffma_rn(pc, z, -0.0013887312961742282f);
  pc = ffma_rn(pc, z, 0.04166664555668831f);
  const float c = fadd_rn(ffma_rn(fmul_rn(z, z), pc, fmul_rn(-0.5f, z)), 1.0f);
  const uint32_t q = (uint32_t)j;
  const bool swap = (q & 1u) != 0u;
  const float sv = swap ? c : s;
  const float cv = swap ? s : c;
  *s_out = bits_to_float(float_to_bits(sv) ^ ((q & 2u) << 30));         // negative in quadrants 2, 3
  *c_out = bits_to_float(float_to_bits(cv) ^ (((q + 1u) & 2u) << 30));  // negative in quadrants 1, 2
}

// Box-Muller on two Philox words: (radius * cos, radius * sin).
SAMPLERS_HD void box_muller(uint32_t r_radius, uint32_t r_angle, float* n_cos, float* n_sin) {
  const float u1 = fmul_rn((float)(int32_t)((r_radius >> 8) + 1u), 5.9604644775390625e-08f);  // 2^-24, exact
  const float u2 = fmul_rn((float)(int32_t)(r_angle >> 8), 5.9604644775390625e-08f);
  const float radius = fsqrt_rn(fmul_rn(-2.0f, log_unit(u1)));
  const float theta = fmul_rn(6.2831854820251465f, u2);  // float32(2 pi), as the reference rounds it
  float s, c;
  sincos_turn(theta, &s, &c);
  *n_cos = fmul_rn(radius, c);
  *n_sin = fmul_rn(radius, s);
}

// The four normals of Philox group `group` (elements 4*group .. 4*group+3) for one sample:
// counter (group, word1, stream_lo, stream_hi). The per-call noise uses word1 = 0; the Brownian
// tree numbers its nodes in word1 (and tags the stream's top bit, see update_params.h).
struct Normal4 {
  float n0, n1, n2, n3;
};

SAMPLERS_HD Normal4 philox_normal4(uint64_t seed, uint64_t stream, uint32_t group, uint32_t word1 = 0u) {
  const Philox4 r =
      philox4x32_10(group, word1, (uint32_t)stream, (uint32_t)(stream >> 32), (uint32_t)seed, (uint32_t)(seed >> 32));
  Normal4 out;
  box_muller(r.r0, r.r1, &out.n0, &out.n1);
  box_muller(r.r2, r.r3, &out.n2, &out.n3);
  return out;
}

}  // namespace samplers
