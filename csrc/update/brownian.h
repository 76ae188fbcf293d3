// The virtual Brownian tree of samplers/ops/reference.py (brownian_value, brownian_normal), for the
// host and the device, in the reference's float32 operations and order.
//
// One standard Brownian path on [0, 1] per (seed, path, element): W(0) = 0, W(1) is Philox node
// 0, and the midpoint of heap cell h (h = 1 is [0, 1], children 2h, 2h + 1) is the Brownian bridge
//     W(mid) = (W(lo) + W(hi)) * 0.5 + scale(depth) * z_h,   scale(depth) = sqrt((hi - lo) / 4)
// with z_h the Philox normals of counter (group, h, path_lo, path_hi | 2^31). A time t descends
// kBrownianDepth levels (left when t < mid) and is interpolated linearly in its final cell. The
// descent depends on t only, so it is uniform over the elements of a sample (and over a CUDA
// block): the draws differ per element, the branches never do.
//
// The building blocks are per element so that the CPU can run them level by level over a chunk
// (vectorized loops) and the CUDA kernels group by group (brownian_normal4): the operations on
// each element are the same, hence the same bits.
#pragma once

#include <stdint.h>

#include "philox.h"
#include "update_params.h"

namespace samplers {

// sqrt((hi - lo) / 4) of a cell at `depth` (width 2^-depth), rounded to float32 once, as the
// reference's _BRIDGE_SCALE: 2^-(depth/2 + 1), times float32(sqrt(1/2)) for odd depths (both
// factors exact in float32, so their product is the rounded value itself).
SAMPLERS_HD float brownian_bridge_scale(int depth) {
  const float pow2 = bits_to_float((uint32_t)(126 - depth / 2) << 23);  // 2^-(depth/2 + 1)
  return (depth & 1) ? fmul_rn(bits_to_float(0x3F3504F3u), pow2) : pow2;
}

// The cell a time has reached: [lo, hi], heap index `heap` (the Philox node of its midpoint).
struct BrownianCell {
  float lo, hi;
  uint32_t heap;
};

SAMPLERS_HD BrownianCell brownian_root_cell() {
  BrownianCell c = {0.0f, 1.0f, 1u};
  return c;
}

// Bisects the cell towards t; returns true when t went to the left half (the new midpoint value
// then replaces W(hi), else W(lo)).
SAMPLERS_HD bool brownian_descend(BrownianCell* c, float t) {
  const float mid = fmul_rn(fadd_rn(c->lo, c->hi), 0.5f);
  const bool left = t < mid;
  c->hi = left ? mid : c->hi;
  c->lo = left ? c->lo : mid;
  c->heap = 2u * c->heap + (left ? 0u : 1u);
  return left;
}

// W at the midpoint from W at the ends and the node's normal.
SAMPLERS_HD float brownian_bridge(float w_lo, float w_hi, float scale, float z) {
  return fadd_rn(fmul_rn(fadd_rn(w_lo, w_hi), 0.5f), fmul_rn(scale, z));
}

// Linear interpolation of W inside the final cell.
SAMPLERS_HD float brownian_fraction(const BrownianCell& c, float t) {
  return fdiv_rn(fsub_rn(t, c.lo), fsub_rn(c.hi, c.lo));
}
SAMPLERS_HD float brownian_interpolate(float w_lo, float w_hi, float fraction) {
  return fadd_rn(w_lo, fmul_rn(fraction, fsub_rn(w_hi, w_lo)));
}

// |t1 - t0| (0 or NaN: the increment is 0) and the normalisation of W(t1) - W(t0):
// where(span > 0, dw / sqrt(clamp(span, min=1e-30)), 0).
SAMPLERS_HD float brownian_span(float t0, float t1) {
  return bits_to_float(float_to_bits(fsub_rn(t1, t0)) & 0x7FFFFFFFu);
}
SAMPLERS_HD float brownian_normalise(float w0, float w1, float span) {
  const float clamped = span < 1e-30f ? 1e-30f : span;
  return span > 0.0f ? fdiv_rn(fsub_rn(w1, w0), fsqrt_rn(clamped)) : 0.0f;
}

// The Philox stream of the nodes of Brownian path `path`.
SAMPLERS_HD uint64_t brownian_stream(uint64_t path) { return path | kBrownianTag; }

// W of one time for the four elements of a Philox group while the walk descends.
struct BrownianWalk {
  BrownianCell cell;
  float w_lo[4], w_hi[4];
};

SAMPLERS_HD void brownian_walk_step(BrownianWalk* walk, float t, float scale, const Normal4& z) {
  const float zj[4] = {z.n0, z.n1, z.n2, z.n3};
  const bool left = brownian_descend(&walk->cell, t);
#if defined(__CUDACC__) || defined(__clang__)
#pragma unroll
#endif
  for (int j = 0; j < 4; ++j) {
    const float mid = brownian_bridge(walk->w_lo[j], walk->w_hi[j], scale, zj[j]);
    walk->w_hi[j] = left ? mid : walk->w_hi[j];
    walk->w_lo[j] = left ? walk->w_lo[j] : mid;
  }
}

// (W(t1) - W(t0)) / sqrt(|t1 - t0|) for elements 4 * group .. 4 * group + 3 of one sample: the two
// descents in one loop, sharing each draw while they are in the same cell.
SAMPLERS_HD Normal4 brownian_normal4(uint64_t seed, uint64_t path, float t0, float t1, uint32_t group) {
  Normal4 out = {0.0f, 0.0f, 0.0f, 0.0f};
  const float span = brownian_span(t0, t1);
  if (!(span > 0.0f)) return out;
  const uint64_t stream = brownian_stream(path);
  const Normal4 w1 = philox_normal4(seed, stream, group, 0u);  // W(1)
  BrownianWalk a = {brownian_root_cell(), {0.0f, 0.0f, 0.0f, 0.0f}, {w1.n0, w1.n1, w1.n2, w1.n3}};
  BrownianWalk b = a;
  for (int depth = 0; depth < kBrownianDepth; ++depth) {
    const float scale = brownian_bridge_scale(depth);
    const bool shared = a.cell.heap == b.cell.heap;  // uniform over a sample
    const Normal4 za = philox_normal4(seed, stream, group, a.cell.heap);
    const Normal4 zb = shared ? za : philox_normal4(seed, stream, group, b.cell.heap);
    brownian_walk_step(&a, t0, scale, za);
    brownian_walk_step(&b, t1, scale, zb);
  }
  const float fa = brownian_fraction(a.cell, t0), fb = brownian_fraction(b.cell, t1);
  out.n0 = brownian_normalise(brownian_interpolate(a.w_lo[0], a.w_hi[0], fa),
                              brownian_interpolate(b.w_lo[0], b.w_hi[0], fb), span);
  out.n1 = brownian_normalise(brownian_interpolate(a.w_lo[1], a.w_hi[1], fa),
                              brownian_interpolate(b.w_lo[1], b.w_hi[1], fb), span);
  out.n2 = brownian_normalise(brownian_interpolate(a.w_lo[2], a.w_hi[2], fa),
                              brownian_interpolate(b.w_lo[2], b.w_hi[2], fb), span);
  out.n3 = brownian_normalise(brownian_interpolate(a.w_lo[3], a.w_hi[3], fa),
                              brownian_interpolate(b.w_lo[3], b.w_hi[3], fb), span);
  return out;
}

// The stream (Philox) or path (Brownian) of a coefficient row: noise_stream + (int64) row[stream],
// wrapping in 64 bits. The column holds an integer (exact in float32 below 2^24); other values are
// truncated toward zero, and NaN or values outside int64 give INT64_MIN, as torch's float -> int64
// conversion does on x86 (the CPU reference), the same on every device here.
SAMPLERS_HD uint64_t row_stream(float column, uint64_t noise_stream) {
  const bool in_range = column > -9.22337203685477580e18f && column < 9.22337203685477580e18f;
  const int64_t value = in_range ? (int64_t)column : INT64_MIN;
  return noise_stream + (uint64_t)value;
}

}  // namespace samplers
