// CUDA exit gate: a group of threads per row (one warp, or a whole block when
// C is large) computes the row's online max / sum-exp / entropy, pred and exit
// flag; CUB's single-pass partition (block scan with decoupled look-back) then
// splits the rows into exits and keeps. All on the current stream, with one
// device-to-host copy of the count.
// Semantics match csrc/cpu/gate_kernel.h (see there for the inf and NaN rules);
// the scores and the pass rule are csrc/exit_rule.h's, shared with it; the per-row
// arithmetic is gate_row.h's, which the tests also build for the host.
// CUB lives in eexit's own namespace, apart from torch's copy (as ATen wraps
// its own); Thrust stays global, as torch's headers name it.
#define CUB_WRAPPED_NAMESPACE eexit_cub
#include <cub/device/device_partition.cuh>
#include <thrust/iterator/counting_iterator.h>

#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/gate_row.h"
#include "eexit.h"

namespace eexit {
namespace {

using gate::kBlockRowThreads;
using gate::kLargeC;
using gate::kWarp;
using gate::RowState;

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

__device__ __forceinline__ RowState shfl_down(const RowState& st, int delta) {
  RowState o;
  o.m = __shfl_down_sync(0xffffffffu, st.m, delta);
  o.s = __shfl_down_sync(0xffffffffu, st.s, delta);
  o.u = __shfl_down_sync(0xffffffffu, st.u, delta);
  o.k = __shfl_down_sync(0xffffffffu, st.k, delta);
  o.arg = __shfl_down_sync(0xffffffffu, st.arg, delta);
  o.nan = __shfl_down_sync(0xffffffffu, st.nan, delta);
  return o;
}

// The reduction tree (mirrored by tests/ops/test_gate_tree.py: keep the two in step): lane l
// adds logits l, l + lanes, l + 2 lanes, ... in that order; a warp merges lane l + d into lane
// l for d = kWarp / 2, ..., 1 (a lane past the warp's end reads its own state); a block's
// warp 0 then merges the same way with lane w holding warp w's result (empty states after).
__device__ __forceinline__ RowState warp_merge(RowState st) {
  for (int d = kWarp / 2; d > 0; d >>= 1) st.merge(shfl_down(st, d));
  return st;  // complete in lane 0
}

template <typename T>
__device__ __forceinline__ void scan_row(const T* row, int64_t C, int lane, int lanes, RowState& st) {
  constexpr int U = 4;  // loads in flight per thread
  int64_t c = lane;
  for (; c + (U - 1) * lanes < C; c += U * lanes) {
    float z[U];
#pragma unroll
    for (int j = 0; j < U; ++j) z[j] = to_f(row[c + j * lanes]);
#pragma unroll
    for (int j = 0; j < U; ++j) st.add(z[j], c + j * lanes);
  }
  for (; c < C; c += lanes) st.add(to_f(row[c]), c);
}

__device__ __forceinline__ void finish_row(const RowState& st, int64_t C, int64_t r, bool entropy, float thr,
                                           float* score, int64_t* pred, uint8_t* flag) {
  float sc;
  st.finish(C, entropy, &sc, pred + r);
  score[r] = sc;
  flag[r] = exits(sc, thr, entropy);
}

// One warp per row.
template <typename T>
__global__ void gate_warp_kernel(const T* __restrict__ x, int64_t N, int64_t C, int64_t row_stride, bool entropy,
                                 float thr, float* __restrict__ score, int64_t* __restrict__ pred,
                                 uint8_t* __restrict__ flag) {
  const int lane = threadIdx.x % kWarp;
  const int64_t r = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  if (r >= N) return;  // whole warps leave together
  RowState st;
  st.init();
  scan_row(x + r * row_stride, C, lane, kWarp, st);
  st = warp_merge(st);
  if (lane == 0) finish_row(st, C, r, entropy, thr, score, pred, flag);
}

// One block per row, for large C.
template <typename T>
__global__ void gate_block_kernel(const T* __restrict__ x, int64_t N, int64_t C, int64_t row_stride, bool entropy,
                                  float thr, float* __restrict__ score, int64_t* __restrict__ pred,
                                  uint8_t* __restrict__ flag) {
  __shared__ RowState part[kBlockRowThreads / kWarp];
  const int64_t r = blockIdx.x;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  RowState st;
  st.init();
  scan_row(x + r * row_stride, C, threadIdx.x, blockDim.x, st);
  st = warp_merge(st);
  if (lane == 0) part[warp] = st;
  __syncthreads();
  if (warp == 0) {
    if (lane < kBlockRowThreads / kWarp) st = part[lane];
    else st.init();
    st = warp_merge(st);
    if (lane == 0) finish_row(st, C, r, entropy, thr, score, pred, flag);
  }
}

template <typename T>
void launch_gate(const at::Tensor& x, bool entropy, float thr, at::Tensor& score, at::Tensor& pred,
                 at::Tensor& flag, cudaStream_t stream) {
  const int64_t N = x.size(0), C = x.size(1);
  const T* data = reinterpret_cast<const T*>(x.const_data_ptr());
  if (C >= kLargeC) {
    TORCH_CHECK(N <= INT32_MAX, "exit_gate: too many rows for one launch: ", N);
    gate_block_kernel<T><<<static_cast<unsigned>(N), kBlockRowThreads, 0, stream>>>(
        data, N, C, x.stride(0), entropy, thr, score.mutable_data_ptr<float>(), pred.mutable_data_ptr<int64_t>(),
        flag.mutable_data_ptr<uint8_t>());
  } else {
    constexpr int threads = 256;  // 8 rows a block
    const int64_t blocks = (N * kWarp + threads - 1) / threads;
    TORCH_CHECK(blocks <= INT32_MAX, "exit_gate: too many rows for one launch: ", N);
    gate_warp_kernel<T><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
        data, N, C, x.stride(0), entropy, thr, score.mutable_data_ptr<float>(), pred.mutable_data_ptr<int64_t>(),
        flag.mutable_data_ptr<uint8_t>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

GateResult exit_gate_cuda(const at::Tensor& logits, double threshold, c10::string_view criterion) {
  const Criterion crit = parse_criterion(criterion);
  check_gate_args(logits, threshold, crit);
  TORCH_CHECK_VALUE(logits.is_cuda(), "exit_gate: logits must be a CUDA tensor here, got ", logits.device());
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor x = (logits.stride(1) == 1 || logits.size(1) == 1) ? logits : logits.contiguous();
  const int64_t N = x.size(0);
  const auto opts = x.options();
  at::Tensor score = at::empty({N}, opts.dtype(at::kFloat));
  at::Tensor pred = at::empty({N}, opts.dtype(at::kLong));
  if (N == 0) return {at::empty({0}, pred.options()), at::empty({0}, pred.options()), pred, score};
  at::Tensor flag = at::empty({N}, opts.dtype(at::kByte));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool entropy = crit == Criterion::Entropy;
  const float thr = static_cast<float>(threshold);
  switch (x.scalar_type()) {
    case at::kFloat: launch_gate<float>(x, entropy, thr, score, pred, flag, stream); break;
    case at::kHalf: launch_gate<__half>(x, entropy, thr, score, pred, flag, stream); break;
    default: launch_gate<__nv_bfloat16>(x, entropy, thr, score, pred, flag, stream); break;
  }
  // Partition row numbers by flag: exits in order at the front, keeps in reverse
  // order behind them; the count goes in the last slot.
  at::Tensor rows = at::empty({N + 1}, pred.options());
  int64_t* rp = rows.mutable_data_ptr<int64_t>();
  const thrust::counting_iterator<int64_t> iota(0);
  const uint8_t* fp = flag.const_data_ptr<uint8_t>();
  size_t temp_bytes = 0;
  C10_CUDA_CHECK(CUB_NS_QUALIFIER::DevicePartition::Flagged(nullptr, temp_bytes, iota, fp, rp, rp + N, N, stream));
  at::Tensor temp = at::empty({static_cast<int64_t>(temp_bytes)}, opts.dtype(at::kByte));
  C10_CUDA_CHECK(CUB_NS_QUALIFIER::DevicePartition::Flagged(temp.mutable_data_ptr(), temp_bytes, iota, fp, rp,
                                                            rp + N, N, stream));
  const int64_t n_exit = rows[N].item<int64_t>();  // the one device-to-host copy
  return {rows.narrow(0, 0, n_exit).clone(), rows.narrow(0, n_exit, N - n_exit).flip(0), pred, score};
}

}  // namespace

TORCH_LIBRARY_IMPL(eexit, CUDA, m) {
  m.impl("exit_gate", &exit_gate_cuda);
}

}  // namespace eexit
