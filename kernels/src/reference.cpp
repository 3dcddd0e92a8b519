// Layout-independent references (see reference.h).
#include "cpuchat_kernels/reference.h"

#include "quantize.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace cpuchat::kernels {

ReferenceWeights reference_quantize_weights(const float* w, int64_t n, int64_t k, int64_t ld, Scheme scheme,
                                            const float* column_importance) {
  if (n <= 0 || k <= 0 || ld < k || w == nullptr) {
    throw std::invalid_argument("reference_quantize_weights: bad shape n=" + std::to_string(n) +
                                " k=" + std::to_string(k) + " ld=" + std::to_string(ld));
  }
  if (scheme == Scheme::Q4K) {
    const int64_t supers = q4k_super_blocks(k);
    std::vector<Q4kSuperBlock> blocks(static_cast<size_t>(n * supers));
    for (int64_t row = 0; row < n; ++row) {
      for (int64_t s = 0; s < supers; ++s) {
        const int64_t begin = s * kSuperBlockSize;
        blocks[row * supers + s] =
            quantize_q4k_super_block(w + row * ld + begin, std::min<int64_t>(kSuperBlockSize, k - begin),
                                     column_importance != nullptr ? column_importance + begin : nullptr);
      }
    }
    return reference_weights_from_q4k(blocks, n, k);
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
        r.scales[row * r.groups + g] = quantize_q4(w + row * ld + begin, count, true, q + begin,
                                                   column_importance != nullptr ? column_importance + begin : nullptr);
      }
    } else {
      r.scales[row] = quantize_q4(w + row * ld, k, false, q, column_importance);
    }
  }
  return r;
}

ReferenceWeights reference_weights_from_q4k(const std::vector<Q4kSuperBlock>& blocks, int64_t n, int64_t k) {
  const int64_t supers = q4k_super_blocks(k);
  if (n <= 0 || k <= 0 || static_cast<int64_t>(blocks.size()) != n * supers) {
    throw std::invalid_argument("reference_weights_from_q4k: " + std::to_string(blocks.size()) +
                                " super-blocks for n=" + std::to_string(n) + " k=" + std::to_string(k));
  }
  ReferenceWeights r;
  r.n = n;
  r.k = k;
  r.groups = supers * kGroupsPerSuperBlock;
  r.scheme = Scheme::Q4K;
  r.super_blocks = blocks;
  const int64_t kp = r.groups * kGroupSize;
  r.q.assign(static_cast<size_t>(n * kp), 0);
  r.scales.assign(static_cast<size_t>(n * r.groups), 0.0f);
  r.mins.assign(r.scales.size(), 0.0f);
  for (int64_t row = 0; row < n; ++row) {
    for (int64_t s = 0; s < supers; ++s) {
      const Q4kSuperBlock& b = blocks[row * supers + s];
      for (int i = 0; i < kSuperBlockSize; ++i) r.q[row * kp + s * kSuperBlockSize + i] = static_cast<int8_t>(b.q[i]);
      for (int j = 0; j < kGroupsPerSuperBlock; ++j) {
        r.scales[row * r.groups + s * kGroupsPerSuperBlock + j] = q4k_effective_scale(b.d, b.sc[j]);
        r.mins[row * r.groups + s * kGroupsPerSuperBlock + j] = q4k_effective_min(b.dmin, b.m[j]);
      }
    }
  }
  return r;
}

float ReferenceWeights::dequantized(int64_t row, int64_t col) const {
  const int64_t g = col / kGroupSize;
  const float q_value = static_cast<float>(q[row * groups * kGroupSize + col]);
  switch (scheme) {
    case Scheme::Q4G32: return scales[row * groups + g] * q_value;
    case Scheme::Q4C: return scales[row] * q_value;
    case Scheme::Q4K: return scales[row * groups + g] * q_value - mins[row * groups + g];
  }
  return 0.0f;
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
  if (x.groups() < w.groups) throw std::invalid_argument("reference_matmul: activations not padded to the weights' K");
  for (int64_t m = 0; m < x.m(); ++m) {
    for (int64_t n = 0; n < w.n; ++n) {
      float acc = 0.0f;
      for (int64_t g = 0; g < w.groups; ++g) {
        const float a_scale = x.scales(m)[g];
        if (w.scheme == Scheme::Q4K) {
          const float dot = static_cast<float>(reference_group_dot(x, w, m, n, g));
          const float a_sum = a_scale * (static_cast<float>(x.neg8_sums(m)[g]) * -0.125f);
          acc = std::fma(dot, w.scales[n * w.groups + g] * a_scale, acc);
          acc = std::fma(-w.mins[n * w.groups + g], a_sum, acc);
          continue;
        }
        const float scale = w.scheme == Scheme::Q4G32 ? w.scales[n * w.groups + g] * a_scale : a_scale;
        acc = std::fma(static_cast<float>(reference_group_dot(x, w, m, n, g)), scale, acc);
      }
      y[m * ldy + n] = w.scheme == Scheme::Q4C ? acc * w.scales[n] : acc;
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
