// CPU implementation: the work is split into (sample, chunk) items run in parallel; inside an item
// the Philox normals of the chunk go to a small stack buffer, then one loop (which the compiler
// vectorizes: no calls, no branches) reads each input once and writes prev (and x0) once.
#include "update_cpu.h"

#include "philox.h"
#include "update_math.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace samplers {
namespace {

constexpr int64_t kChunk = 4096;  // elements per work item; a multiple of 4 (one Philox block = 4)

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

// Philox + Box-Muller is the one compute-heavy loop: on x86-64 Linux with GCC it is compiled for
// baseline SSE2, AVX2 and AVX-512 and the loader picks the best the CPU has (ifunc). The clones
// compute the same bits: no fast-math, no contraction.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(SAMPLERS_NO_TARGET_CLONES)
#define SAMPLERS_MULTIVERSION __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define SAMPLERS_MULTIVERSION
#endif

// Fills z[0 .. 4 * ceil(n / 4)) with the normals of elements first_group * 4 onwards.
SAMPLERS_MULTIVERSION void fill_normals(uint64_t seed, uint64_t stream, int64_t first_group, int64_t n,
                                        float* __restrict z) {
  const int64_t groups = (n + 3) / 4;
  for (int64_t j = 0; j < groups; ++j) {
    const Normal4 r = philox_normal4(seed, stream, (uint32_t)(first_group + j));
    z[4 * j + 0] = r.n0;
    z[4 * j + 1] = r.n1;
    z[4 * j + 2] = r.n2;
    z[4 * j + 3] = r.n3;
  }
}

template <typename T, bool kUncond, int kNoise, bool kHist0, bool kHist1, bool kWriteX0>
void update_chunk(const UpdateParams& p, int64_t b, int64_t begin, int64_t end, float* __restrict zbuf) {
  const CoeffRow k = load_coeff_row(p.coeffs + b * p.coeff_row_stride);
  const int64_t off = b * p.numel_per_sample + begin;
  const int64_t n = end - begin;
  const T* __restrict x = static_cast<const T*>(p.x) + off;
  const T* __restrict mo = static_cast<const T*>(p.model_output) + off;
  const T* __restrict un = kUncond ? static_cast<const T*>(p.uncond) + off : nullptr;
  const T* __restrict nz = kNoise == kNoiseTensor ? static_cast<const T*>(p.noise) + off : nullptr;
  const T* __restrict g0 = kHist0 ? static_cast<const T*>(p.history0) + off : nullptr;
  const T* __restrict g1 = kHist1 ? static_cast<const T*>(p.history1) + off : nullptr;
  T* __restrict prev = static_cast<T*>(p.prev) + off;
  T* __restrict x0 = kWriteX0 ? static_cast<T*>(p.x0) + off : nullptr;
  if (kNoise == kNoisePhilox) fill_normals((uint64_t)p.seeds[b], p.noise_stream, begin / 4, n, zbuf);

  for (int64_t i = 0; i < n; ++i) {
    const float u = kUncond ? load_as_float(un, i) : 0.0f;
    const float z = kNoise == kNoiseTensor ? load_as_float(nz, i) : (kNoise == kNoisePhilox ? zbuf[i] : 0.0f);
    const float h0 = kHist0 ? load_as_float(g0, i) : 0.0f;
    const float h1 = kHist1 ? load_as_float(g1, i) : 0.0f;
    float x0v;
    const float pv = update_element<kUncond, kNoise, kHist0, kHist1>(k, load_as_float(x, i), load_as_float(mo, i), u, z,
                                                                     h0, h1, &x0v);
    store_from_float(prev, i, pv);
    if (kWriteX0) store_from_float(x0, i, x0v);
  }
}

template <typename T, bool kUncond, int kNoise, bool kHist0, bool kHist1, bool kWriteX0>
void run_update(const UpdateParams& p, ParallelFor parallel_for) {
  const int64_t chunks = (p.numel_per_sample + kChunk - 1) / kChunk;
  struct Ctx {
    const UpdateParams* p;
    int64_t chunks;
  } ctx = {&p, chunks};
  auto body = [](void* raw, int64_t first, int64_t last) {
    const Ctx& c = *static_cast<Ctx*>(raw);
    alignas(64) float zbuf[kNoise == kNoisePhilox ? kChunk : 1];
    for (int64_t item = first; item < last; ++item) {
      const int64_t b = item / c.chunks;
      const int64_t begin = (item % c.chunks) * kChunk;
      const int64_t end = begin + kChunk < c.p->numel_per_sample ? begin + kChunk : c.p->numel_per_sample;
      update_chunk<T, kUncond, kNoise, kHist0, kHist1, kWriteX0>(*c.p, b, begin, end, zbuf);
    }
  };
  // Small updates run inline: a parallel region costs more than they do.
  const int64_t grain = chunks * p.batch * kChunk < 65536 ? chunks * p.batch : 1;
  parallel_for(chunks * p.batch, grain, &ctx, body);
}

// Runtime flags -> template parameters, one level at a time.
template <typename T, bool U, int N, bool H0, bool H1>
void dispatch_x0(const UpdateParams& p, ParallelFor pf) {
  if (p.write_x0)
    run_update<T, U, N, H0, H1, true>(p, pf);
  else
    run_update<T, U, N, H0, H1, false>(p, pf);
}
template <typename T, bool U, int N>
void dispatch_hist(const UpdateParams& p, ParallelFor pf) {
  if (p.has_history0) {
    if (p.has_history1)
      dispatch_x0<T, U, N, true, true>(p, pf);
    else
      dispatch_x0<T, U, N, true, false>(p, pf);
  } else {
    if (p.has_history1)
      dispatch_x0<T, U, N, false, true>(p, pf);
    else
      dispatch_x0<T, U, N, false, false>(p, pf);
  }
}
template <typename T, bool U>
void dispatch_noise(const UpdateParams& p, ParallelFor pf) {
  if (p.has_noise)
    dispatch_hist<T, U, kNoiseTensor>(p, pf);
  else if (p.has_seeds)
    dispatch_hist<T, U, kNoisePhilox>(p, pf);
  else
    dispatch_hist<T, U, kNoNoise>(p, pf);
}
template <typename T>
void dispatch_uncond(const UpdateParams& p, ParallelFor pf) {
  if (p.has_uncond)
    dispatch_noise<T, true>(p, pf);
  else
    dispatch_noise<T, false>(p, pf);
}

}  // namespace

