// samplers::sampler_update, samplers::philox_normal, samplers::brownian_normal and
// samplers::update_coeff_names: schemas, argument checks, CPU and Meta kernels. The math lives in
// csrc/update/ (torch-free); this file turns tensors into UpdateParams / NoiseParams.
//
// Layout: the noise of element i depends on its logical (row-major) index, never on memory order.
// When every tensor has the same dense strides with the batch dimension outermost, an update
// without in-op noise is elementwise in memory order and runs in place of the layout (channels-
// last included); otherwise (or with in-op noise on a non-contiguous layout) it runs on
// contiguous copies and the result is copied into outputs laid out like x (empty_like(x)).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <string>
#include <vector>

#include "bindings/update_binding.h"
#include "update/update_cpu.h"
#include "bindings/py_module.h"

namespace samplers {
namespace {

constexpr const char* kOp = "samplers::sampler_update";

DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return DType::kFloat32;
    case at::kHalf:
      return DType::kFloat16;
    case at::kBFloat16:
      return DType::kBFloat16;
    default:
      TORCH_CHECK(false, kOp, ": sample (x) has dtype ", t,
                  "; the fused op supports float16, bfloat16 and float32 (use backend='torch' for others)");
  }
  return DType::kFloat32;
}

std::string history_name(size_t j) { return "history[" + std::to_string(j) + "]"; }

void check_like(const std::string& name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK(t.sizes() == x.sizes(), kOp, ": ", name, " has shape ", t.sizes(), " but sample (x) has shape ",
              x.sizes(), "; they must match");
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), kOp, ": ", name, " has dtype ", t.scalar_type(),
              " but sample (x) has dtype ", x.scalar_type(), "; they must match");
  TORCH_CHECK(t.device() == x.device(), kOp, ": ", name, " is on ", t.device(), " but sample (x) is on ", x.device(),
              "; all tensors must be on one device");
}

void check_like(const std::string& name, const std::optional<at::Tensor>& t, const at::Tensor& x) {
  if (t.has_value()) check_like(name, *t, x);
}

void check_history_count(at::TensorList history) {
  TORCH_CHECK(history.size() <= static_cast<size_t>(kMaxHistory), kOp, ": history has ", history.size(),
              " tensors; at most ", int(kMaxHistory), " (weighed by columns h0 .. h", int(kMaxHistory) - 1, ")");
}

void check_noise_numel(const char* op, int64_t numel_per_sample) {
  TORCH_CHECK(numel_per_sample <= kMaxNoiseNumelPerSample, op, ": in-op noise supports at most ",
              kMaxNoiseNumelPerSample, " (2^34) elements per sample, got ", numel_per_sample);
}

void check_args(const at::Tensor& x, const at::Tensor& model_output, const at::Tensor& coeffs,
                const std::optional<at::Tensor>& uncond, const std::optional<at::Tensor>& noise,
                const std::optional<at::Tensor>& seeds, at::TensorList history) {
  to_dtype(x.scalar_type());
  TORCH_CHECK(x.dim() >= 1, kOp, ": sample (x) must have a batch dimension first, got a 0-d tensor");
  check_like("model_output", model_output, x);
  check_like("uncond", uncond, x);
  check_like("noise", noise, x);
  check_history_count(history);
  for (size_t j = 0; j < history.size(); ++j) check_like(history_name(j), history[j], x);
  const int64_t batch = x.size(0);
  TORCH_CHECK(coeffs.dim() == 2 && coeffs.size(1) == kNumCoeffs && (coeffs.size(0) == 1 || coeffs.size(0) == batch),
              kOp, ": coeffs must have shape [1, ", int(kNumCoeffs), "] or [batch=", batch, ", ", int(kNumCoeffs),
              "], got ", coeffs.sizes());
  TORCH_CHECK(coeffs.is_floating_point(), kOp, ": coeffs must be a floating tensor, got dtype ", coeffs.scalar_type());
  TORCH_CHECK(coeffs.device() == x.device(), kOp, ": coeffs is on ", coeffs.device(), " but sample (x) is on ",
              x.device());
  if (seeds.has_value()) {
    TORCH_CHECK(seeds->scalar_type() == at::kLong && seeds->dim() == 1 && seeds->size(0) == batch, kOp,
                ": seeds must be int64 of shape [", batch, "], got ", seeds->scalar_type(), " ", seeds->sizes());
    TORCH_CHECK(seeds->device() == x.device(), kOp, ": seeds is on ", seeds->device(), " but sample (x) is on ",
                x.device());
  }
  if (seeds.has_value() && !noise.has_value() && batch > 0) check_noise_numel(kOp, x.numel() / batch);
}

