// The kernels for x86-64 CPUs with AVX2, FMA and F16C; chosen at run time.
// Only this translation unit is compiled for those instructions (the pragma),
// and at::vec's CPU_CAPABILITY namespace keeps its inline code apart.
#include "cpu/kernels.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma,f16c")
// The pragma enables code generation but not the ISA macros that sleef.h and
// at::vec test; say what the pragma did.
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "cpu/append_kernel.h"
#include "cpu/conv_kernel.h"
#include "cpu/gate_kernel.h"
#include "cpu/lrn_kernel.h"
#include "cpu/pool_kernel.h"

namespace eexit::cpu {
void gate_rows_avx2(const GateArgs& args, int64_t begin, int64_t end) {
  AVX2::gate_rows_dispatch(args, begin, end);
}
void append_rows_avx2(const AppendArgs& args, int64_t begin, int64_t end) {
  AVX2::append_rows_dispatch(args, begin, end);
}
int64_t conv_lanes_avx2() { return AVX2::kConvLanes; }
void conv_rows_avx2(const ConvRowsArgs& args) { AVX2::conv_rows_dispatch(args); }
int64_t lrn_scratch_avx2(int64_t C, int64_t size) { return AVX2::lrn_scratch(C, size); }
void lrn_avx2(const LrnArgs& args, float* scratch) { AVX2::lrn_dispatch(args, scratch); }
void pool_rows_avx2(const PoolRowsArgs& args) { AVX2::pool_rows_dispatch(args); }
void pool_pixels_avx2(const PoolPixelsArgs& args) { AVX2::pool_pixels_dispatch(args); }
}  // namespace eexit::cpu
#else
namespace eexit::cpu {
void gate_rows_avx2(const GateArgs& args, int64_t begin, int64_t end) {
  gate_rows_default(args, begin, end);
}
void append_rows_avx2(const AppendArgs& args, int64_t begin, int64_t end) {
  append_rows_default(args, begin, end);
}
int64_t conv_lanes_avx2() { return conv_lanes_default(); }
void conv_rows_avx2(const ConvRowsArgs& args) { conv_rows_default(args); }
int64_t lrn_scratch_avx2(int64_t C, int64_t size) { return lrn_scratch_default(C, size); }
void lrn_avx2(const LrnArgs& args, float* scratch) { lrn_default(args, scratch); }
void pool_rows_avx2(const PoolRowsArgs& args) { pool_rows_default(args); }
void pool_pixels_avx2(const PoolPixelsArgs& args) { pool_pixels_default(args); }
}  // namespace eexit::cpu
#endif
