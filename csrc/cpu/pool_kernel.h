// Max pooling of float32 images on at::vec, included once per CPU capability
// (kernels_default.cpp, kernels_avx2.cpp). NCHW planes with windows 2 or 3 columns wide at column
// stride 2 (B-LeNet's 2x2/2, B-AlexNet's, MSDNet's and ResNet stems' 3x3/2): the interior
// outputs of a row (windows inside the input row) go by vectors, each reading 2 x lanes input
// columns split into even and odd columns, so a vector of outputs costs a few loads and maxima;
// the (at most two) edge outputs one by one. Channels-innermost images, any window: vectors
// along the channels.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "cpu/kernels.h"

namespace eexit::cpu {
namespace CPU_CAPABILITY {

using PoolVec = at::vec::Vectorized<float>;
constexpr int64_t kPoolLanes = PoolVec::size();

// The running maximum m meeting v, the next value in window order: v when larger or NaN, m
// otherwise (equal values such as +0 and -0 keep the first): torch's rule, as in max_pool.cpp.
// at::vec::maximum(v, m) returns m on ties and a NaN when either is NaN.
inline PoolVec pool_take(const PoolVec& m, const PoolVec& v) { return at::vec::maximum(v, m); }

// count (<= lanes) floats from p, the rest of the vector zero.
inline PoolVec pool_load(const float* p, int64_t count) {
  return count >= kPoolLanes ? PoolVec::loadu(p) : PoolVec::loadu(p, std::max<int64_t>(count, 0));
}

// The maxima of `count` windows KW wide at stride 2 along one input row, window j starting at
// r[2 j]: reads r[0, 2 count + KW - 2), or whole vectors r[0, 2 lanes + 1) when `whole` (the
// caller knows they lie inside the input; the lanes past count then hold values to discard).
template <int KW>
inline PoolVec window_max(const float* r, int64_t count, bool whole) {
  const int64_t need = whole ? 2 * kPoolLanes + 1 : 2 * count + KW - 2;
  const auto [even, odd] = at::vec::deinterleave2<float>(pool_load(r, need), pool_load(r + kPoolLanes, need - kPoolLanes));
  PoolVec m = pool_take(even, odd);  // columns 2j, 2j + 1
  if constexpr (KW == 3) {  // column 2j + 2: the odd columns counted from r + 1
    const auto [skip, third] =
        at::vec::deinterleave2<float>(pool_load(r + 1, need - 1), pool_load(r + 1 + kPoolLanes, need - 1 - kPoolLanes));
    m = pool_take(m, third);
  }
  return m;
}

// count (<= lanes) outputs from input column c of the kh rows in taps (row indices).
template <int KW>
inline PoolVec outputs(const PoolRowsArgs& a, const float* plane, const int64_t* taps, int64_t c, int64_t count) {
  PoolVec m(-std::numeric_limits<float>::infinity());
  for (int64_t i = 0; i < a.kh; ++i) {
    const float* r = plane + taps[i] * a.sh + c;
    m = pool_take(m, window_max<KW>(r, count, count == kPoolLanes || r + 2 * kPoolLanes + 1 <= a.x_end));
  }
  return m;
}

// Output o of one row whose window reaches into the padding or past the ceil-mode border: its
// columns clamped into the row (a clamped tap repeats its neighbour, which changes nothing).
template <int KW>
inline float edge_output(const PoolRowsArgs& a, const float* plane, const int64_t* taps, int64_t o) {
  PoolVec m(-std::numeric_limits<float>::infinity());
  for (int64_t i = 0; i < a.kh; ++i)
    for (int64_t j = 0; j < KW; ++j)
      m = pool_take(m, PoolVec(plane[taps[i] * a.sh + std::clamp<int64_t>(2 * o - a.pad + j, 0, a.W - 1)]));
  float first[kPoolLanes];
  m.store(first);
  return first[0];
}

template <int KW>
void pool_rows(const PoolRowsArgs& a) {
  const int64_t n = a.hi - a.lo;
  float* const y_end = a.y + a.q1 * a.H_out * a.W_out;  // this call's last output, exclusive
  for (int64_t q = a.q0; q < a.q1; ++q) {
    const float* plane = a.x + (q / a.C) * a.sn + (q % a.C) * a.sc;
    for (int64_t oh = 0; oh < a.H_out; ++oh) {
      const int64_t* taps = a.rows + oh * a.kh;
      float* y = a.y + (q * a.H_out + oh) * a.W_out;
      const auto at = [&](int64_t o) { return 2 * o - a.pad; };  // first input column of output o
      int64_t o = a.lo;
      for (; o + kPoolLanes <= a.hi; o += kPoolLanes) outputs<KW>(a, plane, taps, at(o), kPoolLanes).store(y + o);
      if (o < a.hi && n >= kPoolLanes) {  // the last whole vector, overlapping outputs already stored
        o = a.hi - kPoolLanes;
        outputs<KW>(a, plane, taps, at(o), kPoolLanes).store(y + o);
      } else if (o < a.hi) {
        // A whole vector's store may run into this row's edges and the next rows, all written
        // after it, but not past this call's planes.
        const PoolVec m = outputs<KW>(a, plane, taps, at(o), a.hi - o);
        if (y + o + kPoolLanes <= y_end) m.store(y + o);
        else m.store(y + o, a.hi - o);
      }
      for (o = 0; o < a.lo; ++o) y[o] = edge_output<KW>(a, plane, taps, o);
      for (o = a.hi; o < a.W_out; ++o) y[o] = edge_output<KW>(a, plane, taps, o);
    }
  }
}

// Channels-innermost images: each output pixel folds its window's taps (row-major order) one
// vector of channels at a time; the last vector overlaps the one before it when C >= lanes. With
// fewer channels than lanes a whole vector is loaded or stored where it stays inside x, or inside
// this call's output rows (the next pixels' channels, written after it), and a partial one where not.
template <int KH, int KW>
void pool_pixels(const PoolPixelsArgs& a) {
  const int64_t C = a.C, kh = KH > 0 ? KH : a.kh, kw = KW > 0 ? KW : a.kw;
  float* const y_end = a.y + a.r1 * a.W_out * C;
  const auto load = [&](const float* p) { return p + kPoolLanes <= a.x_end ? PoolVec::loadu(p) : pool_load(p, C); };
  for (int64_t r = a.r0; r < a.r1; ++r) {
    const float* image = a.x + (r / a.H_out) * a.sn;
    const int64_t* rows = a.row_taps + (r % a.H_out) * kh;
    for (int64_t ow = 0; ow < a.W_out; ++ow) {
      const int64_t* cols = a.col_taps + ow * kw;
      float* dst = a.y + (r * a.W_out + ow) * C;
      const auto fold = [&](int64_t c, bool whole) {
        PoolVec m(-std::numeric_limits<float>::infinity());
        for (int64_t i = 0; i < kh; ++i) {
          const float* row = image + rows[i] * a.sh + c;
          for (int64_t j = 0; j < kw; ++j) m = pool_take(m, whole ? PoolVec::loadu(row + cols[j] * a.sw) : load(row + cols[j] * a.sw));
        }
        return m;
      };
      if (C < kPoolLanes) {
        const PoolVec m = fold(0, false);
        if (dst + kPoolLanes <= y_end) m.store(dst);
        else m.store(dst, C);
        continue;
      }
      int64_t c = 0;
      for (; c + kPoolLanes <= C; c += kPoolLanes) fold(c, true).store(dst + c);
      if (c < C) fold(C - kPoolLanes, true).store(dst + C - kPoolLanes);
    }
  }
}

// 2x2 and 3x3 windows get compile-time sizes.
inline void pool_pixels_dispatch(const PoolPixelsArgs& a) {
  if (a.kh == 2 && a.kw == 2) pool_pixels<2, 2>(a);
  else if (a.kh == 3 && a.kw == 3) pool_pixels<3, 3>(a);
  else pool_pixels<0, 0>(a);
}

inline void pool_rows_dispatch(const PoolRowsArgs& a) {
  if (a.kw == 2) pool_rows<2>(a);
  else pool_rows<3>(a);
}

}  // namespace CPU_CAPABILITY
}  // namespace eexit::cpu