// NaN anywhere, or inf outside the clamp limit, or div == 0, would silently poison the result.
void check_finite_coeffs(const at::Tensor& coeffs_f) {
  const float* c = coeffs_f.const_data_ptr<float>();
  for (int64_t r = 0; r < coeffs_f.size(0); ++r) {
    for (int j = 0; j < kNumCoeffs; ++j) {
      const float v = c[r * kNumCoeffs + j];
      const bool ok = j == kLim ? !std::isnan(v) : (std::isfinite(v) && (j != kDiv || v != 0.0f));
      TORCH_CHECK(ok, kOp, ": coefficient '", kCoeffNames[j], "' of row ", r, " is ", v,
                  j == kLim ? "; lim must not be NaN (inf means no clamp)"
                            : (j == kDiv ? "; div must be finite and nonzero" : "; coefficients must be finite"));
    }
  }
}

const void* ptr_or_null(const std::optional<at::Tensor>& t) { return t.has_value() ? t->const_data_ptr() : nullptr; }

void cpu_parallel_for(int64_t n, int64_t grain, void* ctx, void (*body)(void*, int64_t, int64_t)) {
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) { body(ctx, begin, end); });
}

void launch_cpu(const UpdateParams& p, const at::Tensor&) {
  const int rc = sampler_update_cpu(p, cpu_parallel_for);
  TORCH_CHECK(rc == 0, kOp, ": CPU kernel rejected its arguments (code ", rc, ")");
}

void launch_philox_cpu(const NoiseParams& p, const at::Tensor&) {
  const int rc = philox_normal_cpu(p, cpu_parallel_for);
  TORCH_CHECK(rc == 0, "samplers::philox_normal: CPU kernel rejected its arguments (code ", rc, ")");
}

void launch_brownian_cpu(const NoiseParams& p, const at::Tensor&) {
  const int rc = brownian_normal_cpu(p, cpu_parallel_for);
  TORCH_CHECK(rc == 0, "samplers::brownian_normal: CPU kernel rejected its arguments (code ", rc, ")");
}

std::tuple<at::Tensor, at::Tensor> sampler_update_cpu_kernel(const at::Tensor& x, const at::Tensor& model_output,
                                                             const at::Tensor& coeffs,
                                                             const std::optional<at::Tensor>& uncond,
                                                             const std::optional<at::Tensor>& noise,
                                                             const std::optional<at::Tensor>& seeds,
                                                             int64_t noise_stream, at::TensorList history,
                                                             bool write_x0, bool brownian) {
  return sampler_update_impl(x, model_output, coeffs, uncond, noise, seeds, noise_stream, history, write_x0, brownian,
                             launch_cpu);
}

at::Tensor philox_normal_cpu_kernel(const at::Tensor& seeds, int64_t noise_stream, int64_t numel_per_sample,
                                    const std::optional<at::Tensor>& streams) {
  return philox_normal_impl(seeds, noise_stream, numel_per_sample, streams, launch_philox_cpu);
}

at::Tensor brownian_normal_cpu_kernel(const at::Tensor& seeds, const at::Tensor& path, const at::Tensor& t0,
                                      const at::Tensor& t1, int64_t numel_per_sample) {
  return brownian_normal_impl(seeds, path, t0, t1, numel_per_sample, launch_brownian_cpu);
}

