// Shared declarations of the eexit extension: argument checks and layout rules
// used by both the CPU and the CUDA implementations.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

namespace eexit {

enum class Criterion { Confidence, Entropy };

// "confidence" or "entropy"; anything else is a ValueError naming `criterion`.
Criterion parse_criterion(c10::string_view criterion);

// logits: rank 2 [N, C], C >= 1, float32/float16/bfloat16; threshold in [0, 1]
// for confidence, >= 0 for entropy. Errors name the argument and what was expected.
void check_gate_args(const at::Tensor& logits, double threshold, Criterion criterion);

// A row leaves when its score passes the threshold; NaN never passes.
inline bool exits(float score, float threshold, Criterion criterion) {
  return criterion == Criterion::Confidence ? score >= threshold : score < threshold;
}

// The memory format compact() gives its output for `t`: contiguous when t is
// contiguous, channels_last(_3d) when t is dense in that format, contiguous otherwise.
at::MemoryFormat row_memory_format(const at::Tensor& t);

// index: int64, rank 1, on the device of every tensor; every tensor has rank >= 1.
// Values of index are checked by the device implementations.
void check_compact_args(at::TensorList tensors, const at::Tensor& index);

// The gate's outputs, in schema order.
using GateResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

}  // namespace eexit
