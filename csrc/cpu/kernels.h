// Entry points of the CPU kernels that are built once per CPU capability
// (kernels_default.cpp: any CPU; kernels_avx2.cpp: AVX2 + FMA + F16C).
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace eexit::cpu {

// Whether this CPU runs the AVX2 builds (and ATen's ATEN_CPU_CAPABILITY allows it).
bool use_avx2();

// Exit gate rows (gate_kernel.h).
struct GateArgs {
  const void* data;    // logits, element (r, c) at data[r * row_stride + c]
  int64_t row_stride;  // in elements
  int64_t C;
  at::ScalarType dtype;  // float, half or bfloat16
  bool entropy;          // score is entropy (nats) instead of max probability
  float* score;          // [N] out
  int64_t* pred;         // [N] out
};

// Scores rows [begin, end).
void gate_rows_default(const GateArgs& args, int64_t begin, int64_t end);
void gate_rows_avx2(const GateArgs& args, int64_t begin, int64_t end);

// A 4-D tensor whose channels are contiguous: element (n, c, h, w) at
// data[n * sn + h * sh + w * sw + c].
struct PixelView {
  void* data;
  int64_t sn, sh, sw;  // in elements
};

// append_channels on channels-innermost tensors (append_kernel.h).
struct AppendArgs {
  at::ScalarType dtype;  // of buf, src and pre: float, half or bfloat16
  int64_t H, W;
  PixelView buf, src, pre;  // pre.data is null when there is no pre-activation
  int64_t c0, c_src;        // src goes to buf channels [c0, c0 + c_src)
  const float* scale;       // [c0 + c_src], with shift: pre = relu(buf * scale + shift)
  const float* shift;
};

// Image rows [begin, end) of the N * H rows (row r is image r / H, row r % H).
void append_rows_default(const AppendArgs& args, int64_t begin, int64_t end);
void append_rows_avx2(const AppendArgs& args, int64_t begin, int64_t end);

// Direct stride-1 convolution rows (conv_kernel.h), float32. Output (oc, row, w) for
// rows [0, rows), w in [0, W_out), all C_out channels:
//   out[oc * out_cs + row * out_rs + w] = bias[oc] + sum over taps t = (ic * KH + kh) * KW + kw of
//       weight[oc * C_in * KH * KW + t] * in[row * in_rs + w + tap_offsets[t]]
// with tap_offsets[t] = ic * in_cs + kh * in_rs + kw.
// `in` is the padded input; every row may be read up to ceil(W_out / lanes) * lanes + KW - 1
// elements from its start (in_rs >= that), so the caller sizes its rows for it.
struct ConvRowsArgs {
  const float* in;
  int64_t in_cs, in_rs;
  const int64_t* tap_offsets;  // [C_in * KH * KW]
  const float* weight;  // [C_out, C_in, KH, KW] contiguous
  const float* bias;    // [C_out] or null
  float* out;
  int64_t out_cs, out_rs;
  int64_t C_in, C_out, KH, KW, W_out, rows;
};

// The lanes of a vector of the build (rows are read in chunks of this many).
int64_t conv_lanes_default();
int64_t conv_lanes_avx2();
void conv_rows_default(const ConvRowsArgs& args);
void conv_rows_avx2(const ConvRowsArgs& args);

// Local response normalisation across channels (lrn_kernel.h), float32, of one block of an
// image: C channels x count positions. Planes (pixels false): channel c's count values at
// x + c * cs, contiguous. Pixels (pixels true): position p's C channel values at x + p * cs,
// contiguous. y has x's layout.
struct LrnArgs {
  const float* x;
  float* y;
  int64_t C, count, cs;
  bool pixels;
  int64_t size;
  float alpha, beta, k;
};

// The zeroed float scratch lrn needs per thread: C rounded up to whole vectors, plus size.
int64_t lrn_scratch_default(int64_t C, int64_t size);
int64_t lrn_scratch_avx2(int64_t C, int64_t size);
void lrn_default(const LrnArgs& args, float* scratch);
void lrn_avx2(const LrnArgs& args, float* scratch);

// Max pooling of NCHW float32 planes (pool_kernel.h), windows kh rows x kw (2 or 3) columns at
// column stride 2, output o's window starting at input column 2 o - pad:
//   y[(q * H_out + oh) * W_out + o] = max over taps i < kh, j < kw of
//       plane_q[rows[oh * kh + i] * sh + clamp(2 o - pad + j, 0, W - 1)]
// for planes q in [q0, q1), plane q = (q / C, q % C) at x + (q / C) * sn + (q % C) * sc with
// contiguous columns; torch's order: NaN wins, equal values keep the first in row-major order.
// Outputs [lo, hi) of a row have their windows inside it. The kernel may read anywhere in
// [x, x_end) (x_end: one past x's last element).
struct PoolRowsArgs {
  const float* x;
  const float* x_end;
  float* y;
  int64_t C, sn, sc, sh;
  int64_t q0, q1;
  const int64_t* rows;  // [H_out * kh], clamped into the input
  int64_t kh, kw;
  int64_t H_out, W, W_out, pad, lo, hi;
};

void pool_rows_default(const PoolRowsArgs& args);
void pool_rows_avx2(const PoolRowsArgs& args);

// Max pooling of channels-innermost float32 images (pool_kernel.h), any window: output pixel
// rows r in [r0, r1) of the N * H_out (image r / H_out, row oh = r % H_out), every pixel ow:
//   y[(r * W_out + ow) * C + c] = max over taps i < kh, j < kw of
//       x[(r / H_out) * sn + row_taps[oh * kh + i] * sh + col_taps[ow * kw + j] * sw + c]
// (taps clamped into the input); torch's order as above. The kernel may read anywhere in
// [x, x_end) and write anywhere in y's rows [r0, r1).
struct PoolPixelsArgs {
  const float* x;
  const float* x_end;
  float* y;
  int64_t C, sn, sh, sw;
  int64_t r0, r1, H_out, W_out;
  const int64_t* row_taps;  // [H_out * kh]
  const int64_t* col_taps;  // [W_out * kw]
  int64_t kh, kw;
};

void pool_pixels_default(const PoolPixelsArgs& args);
void pool_pixels_avx2(const PoolPixelsArgs& args);

}  // namespace eexit::cpu