// Meta (fake tensor / torch.compile): same checks on dtypes and devices, outputs laid out like x.
std::tuple<at::Tensor, at::Tensor> sampler_update_meta(const at::Tensor& x, const at::Tensor& model_output,
                                                       const at::Tensor& coeffs,
                                                       const std::optional<at::Tensor>& uncond,
                                                       const std::optional<at::Tensor>& noise,
                                                       const std::optional<at::Tensor>& seeds, int64_t noise_stream,
                                                       at::TensorList history, bool write_x0, bool brownian) {
  (void)noise_stream;
  (void)brownian;
  to_dtype(x.scalar_type());
  TORCH_CHECK(x.dim() >= 1, kOp, ": sample (x) must have a batch dimension first, got a 0-d tensor");
  check_history_count(history);
  auto check_meta = [&](const std::string& name, const at::Tensor& t) {
    TORCH_CHECK(t.sym_sizes() == x.sym_sizes() && t.scalar_type() == x.scalar_type(), kOp, ": ", name,
                " must match sample (x) in shape and dtype");
  };
  check_meta("model_output", model_output);
  if (uncond.has_value()) check_meta("uncond", *uncond);
  if (noise.has_value()) check_meta("noise", *noise);
  for (size_t j = 0; j < history.size(); ++j) check_meta(history_name(j), history[j]);
  TORCH_CHECK(coeffs.dim() == 2, kOp, ": coeffs must be 2-D [1 or batch, ", int(kNumCoeffs), "]");
  if (seeds.has_value()) TORCH_CHECK(seeds->scalar_type() == at::kLong, kOp, ": seeds must be int64");
  at::Tensor prev = at::empty_like(x);
  at::Tensor x0 = write_x0 ? at::empty_like(x) : at::empty_symint({c10::SymInt(0)}, x.options());
  return {prev, x0};
}

void check_seeds_1d(const char* op, const at::Tensor& seeds) {
  TORCH_CHECK(seeds.scalar_type() == at::kLong && seeds.dim() == 1, op, ": seeds must be a 1-D int64 tensor, got ",
              seeds.scalar_type(), " with shape ", seeds.sizes());
}

void check_numel_arg(const char* op, int64_t numel_per_sample) {
  TORCH_CHECK(numel_per_sample >= 0, op, ": numel_per_sample must be >= 0, got ", numel_per_sample);
  check_noise_numel(op, numel_per_sample);
}

// A per-sample tensor argument of the noise ops: 1-D, one value per seed, on the seeds' device.
void check_per_sample(const char* op, const char* name, const at::Tensor& t, const at::Tensor& seeds, bool integer) {
  const bool dtype_ok = integer ? t.scalar_type() == at::kLong : at::isFloatingType(t.scalar_type());
  TORCH_CHECK(dtype_ok && t.dim() == 1 && t.sym_size(0) == seeds.sym_size(0), op, ": ", name, " must be ",
              integer ? "int64" : "a floating tensor", " of shape [", seeds.sym_size(0), "] (one per seed), got ",
              t.scalar_type(), " ", t.sym_sizes());
  TORCH_CHECK(t.device() == seeds.device(), op, ": ", name, " is on ", t.device(), " but seeds is on ", seeds.device());
}

constexpr const char* kPhiloxOp = "samplers::philox_normal";
constexpr const char* kBrownianOp = "samplers::brownian_normal";

at::Tensor philox_normal_meta(const at::Tensor& seeds, int64_t noise_stream, int64_t numel_per_sample,
                              const std::optional<at::Tensor>& streams) {
  (void)noise_stream;
  check_seeds_1d(kPhiloxOp, seeds);
  check_numel_arg(kPhiloxOp, numel_per_sample);
  if (streams.has_value()) check_per_sample(kPhiloxOp, "streams", *streams, seeds, true);
  return at::empty_symint({seeds.sym_size(0), c10::SymInt(numel_per_sample)}, seeds.options().dtype(at::kFloat));
}

at::Tensor brownian_normal_meta(const at::Tensor& seeds, const at::Tensor& path, const at::Tensor& t0,
                                const at::Tensor& t1, int64_t numel_per_sample) {
  check_seeds_1d(kBrownianOp, seeds);
  check_numel_arg(kBrownianOp, numel_per_sample);
  check_per_sample(kBrownianOp, "path", path, seeds, true);
  check_per_sample(kBrownianOp, "t0", t0, seeds, false);
  check_per_sample(kBrownianOp, "t1", t1, seeds, false);
  return at::empty_symint({seeds.sym_size(0), c10::SymInt(numel_per_sample)}, seeds.options().dtype(at::kFloat));
}

bool same_dense_layout(const at::Tensor& x, const std::vector<const at::Tensor*>& others) {
  if (!x.is_non_overlapping_and_dense()) return false;
  // Per-sample coefficients and seeds need each sample to be one block of memory, samples in order.
  if (x.size(0) > 1 && x.stride(0) != x.numel() / x.size(0)) return false;
  for (const at::Tensor* t : others) {
    if (t->strides() != x.strides()) return false;
  }
  return true;
}

