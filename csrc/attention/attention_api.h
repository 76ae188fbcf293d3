// Torch-free interface of the fused attention forward kernels.
//
// Nothing here includes CUDA or torch headers, so the C++ binding, the CUDA binding and CI's
// torch-free compile check all share one declaration of the parameters and entry points.
#pragma once

#include <cstddef>
#include <cstdint>

namespace samplers {
namespace attention {

enum class DType : int { kFloat16 = 0, kBFloat16 = 1 };

// Which kernel runs: kAuto takes the fastest one built for the device (wgmma on sm_90a builds
// running on compute capability 9.0, else mma.sync); the others force one, or fail clearly.
// The wgmma kernel comes in two loaders (cp.async by all threads with a CTA barrier per key
// tile, or TMA with mbarriers) and two tilings each; all four stay selectable for tuning and
// tests, kAuto takes the one measured fastest for the head dim.
enum class Impl : int { kAuto = 0, kMma = 1, kWgmma = 2, kWgmmaAlt = 3, kWgmmaTma = 4, kWgmmaTmaAlt = 5 };

// Capability bits returned by attention_capabilities().
constexpr int kCapMma = 1;    // mma.sync kernel runs here (compute capability >= 8.0)
constexpr int kCapWgmma = 2;  // wgmma kernel was built for sm_90a and the device is 9.0

// q [B, H, Lq, D], k and v [B, H, Lk, D], out [B, H, Lq, D]; strides in elements, last dim
// contiguous. Optional additive mask (same dtype as q) addressed with broadcast strides
// (0 for a broadcast dim) and optional key-padding mask [B, Lk] of bytes (nonzero = ignore key).
struct AttnParams {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  const void* mask = nullptr;
  const uint8_t* key_padding = nullptr;

  int64_t q_stride_b = 0, q_stride_h = 0, q_stride_l = 0;
  int64_t k_stride_b = 0, k_stride_h = 0, k_stride_l = 0;
  int64_t v_stride_b = 0, v_stride_h = 0, v_stride_l = 0;
  int64_t o_stride_b = 0, o_stride_h = 0, o_stride_l = 0;
  int64_t mask_stride_b = 0, mask_stride_h = 0, mask_stride_q = 0, mask_stride_k = 0;
  int64_t kp_stride_b = 0;

  int batch = 0, heads = 0, len_q = 0, len_k = 0, head_dim = 0;
  float scale = 1.0f;  // multiplies q.k before the softmax
  DType dtype = DType::kBFloat16;
};

// Launches the forward pass on `stream` (a cudaStream_t passed as void*). Returns 0 on success,
// else a nonzero code with a message written to err (at most errlen bytes, NUL-terminated).
int attention_forward(const AttnParams& p, Impl impl, void* stream, char* err, size_t errlen);

// Bit set of kCap* for CUDA device `device` (0 when no kernel can run there).
int attention_capabilities(int device);

// Name of the kernel that kAuto would launch for this dtype / head dim on `device`.
const char* attention_auto_kernel_name(int device);

}  // namespace attention
}  // namespace samplers
