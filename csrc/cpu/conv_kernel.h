// Direct stride-1 convolution rows on at::vec, included once per CPU capability
// (kernels_default.cpp, kernels_avx2.cpp) like gate_kernel.h.
//
// The caller pads (and converts to float32) the input rows a block of output rows
// reads; here each output row is cut into chunks of F lanes along the width, and a
// register tile of R chunks x OCB output channels accumulates over every
// (input channel, kernel row, kernel column) tap: one vector load per chunk and one
// weight broadcast per channel feed R x OCB fused multiply-adds. For the few
// channels of LeNet-like layers this keeps the FMA units busy where a GEMM
// formulation (oneDNN) has too little reduction depth (C_in * KH * KW) to do so.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>

#include "cpu/kernels.h"

namespace eexit::cpu {
namespace CPU_CAPABILITY {

using CVec = at::vec::Vectorized<float>;
constexpr int64_t kConvLanes = CVec::size();

// Output chunks [c0, c0 + R) of row `row` for channels [oc0, oc0 + OCB). The taps run as one
// flat loop (offsets from a.tap_offsets) so that the accumulators stay in registers.
template <int R, int OCB>
inline void conv_tile(const ConvRowsArgs& a, int64_t row, int64_t c0, int64_t oc0) {
  constexpr int64_t F = kConvLanes;
  CVec acc[OCB][R];
  for (int j = 0; j < OCB; ++j) {
    const CVec b(a.bias ? a.bias[oc0 + j] : 0.f);
    for (int r = 0; r < R; ++r) acc[j][r] = b;
  }
  const int64_t taps = a.C_in * a.KH * a.KW;
  const int64_t* offsets = a.tap_offsets;
  const float* src = a.in + row * a.in_rs + c0 * F;
  const float* w = a.weight + oc0 * taps;  // [OCB][taps] from here
  for (int64_t t = 0; t < taps; ++t) {
    const float* p = src + offsets[t];
    CVec v[R];
    for (int r = 0; r < R; ++r) v[r] = CVec::loadu(p + r * F);
    for (int j = 0; j < OCB; ++j) {
      const CVec wj(w[j * taps + t]);
      for (int r = 0; r < R; ++r) acc[j][r] = at::vec::fmadd(v[r], wj, acc[j][r]);
    }
  }
  const int64_t tail = std::min<int64_t>(F, a.W_out - (c0 + R - 1) * F);  // lanes of the last chunk
  for (int j = 0; j < OCB; ++j) {
    float* dst = a.out + (oc0 + j) * a.out_cs + row * a.out_rs + c0 * F;
    for (int r = 0; r < R - 1; ++r) acc[j][r].store(dst + r * F);
    if (tail == F) {
      acc[j][R - 1].store(dst + (R - 1) * F);
    } else {  // a short loop, not at::vec's partial store (a memcpy of a run-time size)
      alignas(64) float lanes[F];
      acc[j][R - 1].store(lanes);
      for (int64_t i = 0; i < tail; ++i) dst[(R - 1) * F + i] = lanes[i];
    }
  }
}

// The last C_out % OCB channels: one tile of K = left channels.
template <int R, int K>
inline void conv_tail(const ConvRowsArgs& a, int64_t row, int64_t c0, int64_t oc0, int64_t left) {
  if constexpr (K >= 1) {
    if (left == K) conv_tile<R, K>(a, row, c0, oc0);
    else conv_tail<R, K - 1>(a, row, c0, oc0, left);
  }
}

// Every output channel of chunks [c0, c0 + R): blocks of OCB, then the rest in one tile.
template <int R, int OCB>
inline void conv_chunks(const ConvRowsArgs& a, int64_t row, int64_t c0) {
  int64_t oc = 0;
  for (; oc + OCB <= a.C_out; oc += OCB) conv_tile<R, OCB>(a, row, c0, oc);
  conv_tail<R, OCB - 1>(a, row, c0, oc, a.C_out - oc);
}

// About 12 accumulators: R chunks x OCB channels.
inline void conv_rows_dispatch(const ConvRowsArgs& a) {
  const int64_t chunks = (a.W_out + kConvLanes - 1) / kConvLanes;
  for (int64_t row = 0; row < a.rows; ++row) {
    int64_t c = 0;
    for (; c + 4 <= chunks; c += 4) conv_chunks<4, 3>(a, row, c);
    switch (chunks - c) {
      case 3: conv_chunks<3, 4>(a, row, c); break;
      case 2: conv_chunks<2, 6>(a, row, c); break;
      case 1: conv_chunks<1, 8>(a, row, c); break;
      default: break;
    }
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace eexit::cpu
