// Schema of the fused attention op, its argument checks, and the CPU and Meta implementations.
//
//   samplers::attention_fwd(q [B,H,Lq,D], k [B,H,Lk,D], v [B,H,Lk,D], attn_mask?, key_padding_mask?,
//                           scale, impl) -> [B,H,Lq,D]
//
// attn_mask: additive (dtype of q) or boolean (true = attend), broadcastable to [B,H,Lq,Lk].
// key_padding_mask: boolean [B,Lk], true = ignore that key. Rows whose keys are all masked give
// zeros. The CPU version is a plain fp32 (fp64 for fp64 inputs) computation with the same
// contract as the CUDA kernel; the Python dispatcher sends CPU tensors to SDPA, this exists so
// the op is complete (torch.compile, fake tensors, tests). Meta gives shapes only.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <string>

#include "attention/attention_api.h"
#include "bindings/py_module.h"

namespace samplers {

// Shared with attention_cuda.cu (same extension): raises a clear error for bad arguments.
void check_attention_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const std::optional<at::Tensor>& attn_mask, const std::optional<at::Tensor>& key_padding_mask,
                          double scale) {
  TORCH_CHECK(q.dim() == 4, "attention_fwd: q must be 4-D [B, H, Lq, D], got shape ", q.sizes());
  TORCH_CHECK(k.dim() == 4, "attention_fwd: k must be 4-D [B, H, Lk, D], got shape ", k.sizes());
  TORCH_CHECK(v.sizes() == k.sizes(), "attention_fwd: v must have the shape of k ", k.sizes(), ", got ", v.sizes());
  TORCH_CHECK(k.size(0) == q.size(0) && k.size(1) == q.size(1) && k.size(3) == q.size(3),
              "attention_fwd: k must be [B, H, Lk, D] with B, H, D of q ", q.sizes(), ", got ", k.sizes());
  TORCH_CHECK(k.size(2) > 0, "attention_fwd: k must hold at least one key");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "attention_fwd: q, k, v must share one dtype, got ", q.scalar_type(), ", ", k.scalar_type(), ", ",
              v.scalar_type());
  TORCH_CHECK(at::isFloatingType(q.scalar_type()), "attention_fwd: q, k, v must be floating, got ", q.scalar_type());
  TORCH_CHECK(q.device() == k.device() && q.device() == v.device(), "attention_fwd: q, k, v must be on one device");
  TORCH_CHECK(scale > 0 && std::isfinite(scale), "attention_fwd: scale must be positive and finite, got ", scale);
  const int64_t B = q.size(0), H = q.size(1), Lq = q.size(2), Lk = k.size(2);
  if (attn_mask.has_value()) {
    const at::Tensor& m = *attn_mask;
    TORCH_CHECK(m.device() == q.device(), "attention_fwd: attn_mask must be on the device of q");
    TORCH_CHECK(m.scalar_type() == at::kBool || m.scalar_type() == q.scalar_type(),
                "attention_fwd: attn_mask must be bool or have the dtype of q (", q.scalar_type(), "), got ",
                m.scalar_type());
    TORCH_CHECK(m.dim() <= 4, "attention_fwd: attn_mask must have at most 4 dims, got ", m.dim());
    const int64_t full[4] = {B, H, Lq, Lk};
    for (int64_t i = 0; i < m.dim(); ++i) {
      const int64_t size = m.size(m.dim() - 1 - i), want = full[3 - i];
      TORCH_CHECK(size == 1 || size == want, "attention_fwd: attn_mask of shape ", m.sizes(),
                  " does not broadcast to [B, H, Lq, Lk] = [", B, ", ", H, ", ", Lq, ", ", Lk, "]");
    }
  }
  if (key_padding_mask.has_value()) {
    const at::Tensor& kp = *key_padding_mask;
    TORCH_CHECK(kp.device() == q.device(), "attention_fwd: key_padding_mask must be on the device of q");
    TORCH_CHECK(kp.scalar_type() == at::kBool, "attention_fwd: key_padding_mask must be bool, got ", kp.scalar_type());
    TORCH_CHECK(kp.dim() == 2 && kp.size(0) == B && kp.size(1) == Lk,
                "attention_fwd: key_padding_mask must be [B, Lk] = [", B, ", ", Lk, "], got ", kp.sizes());
  }
}

