// The kernels for any CPU (at::vec's portable implementation), and the choice
// between them and the AVX2 build.
#include <ATen/Version.h>

#define CPU_CAPABILITY DEFAULT
#include "cpu/append_kernel.h"
#include "cpu/conv_kernel.h"
#include "cpu/gate_kernel.h"
#include "cpu/lrn_kernel.h"
#include "cpu/pool_kernel.h"

namespace eexit::cpu {

bool use_avx2() {
  static const bool ok = [] {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") || !__builtin_cpu_supports("f16c"))
      return false;
    const std::string cap = at::get_cpu_capability();
    return cap == "AVX2" || cap == "AVX512";
#else
    return false;
#endif
  }();
  return ok;
}

void gate_rows_default(const GateArgs& args, int64_t begin, int64_t end) {
  DEFAULT::gate_rows_dispatch(args, begin, end);
}

void append_rows_default(const AppendArgs& args, int64_t begin, int64_t end) {
  DEFAULT::append_rows_dispatch(args, begin, end);
}

int64_t conv_lanes_default() { return DEFAULT::kConvLanes; }

void conv_rows_default(const ConvRowsArgs& args) { DEFAULT::conv_rows_dispatch(args); }

int64_t lrn_scratch_default(int64_t C, int64_t size) { return DEFAULT::lrn_scratch(C, size); }

void lrn_default(const LrnArgs& args, float* scratch) { DEFAULT::lrn_dispatch(args, scratch); }

void pool_rows_default(const PoolRowsArgs& args) { DEFAULT::pool_rows_dispatch(args); }

void pool_pixels_default(const PoolPixelsArgs& args) { DEFAULT::pool_pixels_dispatch(args); }

}  // namespace eexit::cpu
