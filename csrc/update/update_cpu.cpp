// CPU implementation: the work is split into (sample, chunk) items run in parallel; inside an item
// the in-op normals of the chunk go to a small stack buffer, then one loop (which the compiler
// vectorizes: no calls, no branches) reads each input once and writes prev (and x0) once.
#include "update_cpu.h"

#include "brownian.h"
#include "philox.h"
#include "update_dispatch.h"
#include "update_math.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace samplers {
namespace {

constexpr int64_t kChunk = 4096;  // elements per work item; a multiple of 4 (one Philox block = 4)
// Brownian noise costs some 50 Philox blocks per 4 elements: smaller work items spread it over
// more threads.
constexpr int64_t kBrownianChunk = 1024;
// Elements the Brownian descent carries level by level (five float buffers of it on the stack).
constexpr int64_t kBrownianBlock = 512;
static_assert(kChunk % kBrownianChunk == 0 && kBrownianChunk % kBrownianBlock == 0 && kBrownianBlock % 4 == 0,
              "work items and blocks hold whole Philox groups");

void serial_or_openmp_for(int64_t n, int64_t grain, void* ctx, void (*body)(void*, int64_t, int64_t)) {
#if defined(_OPENMP)
  if (n > 1 && n >= 2 * grain && !omp_in_parallel()) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) body(ctx, i, i + 1);
    return;
  }
#endif
  (void)grain;
  body(ctx, 0, n);
}

// Philox + Box-Muller is the compute-heavy part: on x86-64 Linux with GCC the noise loops are
// compiled for baseline SSE2, AVX2 and AVX-512 and the loader picks the best the CPU has (ifunc).
// The clones compute the same bits: no fast-math, no contraction.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(SAMPLERS_NO_TARGET_CLONES)
#define SAMPLERS_MULTIVERSION __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define SAMPLERS_MULTIVERSION
#endif

#if defined(__GNUC__)
#define SAMPLERS_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define SAMPLERS_ALWAYS_INLINE inline
#endif

// z[4j .. 4j+3] = normals of counter (first_group + j, word1, stream) for j < groups. Forced
// inline into each clone below, so that it is compiled for that clone's instruction set (an
// out-of-line copy would be baseline x86-64, where fmaf is a libm call: some 20x slower).
SAMPLERS_ALWAYS_INLINE void normals_of_groups(uint64_t seed, uint64_t stream, uint32_t word1, int64_t first_group,
                                              int64_t groups, float* __restrict z) {
  for (int64_t j = 0; j < groups; ++j) {
    const Normal4 r = philox_normal4(seed, stream, (uint32_t)(first_group + j), word1);
    z[4 * j + 0] = r.n0;
    z[4 * j + 1] = r.n1;
    z[4 * j + 2] = r.n2;
    z[4 * j + 3] = r.n3;
  }
}

// Fills z[0 .. 4 * ceil(n / 4)) with the Philox normals of elements first_group * 4 onwards.
SAMPLERS_MULTIVERSION void fill_normals(uint64_t seed, uint64_t stream, int64_t first_group, int64_t n,
                                        float* __restrict z) {
  normals_of_groups(seed, stream, 0u, first_group, (n + 3) / 4, z);
}

// One level of a Brownian walk over m elements: W(mid) replaces W(hi) (left) or W(lo).
SAMPLERS_ALWAYS_INLINE void bridge_level(float* __restrict w_lo, float* __restrict w_hi, const float* __restrict z,
                                         int64_t m, float scale, bool left) {
  if (left) {
    for (int64_t i = 0; i < m; ++i) w_hi[i] = brownian_bridge(w_lo[i], w_hi[i], scale, z[i]);
  } else {
    for (int64_t i = 0; i < m; ++i) w_lo[i] = brownian_bridge(w_lo[i], w_hi[i], scale, z[i]);
  }
}

