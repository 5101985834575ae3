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

}  // namespace eexit::cpu
