// CPU max pooling with torch.nn.functional.max_pool2d's semantics, in parallel over
// the planes of NCHW tensors or the output pixel rows of NHWC tensors. The window
// fold runs along a whole output row (NCHW) or a pixel's channels (NHWC), loops
// that gcc -O3 vectorises; the 2x2 and 3x3 stride-2 windows get compile-time sizes.
// Float32 goes to at::vec kernels built per ISA (pool_kernel.h): NCHW rows at column
// stride 2 with windows 2 or 3 wide, and channels_last tensors with any window.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/kernels.h"
#include "eexit.h"

namespace eexit {
namespace {

// torch's update rule: v replaces the running maximum m when it is larger or NaN, so any NaN
// in a window gives NaN and, of equal values (+0 and -0), the first in row-major order wins.
template <typename acc_t>
inline acc_t take(acc_t m, acc_t v) {
  return (v > m || v != v) ? v : m;
}

// One axis of the pooling geometry.
struct Axis {
  int64_t in, out, k, s, p;  // input size, output size, kernel, stride, padding
  int64_t lo, hi;            // outputs [lo, hi) have their whole window inside the input

  Axis(int64_t in_, int64_t out_, int64_t k_, int64_t s_, int64_t p_) : in(in_), out(out_), k(k_), s(s_), p(p_) {
    lo = std::min((p + s - 1) / s, out);
    hi = std::max(lo, std::min(in + p >= k ? (in + p - k) / s + 1 : 0, out));
  }
  // Input index of tap j of output o's window, clamped into the input.
  int64_t clamped(int64_t o, int64_t j) const { return std::clamp<int64_t>(o * s - p + j, 0, in - 1); }
  // clamped(o, j) for every output o and tap j < k, output by output: [out * k].
  std::vector<int64_t> taps() const {
    std::vector<int64_t> t;
    t.reserve(out * k);
    for (int64_t o = 0; o < out; ++o)
      for (int64_t j = 0; j < k; ++j) t.push_back(clamped(o, j));
    return t;
  }
};

// The offset of x's last element (x has no empty dimension).
int64_t last_element(const at::Tensor& x) {
  int64_t last = 0;
  for (int64_t d = 0; d < x.dim(); ++d) last += (x.size(d) - 1) * x.stride(d);
  return last;
}

// Windows are read with their indices clamped into the input rather than clipped: a tap in the
// padding or past the ceil-mode border reads the nearest input element of the window again,
// next to itself in window order, which changes nothing (take keeps the first of equal values).
// So every window has kh x kw taps; KH, KW, S > 0 fix them and the stride at compile time.

// Output row y[0, W_out) from the window's kh input rows.
template <int KH, int KW, int S, typename scalar_t>
void pool_row(const scalar_t* const* rows, scalar_t* __restrict__ y, const Axis& w, int64_t kh) {
  using acc_t = at::opmath_type<scalar_t>;
  if constexpr (KH > 0) kh = KH;
  const int64_t kw = KW > 0 ? KW : w.k, s = S > 0 ? S : w.s;
  const auto edge = [&](int64_t o) {
    acc_t m = -std::numeric_limits<acc_t>::infinity();
    for (int64_t i = 0; i < kh; ++i)
      for (int64_t j = 0; j < kw; ++j) m = take(m, static_cast<acc_t>(rows[i][w.clamped(o, j)]));
    y[o] = static_cast<scalar_t>(m);
  };
  for (int64_t o = 0; o < w.lo; ++o) edge(o);
  const int64_t lo = w.lo, hi = w.hi, p = w.p;
  for (int64_t o = lo; o < hi; ++o) {  // the interior: vectorised along o
    acc_t m = -std::numeric_limits<acc_t>::infinity();
    for (int64_t i = 0; i < kh; ++i)
      for (int64_t j = 0; j < kw; ++j) m = take(m, static_cast<acc_t>(rows[i][o * s - p + j]));
    y[o] = static_cast<scalar_t>(m);
  }
  for (int64_t o = w.hi; o < w.out; ++o) edge(o);
}

// Float32 rows with windows 2 or 3 wide at column stride 2 go to the at::vec kernel
// (pool_kernel.h), one call per block of planes.
template <int KH, int KW, int S, typename scalar_t>
void pool_nchw(const at::Tensor& x, at::Tensor& y, const Axis& h, const Axis& w) {
  const int64_t C = x.size(1), sn = x.stride(0), sc = x.stride(1), sh = x.stride(2);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  const int64_t grain = std::max<int64_t>(1, (1 << 15) / (h.in * w.in));
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (w.s == 2 && (w.k == 2 || w.k == 3) && w.hi > w.lo) {
      const std::vector<int64_t> taps = h.taps();  // the input row of each output row's tap
      const float* x_end = xp + last_element(x) + 1;
      at::parallel_for(0, x.size(0) * C, grain, [&](int64_t begin, int64_t end) {
        const cpu::PoolRowsArgs a{xp, x_end, yp, C, sn, sc, sh, begin, end, taps.data(),
                                  h.k, w.k, h.out, w.in, w.out, w.p, w.lo, w.hi};
        if (cpu::use_avx2()) cpu::pool_rows_avx2(a);
        else cpu::pool_rows_default(a);
      });
      return;
    }
  }
  at::parallel_for(0, x.size(0) * C, grain, [&](int64_t begin, int64_t end) {
    std::vector<const scalar_t*> rows(h.k);
    for (int64_t q = begin; q < end; ++q) {
      const scalar_t* plane = xp + (q / C) * sn + (q % C) * sc;
      for (int64_t oh = 0; oh < h.out; ++oh) {
        for (int64_t i = 0; i < h.k; ++i) rows[i] = plane + h.clamped(oh, i) * sh;
        pool_row<KH, KW, S>(rows.data(), yp + (q * h.out + oh) * w.out, w, h.k);
      }
    }
  });
}

// Channels innermost: each output pixel folds the C-vectors of its window, along c; float32
// in the at::vec kernel (pool_kernel.h), one call per block of pixel rows.
template <int KH, int KW, typename scalar_t>
void pool_nhwc(const at::Tensor& x, at::Tensor& y, const Axis& h, const Axis& w) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = x.size(1), sn = x.stride(0), sh = x.stride(2), sw = x.stride(3);
  const int64_t kh = KH > 0 ? KH : h.k, kw = KW > 0 ? KW : w.k;
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  const int64_t grain = std::max<int64_t>(1, (1 << 15) / (kh * w.in * C));
  if constexpr (std::is_same_v<scalar_t, float>) {
    const std::vector<int64_t> row_taps = h.taps(), col_taps = w.taps();  // clamped input rows and columns
    const float* x_end = xp + last_element(x) + 1;
    at::parallel_for(0, x.size(0) * h.out, grain, [&](int64_t begin, int64_t end) {
      const cpu::PoolPixelsArgs a{xp, x_end, yp, C, sn, sh, sw, begin, end, h.out, w.out,
                                  row_taps.data(), col_taps.data(), kh, kw};
      if (cpu::use_avx2()) cpu::pool_pixels_avx2(a);
      else cpu::pool_pixels_default(a);
    });
    return;
  }
  at::parallel_for(0, x.size(0) * h.out, grain, [&](int64_t begin, int64_t end) {
    std::vector<const scalar_t*> rows(kh), taps(kh * kw);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / h.out, oh = r % h.out;
      for (int64_t i = 0; i < kh; ++i) rows[i] = xp + n * sn + h.clamped(oh, i) * sh;
      scalar_t* __restrict__ dst = yp + r * w.out * C;
      for (int64_t ow = 0; ow < w.out; ++ow, dst += C) {
        for (int64_t i = 0; i < kh; ++i)
          for (int64_t j = 0; j < kw; ++j) taps[i * kw + j] = rows[i] + w.clamped(ow, j) * sw;
        const scalar_t* const* t = taps.data();
        for (int64_t c = 0; c < C; ++c) {
          acc_t m = -std::numeric_limits<acc_t>::infinity();
          for (int64_t e = 0; e < kh * kw; ++e) m = take(m, static_cast<acc_t>(t[e][c]));
          dst[c] = static_cast<scalar_t>(m);
        }
      }
    }
  });
}

