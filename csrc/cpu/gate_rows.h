// Entry points of the CPU row kernel, one per CPU capability.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace eexit::cpu {

struct GateArgs {
  const void* data;    // logits, element (r, c) at data[r * row_stride + c]
  int64_t row_stride;  // in elements
  int64_t C;
  at::ScalarType dtype;  // float, half or bfloat16
  bool entropy;          // score is entropy (nats) instead of max probability
  float* score;          // [N] out
  int64_t* pred;         // [N] out
};

// Scores rows [begin, end). Portable build and AVX2+FMA+F16C build.
void gate_rows_default(const GateArgs& args, int64_t begin, int64_t end);
void gate_rows_avx2(const GateArgs& args, int64_t begin, int64_t end);

}  // namespace eexit::cpu
