// Local response normalisation across channels on at::vec, included once per CPU capability
// (kernels_default.cpp, kernels_avx2.cpp). Float32 throughout:
//   y = x / (k + alpha / size * s) ^ beta,  s = sum of x^2 over the channel window
// of every element, the window of channel c being [c - size / 2, c + (size - 1) / 2] clipped
// to [0, C) (torch.nn.functional.local_response_norm's). Each window sum is formed afresh (no
// running sum), so a NaN or inf reaches exactly the outputs whose windows hold it.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>

#include "cpu/kernels.h"

namespace eexit::cpu {
namespace CPU_CAPABILITY {

using LrnVec = at::vec::Vectorized<float>;
constexpr int64_t kLrnLanes = LrnVec::size();

// base ^ -beta; beta 0.75 (AlexNet's and BranchyNet's) as 1 / (sqrt(b) * sqrt(sqrt(b))).
inline LrnVec lrn_scale(const LrnVec& base, float beta) {
  if (beta == 0.75f) {
    const LrnVec r = base.sqrt();
    return (r * r.sqrt()).reciprocal();
  }
  return base.pow(LrnVec(-beta));
}

// Planes: channel c's values at x + c * cs, contiguous, count of them (NCHW images).
inline void lrn_planes(const LrnArgs& a) {
  const int64_t lo = a.size / 2, hi = (a.size - 1) / 2;
  const LrnVec scale(a.alpha / static_cast<float>(a.size)), k(a.k);
  for (int64_t c = 0; c < a.C; ++c) {
    const int64_t c0 = std::max<int64_t>(0, c - lo), c1 = std::min<int64_t>(a.C - 1, c + hi);
    const float* xc = a.x + c * a.cs;
    float* yc = a.y + c * a.cs;
    for (int64_t i = 0; i < a.count; i += kLrnLanes) {
      const int64_t n = std::min<int64_t>(kLrnLanes, a.count - i);
      LrnVec s(0.f);
      for (int64_t j = c0; j <= c1; ++j) {
        const LrnVec v = n == kLrnLanes ? LrnVec::loadu(a.x + j * a.cs + i) : LrnVec::loadu(a.x + j * a.cs + i, n);
        s = at::vec::fmadd(v, v, s);
      }
      const LrnVec v = n == kLrnLanes ? LrnVec::loadu(xc + i) : LrnVec::loadu(xc + i, n);
      const LrnVec r = v * lrn_scale(at::vec::fmadd(s, scale, k), a.beta);
      if (n == kLrnLanes) r.store(yc + i);
      else r.store(yc + i, n);
    }
  }
}

// Pixels: pixel p's C channels at x + p * cs, contiguous (channels_last images). sq holds one
// pixel's squares between size / 2 zeros in front and enough zeros behind for whole vectors.
inline void lrn_pixels(const LrnArgs& a, float* sq) {
  const int64_t lo = a.size / 2;
  const LrnVec scale(a.alpha / static_cast<float>(a.size)), k(a.k);
  for (int64_t p = 0; p < a.count; ++p) {
    const float* x = a.x + p * a.cs;
    float* y = a.y + p * a.cs;
    for (int64_t c = 0; c < a.C; ++c) sq[lo + c] = x[c] * x[c];
    for (int64_t c = 0; c < a.C; c += kLrnLanes) {
      const int64_t n = std::min<int64_t>(kLrnLanes, a.C - c);
      LrnVec s = LrnVec::loadu(sq + c);
      for (int64_t j = 1; j < a.size; ++j) s = s + LrnVec::loadu(sq + c + j);
      const LrnVec v = n == kLrnLanes ? LrnVec::loadu(x + c) : LrnVec::loadu(x + c, n);
      const LrnVec r = v * lrn_scale(at::vec::fmadd(s, scale, k), a.beta);
      if (n == kLrnLanes) r.store(y + c);
      else r.store(y + c, n);
    }
  }
}

inline int64_t lrn_scratch(int64_t C, int64_t size) {
  return (C + kLrnLanes - 1) / kLrnLanes * kLrnLanes + size;
}

inline void lrn_dispatch(const LrnArgs& a, float* sq) {
  if (a.pixels) lrn_pixels(a, sq);
  else lrn_planes(a);
}

}  // namespace CPU_CAPABILITY
}  // namespace eexit::cpu
