// Row kernel of the exit gate on at::vec, included once per CPU capability
// (kernels_default.cpp, kernels_avx2.cpp). CPU_CAPABILITY names the
// namespace so the two instantiations never collide.
//
// Per row, in float32, one pass over memory: a running max m, s = sum exp(z - m)
// and u = sum exp(z - m) * (z - m), rescaled when m grows; the scores and the
// rule are exit_rule.h's, applied per row to s and u.
// d = z - m is clamped at kMinExp, so -inf logits give a tiny normal term
// (e^-86.5 ~ 3e-38, far below float resolution next to the max's exact 1):
// no NaN from 0 * -inf and no subnormal arithmetic.
// A row whose max is +-inf is uniform over the k entries equal to the max
// (confidence 1/k, entropy log k: s = k, u = 0); a row with a NaN scores NaN
// (s = NaN) and its pred is the first NaN (as torch.argmax).
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "cpu/kernels.h"
#include "exit_rule.h"

namespace eexit::cpu {
namespace CPU_CAPABILITY {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t W = Vec::size();
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kMinExp = -86.5f;  // e^kMinExp and the terms it feeds stay normal floats
constexpr int64_t kSmallC = 32;   // up to this many classes, W rows are processed side by side
constexpr int64_t kTile = 2048;   // row tile for large C (8 KiB of float: stays in L1)

// e^d for d in [kMinExp, 0]: d = n ln2 + r with |r| <= ln2 / 2 (ln2 split in two so
// n ln2 is exact), e^r = 1 + r q(r) with q of degree 4 fitted for relative error
// (below 1.7e-7 over the range, float32 evaluation included), and 2^n written into
// the exponent bits. Adding 1.5 * 2^23 rounds d log2(e) to the integer n and leaves
// n in the low mantissa bits, so no separate round and convert. Exactly 1 at d = 0.
inline Vec exp_neg(const Vec& d) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693145751953125f;  // 11 significant bits
  constexpr float kLn2Lo = 1.42860682030941723e-6f;
  constexpr float kRound = 12582912.f;  // 1.5 * 2^23
  using IVec = at::vec::Vectorized<int32_t>;
  const Vec t = at::vec::fmadd(d, Vec(kLog2e), Vec(kRound));
  const Vec n = t - Vec(kRound);
  const Vec r = at::vec::fmadd(n, Vec(-kLn2Lo), at::vec::fmadd(n, Vec(-kLn2Hi), d));
  Vec q(0.008261792361736298f);
  q = at::vec::fmadd(q, r, Vec(0.04189875349402428f));
  q = at::vec::fmadd(q, r, Vec(0.16668109595775604f));
  q = at::vec::fmadd(q, r, Vec(0.49999141693115234f));
  q = at::vec::fmadd(q, r, Vec(0.9999995231628418f));
  const Vec p = at::vec::fmadd(q, r, Vec(1.f));
  // (bits of t) = bits of 1.5 * 2^23 + n; shifting by 23 drops the former.
  const IVec bits = (at::vec::cast<int32_t>(t) + IVec(127)) << IVec(23);
  return p * at::vec::cast<float>(bits);
}

// Bit i set where lane i of `mask` (all-ones / zero lanes) is set.
inline int lanes(const Vec& mask) {
  return ~mask.zero_mask() & ((1 << W) - 1);
}

// Lanes where `mask` is clear.
inline Vec mask_not(const Vec& mask) {
  return mask == Vec(0.f);
}

// Loads up to W floats; lanes at or past `count` get `fill`.
inline Vec load_fill(const float* p, int64_t count, float fill) {
  return count >= W ? Vec::loadu(p) : Vec::set(Vec(fill), Vec::loadu(p, count), count);
}

// The last n % W (> 0) elements of p[0, n) as the top lanes, the other lanes `fill`:
// one full load ending at p + n (needs n >= W) instead of a partial copy.
inline Vec load_tail(const float* p, int64_t n, float fill) {
  const Vec seen = Vec::arange(0.f, 1.f) < Vec(static_cast<float>(W - n % W));
  return Vec::blendv(Vec::loadu(p + n - W), Vec(fill), seen);
}

template <typename scalar_t>
inline void to_float(const scalar_t* src, float* dst, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    std::copy(src, src + n, dst);
  } else {
    using RVec = at::vec::Vectorized<scalar_t>;
    int64_t i = 0;
    for (; i + RVec::size() <= n; i += RVec::size()) {
      auto [a, b] = at::vec::convert_to_float<scalar_t>(RVec::loadu(src + i));
      a.store(dst + i);
      b.store(dst + i + W);
    }
    for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
  }
}

