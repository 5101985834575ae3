// The exit rule, once for the CPU and the CUDA kernels (eexit/reference.py is
// its Python twin). A kernel reduces a row of logits z (float32) to
//   s = sum exp(z - max) >= 1   and   u = sum (z - max) exp(z - max) <= 0;
// a row that is uniform over k entries (an infinite max) has s = k, u = 0.
// Scores are clamped to their ranges, so rounding in s and u can never give a
// confidence above 1 or a negative entropy; NaN propagates through both.
#pragma once

#include <cmath>

#ifdef __CUDACC__
#define EEXIT_HOST_DEVICE __host__ __device__
#else
#define EEXIT_HOST_DEVICE
#endif

namespace eexit {

// Max softmax probability 1 / s, at most 1.
EEXIT_HOST_DEVICE inline float confidence_score(float s) {
  const float c = 1.f / s;
  return c > 1.f ? 1.f : c;  // not fminf: NaN stays NaN
}

// Softmax entropy in nats, log s - u / s (= log Z - sum p z), at least 0.
EEXIT_HOST_DEVICE inline float entropy_score(float s, float u) {
  const float h = logf(s) - u / s;
  return h < 0.f ? 0.f : h;  // not fmaxf: NaN stays NaN
}

// The row's score for the criterion (entropy or confidence).
EEXIT_HOST_DEVICE inline float row_score(float s, float u, bool entropy) {
  return entropy ? entropy_score(s, u) : confidence_score(s);
}

// A row leaves when its score passes the threshold: confidence >= threshold,
// entropy < threshold (so an entropy threshold of 0 lets nothing leave).
// NaN never passes.
EEXIT_HOST_DEVICE inline bool exits(float score, float threshold, bool entropy) {
  return entropy ? score < threshold : score >= threshold;
}

}  // namespace eexit