// The coefficient columns the kernels read, space-separated, in order (tests compare them with
// samplers.ops.reference.COEFF_NAMES).
std::string update_coeff_names() {
  std::string names;
  for (int j = 0; j < kNumCoeffs; ++j) names += (j ? " " : "") + std::string(kCoeffNames[j]);
  return names;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> sampler_update_impl(const at::Tensor& x, const at::Tensor& model_output,
                                                       const at::Tensor& coeffs,
                                                       const std::optional<at::Tensor>& uncond,
                                                       const std::optional<at::Tensor>& noise,
                                                       const std::optional<at::Tensor>& seeds, int64_t noise_stream,
                                                       at::TensorList history, bool write_x0, bool brownian,
                                                       UpdateLauncher launch) {
  check_args(x, model_output, coeffs, uncond, noise, seeds, history);
  at::Tensor prev = at::empty_like(x);
  at::Tensor x0 = write_x0 ? at::empty_like(x) : at::empty({0}, x.options());
  const int64_t batch = x.size(0);
  if (x.numel() == 0) return {prev, x0};

  const bool in_op_noise = seeds.has_value() && !noise.has_value();
  std::vector<const at::Tensor*> all = {&model_output};
  for (const auto* t : {&uncond, &noise}) {
    if (t->has_value()) all.push_back(&t->value());
  }
  for (const at::Tensor& h : history) all.push_back(&h);
  all.push_back(&prev);
  if (write_x0) all.push_back(&x0);
  // In place of the layout when it is shared and dense; the noise index is the memory index only
  // when that layout is the row-major one.
  const bool direct = same_dense_layout(x, all) && (!in_op_noise || x.is_contiguous());

  at::Tensor xs = x, mos = model_output;
  std::optional<at::Tensor> uns = uncond, nzs = noise;
  std::vector<at::Tensor> hs(history.begin(), history.end());
  at::Tensor prev_buf = prev, x0_buf = x0;
  if (!direct) {
    xs = x.contiguous();
    mos = model_output.contiguous();
    for (auto* t : {&uns, &nzs}) {
      if (t->has_value()) *t = (*t)->contiguous();
    }
    for (at::Tensor& h : hs) h = h.contiguous();
    if (!prev.is_contiguous()) prev_buf = at::empty(x.sizes(), x.options());
    if (write_x0 && !x0.is_contiguous()) x0_buf = at::empty(x.sizes(), x.options());
  }
  const at::Tensor coeffs_f = coeffs.to(at::kFloat).contiguous();
  if (coeffs_f.is_cpu()) check_finite_coeffs(coeffs_f);  // free on the host; on a GPU it would need a sync
  const std::optional<at::Tensor> seeds_c =
      in_op_noise ? std::optional<at::Tensor>(seeds->contiguous()) : std::optional<at::Tensor>();

  UpdateParams p;
  p.x = xs.const_data_ptr();
  p.model_output = mos.const_data_ptr();
  p.uncond = ptr_or_null(uns);
  p.noise = ptr_or_null(nzs);
  for (size_t j = 0; j < hs.size(); ++j) p.history[j] = hs[j].const_data_ptr();
  p.seeds = in_op_noise ? seeds_c->const_data_ptr<int64_t>() : nullptr;
  p.coeffs = coeffs_f.const_data_ptr<float>();
  p.prev = prev_buf.mutable_data_ptr();
  p.x0 = write_x0 ? x0_buf.mutable_data_ptr() : nullptr;
  p.numel_per_sample = x.numel() / batch;
  p.batch = batch;
  p.coeff_row_stride = coeffs.size(0) == 1 ? 0 : kNumCoeffs;
  p.noise_stream = static_cast<uint64_t>(noise_stream);
  p.dtype = to_dtype(x.scalar_type());
  p.noise_mode = noise.has_value() ? NoiseMode::kTensor
                 : in_op_noise     ? (brownian ? NoiseMode::kBrownian : NoiseMode::kPhilox)
                                   : NoiseMode::kNone;
  p.num_history = static_cast<int>(hs.size());
  p.has_uncond = uncond.has_value();
  p.write_x0 = write_x0;
  launch(p, x);

  if (!prev_buf.is_same(prev)) prev.copy_(prev_buf);
  if (write_x0 && !x0_buf.is_same(x0)) x0.copy_(x0_buf);
  return {prev, x0};
}

at::Tensor philox_normal_impl(const at::Tensor& seeds, int64_t noise_stream, int64_t numel_per_sample,
                              const std::optional<at::Tensor>& streams, NoiseLauncher launch) {
  check_seeds_1d(kPhiloxOp, seeds);
  check_numel_arg(kPhiloxOp, numel_per_sample);
  if (streams.has_value()) check_per_sample(kPhiloxOp, "streams", *streams, seeds, true);
  at::Tensor out = at::empty({seeds.size(0), numel_per_sample}, seeds.options().dtype(at::kFloat));
  if (out.numel() == 0) return out;
  const at::Tensor seeds_c = seeds.contiguous();
  const at::Tensor streams_c = streams.has_value() ? streams->contiguous() : at::Tensor();
  NoiseParams p;
  p.seeds = seeds_c.const_data_ptr<int64_t>();
  p.streams = streams.has_value() ? streams_c.const_data_ptr<int64_t>() : nullptr;
  p.out = out.mutable_data_ptr<float>();
  p.numel_per_sample = numel_per_sample;
  p.batch = seeds.size(0);
  p.noise_stream = static_cast<uint64_t>(noise_stream);
  launch(p, seeds);
  return out;
}

at::Tensor brownian_normal_impl(const at::Tensor& seeds, const at::Tensor& path, const at::Tensor& t0,
                                const at::Tensor& t1, int64_t numel_per_sample, NoiseLauncher launch) {
  check_seeds_1d(kBrownianOp, seeds);
  check_numel_arg(kBrownianOp, numel_per_sample);
  check_per_sample(kBrownianOp, "path", path, seeds, true);
  check_per_sample(kBrownianOp, "t0", t0, seeds, false);
  check_per_sample(kBrownianOp, "t1", t1, seeds, false);
  at::Tensor out = at::empty({seeds.size(0), numel_per_sample}, seeds.options().dtype(at::kFloat));
  if (out.numel() == 0) return out;
  const at::Tensor seeds_c = seeds.contiguous(), path_c = path.contiguous();
  const at::Tensor t0_c = t0.to(at::kFloat).contiguous(), t1_c = t1.to(at::kFloat).contiguous();
  NoiseParams p;
  p.seeds = seeds_c.const_data_ptr<int64_t>();
  p.streams = path_c.const_data_ptr<int64_t>();
  p.t0 = t0_c.const_data_ptr<float>();
  p.t1 = t1_c.const_data_ptr<float>();
  p.out = out.mutable_data_ptr<float>();
  p.numel_per_sample = numel_per_sample;
  p.batch = seeds.size(0);
  launch(p, seeds);
  return out;
}

}  // namespace samplers

