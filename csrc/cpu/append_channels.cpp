// CPU append_channels: one parallel pass over pixel rows that copies the new
// channels into their window and writes the next layer's BN-ReLU input.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "cpu/kernels.h"
#include "eexit.h"

namespace eexit {
namespace {

bool channels_innermost(const at::Tensor& t) {
  return t.size(1) == 1 || t.stride(1) == 1;
}

cpu::PixelView pixels(const at::Tensor& t) {
  return {t.data_ptr(), t.stride(0), t.stride(2), t.stride(3)};
}

void append_channels_cpu(const at::Tensor& buf, const at::Tensor& src, int64_t c0, const std::optional<at::Tensor>& pre,
                         const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift) {
  check_append_args(buf, src, c0, pre, scale, shift);
  TORCH_CHECK_VALUE(buf.device().is_cpu(), "append_channels: buf must be on CPU here, got ", buf.device());
  if (!channels_innermost(buf) || !channels_innermost(src) || (pre.has_value() && !channels_innermost(*pre))) {
    append_channels_aten(buf, src, c0, pre, scale, shift);
    return;
  }
  const int64_t N = buf.size(0), H = buf.size(2), W = buf.size(3), c_src = src.size(1);
  if (N * H * W == 0 || (c_src == 0 && !pre.has_value())) return;
  at::Tensor sc, sh;
  cpu::PixelView pv{nullptr, 0, 0, 0};
  if (pre.has_value()) {
    sc = scale->contiguous();
    sh = shift->contiguous();
    pv = pixels(*pre);
  }
  const cpu::AppendArgs args{buf.scalar_type(), H,      W,
                             pixels(buf),       pixels(src), pv,
                             c0,                c_src,  sc.defined() ? sc.const_data_ptr<float>() : nullptr,
                             sh.defined() ? sh.const_data_ptr<float>() : nullptr};
  const auto kernel = cpu::use_avx2() ? cpu::append_rows_avx2 : cpu::append_rows_default;
  const int64_t per_row = W * (c_src + (pre.has_value() ? 2 * (c0 + c_src) : 0));  // elements moved
  const int64_t grain = std::max<int64_t>(1, (1 << 15) / std::max<int64_t>(per_row, 1));
  at::parallel_for(0, N * H, grain, [&](int64_t b, int64_t e) { kernel(args, b, e); });
}

}  // namespace

TORCH_LIBRARY_IMPL(eexit, CPU, m) {
  m.impl("append_channels", &append_channels_cpu);
}

}  // namespace eexit
