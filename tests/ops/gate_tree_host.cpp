// Host build of the CUDA exit gate's per-row arithmetic (csrc/cuda/gate_row.h) run through the
// reduction tree of csrc/cuda/exit_gate.cu, emulated lane by lane (see the comment there; keep
// the two in step). Built and driven by test_gate_tree.py.
//
// stdin: "criterion(0 confidence, 1 entropy) lanes(kWarp: one warp, kBlockRowThreads: one block)",
// then rows as "C z_0 ... z_{C-1}" (floats as C99 hex, inf, -inf or nan).
// stdout: one "score(hex) pred" line per row.
#include <stdio.h>
#include <stdlib.h>

#include <vector>

#include "cuda/gate_row.h"

using eexit::gate::kBlockRowThreads;
using eexit::gate::kWarp;
using eexit::gate::RowState;

// warp_merge: lane l merges lane l + d (its own state past the warp's end), d = kWarp / 2 ... 1.
static RowState warp_merge(std::vector<RowState> lanes) {
  for (int d = kWarp / 2; d > 0; d >>= 1) {
    std::vector<RowState> next = lanes;
    for (int l = 0; l < kWarp; ++l) next[l].merge(l + d < kWarp ? lanes[l + d] : lanes[l]);
    lanes = next;
  }
  return lanes[0];
}

static RowState reduce_row(const std::vector<float>& z, int lanes) {
  std::vector<RowState> st(lanes);
  for (int l = 0; l < lanes; ++l) {  // scan_row: lane l adds l, l + lanes, ... in order
    st[l].init();
    for (size_t c = l; c < z.size(); c += lanes) st[l].add(z[c], static_cast<int64_t>(c));
  }
  if (lanes == kWarp) return warp_merge(st);
  std::vector<RowState> part(kWarp);  // gate_block_kernel: warp 0 merges the warps' results
  for (int l = 0; l < kWarp; ++l) {
    if (l < kBlockRowThreads / kWarp) {
      part[l] = warp_merge(std::vector<RowState>(st.begin() + l * kWarp, st.begin() + (l + 1) * kWarp));
    } else {
      part[l].init();
    }
  }
  return warp_merge(part);
}

int main() {
  int entropy = 0, lanes = 0;
  if (scanf("%d %d", &entropy, &lanes) != 2 || (lanes != kWarp && lanes != kBlockRowThreads)) return 2;
  long C;
  char tok[64];
  while (scanf("%ld", &C) == 1) {
    std::vector<float> z(C);
    for (long c = 0; c < C; ++c) {
      if (scanf("%63s", tok) != 1) return 2;
      z[c] = strtof(tok, nullptr);
    }
    float score;
    int64_t pred;
    reduce_row(z, lanes).finish(C, entropy != 0, &score, &pred);
    printf("%a %lld\n", score, static_cast<long long>(pred));
  }
  return 0;
}
