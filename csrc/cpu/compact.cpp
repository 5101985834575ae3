// CPU compaction: rows of dense tensors move as whole byte runs, in parallel.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/index_select.h>
#include <torch/library.h>

#include <cstring>

#include "eexit.h"

namespace eexit {
namespace {

std::vector<at::Tensor> compact_cpu(at::TensorList tensors, const at::Tensor& index) {
  check_compact_args(tensors, index);
  TORCH_CHECK_VALUE(index.device().is_cpu(), "compact: index must be on CPU here, got ", index.device());
  const at::Tensor idx = index.contiguous();
  const int64_t K = idx.numel();
  const int64_t* ip = idx.const_data_ptr<int64_t>();
  int64_t lo = 0, hi = -1;
  if (K > 0) {
    const auto [mn, mx] = std::minmax_element(ip, ip + K);
    lo = *mn;
    hi = *mx;
  }
  std::vector<at::Tensor> out;
  out.reserve(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    const int64_t N = t.size(0);
    TORCH_CHECK_INDEX(K == 0 || (lo >= 0 && hi < N), "compact: index values must be in [0, ", N,
                      ") for tensors[", i, "], got range [", lo, ", ", hi, "]");
    const at::MemoryFormat fmt = row_memory_format(t);
    std::vector<int64_t> sizes(t.sizes().begin(), t.sizes().end());
    sizes[0] = K;
    at::Tensor o = at::empty(sizes, t.options().memory_format(fmt));
    if (t.is_contiguous(fmt) && N > 0) {
      const int64_t row_bytes = t.numel() / N * t.element_size();
      const auto* src = static_cast<const char*>(t.const_data_ptr());
      auto* dst = static_cast<char*>(o.mutable_data_ptr());
      const int64_t grain = std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(row_bytes, 1));
      at::parallel_for(0, K, grain, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) std::memcpy(dst + r * row_bytes, src + ip[r] * row_bytes, row_bytes);
      });
    } else if (K > 0) {
      o.copy_(at::index_select(t, 0, idx));
    }
    out.push_back(std::move(o));
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(eexit, CPU, m) {
  m.impl("compact", &compact_cpu);
}

}  // namespace eexit
