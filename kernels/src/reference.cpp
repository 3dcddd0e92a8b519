// Layout-independent references (see reference.h).
#include "cpuchat_kernels/reference.h"

#include "quantize.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace cpuchat::kernels {

float quantize_q4(const float* w, int64_t count, bool bf16_scale, int8_t* q) {
  float extreme = 0.0f;  // the value of largest magnitude, with its sign
  for (int64_t i = 0; i < count; ++i) {
    if (std::fabs(w[i]) > std::fabs(extreme)) extreme = w[i];
  }
  float d = extreme / -8.0f;
  if (bf16_scale) d = bf16_to_float(float_to_bf16(d));
  const float inv = d != 0.0f ? 1.0f / d : 0.0f;
  for (int64_t i = 0; i < count; ++i) {
    const float v = detail::round_nearest_even(w[i] * inv);
    q[i] = static_cast<int8_t>(std::min(7.0f, std::max(-8.0f, v)));
  }
  return d;
}

ReferenceWeights reference_quantize_weights(const float* w, int64_t n, int64_t k, int64_t ld, Scheme scheme) {
  if (n <= 0 || k <= 0 || ld < k || w == nullptr) {
    throw std::invalid_argument("reference_quantize_weights: bad shape n=" + std::to_string(n) +
                                " k=" + std::to_string(k) + " ld=" + std::to_string(ld));
  }
  ReferenceWeights r;
  r.n = n;
  r.k = k;
  r.groups = (k + kGroupSize - 1) / kGroupSize;
  r.scheme = scheme;
  const int64_t kp = r.groups * kGroupSize;
  r.q.assign(static_cast<size_t>(n * kp), 0);
  r.scales.assign(static_cast<size_t>(scheme == Scheme::Q4G32 ? n * r.groups : n), 0.0f);
  for (int64_t row = 0; row < n; ++row) {
    int8_t* q = r.q.data() + row * kp;
    if (scheme == Scheme::Q4G32) {
      for (int64_t g = 0; g < r.groups; ++g) {
        const int64_t begin = g * kGroupSize, count = std::min<int64_t>(kGroupSize, k - begin);
        r.scales[row * r.groups + g] = quantize_q4(w + row * ld + begin, count, true, q + begin);
      }
    } else {
      r.scales[row] = quantize_q4(w + row * ld, k, false, q);
    }
  }
  return r;
}

int32_t reference_group_dot(const QuantizedActivations& x, const ReferenceWeights& w, int64_t m, int64_t n,
                            int64_t g) {
  const int8_t* a = x.row(m) + g * kGroupSize;
  const int8_t* q = w.q.data() + n * w.groups * kGroupSize + g * kGroupSize;
  int32_t dot = 0;
  for (int i = 0; i < kGroupSize; ++i) dot += int32_t{a[i]} * q[i];
  return dot;
}

void reference_matmul(const QuantizedActivations& x, const ReferenceWeights& w, float* y, int64_t ldy) {
  if (x.k() != w.k) throw std::invalid_argument("reference_matmul: K mismatch");
  for (int64_t m = 0; m < x.m(); ++m) {
    for (int64_t n = 0; n < w.n; ++n) {
      float acc = 0.0f;
      for (int64_t g = 0; g < w.groups; ++g) {
        const float a_scale = x.scales(m)[g];
        const float scale = w.scheme == Scheme::Q4G32 ? w.scales[n * w.groups + g] * a_scale : a_scale;
        acc = std::fma(static_cast<float>(reference_group_dot(x, w, m, n, g)), scale, acc);
      }
      y[m * ldy + n] = w.scheme == Scheme::Q4G32 ? acc : acc * w.scales[n];
    }
  }
}

void reference_matmul_f32(const float* x, int64_t m, int64_t k, int64_t ldx, const float* w, int64_t n,
                          int64_t ldw, float* y, int64_t ldy) {
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0.0;
      for (int64_t kk = 0; kk < k; ++kk) acc += double{x[i * ldx + kk]} * w[j * ldw + kk];
      y[i * ldy + j] = static_cast<float>(acc);
    }
  }
}

}  // namespace cpuchat::kernels
