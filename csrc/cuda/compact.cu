// CUDA compaction: the same rows of up to kMaxTensors dense tensors gathered in
// one launch; each row of each tensor is a contiguous run of bytes.
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/stack.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>

#include "eexit.h"

namespace eexit {
namespace {

constexpr int kMaxTensors = 64;  // 64 * 24 bytes of kernel parameters, well under the 4 KiB limit
constexpr int kThreads = 256;

struct RowCopies {
  const char* src[kMaxTensors];
  char* dst[kMaxTensors];
  int64_t row_bytes[kMaxTensors];
  int n;
};

template <typename V>
__device__ __forceinline__ void copy_run(char* dst, const char* src, int64_t bytes) {
  const V* s = reinterpret_cast<const V*>(src);
  V* d = reinterpret_cast<V*>(dst);
  for (int64_t i = threadIdx.x; i < bytes / static_cast<int64_t>(sizeof(V)); i += blockDim.x) d[i] = s[i];
}

__global__ void gather_rows_kernel(RowCopies job, const int64_t* __restrict__ index, int64_t K) {
  for (int64_t r = blockIdx.x; r < K; r += gridDim.x) {
    const int64_t from = index[r];
    for (int t = 0; t < job.n; ++t) {  // from is in range: compact_cuda checked it
      const int64_t b = job.row_bytes[t];
      const char* src = job.src[t] + from * b;
      char* dst = job.dst[t] + r * b;
      const auto align = reinterpret_cast<uintptr_t>(src) | reinterpret_cast<uintptr_t>(dst) | b;
      if (align % 16 == 0) copy_run<int4>(dst, src, b);
      else if (align % 4 == 0) copy_run<int>(dst, src, b);
      else copy_run<char>(dst, src, b);
    }
  }
}

void launch(RowCopies& job, const at::Tensor& idx, int64_t K) {
  if (job.n == 0 || K == 0) return;
  const int64_t blocks = std::min<int64_t>(K, 65535);
  gather_rows_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      job, idx.const_data_ptr<int64_t>(), K);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  job.n = 0;
}

std::vector<at::Tensor> compact_cuda(at::TensorList tensors, const at::Tensor& index) {
  check_compact_args(tensors, index);
  TORCH_CHECK_VALUE(index.is_cuda(), "compact: index must be a CUDA tensor here, got ", index.device());
  const c10::cuda::CUDAGuard guard(index.device());
  const at::Tensor idx = index.contiguous();
  const int64_t K = idx.numel();
  if (K > 0 && !tensors.empty()) {
    // An out-of-range index raises IndexError, as on the CPU, instead of a device-side assert
    // (which loses the CUDA context). The price: a min/max reduction and one 16-byte copy to
    // the host, i.e. a sync, per call (the gate's own count copy is one too).
    const auto [mn, mx] = at::aminmax(idx);
    const at::Tensor range = at::stack({mn, mx}).cpu();
    const int64_t lo = range[0].item<int64_t>(), hi = range[1].item<int64_t>();
    for (size_t i = 0; i < tensors.size(); ++i) {
      const int64_t N = tensors[i].size(0);
      TORCH_CHECK_INDEX(lo >= 0 && hi < N, "compact: index values must be in [0, ", N, ") for tensors[", i,
                        "], got range [", lo, ", ", hi, "]");
    }
  }
  std::vector<at::Tensor> out;
  out.reserve(tensors.size());
  RowCopies job{};
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    const at::MemoryFormat fmt = row_memory_format(t);
    std::vector<int64_t> sizes(t.sizes().begin(), t.sizes().end());
    sizes[0] = K;
    at::Tensor o = at::empty(sizes, t.options().memory_format(fmt));
    const int64_t N = t.size(0);
    if (t.is_contiguous(fmt) && N > 0 && t.numel() > 0) {
      job.src[job.n] = static_cast<const char*>(t.const_data_ptr());
      job.dst[job.n] = static_cast<char*>(o.mutable_data_ptr());
      job.row_bytes[job.n] = t.numel() / N * t.element_size();
      if (++job.n == kMaxTensors) launch(job, idx, K);
    } else if (K > 0) {
      o.copy_(at::index_select(t, 0, idx));
    }
    out.push_back(std::move(o));
  }
  launch(job, idx, K);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(eexit, CUDA, m) {
  m.impl("compact", &compact_cuda);
}

}  // namespace eexit
