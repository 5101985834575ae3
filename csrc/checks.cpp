#include "eexit.h"

#include <ATen/MemoryOverlap.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <string>

namespace eexit {

Criterion parse_criterion(c10::string_view criterion) {
  if (criterion == "confidence") return Criterion::Confidence;
  if (criterion == "entropy") return Criterion::Entropy;
  TORCH_CHECK_VALUE(false, "exit_gate: criterion must be 'confidence' or 'entropy', got '",
                    std::string(criterion), "'");
}

void check_gate_args(const at::Tensor& logits, double threshold, Criterion criterion) {
  TORCH_CHECK_VALUE(logits.dim() == 2, "exit_gate: logits must have shape [N, C] (rank 2), got rank ",
                    logits.dim(), " with shape ", logits.sizes());
  const auto dt = logits.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16,
                   "exit_gate: logits must be float32, float16 or bfloat16, got ", dt);
  TORCH_CHECK_VALUE(logits.size(1) >= 1, "exit_gate: logits must have at least one class (C >= 1), got shape ",
                    logits.sizes());
  if (criterion == Criterion::Confidence) {
    TORCH_CHECK_VALUE(threshold >= 0.0 && threshold <= 1.0,
                      "exit_gate: threshold for criterion 'confidence' must be in [0, 1], got ", threshold);
  } else {
    TORCH_CHECK_VALUE(threshold >= 0.0, "exit_gate: threshold for criterion 'entropy' must be >= 0 (nats), got ",
                      threshold);
  }
}

at::MemoryFormat row_memory_format(const at::Tensor& t) {
  if (t.is_contiguous()) return at::MemoryFormat::Contiguous;
  if (t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast)) return at::MemoryFormat::ChannelsLast;
  if (t.dim() == 5 && t.is_contiguous(at::MemoryFormat::ChannelsLast3d)) return at::MemoryFormat::ChannelsLast3d;
  return at::MemoryFormat::Contiguous;
}

void check_compact_args(at::TensorList tensors, const at::Tensor& index) {
  TORCH_CHECK_TYPE(index.scalar_type() == at::kLong, "compact: index must be int64, got ", index.scalar_type());
  TORCH_CHECK_VALUE(index.dim() == 1, "compact: index must have rank 1, got shape ", index.sizes());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    TORCH_CHECK_VALUE(t.dim() >= 1, "compact: tensors[", i, "] must have rank >= 1 (rows on dim 0), got a scalar");
    TORCH_CHECK_VALUE(t.device() == index.device(), "compact: tensors[", i, "] is on ", t.device(),
                      " but index is on ", index.device());
    TORCH_CHECK_VALUE(t.size(0) == tensors[0].size(0), "compact: tensors[", i, "] has ", t.size(0),
                      " rows but tensors[0] has ", tensors[0].size(0),
                      "; the tensors must be rows of the same batch (dim 0)");
  }
}