// Small C: W rows side by side, one per lane, so every reduction is vertical.
template <typename scalar_t, bool kEntropy>
void gate_small(const GateArgs& a, int64_t r0, int64_t r1) {
  const auto* x = static_cast<const scalar_t*>(a.data);
  const int64_t C = a.C;
  alignas(64) float t[kSmallC * W];
  alignas(64) float ss[W];
  alignas(64) float us[W];
  alignas(64) float pr[W];
  for (int64_t r = r0; r < r1; r += W) {
    const int64_t rows = std::min<int64_t>(W, r1 - r);
    for (int64_t i = 0; i < W; ++i) {
      const scalar_t* row = x + (r + std::min(i, rows - 1)) * a.row_stride;
      for (int64_t c = 0; c < C; ++c) t[c * W + i] = static_cast<float>(row[c]);
    }
    // Pass 1: NaN-aware argmax (first maximal index), max and first NaN.
    Vec m = Vec::loadu(t);
    Vec arg(0.f), nan_arg(0.f);
    Vec has_nan = m.isnan();
    for (int64_t c = 1; c < C; ++c) {
      const Vec v = Vec::loadu(t + c * W);
      const Vec ci(static_cast<float>(c));
      const Vec gt = v > m;
      m = Vec::blendv(m, v, gt);
      arg = Vec::blendv(arg, ci, gt);
      const Vec vn = v.isnan();
      nan_arg = Vec::blendv(nan_arg, ci, vn & mask_not(has_nan));
      has_nan = has_nan | vn;
    }
    // Pass 2: sums relative to the max (lanes with an infinite max are fixed below).
    Vec s(0.f), u(0.f);
    const Vec one(1.f), lo(kMinExp);
    for (int64_t c = 0; c < C; ++c) {
      const Vec d = at::vec::clamp_min(Vec::loadu(t + c * W) - m, lo);
      const Vec e = exp_neg(d);
      s = s + e;
      if constexpr (kEntropy) u = at::vec::fmadd(e, d, u);
    }
    const Vec inf_max = m.abs() == Vec(kInf);
    if (lanes(inf_max)) {  // uniform over the k entries equal to the infinite max
      Vec k(0.f);
      for (int64_t c = 0; c < C; ++c) k = k + (one & (Vec::loadu(t + c * W) == m));
      s = Vec::blendv(s, k, inf_max);
      u = Vec::blendv(u, Vec(0.f), inf_max);
    }
    Vec::blendv(s, Vec(kNaN), has_nan).store(ss);
    u.store(us);
    Vec::blendv(arg, nan_arg, has_nan).store(pr);
    for (int64_t i = 0; i < rows; ++i) {
      a.score[r + i] = row_score(ss[i], us[i], kEntropy);
      a.pred[r + i] = static_cast<int64_t>(pr[i]);
    }
  }
}

