// CPU local response normalisation across channels, torch.nn.functional.local_response_norm's
// semantics, in one pass: each block of positions reads the channel window of every element and
// writes y (lrn_kernel.h). NCHW images are cut into blocks of pixels of one image (all channels,
// vectors along the pixels); channels_last ones into blocks of pixels (vectors along the
// channels). float16/bfloat16 blocks go through float32 buffers: float32 arithmetic, one rounding.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "cpu/kernels.h"
#include "eexit.h"

namespace eexit {
namespace {

constexpr int64_t kBlockElements = 1 << 14;  // elements per task (64 KiB of float)

template <typename scalar_t>
void lrn_blocks(const at::Tensor& x, at::Tensor& y, bool pixels, int64_t size, float alpha, float beta, float k) {
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const int64_t lanes = 16;  // blocks of whole vectors for either build
  const int64_t block = std::max<int64_t>(lanes, kBlockElements / C / lanes * lanes);
  const int64_t per_image = (HW + block - 1) / block;
  const int64_t tasks = pixels ? (N * HW + block - 1) / block : N * per_image;
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  constexpr bool is_float = std::is_same_v<scalar_t, float>;
  const bool avx2 = cpu::use_avx2();
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(avx2 ? cpu::lrn_scratch_avx2(C, size) : cpu::lrn_scratch_default(C, size), 0.f);
    std::vector<float> in(is_float ? 0 : C * block), out(is_float ? 0 : C * block);
    for (int64_t t = begin; t < end; ++t) {
      // the block: count positions from element offset at_, its rows cs elements apart in x and y
      int64_t at_, count, cs;
      if (pixels) {
        const int64_t p0 = t * block;
        count = std::min(block, N * HW - p0);
        at_ = p0 * C;
        cs = C;
      } else {
        const int64_t n = t / per_image, i0 = (t % per_image) * block;
        count = std::min(block, HW - i0);
        at_ = n * C * HW + i0;
        cs = HW;
      }
      cpu::LrnArgs a{};
      a.C = C;
      a.count = count;
      a.pixels = pixels;
      a.size = size;
      a.alpha = alpha;
      a.beta = beta;
      a.k = k;
      // the block as rows x cols, row r at at_ + r * cs: channels x positions (planes) or
      // positions x channels (pixels); float32 copies of it are dense (row stride cols)
      const int64_t rows = pixels ? count : C, cols = pixels ? C : count;
      if constexpr (is_float) {
        a.x = xp + at_;
        a.y = yp + at_;
        a.cs = cs;
      } else {
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t q = 0; q < cols; ++q) in[r * cols + q] = static_cast<float>(xp[at_ + r * cs + q]);
        a.x = in.data();
        a.y = out.data();
        a.cs = cols;
      }
      if (avx2) cpu::lrn_avx2(a, scratch.data());
      else cpu::lrn_default(a, scratch.data());
      if constexpr (!is_float) {
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t q = 0; q < cols; ++q) yp[at_ + r * cs + q] = static_cast<scalar_t>(out[r * cols + q]);
      }
    }
  });
}

at::Tensor local_response_norm_cpu(const at::Tensor& input, int64_t size, double alpha, double beta, double k) {
  check_lrn_args(input, size);
  const at::MemoryFormat fmt = row_memory_format(input);
  const bool pixels = fmt == at::MemoryFormat::ChannelsLast;
  const at::Tensor x = input.contiguous(fmt);
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(fmt));
  if (y.numel() > 0) {
    const auto a = static_cast<float>(alpha), b = static_cast<float>(beta), kk = static_cast<float>(k);
    switch (x.scalar_type()) {  // the dtypes check_lrn_args lets through
      case at::kFloat: lrn_blocks<float>(x, y, pixels, size, a, b, kk); break;
      case at::kHalf: lrn_blocks<at::Half>(x, y, pixels, size, a, b, kk); break;
      default: lrn_blocks<at::BFloat16>(x, y, pixels, size, a, b, kk); break;
    }
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(eexit, CPU, m) {
  m.impl("local_response_norm", &local_response_norm_cpu);
}

}  // namespace eexit