namespace {

at::Tensor attention_fwd_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const std::optional<at::Tensor>& attn_mask,
                             const std::optional<at::Tensor>& key_padding_mask, double scale, int64_t impl) {
  (void)impl;  // one CPU implementation
  check_attention_args(q, k, v, attn_mask, key_padding_mask, scale);
  const auto acc = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const double inf = std::numeric_limits<double>::infinity();
  at::Tensor s = at::matmul(q.to(acc), k.to(acc).transpose(-2, -1)) * scale;
  if (attn_mask.has_value()) {
    if (attn_mask->scalar_type() == at::kBool) {
      s = s.masked_fill(attn_mask->logical_not(), -inf);
    } else {
      s = s + attn_mask->to(acc);
    }
  }
  if (key_padding_mask.has_value()) {
    s = s.masked_fill(key_padding_mask->view({q.size(0), 1, 1, k.size(2)}), -inf);
  }
  at::Tensor mx = std::get<0>(s.max(-1, /*keepdim=*/true));
  mx = at::where(at::isfinite(mx), mx, at::zeros_like(mx));  // fully masked rows: no inf - inf
  at::Tensor p = at::exp(s - mx);
  at::Tensor l = p.sum(-1, /*keepdim=*/true);
  at::Tensor out = at::matmul(p, v.to(acc)) / at::where(l > 0, l, at::ones_like(l));
  return out.to(q.scalar_type()).contiguous();
}

at::Tensor attention_fwd_meta(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const std::optional<at::Tensor>& attn_mask,
                              const std::optional<at::Tensor>& key_padding_mask, double scale, int64_t impl) {
  (void)attn_mask;
  (void)key_padding_mask;
  (void)scale;
  (void)impl;
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "attention_fwd: q, k, v must be 4-D");
  return at::empty(q.sizes(), q.options());
}

void attention_fwd_out_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const std::optional<at::Tensor>& attn_mask,
                           const std::optional<at::Tensor>& key_padding_mask, double scale, int64_t impl,
                           at::Tensor& out) {
  TORCH_CHECK(out.sizes() == q.sizes() && out.scalar_type() == q.scalar_type() && out.device() == q.device(),
              "attention_fwd_out: out must match q in shape, dtype and device");
  out.copy_(attention_fwd_cpu(q, k, v, attn_mask, key_padding_mask, scale, impl));
}

void attention_fwd_out_meta(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const std::optional<at::Tensor>& attn_mask,
                            const std::optional<at::Tensor>& key_padding_mask, double scale, int64_t impl,
                            at::Tensor& out) {
  (void)k, (void)v, (void)attn_mask, (void)key_padding_mask, (void)scale, (void)impl;
  TORCH_CHECK(out.sizes() == q.sizes(), "attention_fwd_out: out must have the shape of q");
}

int64_t attention_caps(int64_t device) {
#ifdef SAMPLERS_WITH_CUDA
  return attention::attention_capabilities(static_cast<int>(device));
#else
  (void)device;
  return 0;
#endif
}

std::string attention_kernel_name(int64_t device) {
#ifdef SAMPLERS_WITH_CUDA
  return attention::attention_auto_kernel_name(static_cast<int>(device));
#else
  (void)device;
  return "none (built without CUDA)";
#endif
}

}  // namespace
}  // namespace samplers

TORCH_LIBRARY_FRAGMENT(samplers, m) {
  m.def(
      "attention_fwd(Tensor q, Tensor k, Tensor v, Tensor? attn_mask=None, Tensor? key_padding_mask=None, "
      "float scale=1.0, int impl=0) -> Tensor");
  // Writes into a caller-owned out (shape of q; any strides with the last dim contiguous, e.g.
  // a [B, L, H, D] buffer viewed as [B, H, L, D]).
  m.def(
      "attention_fwd_out(Tensor q, Tensor k, Tensor v, Tensor? attn_mask, Tensor? key_padding_mask, float scale, "
      "int impl, Tensor(a!) out) -> ()");
  m.def("attention_caps(int device) -> int", &samplers::attention_caps);
  m.def("attention_kernel_name(int device) -> str", &samplers::attention_kernel_name);
}

TORCH_LIBRARY_IMPL(samplers, CPU, m) {
  m.impl("attention_fwd", &samplers::attention_fwd_cpu);
  m.impl("attention_fwd_out", &samplers::attention_fwd_out_cpu);
}

TORCH_LIBRARY_IMPL(samplers, Meta, m) {
  m.impl("attention_fwd", &samplers::attention_fwd_meta);
  m.impl("attention_fwd_out", &samplers::attention_fwd_out_meta);
}

// Ahead-of-time builds import this library as samplers._C_attention_ext (see py_module.h).
SAMPLERS_DEFINE_PY_MODULE(_C_attention_ext, "samplers' fused attention op")