TORCH_LIBRARY_FRAGMENT(samplers, m) {
  m.def(
      "sampler_update(Tensor x, Tensor model_output, Tensor coeffs, Tensor? uncond, Tensor? noise, Tensor? seeds, "
      "int noise_stream, Tensor[] history, bool write_x0, bool brownian) -> (Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
  m.def("philox_normal(Tensor seeds, int noise_stream, int numel_per_sample, Tensor? streams=None) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  m.def("brownian_normal(Tensor seeds, Tensor path, Tensor t0, Tensor t1, int numel_per_sample) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  m.def("update_coeff_names() -> str", &samplers::update_coeff_names);
}

TORCH_LIBRARY_IMPL(samplers, CPU, m) {
  m.impl("sampler_update", &samplers::sampler_update_cpu_kernel);
  m.impl("philox_normal", &samplers::philox_normal_cpu_kernel);
  m.impl("brownian_normal", &samplers::brownian_normal_cpu_kernel);
}

TORCH_LIBRARY_IMPL(samplers, Meta, m) {
  m.impl("sampler_update", &samplers::sampler_update_meta);
  m.impl("philox_normal", &samplers::philox_normal_meta);
  m.impl("brownian_normal", &samplers::brownian_normal_meta);
}

// Ahead-of-time builds import this library as samplers._C_update (see py_module.h).
SAMPLERS_DEFINE_PY_MODULE(_C_update, "samplers' fused sampler-update ops")