// The Brownian increments of brownian.h's brownian_normal4 for elements first_group * 4 onwards
// (z[0 .. 4 * ceil(n / 4))), computed level by level over blocks of elements so that every loop
// vectorizes; per element, the same operations in the same order.
SAMPLERS_MULTIVERSION void fill_brownian(uint64_t seed, uint64_t path, float t0, float t1, int64_t first_group,
                                         int64_t n, float* __restrict out) {
  const int64_t groups = (n + 3) / 4;
  const float span = brownian_span(t0, t1);
  if (!(span > 0.0f)) {
    for (int64_t i = 0; i < 4 * groups; ++i) out[i] = 0.0f;
    return;
  }
  const uint64_t stream = brownian_stream(path);
  constexpr int64_t kBlockGroups = kBrownianBlock / 4;
  alignas(64) float z[kBrownianBlock], lo0[kBrownianBlock], hi0[kBrownianBlock], lo1[kBrownianBlock],
      hi1[kBrownianBlock];
  for (int64_t g = 0; g < groups; g += kBlockGroups) {
    const int64_t ng = groups - g < kBlockGroups ? groups - g : kBlockGroups;
    const int64_t m = 4 * ng;
    normals_of_groups(seed, stream, 0u, first_group + g, ng, hi0);  // W(1)
    for (int64_t i = 0; i < m; ++i) lo0[i] = 0.0f;
    BrownianCell a = brownian_root_cell(), b = a;
    bool together = true;  // walk 1 (t1) is still walk 0 (t0): same cell, same values
    for (int depth = 0; depth < kBrownianDepth; ++depth) {
      const float scale = brownian_bridge_scale(depth);
      normals_of_groups(seed, stream, a.heap, first_group + g, ng, z);
      if (together) {
        const bool left0 = brownian_descend(&a, t0);
        const bool left1 = brownian_descend(&b, t1);
        if (a.heap != b.heap) {  // they part here: walk 1 takes the other half
          for (int64_t i = 0; i < m; ++i) {
            const float mid = brownian_bridge(lo0[i], hi0[i], scale, z[i]);
            lo1[i] = left1 ? lo0[i] : mid;
            hi1[i] = left1 ? mid : hi0[i];
          }
          together = false;
        }
        bridge_level(lo0, hi0, z, m, scale, left0);
      } else {
        bridge_level(lo0, hi0, z, m, scale, brownian_descend(&a, t0));
        normals_of_groups(seed, stream, b.heap, first_group + g, ng, z);
        bridge_level(lo1, hi1, z, m, scale, brownian_descend(&b, t1));
      }
    }
    const float f0 = brownian_fraction(a, t0), f1 = brownian_fraction(b, t1);
    const float* l1 = together ? lo0 : lo1;
    const float* h1 = together ? hi0 : hi1;
    float* __restrict dst = out + 4 * g;
    for (int64_t i = 0; i < m; ++i) {
      dst[i] =
          brownian_normalise(brownian_interpolate(lo0[i], hi0[i], f0), brownian_interpolate(l1[i], h1[i], f1), span);
    }
  }
}

// Pointer to history[j] of one chunk, or null when the variant reads fewer history tensors.
template <class V, int j>
const typename V::T* history_at(const UpdateParams& p, int64_t off) {
  return j < V::num_history ? static_cast<const typename V::T*>(p.history[j]) + off : nullptr;
}

// The element loop of one chunk. The pointers are restrict *parameters* because GCC honours
// restrict there and not on block-scope pointers: without it the loop needs a runtime alias check
// per pair of pointers, and past ten pairs (guidance and two history tensors) GCC gives up
// vectorizing it. k comes by value: a local copy nothing can alias.
template <class V>
void update_loop(const CoeffRow k, int64_t n, const typename V::T* __restrict x, const typename V::T* __restrict mo,
                 const typename V::T* __restrict un, const typename V::T* __restrict nz, const float* __restrict zbuf,
                 const typename V::T* __restrict g0, const typename V::T* __restrict g1,
                 const typename V::T* __restrict g2, const typename V::T* __restrict g3, typename V::T* __restrict prev,
                 typename V::T* __restrict x0) {
  constexpr int kHist = V::num_history;
  constexpr bool kInOpNoise = V::noise == NoiseMode::kPhilox || V::noise == NoiseMode::kBrownian;
  for (int64_t i = 0; i < n; ++i) {
    const float u = V::uncond ? load_as_float(un, i) : 0.0f;
    const float z = V::noise == NoiseMode::kTensor ? load_as_float(nz, i) : (kInOpNoise ? zbuf[i] : 0.0f);
    const float h0 = kHist > 0 ? load_as_float(g0, i) : 0.0f;
    const float h1 = kHist > 1 ? load_as_float(g1, i) : 0.0f;
    const float h2 = kHist > 2 ? load_as_float(g2, i) : 0.0f;
    const float h3 = kHist > 3 ? load_as_float(g3, i) : 0.0f;
    float x0v;
    const float pv = update_element<V::uncond, V::noise, kHist>(k, load_as_float(x, i), load_as_float(mo, i), u, z, h0,
                                                                h1, h2, h3, &x0v);
    store_from_float(prev, i, pv);
    if (V::write_x0) store_from_float(x0, i, x0v);
  }
}