void check_append_args(const at::Tensor& buf, const at::Tensor& src, int64_t c0, const std::optional<at::Tensor>& pre,
                       const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift) {
  TORCH_CHECK_VALUE(buf.dim() == 4, "append_channels: buf must have shape [N, C, H, W] (rank 4), got shape ",
                    buf.sizes());
  const auto dt = buf.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16,
                   "append_channels: buf must be float32, float16 or bfloat16, got ", dt);
  TORCH_CHECK_VALUE(src.dim() == 4, "append_channels: src must have shape [N, C, H, W] (rank 4), got shape ",
                    src.sizes());
  TORCH_CHECK_TYPE(src.scalar_type() == dt, "append_channels: src must have buf's dtype ", dt, ", got ",
                   src.scalar_type());
  TORCH_CHECK_VALUE(src.device() == buf.device(), "append_channels: src is on ", src.device(), " but buf is on ",
                    buf.device());
  TORCH_CHECK_VALUE(src.size(0) == buf.size(0) && src.size(2) == buf.size(2) && src.size(3) == buf.size(3),
                    "append_channels: src must have buf's batch and spatial sizes ", buf.sizes(), ", got ",
                    src.sizes());
  const int64_t c = c0 + src.size(1);
  TORCH_CHECK_VALUE(c0 >= 0 && c <= buf.size(1), "append_channels: the window [c0, c0 + C_src) = [", c0, ", ", c,
                    ") must lie within buf's ", buf.size(1), " channels");
  TORCH_CHECK_VALUE(at::has_internal_overlap(buf) != at::MemOverlap::Yes,
                    "append_channels: buf must not have overlapping elements (e.g. an expanded tensor)");
  TORCH_CHECK_VALUE(!src.is_alias_of(buf), "append_channels: src must not share memory with buf");
  const bool any = pre.has_value() || scale.has_value() || shift.has_value();
  TORCH_CHECK_VALUE(!any || (pre.has_value() && scale.has_value() && shift.has_value()),
                    "append_channels: pre, scale and shift must be given together");
  if (!any) return;
  TORCH_CHECK_TYPE(pre->scalar_type() == dt, "append_channels: pre must have buf's dtype ", dt, ", got ",
                   pre->scalar_type());
  TORCH_CHECK_VALUE(pre->device() == buf.device(), "append_channels: pre is on ", pre->device(), " but buf is on ",
                    buf.device());
  TORCH_CHECK_VALUE(pre->dim() == 4 && pre->size(0) == buf.size(0) && pre->size(1) == c &&
                        pre->size(2) == buf.size(2) && pre->size(3) == buf.size(3),
                    "append_channels: pre must have shape [", buf.size(0), ", ", c, ", ", buf.size(2), ", ",
                    buf.size(3), "] (c0 + C_src channels), got ", pre->sizes());
  TORCH_CHECK_VALUE(at::has_internal_overlap(*pre) != at::MemOverlap::Yes,
                    "append_channels: pre must not have overlapping elements (e.g. an expanded tensor)");
  TORCH_CHECK_VALUE(!pre->is_alias_of(buf) && !pre->is_alias_of(src),
                    "append_channels: pre must not share memory with buf or src");
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"scale", *scale}, {"shift", *shift}}) {
    TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, "append_channels: ", name, " must be float32, got ",
                     t.scalar_type());
    TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == c, "append_channels: ", name, " must have shape [", c,
                      "] (c0 + C_src), got ", t.sizes());
    TORCH_CHECK_VALUE(t.device() == buf.device(), "append_channels: ", name, " is on ", t.device(),
                      " but buf is on ", buf.device());
  }
}

namespace {

// Output size along one axis; with ceil_mode the last window must start inside the input or
// its left padding (torch's rule).
int64_t pool_out_size(int64_t size, int64_t k, int64_t s, int64_t p, bool ceil_mode) {
  int64_t out = (size + 2 * p - k + (ceil_mode ? s - 1 : 0)) / s + 1;
  if (ceil_mode && (out - 1) * s >= size + p) --out;
  return out;
}

// x of an image op: [N, C, H, W] or [C, H, W] (`channels`: what the op calls C) with C, H, W >= 1
// and one of `dtypes`, whose names the message lists (as eexit/_checks.py's _check_image).
void check_image(const char* op, const at::Tensor& x, const char* channels,
                 std::initializer_list<at::ScalarType> dtypes) {
  TORCH_CHECK_VALUE(x.dim() == 4 || x.dim() == 3, op, ": x must have shape [N, ", channels, ", H, W] or [", channels,
                    ", H, W] (rank 4 or 3), got shape ", x.sizes());
  const auto dt = x.scalar_type();
  if (std::find(dtypes.begin(), dtypes.end(), dt) == dtypes.end()) {
    std::string names;
    size_t i = 0;
    for (const auto d : dtypes) {
      names += (i == 0 ? "" : i + 1 == dtypes.size() ? " or " : ", ");
      names += c10::getDtypeNames(d).first;
      ++i;
    }
    TORCH_CHECK_TYPE(false, op, ": x must be ", names, ", got torch.", c10::getDtypeNames(dt).first);
  }
  TORCH_CHECK_VALUE(x.size(-3) >= 1 && x.size(-2) >= 1 && x.size(-1) >= 1, op, ": x must have ", channels,
                    ", H and W >= 1, got shape ", x.sizes());
}

}  // namespace

