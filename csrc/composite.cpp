// Device-generic kernels written with ATen ops.
#include <ATen/ops/addcmul.h>
#include <ATen/ops/relu.h>
#include <torch/library.h>

#include "eexit.h"

namespace eexit {

void append_channels_aten(const at::Tensor& buf, const at::Tensor& src, int64_t c0,
                          const std::optional<at::Tensor>& pre, const std::optional<at::Tensor>& scale,
                          const std::optional<at::Tensor>& shift) {
  buf.narrow(1, c0, src.size(1)).copy_(src);
  if (!pre.has_value()) return;
  const int64_t c = c0 + src.size(1);
  // Computed in float32 (scale and shift promote) and rounded once into pre: no temporaries.
  at::Tensor out = *pre;
  at::addcmul_out(out, shift->view({1, c, 1, 1}), buf.narrow(1, 0, c), scale->view({1, c, 1, 1}));
  out.relu_();
}

namespace {

void append_channels_composite(const at::Tensor& buf, const at::Tensor& src, int64_t c0,
                               const std::optional<at::Tensor>& pre, const std::optional<at::Tensor>& scale,
                               const std::optional<at::Tensor>& shift) {
  check_append_args(buf, src, c0, pre, scale, shift);
  append_channels_aten(buf, src, c0, pre, scale, shift);
}

}  // namespace

TORCH_LIBRARY_IMPL(eexit, CompositeExplicitAutograd, m) {
  m.impl("append_channels", &append_channels_composite);
}

}  // namespace eexit