template <class V>
void update_chunk(const UpdateParams& p, int64_t b, int64_t begin, int64_t end, float* zbuf) {
  using T = typename V::T;
  const CoeffRow k = load_coeff_row(p.coeffs + b * p.coeff_row_stride);
  const int64_t off = b * p.numel_per_sample + begin;
  const int64_t n = end - begin;
  if (V::noise == NoiseMode::kPhilox || V::noise == NoiseMode::kBrownian) {
    const uint64_t seed = (uint64_t)p.seeds[b];
    const uint64_t stream = row_stream(k[kStream], p.noise_stream);
    if (V::noise == NoiseMode::kPhilox) fill_normals(seed, stream, begin / 4, n, zbuf);
    if (V::noise == NoiseMode::kBrownian) fill_brownian(seed, stream, k[kBt0], k[kBt1], begin / 4, n, zbuf);
  }
  update_loop<V>(k, n, static_cast<const T*>(p.x) + off, static_cast<const T*>(p.model_output) + off,
                 V::uncond ? static_cast<const T*>(p.uncond) + off : nullptr,
                 V::noise == NoiseMode::kTensor ? static_cast<const T*>(p.noise) + off : nullptr, zbuf,
                 history_at<V, 0>(p, off), history_at<V, 1>(p, off), history_at<V, 2>(p, off), history_at<V, 3>(p, off),
                 static_cast<T*>(p.prev) + off, V::write_x0 ? static_cast<T*>(p.x0) + off : nullptr);
}

// Runs body over (sample, chunk) items of `chunk` elements; small jobs inline (a parallel region
// costs more than they do).
template <typename Params>
void for_each_item(const Params& p, int64_t chunk, int64_t inline_below, ParallelFor parallel_for,
                   void (*item_body)(const Params& p, int64_t b, int64_t begin, int64_t end, float* zbuf)) {
  const int64_t chunks = (p.numel_per_sample + chunk - 1) / chunk;
  struct Ctx {
    const Params* p;
    int64_t chunks, chunk;
    void (*item_body)(const Params&, int64_t, int64_t, int64_t, float*);
  } ctx = {&p, chunks, chunk, item_body};
  auto body = [](void* raw, int64_t first, int64_t last) {
    const Ctx& c = *static_cast<Ctx*>(raw);
    alignas(64) float zbuf[kChunk];
    for (int64_t item = first; item < last; ++item) {
      const int64_t b = item / c.chunks;
      const int64_t begin = (item % c.chunks) * c.chunk;
      const int64_t end = begin + c.chunk < c.p->numel_per_sample ? begin + c.chunk : c.p->numel_per_sample;
      c.item_body(*c.p, b, begin, end, zbuf);
    }
  };
  const int64_t grain = chunks * p.batch * chunk < inline_below ? chunks * p.batch : 1;
  parallel_for(chunks * p.batch, grain, &ctx, body);
}

template <class V>
void run_update(const UpdateParams& p, ParallelFor parallel_for) {
  const bool brownian = V::noise == NoiseMode::kBrownian;
  for_each_item<UpdateParams>(p, brownian ? kBrownianChunk : kChunk, brownian ? 2048 : 65536, parallel_for,
                              &update_chunk<V>);
}

template <bool kBrownian>
void noise_chunk(const NoiseParams& p, int64_t b, int64_t begin, int64_t end, float* __restrict zbuf) {
  const uint64_t stream = p.noise_stream + (p.streams ? (uint64_t)p.streams[b] : 0u);
  if (kBrownian) {
    fill_brownian((uint64_t)p.seeds[b], stream, p.t0[b], p.t1[b], begin / 4, end - begin, zbuf);
  } else {
    fill_normals((uint64_t)p.seeds[b], stream, begin / 4, end - begin, zbuf);
  }
  float* __restrict out = p.out + b * p.numel_per_sample + begin;
  for (int64_t i = 0; i < end - begin; ++i) out[i] = zbuf[i];
}

template <bool kBrownian>
int noise_cpu(const NoiseParams& p, ParallelFor parallel_for) {
  if (const int err = noise_params_error(p)) return err;
  if (p.numel_per_sample == 0 || p.batch == 0) return kParamsOk;
  if (parallel_for == nullptr) parallel_for = serial_or_openmp_for;
  for_each_item<NoiseParams>(p, kBrownian ? kBrownianChunk : kChunk, kBrownian ? 2048 : 65536, parallel_for,
                             &noise_chunk<kBrownian>);
  return kParamsOk;
}

}  // namespace

int sampler_update_cpu(const UpdateParams& p, ParallelFor parallel_for) {
  if (const int err = update_params_error(p)) return err;
  if (p.numel_per_sample == 0 || p.batch == 0) return kParamsOk;
  if (parallel_for == nullptr) parallel_for = serial_or_openmp_for;
  return dispatch_storage<float, Half, BFloat16>(p.dtype, int(kBadDType), [&](auto storage) {
    using T = typename decltype(storage)::type;
    return dispatch_update_variant<T>(p, [&](auto variant) {
      run_update<decltype(variant)>(p, parallel_for);
      return int(kParamsOk);
    });
  });
}

int philox_normal_cpu(const NoiseParams& p, ParallelFor parallel_for) { return noise_cpu<false>(p, parallel_for); }

int brownian_normal_cpu(const NoiseParams& p, ParallelFor parallel_for) { return noise_cpu<true>(p, parallel_for); }

}  // namespace samplers