at::Tensor max_pool2d_cpu(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                          at::IntArrayRef padding, bool ceil_mode) {
  const auto [H_out, W_out] = check_max_pool_args(input, kernel_size, stride, padding, ceil_mode);
  const at::MemoryFormat fmt = row_memory_format(input);  // contiguous for every 3-D input
  at::Tensor x = input.dim() == 3 ? input.unsqueeze(0) : input;
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  if (!nhwc && x.size(3) > 1 && x.stride(3) != 1) x = x.contiguous();
  at::Tensor y = at::empty({x.size(0), x.size(1), H_out, W_out}, x.options().memory_format(fmt));
  if (y.numel() > 0) {
    const Axis h(x.size(2), H_out, kernel_size[0], stride[0], padding[0]);
    const Axis w(x.size(3), W_out, kernel_size[1], stride[1], padding[1]);
    const auto is = [&](int64_t k, int64_t s) { return h.k == k && w.k == k && w.s == s; };
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "max_pool2d", [&] {
      if (nhwc && is(2, 2)) pool_nhwc<2, 2, scalar_t>(x, y, h, w);
      else if (nhwc && is(3, 2)) pool_nhwc<3, 3, scalar_t>(x, y, h, w);
      else if (nhwc) pool_nhwc<0, 0, scalar_t>(x, y, h, w);
      else if (is(2, 2)) pool_nchw<2, 2, 2, scalar_t>(x, y, h, w);  // B-LeNet
      else if (is(3, 2)) pool_nchw<3, 3, 2, scalar_t>(x, y, h, w);  // B-AlexNet, ResNet stems
      else pool_nchw<0, 0, 0, scalar_t>(x, y, h, w);
    });
  }
  return input.dim() == 3 ? y.squeeze(0) : y;
}

}  // namespace

TORCH_LIBRARY_IMPL(eexit, CPU, m) {
  m.impl("max_pool2d", &max_pool2d_cpu);
}

}  // namespace eexit