std::array<int64_t, 2> check_max_pool_args(const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                           at::IntArrayRef padding, bool ceil_mode) {
  check_image("max_pool2d", x, "C", {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16});
  const int64_t H = x.size(-2), W = x.size(-1);
  for (const auto& [name, v] : {std::pair<const char*, at::IntArrayRef>{"kernel_size", kernel_size},
                                {"stride", stride}, {"padding", padding}}) {
    TORCH_CHECK_VALUE(v.size() == 2, "max_pool2d: ", name, " must be an int or a pair of ints, got ", v);
  }
  TORCH_CHECK_VALUE(kernel_size[0] >= 1 && kernel_size[1] >= 1, "max_pool2d: kernel_size must be >= 1, got ",
                    kernel_size);
  TORCH_CHECK_VALUE(stride[0] >= 1 && stride[1] >= 1, "max_pool2d: stride must be >= 1, got ", stride);
  TORCH_CHECK_VALUE(padding[0] >= 0 && padding[1] >= 0 && 2 * padding[0] <= kernel_size[0] &&
                        2 * padding[1] <= kernel_size[1],
                    "max_pool2d: padding must be >= 0 and at most half of kernel_size ", kernel_size, ", got ",
                    padding);
  TORCH_CHECK_VALUE(H + 2 * padding[0] >= kernel_size[0] && W + 2 * padding[1] >= kernel_size[1],
                    "max_pool2d: x's height and width [", H, ", ", W, "] plus twice padding ", padding,
                    " must be at least kernel_size ", kernel_size);
  return {pool_out_size(H, kernel_size[0], stride[0], padding[0], ceil_mode),
          pool_out_size(W, kernel_size[1], stride[1], padding[1], ceil_mode)};
}

std::array<int64_t, 2> check_direct_conv_args(const at::Tensor& x, const at::Tensor& weight,
                                              const std::optional<at::Tensor>& bias, at::IntArrayRef padding) {
  check_image("direct_conv2d", x, "C_in", {at::kFloat, at::kHalf, at::kBFloat16});
  const auto dt = x.scalar_type();
  const int64_t C_in = x.size(-3), H = x.size(-2), W = x.size(-1);
  TORCH_CHECK_VALUE(weight.dim() == 4, "direct_conv2d: weight must have shape [C_out, C_in, KH, KW] (rank 4), got shape ",
                    weight.sizes());
  TORCH_CHECK_VALUE(weight.size(0) >= 1 && weight.size(1) == C_in && weight.size(2) >= 1 && weight.size(3) >= 1,
                    "direct_conv2d: weight must have shape [C_out, ", C_in, ", KH, KW] with C_out, KH, KW >= 1 (x has ",
                    C_in, " channels), got shape ", weight.sizes());
  TORCH_CHECK_TYPE(weight.scalar_type() == dt, "direct_conv2d: weight must have x's dtype torch.",
                   c10::getDtypeNames(dt).first, ", got torch.", c10::getDtypeNames(weight.scalar_type()).first);
  TORCH_CHECK_VALUE(weight.device() == x.device(), "direct_conv2d: weight must be on x's device ", x.device(), ", got ",
                    weight.device());
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == weight.size(0), "direct_conv2d: bias must have shape [",
                      weight.size(0), "] (C_out), got shape ", bias->sizes());
    TORCH_CHECK_TYPE(bias->scalar_type() == dt, "direct_conv2d: bias must have x's dtype torch.",
                     c10::getDtypeNames(dt).first, ", got torch.", c10::getDtypeNames(bias->scalar_type()).first);
    TORCH_CHECK_VALUE(bias->device() == x.device(), "direct_conv2d: bias must be on x's device ", x.device(), ", got ",
                      bias->device());
  }
  TORCH_CHECK_VALUE(padding.size() == 2 && padding[0] >= 0 && padding[1] >= 0,
                    "direct_conv2d: padding must be a pair of ints >= 0, got ", padding);
  const int64_t KH = weight.size(2), KW = weight.size(3);
  TORCH_CHECK_VALUE(H + 2 * padding[0] >= KH && W + 2 * padding[1] >= KW, "direct_conv2d: x's height and width [", H,
                    ", ", W, "] plus twice padding ", padding, " must be at least the kernel [", KH, ", ", KW, "]");
  return {H + 2 * padding[0] - KH + 1, W + 2 * padding[1] - KW + 1};
}

void check_lrn_args(const at::Tensor& x, int64_t size) {
  // rank 4 only: torch.nn.functional.local_response_norm reads a 3-D tensor as [N, C, L]
  TORCH_CHECK_VALUE(x.dim() == 4, "local_response_norm: x must have shape [N, C, H, W] (rank 4), got shape ",
                    x.sizes());
  check_image("local_response_norm", x, "C", {at::kFloat, at::kHalf, at::kBFloat16});
  TORCH_CHECK_VALUE(size >= 1, "local_response_norm: size must be an int >= 1, got ", size);
}

}  // namespace eexit