int sampler_update_cpu(const UpdateParams& p, ParallelFor parallel_for) {
  if (p.numel_per_sample < 0 || p.batch < 0) return 1;
  if (p.has_seeds && !p.has_noise && p.numel_per_sample > (int64_t(1) << 34)) return 2;  // 32-bit group counter
  if (p.numel_per_sample == 0 || p.batch == 0) return 0;
  if (parallel_for == nullptr) parallel_for = serial_or_openmp_for;
  switch (p.dtype) {
    case DType::kFloat32:
      dispatch_uncond<float>(p, parallel_for);
      return 0;
    case DType::kFloat16:
      dispatch_uncond<Half>(p, parallel_for);
      return 0;
    case DType::kBFloat16:
      dispatch_uncond<BFloat16>(p, parallel_for);
      return 0;
  }
  return 3;
}

int philox_normal_cpu(const NoiseParams& p, ParallelFor parallel_for) {
  if (p.numel_per_sample < 0 || p.batch < 0) return 1;
  if (p.numel_per_sample > (int64_t(1) << 34)) return 2;
  if (p.numel_per_sample == 0 || p.batch == 0) return 0;
  if (parallel_for == nullptr) parallel_for = serial_or_openmp_for;
  const int64_t chunks = (p.numel_per_sample + kChunk - 1) / kChunk;
  struct Ctx {
    const NoiseParams* p;
    int64_t chunks;
  } ctx = {&p, chunks};
  auto body = [](void* raw, int64_t first, int64_t last) {
    const Ctx& c = *static_cast<Ctx*>(raw);
    const int64_t n_all = c.p->numel_per_sample;
    alignas(64) float zbuf[kChunk];
    for (int64_t item = first; item < last; ++item) {
      const int64_t b = item / c.chunks;
      const int64_t begin = (item % c.chunks) * kChunk;
      const int64_t n = begin + kChunk < n_all ? kChunk : n_all - begin;
      fill_normals((uint64_t)c.p->seeds[b], c.p->noise_stream, begin / 4, n, zbuf);
      float* __restrict out = c.p->out + b * n_all + begin;
      for (int64_t i = 0; i < n; ++i) out[i] = zbuf[i];
    }
  };
  const int64_t grain = chunks * p.batch * kChunk < 65536 ? chunks * p.batch : 1;
  parallel_for(chunks * p.batch, grain, &ctx, body);
  return 0;
}

}  // namespace samplers
