// CPU exit gate: parallel, vectorised row scores, then a stable compaction.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "cpu/kernels.h"
#include "eexit.h"
#include "exit_rule.h"

namespace eexit {
namespace {

GateResult exit_gate_cpu(const at::Tensor& logits, double threshold, c10::string_view criterion) {
  const Criterion crit = parse_criterion(criterion);
  check_gate_args(logits, threshold, crit);
  TORCH_CHECK_VALUE(logits.device().is_cpu(), "exit_gate: logits must be on CPU here, got ", logits.device());
  const at::Tensor x = (logits.stride(1) == 1 || logits.size(1) == 1) ? logits : logits.contiguous();
  const int64_t N = x.size(0), C = x.size(1);
  at::Tensor score = at::empty({N}, x.options().dtype(at::kFloat));
  at::Tensor pred = at::empty({N}, x.options().dtype(at::kLong));
  const bool entropy = crit == Criterion::Entropy;
  const cpu::GateArgs args{x.const_data_ptr(), x.stride(0), C, x.scalar_type(), entropy,
                           score.mutable_data_ptr<float>(), pred.mutable_data_ptr<int64_t>()};
  const auto kernel = cpu::use_avx2() ? cpu::gate_rows_avx2 : cpu::gate_rows_default;
  // ~16K logits a task: smaller gates run on the calling thread, as handing
  // work to the pool costs about as much as they take.
  const int64_t grain = std::max<int64_t>(16, ((1 << 14) / C + 15) / 16 * 16);
  at::parallel_for(0, N, grain, [&](int64_t b, int64_t e) { kernel(args, b, e); });

  const float thr = static_cast<float>(threshold);
  const float* sp = score.const_data_ptr<float>();
  int64_t n_exit = 0;
  for (int64_t r = 0; r < N; ++r) n_exit += exits(sp[r], thr, entropy);
  at::Tensor exit_idx = at::empty({n_exit}, pred.options());
  at::Tensor keep_idx = at::empty({N - n_exit}, pred.options());
  int64_t* ep = exit_idx.mutable_data_ptr<int64_t>();
  int64_t* kp = keep_idx.mutable_data_ptr<int64_t>();
  for (int64_t r = 0, e = 0; r < N; ++r) {  // branch-free: exits are unpredictable
    const bool f = exits(sp[r], thr, entropy);
    *(f ? ep + e : kp + (r - e)) = r;
    e += f;
  }
  return {exit_idx, keep_idx, pred, score};
}

}  // namespace

TORCH_LIBRARY_IMPL(eexit, CPU, m) {
  m.impl("exit_gate", &exit_gate_cpu);
}

}  // namespace eexit
