// The CUDA exit gate's per-row arithmetic (exit_gate.cu), host and device: a row's running
// state, how one logit enters it, how two states merge, and the row's score and pred. The
// host build of this header is what tests/ops/test_gate_tree.py runs to check the gate's
// reduction tree against eexit.reference without a GPU; the tree itself (which lane holds
// which logits, the shuffle offsets, the block merge) is exit_gate.cu's and is mirrored there
// from the constants below.
#pragma once

#include <math.h>
#include <stdint.h>

#include "exit_rule.h"

namespace eexit {
namespace gate {

constexpr float kMinExp = -86.5f;  // as the CPU kernel: -inf terms stay tiny normal floats
constexpr int64_t kNoIndex = INT64_MAX;
constexpr int kWarp = 32;
constexpr int kLargeC = 4096;  // from here on a whole block works on a row
constexpr int kBlockRowThreads = 256;

// expf, not __expf. __expf is ex2.approx of x * log2(e) rounded to float: the rounding alone
// adds about |x| / 2 ulp, ex2.approx up to 2 ulp more. Measured on the host build (__expf
// emulated as exp2f(x * log2e), so without ex2.approx's share), 2000 random rows each, against
// float64: confidence scores 0.58 vs 0.68 ulp mean error at C = 1000, and with the threshold set
// exactly to the reference's float32 score 22% vs 40% of rows decided otherwise than the
// reference (C = 10: 22% vs 25%). No order of summation other than the reference's can decide
// such rows exactly as it does; expf keeps the gap smallest, and the gate is bound by memory,
// not by these instructions.
EEXIT_HOST_DEVICE inline float gate_exp(float x) { return expf(x); }

EEXIT_HOST_DEVICE inline bool is_nan(float v) { return v != v; }
EEXIT_HOST_DEVICE inline bool is_finite(float v) { return v - v == 0.f; }  // false for +-inf and NaN
EEXIT_HOST_DEVICE inline int64_t min_index(int64_t a, int64_t b) { return a < b ? a : b; }

// Running state of a row (or part of it). s and u are relative to m; k counts the
// entries equal to m; arg is the first of them; nan is the first NaN.
struct RowState {
  float m, s, u;
  int k;
  int64_t arg, nan;

  EEXIT_HOST_DEVICE void init() {
    m = -INFINITY;
    s = u = 0.f;
    k = 0;
    arg = nan = kNoIndex;
  }

  EEXIT_HOST_DEVICE void add(float z, int64_t c) {
    if (is_nan(z)) {
      nan = min_index(nan, c);
      return;
    }
    if (z > m) {
      if (s > 0.f) {  // m finite here
        const float a = gate_exp(m - z);
        u = a * (u + (m - z) * s);
        s *= a;
      }
      m = z;
      k = 1;
      arg = c;
    } else if (z == m) {
      ++k;
      arg = min_index(arg, c);
    }
    if (is_finite(m)) {
      const float d = fmaxf(z - m, kMinExp);
      const float e = gate_exp(d);
      s += e;
      u = fmaf(e, d, u);
    }
  }

  EEXIT_HOST_DEVICE void merge(RowState o) {
    nan = min_index(nan, o.nan);
    if (o.m > m || (o.m == m && o.arg < arg)) {  // keep the larger max in *this
      const RowState t = *this;
      m = o.m, s = o.s, u = o.u, k = o.k, arg = o.arg;
      o = t;
    }
    if (o.m == m) {
      k += o.k;
      s += o.s;
      u += o.u;
    } else if (o.s > 0.f && is_finite(m)) {
      const float a = gate_exp(o.m - m);
      s += a * o.s;
      u += a * (o.u + (o.m - m) * o.s);
    }
  }

  // The row's score (exit_rule.h) and pred, once every logit of a row of C is in.
  EEXIT_HOST_DEVICE void finish(int64_t C, bool entropy, float* score, int64_t* pred) const {
    float s_ = s, u_ = u;
    int64_t p = arg;
    if (nan != kNoIndex) {
      s_ = NAN;
      p = nan;
    } else if (!is_finite(m)) {  // uniform over the k entries equal to an infinite max: s = k, u = 0
      s_ = m > 0.f ? static_cast<float>(k) : static_cast<float>(C);
      u_ = 0.f;
      if (m < 0.f) p = 0;
    }
    *score = row_score(s_, u_, entropy);
    *pred = p;
  }
};

}  // namespace gate
}  // namespace eexit
