// CUDA max pooling with torch.nn.functional.max_pool2d's semantics: one thread per
// output element, reading the input through its strides (any layout); the output
// is contiguous or channels_last like the input (row_memory_format).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "eexit.h"

namespace eexit {
namespace {

constexpr int kThreads = 256;

struct PoolGeometry {
  int64_t C, H, W, H_out, W_out;
  int64_t sn, sc, sh, sw;  // input strides, in elements
  int64_t kh, kw, dh, dw, ph, pw;
  bool nhwc;  // the output is channels_last
};

template <typename scalar_t>
__global__ void max_pool_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t total,
                                PoolGeometry g) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t n, c, oh, ow;  // y[i] in the output's memory order
    if (g.nhwc) {
      c = i % g.C;
      ow = (i / g.C) % g.W_out;
      oh = (i / (g.C * g.W_out)) % g.H_out;
      n = i / (g.C * g.W_out * g.H_out);
    } else {
      ow = i % g.W_out;
      oh = (i / g.W_out) % g.H_out;
      c = (i / (g.W_out * g.H_out)) % g.C;
      n = i / (g.W_out * g.H_out * g.C);
    }
    const int64_t h0 = oh * g.dh - g.ph, w0 = ow * g.dw - g.pw;
    const int64_t h1 = min(h0 + g.kh, g.H), w1 = min(w0 + g.kw, g.W);
    const scalar_t* plane = x + n * g.sn + c * g.sc;
    // torch's rule: a larger value or a NaN replaces the maximum, in row-major window order.
    acc_t m = -std::numeric_limits<acc_t>::infinity();
    for (int64_t ih = max(h0, int64_t{0}); ih < h1; ++ih) {
      for (int64_t iw = max(w0, int64_t{0}); iw < w1; ++iw) {
        const acc_t v = static_cast<acc_t>(plane[ih * g.sh + iw * g.sw]);
        if (v > m || v != v) m = v;
      }
    }
    y[i] = static_cast<scalar_t>(m);
  }
}

at::Tensor max_pool2d_cuda(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                           at::IntArrayRef padding, bool ceil_mode) {
  const auto [H_out, W_out] = check_max_pool_args(input, kernel_size, stride, padding, ceil_mode);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::MemoryFormat fmt = row_memory_format(input);  // contiguous for every 3-D input
  const at::Tensor x = input.dim() == 3 ? input.unsqueeze(0) : input;
  at::Tensor y = at::empty({x.size(0), x.size(1), H_out, W_out}, x.options().memory_format(fmt));
  const int64_t total = y.numel();
  if (total > 0) {
    const PoolGeometry g{x.size(1), x.size(2), x.size(3), H_out, W_out,
                         x.stride(0), x.stride(1), x.stride(2), x.stride(3),
                         kernel_size[0], kernel_size[1], stride[0], stride[1], padding[0], padding[1],
                         fmt == at::MemoryFormat::ChannelsLast};
    const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t{1} << 20);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "max_pool2d", [&] {
      max_pool_kernel<scalar_t><<<static_cast<unsigned>(blocks), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), total, g);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return input.dim() == 3 ? y.squeeze(0) : y;
}

}  // namespace

TORCH_LIBRARY_IMPL(eexit, CUDA, m) {
  m.impl("max_pool2d", &max_pool2d_cuda);
}

}  // namespace eexit
