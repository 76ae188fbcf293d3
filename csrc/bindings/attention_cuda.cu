// CUDA implementation of samplers::attention_fwd: checks, parameter packing, launch on the
// current stream. The kernels themselves are torch-free (csrc/attention/).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "attention/attention_api.h"

namespace samplers {

void check_attention_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const std::optional<at::Tensor>& attn_mask, const std::optional<at::Tensor>& key_padding_mask,
                          double scale);

namespace {

void run_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const std::optional<at::Tensor>& attn_mask, const std::optional<at::Tensor>& key_padding_mask,
                   double scale, int64_t impl, const at::Tensor& out) {
  check_attention_args(q, k, v, attn_mask, key_padding_mask, scale);
  TORCH_CHECK(q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16,
              "attention_fwd (CUDA): q, k, v must be float16 or bfloat16, got ", q.scalar_type());
  const int64_t D = q.size(3);
  TORCH_CHECK(D == 64 || D == 128, "attention_fwd (CUDA): head dim must be 64 or 128, got ", D);
  TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1,
              "attention_fwd (CUDA): the last dim of q, k, v must be contiguous (stride 1)");
  TORCH_CHECK(impl >= 0 && impl <= 5,
              "attention_fwd (CUDA): impl must be 0 (auto), 1 (mma), 2/3 (wgmma cp.async), 4/5 (wgmma TMA)");

  TORCH_CHECK(out.sizes() == q.sizes() && out.scalar_type() == q.scalar_type() && out.device() == q.device(),
              "attention_fwd (CUDA): out must match q in shape ", q.sizes(), ", dtype and device");
  TORCH_CHECK(out.stride(3) == 1, "attention_fwd (CUDA): the last dim of out must be contiguous (stride 1)");
  const c10::cuda::CUDAGuard guard(q.device());
  const int64_t B = q.size(0), H = q.size(1), Lq = q.size(2), Lk = k.size(2);
  if (out.numel() == 0) return;

  attention::AttnParams p;
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.out = out.data_ptr();
  // A size-1 dim is never stepped over: its stride (arbitrary in views) becomes 0 so it
  // cannot fail the kernel's alignment checks.
  auto st = [](const at::Tensor& t, int64_t d) -> int64_t { return t.size(d) == 1 ? 0 : t.stride(d); };
  p.q_stride_b = st(q, 0), p.q_stride_h = st(q, 1), p.q_stride_l = st(q, 2);
  p.k_stride_b = st(k, 0), p.k_stride_h = st(k, 1), p.k_stride_l = st(k, 2);
  p.v_stride_b = st(v, 0), p.v_stride_h = st(v, 1), p.v_stride_l = st(v, 2);
  p.o_stride_b = st(out, 0), p.o_stride_h = st(out, 1), p.o_stride_l = st(out, 2);
  p.batch = static_cast<int>(B);
  p.heads = static_cast<int>(H);
  p.len_q = static_cast<int>(Lq);
  p.len_k = static_cast<int>(Lk);
  p.head_dim = static_cast<int>(D);
  p.scale = static_cast<float>(scale);
  p.dtype = q.scalar_type() == at::kBFloat16 ? attention::DType::kBFloat16 : attention::DType::kFloat16;
  TORCH_CHECK(Lq < (int64_t(1) << 31) && Lk < (int64_t(1) << 31), "attention_fwd (CUDA): sequence too long");

  at::Tensor mask;  // kept alive until the launch is queued
  if (attn_mask.has_value()) {
    mask = *attn_mask;
    if (mask.scalar_type() == at::kBool) {
      mask = at::zeros(mask.sizes(), q.options())
                 .masked_fill_(mask.logical_not(), -std::numeric_limits<float>::infinity());
    }
    while (mask.dim() < 4) mask = mask.unsqueeze(0);
    mask = mask.expand({B, H, Lq, Lk});  // broadcast dims get stride 0, no copy
    p.mask = mask.data_ptr();
    p.mask_stride_b = mask.stride(0), p.mask_stride_h = mask.stride(1);
    p.mask_stride_q = mask.stride(2), p.mask_stride_k = mask.stride(3);
  }
  at::Tensor kp;
  if (key_padding_mask.has_value()) {
    kp = key_padding_mask->stride(1) == 1 ? *key_padding_mask : key_padding_mask->contiguous();
    p.key_padding = reinterpret_cast<const uint8_t*>(kp.data_ptr<bool>());
    p.kp_stride_b = kp.stride(0);
  }

  char err[256] = {0};
  const int rc = attention::attention_forward(p, static_cast<attention::Impl>(impl),
                                              c10::cuda::getCurrentCUDAStream().stream(), err, sizeof(err));
  TORCH_CHECK(rc == 0, "attention_fwd (CUDA): ", err);
}

at::Tensor attention_fwd_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const std::optional<at::Tensor>& attn_mask,
                              const std::optional<at::Tensor>& key_padding_mask, double scale, int64_t impl) {
  at::Tensor out = at::empty(q.sizes(), q.options());
  run_attention(q, k, v, attn_mask, key_padding_mask, scale, impl, out);
  return out;
}

void attention_fwd_out_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const std::optional<at::Tensor>& attn_mask,
                            const std::optional<at::Tensor>& key_padding_mask, double scale, int64_t impl,
                            at::Tensor& out) {
  run_attention(q, k, v, attn_mask, key_padding_mask, scale, impl, out);
}

}  // namespace
}  // namespace samplers

TORCH_LIBRARY_IMPL(samplers, CUDA, m) {
  m.impl("attention_fwd", &samplers::attention_fwd_cuda);
  m.impl("attention_fwd_out", &samplers::attention_fwd_out_cuda);
}
