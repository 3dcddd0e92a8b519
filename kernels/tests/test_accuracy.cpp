// Packed int8 x int4 matmul against a plain fp32 matmul, within a bound DERIVED from the
// quantization (not a tuned tolerance). For one output y = sum_k x_k w_k, with x^ = s_a q_a
// and w^ = s_w q_w the dequantized values the kernel multiplies:
//
//   |x.w - x^.w^| = |sum_k x_k (w_k - w^_k) + w^_k (x_k - x^_k)|
//                <= sum_k |x_k| e_w(k) + |w^_k| e_x(k)
//
//   e_x(k) = s_a/2: activations round to nearest and never clip (|x| <= amax = 127 s_a);
//            (1 + 2^-20) covers x * (127/amax) being computed in fp32.
//   e_w(k) = |w_k - w^_k|, the weight's own quantization error (the scale searches may clip,
//            so no closed form; w^_k = s q - m is computed in double from the stored values).
//   + fp32 rounding of the kernel: per group one product and one FMA (Q4K: two of each, one
//     final multiply for Q4C), each <= 2^-24 relative to a partial sum bounded by the sum of
//     the absolute terms T = sum_k |x^_k| (|s q_k| + |m|): (4 groups + 2) * 2^-24 * T.
#include <gtest/gtest.h>

#include <cmath>

#include "cpuchat_kernels/reference.h"
#include "test_util.h"

namespace cpuchat::kernels {
namespace {

struct ErrorStats {
  double max_ratio = 0.0;  // max |error| / bound (must be <= 1)
  double err2 = 0.0, ref2 = 0.0;
};

ErrorStats check_against_fp32(IsaLevel level, Scheme scheme, int64_t m, int64_t n, int64_t k, uint32_t seed) {
  const auto w = test::random_matrix(n, k, seed), x = test::random_matrix(m, k, seed + 1);
  const PackedWeights packed = test::pack_for(level, w, n, k, scheme);
  QuantizedActivations xq;
  xq.quantize(x.data(), m, k, k);
  std::vector<float> y(static_cast<size_t>(m * n)), y_f32(y.size());
  matmul(xq, packed, y.data(), n, 0, n);
  reference_matmul_f32(x.data(), m, k, k, w.data(), n, k, y_f32.data(), n);

  const ReferenceWeights ref = reference_quantize_weights(w.data(), n, k, k, scheme);
  const int64_t kp = ref.groups * kGroupSize;
  ErrorStats st;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double bound_q = 0.0, abs_dot = 0.0;
      for (int64_t kk = 0; kk < k; ++kk) {
        const int64_t g = kk / kGroupSize;
        const double s_a = xq.scales(i)[g];
        const double s_w = scheme == Scheme::Q4C ? ref.scales[j] : ref.scales[j * ref.groups + g];
        const double m_w = scheme == Scheme::Q4K ? ref.mins[j * ref.groups + g] : 0.0;
        const int q_w = ref.q[j * kp + kk];
        const double w_hat = s_w * q_w - m_w, x_hat = s_a * xq.row(i)[kk];
        const double e_w = std::fabs(double{w[j * k + kk]} - w_hat);
        const double e_x = s_a / 2 * (1.0 + std::ldexp(1.0, -20));
        bound_q += std::fabs(x[i * k + kk]) * e_w + std::fabs(w_hat) * e_x;
        abs_dot += std::fabs(x_hat) * (std::fabs(s_w * q_w) + std::fabs(m_w));
      }
      const double bound = bound_q + (4 * ref.groups + 2) * std::ldexp(1.0, -24) * abs_dot;
      const double err = std::fabs(double{y[i * n + j]} - y_f32[i * n + j]);
      st.max_ratio = std::max(st.max_ratio, bound > 0 ? err / bound : (err > 0 ? 1e9 : 0.0));
      st.err2 += err * err;
      st.ref2 += double{y_f32[i * n + j]} * y_f32[i * n + j];
    }
  }
  return st;
}

TEST(Accuracy, WithinDerivedQuantizationBound) {
  struct Case {
    int64_t m, n, k;
  };
  const Case cases[] = {{1, 33, 31}, {1, 64, 172}, {3, 172, 64}, {9, 40, 256}, {4, 96, 1024}};
  test::for_each_isa([&](IsaLevel level) {
    for (Scheme scheme : kAllSchemes) {
      uint32_t seed = 100;
      for (const Case& c : cases) {
        const ErrorStats st = check_against_fp32(level, scheme, c.m, c.n, c.k, seed += 2);
        EXPECT_LE(st.max_ratio, 1.0) << isa_name(level) << " " << scheme_name(scheme) << " m=" << c.m
                                     << " n=" << c.n << " k=" << c.k;
      }
    }
  });
}

// Reports the typical error of the schemes (kernels/README.md discusses it) and checks that
// per-group scales are more accurate than per-channel ones, and Q4K's scale+min than Q4G32's
// symmetric scale, as they should be.
TEST(Accuracy, GroupScalesBeatChannelScales) {
  const IsaLevel level = active_isa();
  double rel[3];
  int idx = 0;
  for (Scheme scheme : kAllSchemes) {
    const ErrorStats st = check_against_fp32(level, scheme, 8, 256, 1024, 42);
    rel[idx++] = std::sqrt(st.err2 / st.ref2);
    std::printf("[ accuracy ] %s: relative RMS error vs fp32 = %.4f (max error / bound = %.3f)\n",
                scheme_name(scheme), std::sqrt(st.err2 / st.ref2), st.max_ratio);
  }
  EXPECT_LT(rel[0], rel[1]);
  EXPECT_LT(rel[2], rel[0]);
}

}  // namespace
}  // namespace cpuchat::kernels