// Large C: one row at a time, in tiles that stay in L1.
template <typename scalar_t, bool kEntropy>
void gate_large(const GateArgs& a, int64_t r0, int64_t r1) {
  const auto* x = static_cast<const scalar_t*>(a.data);
  const int64_t C = a.C;
  alignas(64) float buf[std::is_same_v<scalar_t, float> ? 1 : kTile];
  for (int64_t r = r0; r < r1; ++r) {
    const scalar_t* row = x + r * a.row_stride;
    float m = -kInf, s = 0.f, u = 0.f;
    int64_t arg = 0, n_inf = 0;
    bool done = false;
    for (int64_t t0 = 0; t0 < C && !done; t0 += kTile) {
      const int64_t n = std::min(kTile, C - t0);
      const float* p;
      if constexpr (std::is_same_v<scalar_t, float>) {
        p = row + t0;
      } else {
        to_float(row + t0, buf, n);
        p = buf;
      }
      Vec vmax(-kInf);
      int64_t i = 0;
      for (; i + W <= n; i += W) vmax = at::vec::maximum(vmax, Vec::loadu(p + i));
      if (i < n)  // lanes seen twice do not change a max
        vmax = at::vec::maximum(vmax, n >= W ? Vec::loadu(p + n - W) : load_fill(p + i, n - i, -kInf));
      const float tmax = at::vec::vec_reduce_all<float>(
          [](Vec& l, Vec& r) { return at::vec::maximum(l, r); }, vmax);
      if (std::isnan(tmax)) {  // pred: first NaN of the row; this tile holds it
        for (int64_t i = 0;; i += W) {
          const int hit = lanes(load_fill(p + i, n - i, 0.f).isnan());
          if (hit) {
            arg = t0 + i + __builtin_ctz(hit);
            break;
          }
        }
        s = kNaN;
        done = true;
        break;
      }
      if (tmax > m) {  // new running max: first index where it occurs
        for (int64_t i = 0;; i += W) {
          const int hit = lanes(load_fill(p + i, n - i, -kInf) == Vec(tmax));
          if (hit) {
            arg = t0 + i + __builtin_ctz(hit);
            break;
          }
        }
        if (s > 0.f) {
          const float alpha = std::exp(m - tmax);
          u = alpha * (u + (m - tmax) * s);
          s *= alpha;
        }
        m = tmax;
      }
      if (m == kInf) {  // uniform over the +inf entries
        for (int64_t i = 0; i < n; ++i) n_inf += p[i] == kInf;
        continue;
      }
      if (m == -kInf) continue;  // everything so far is -inf
      const Vec vm(m), lo(kMinExp);
      Vec vs(0.f), vu(0.f);  // two accumulators only: more would spill next to exp's constants
      i = 0;
      for (; i + 2 * W <= n; i += 2 * W) {
        const Vec d0 = at::vec::clamp_min(Vec::loadu(p + i) - vm, lo);
        const Vec d1 = at::vec::clamp_min(Vec::loadu(p + i + W) - vm, lo);
        const Vec e0 = exp_neg(d0), e1 = exp_neg(d1);
        vs = vs + (e0 + e1);
        if constexpr (kEntropy) vu = at::vec::fmadd(e0, d0, at::vec::fmadd(e1, d1, vu));
      }
      for (; i < n; i += W) {
        const Vec z = i + W <= n ? Vec::loadu(p + i) : n >= W ? load_tail(p, n, -kInf) : load_fill(p + i, n - i, -kInf);
        const Vec d = at::vec::clamp_min(z - vm, lo);
        const Vec e = exp_neg(d);
        vs = vs + e;
        if constexpr (kEntropy) vu = at::vec::fmadd(e, d, vu);
      }
      const auto add = [](Vec& l, Vec& r) { return l + r; };
      s += at::vec::vec_reduce_all<float>(add, vs);
      if constexpr (kEntropy) u += at::vec::vec_reduce_all<float>(add, vu);
    }
    if (!done && std::isinf(m)) {  // uniform over the entries equal to the max
      s = static_cast<float>(m > 0.f ? n_inf : C);
      u = 0.f;
    }
    a.score[r] = row_score(s, u, kEntropy);
    a.pred[r] = arg;
  }
}

template <typename scalar_t, bool kEntropy>
void gate_rows_crit(const GateArgs& a, int64_t begin, int64_t end) {
  if (a.C <= kSmallC) gate_small<scalar_t, kEntropy>(a, begin, end);
  else gate_large<scalar_t, kEntropy>(a, begin, end);
}

template <typename scalar_t>
void gate_rows_impl(const GateArgs& a, int64_t begin, int64_t end) {
  if (a.entropy) gate_rows_crit<scalar_t, true>(a, begin, end);
  else gate_rows_crit<scalar_t, false>(a, begin, end);
}

inline void gate_rows_dispatch(const GateArgs& a, int64_t begin, int64_t end) {
  switch (a.dtype) {
    case at::kFloat: return gate_rows_impl<float>(a, begin, end);
    case at::kHalf: return gate_rows_impl<at::Half>(a, begin, end);
    case at::kBFloat16: return gate_rows_impl<at::BFloat16>(a, begin, end);
    default: TORCH_CHECK(false, "exit_gate: unsupported dtype ", a.dtype);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace eexit::cpu
