#include "eexit.h"

#include <c10/util/Exception.h>

#include <cmath>

namespace eexit {

Criterion parse_criterion(c10::string_view criterion) {
  if (criterion == "confidence") return Criterion::Confidence;
  if (criterion == "entropy") return Criterion::Entropy;
  TORCH_CHECK_VALUE(false, "exit_gate: criterion must be 'confidence' or 'entropy', got '",
                    std::string(criterion), "'");
}

void check_gate_args(const at::Tensor& logits, double threshold, Criterion criterion) {
  TORCH_CHECK_VALUE(logits.dim() == 2, "exit_gate: logits must have shape [N, C] (rank 2), got rank ",
                    logits.dim(), " with shape ", logits.sizes());
  const auto dt = logits.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16,
                   "exit_gate: logits must be float32, float16 or bfloat16, got ", dt);
  TORCH_CHECK_VALUE(logits.size(1) >= 1, "exit_gate: logits must have at least one class (C >= 1), got shape ",
                    logits.sizes());
  if (criterion == Criterion::Confidence) {
    TORCH_CHECK_VALUE(threshold >= 0.0 && threshold <= 1.0,
                      "exit_gate: threshold for criterion 'confidence' must be in [0, 1], got ", threshold);
  } else {
    TORCH_CHECK_VALUE(threshold >= 0.0, "exit_gate: threshold for criterion 'entropy' must be >= 0 (nats), got ",
                      threshold);
  }
}

at::MemoryFormat row_memory_format(const at::Tensor& t) {
  if (t.is_contiguous()) return at::MemoryFormat::Contiguous;
  if (t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast)) return at::MemoryFormat::ChannelsLast;
  if (t.dim() == 5 && t.is_contiguous(at::MemoryFormat::ChannelsLast3d)) return at::MemoryFormat::ChannelsLast3d;
  return at::MemoryFormat::Contiguous;
}

void check_compact_args(at::TensorList tensors, const at::Tensor& index) {
  TORCH_CHECK_TYPE(index.scalar_type() == at::kLong, "compact: index must be int64, got ", index.scalar_type());
  TORCH_CHECK_VALUE(index.dim() == 1, "compact: index must have rank 1, got shape ", index.sizes());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    TORCH_CHECK_VALUE(t.dim() >= 1, "compact: tensors[", i, "] must have rank >= 1 (rows on dim 0), got a scalar");
    TORCH_CHECK_VALUE(t.device() == index.device(), "compact: tensors[", i, "] is on ", t.device(),
                      " but index is on ", index.device());
  }
}

}  // namespace eexit
