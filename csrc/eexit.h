// Shared declarations of the eexit extension: argument checks and layout rules
// used by both the CPU and the CUDA implementations.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <array>
#include <optional>

namespace eexit {

enum class Criterion { Confidence, Entropy };

// "confidence" or "entropy"; anything else is a ValueError naming `criterion`.
Criterion parse_criterion(c10::string_view criterion);

// logits: rank 2 [N, C], C >= 1, float32/float16/bfloat16; threshold in [0, 1]
// for confidence, >= 0 for entropy. Errors name the argument and what was expected.
void check_gate_args(const at::Tensor& logits, double threshold, Criterion criterion);

// The memory format compact() gives its output for `t`: contiguous when t is
// contiguous, channels_last(_3d) when t is dense in that format, contiguous otherwise.
at::MemoryFormat row_memory_format(const at::Tensor& t);

// index: int64, rank 1, on the device of every tensor; every tensor has rank >= 1.
// Values of index are checked by the device implementations.
void check_compact_args(at::TensorList tensors, const at::Tensor& index);

// buf [N, C_buf, H, W] and src [N, C_src, H, W]: 4-D, one dtype (float32/float16/
// bfloat16) and device, src's window [c0, c0 + C_src) inside buf. pre, scale and
// shift come together: pre [N, c0 + C_src, H, W] like buf, scale and shift float32
// [c0 + C_src]. src and pre share no memory with buf (nor pre with src), and buf
// and pre have no overlapping elements.
void check_append_args(const at::Tensor& buf, const at::Tensor& src, int64_t c0, const std::optional<at::Tensor>& pre,
                       const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift);

// append_channels by ATen ops, for any device and layout, on arguments that
// passed check_append_args (behind the CompositeExplicitAutograd kernel; the CPU
// kernel falls back to it for tensors whose channels are not innermost).
void append_channels_aten(const at::Tensor& buf, const at::Tensor& src, int64_t c0,
                          const std::optional<at::Tensor>& pre, const std::optional<at::Tensor>& scale,
                          const std::optional<at::Tensor>& shift);

// max_pool2d: x [N, C, H, W] or [C, H, W] (N may be 0; C, H, W >= 1), float32/float64/
// float16/bfloat16; kernel_size, stride and padding pairs (h, w) with kernel and stride >= 1
// and 0 <= padding <= kernel / 2; H + 2 * padding >= kernel (a non-empty output). Returns
// the output's {H_out, W_out} (torch.nn.functional.max_pool2d's rule, dilation 1).
std::array<int64_t, 2> check_max_pool_args(const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                           at::IntArrayRef padding, bool ceil_mode);

// direct_conv2d: x [N, C_in, H, W] or [C_in, H, W] (N may be 0; C_in, H, W >= 1), float32/
// float16/bfloat16; weight [C_out, C_in, KH, KW] and bias [C_out] (optional) of x's dtype and
// device; padding a pair (h, w) >= 0 with H + 2 * padding >= KH (a non-empty output).
// Returns the output's {H_out, W_out} (stride 1, dilation 1).
std::array<int64_t, 2> check_direct_conv_args(const at::Tensor& x, const at::Tensor& weight,
                                              const std::optional<at::Tensor>& bias, at::IntArrayRef padding);

// local_response_norm: x [N, C, H, W] (N may be 0; C, H, W >= 1), float32/float16/bfloat16;
// size (the channel window) >= 1.
void check_lrn_args(const at::Tensor& x, int64_t size);

// The gate's outputs, in schema order.
using GateResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

}  // namespace eexit
