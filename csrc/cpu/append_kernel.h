// Pixel-row kernel of append_channels on at::vec, included once per CPU
// capability (kernels_default.cpp, kernels_avx2.cpp) like gate_kernel.h.
//
// Per pixel: the src channels are copied into their window of buf, then (with
// a pre-activation) pre[c] = relu(buf[c] * scale[c] + shift[c]) over channels
// [0, c0 + c_src), in float32, while the pixel is in L1. NaN stays NaN
// (at::vec::maximum propagates it, as torch.relu does).
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cpu/kernels.h"

namespace eexit::cpu {
namespace CPU_CAPABILITY {

using FVec = at::vec::Vectorized<float>;

// relu(x * scale + shift) on up to FVec::size() lanes (n of them are real).
inline FVec affine_relu_lanes(const FVec& x, const float* scale, const float* shift, int64_t n) {
  const bool full = n == FVec::size();
  const FVec s = full ? FVec::loadu(scale) : FVec::loadu(scale, n);
  const FVec b = full ? FVec::loadu(shift) : FVec::loadu(shift, n);
  return at::vec::maximum(at::vec::fmadd(x, s, b), FVec(0.f));
}

// out[c] = relu(x[c] * scale[c] + shift[c]) for c in [0, C); never reads or writes past C.
template <typename scalar_t>
inline void affine_relu(const scalar_t* x, const float* scale, const float* shift, scalar_t* out, int64_t C) {
  constexpr int64_t F = FVec::size();
  if constexpr (std::is_same_v<scalar_t, float>) {
    for (int64_t c = 0; c < C; c += F) {
      const int64_t n = std::min(F, C - c);
      const FVec v = n == F ? FVec::loadu(x + c) : FVec::loadu(x + c, n);
      const FVec r = affine_relu_lanes(v, scale + c, shift + c, n);
      if (n == F) r.store(out + c);
      else r.store(out + c, n);
    }
  } else {
    using RVec = at::vec::Vectorized<scalar_t>;  // 2 * F lanes of half / bfloat16
    constexpr int64_t L = RVec::size();
    for (int64_t c = 0; c < C; c += L) {
      const int64_t n = std::min(L, C - c), lo = std::min(n, F), hi = n - lo;
      const RVec v = n == L ? RVec::loadu(x + c) : RVec::loadu(x + c, n);
      auto [a, b] = at::vec::convert_to_float<scalar_t>(v);
      a = affine_relu_lanes(a, scale + c, shift + c, lo);
      b = hi > 0 ? affine_relu_lanes(b, scale + c + F, shift + c + F, hi) : FVec(0.f);
      const RVec r = at::vec::convert_from_float<scalar_t>(a, b);
      if (n == L) r.store(out + c);
      else r.store(out + c, n);
    }
  }
}

template <typename scalar_t>
void append_rows(const AppendArgs& a, int64_t begin, int64_t end) {
  auto* buf = static_cast<scalar_t*>(a.buf.data);
  const auto* src = static_cast<const scalar_t*>(a.src.data);
  auto* pre = static_cast<scalar_t*>(a.pre.data);
  const int64_t C = a.c0 + a.c_src;
  const size_t src_bytes = static_cast<size_t>(a.c_src) * sizeof(scalar_t);
  for (int64_t r = begin; r < end; ++r) {
    const int64_t n = r / a.H, h = r % a.H;
    scalar_t* b = buf + n * a.buf.sn + h * a.buf.sh;
    const scalar_t* s = src + n * a.src.sn + h * a.src.sh;
    if (pre == nullptr) {
      for (int64_t w = 0; w < a.W; ++w) std::memcpy(b + w * a.buf.sw + a.c0, s + w * a.src.sw, src_bytes);
      continue;
    }
    scalar_t* p = pre + n * a.pre.sn + h * a.pre.sh;
    for (int64_t w = 0; w < a.W; ++w) {
      scalar_t* bw = b + w * a.buf.sw;
      std::memcpy(bw + a.c0, s + w * a.src.sw, src_bytes);
      affine_relu(bw, a.scale, a.shift, p + w * a.pre.sw, C);
    }
  }
}

inline void append_rows_dispatch(const AppendArgs& a, int64_t begin, int64_t end) {
  switch (a.dtype) {
    case at::kFloat: return append_rows<float>(a, begin, end);
    case at::kHalf: return append_rows<at::Half>(a, begin, end);
    case at::kBFloat16: return append_rows<at::BFloat16>(a, begin, end);
    default: TORCH_CHECK(false, "append_channels: unsupported dtype ", a.dtype);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace eexit::cpu
