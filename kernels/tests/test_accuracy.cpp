// Packed int8 x int4 matmul against a plain fp32 matmul, within a bound DERIVED from the
// quantization (not a tuned tolerance). For one output y = sum_k x_k w_k, with x^ = s_a q_a
// and w^ = s_w q_w the dequantized values the kernel multiplies:
//
//   |x.w - x^.w^| = |sum_k x_k (w_k - w^_k) + w^_k (x_k - x^_k)|
//                <= sum_k |x_k| e_w(k) + |w^_k| e_x(k)
//
//   e_x(k) = s_a/2: activations round to nearest and never clip (|x| <= amax = 127 s_a);
//            (1 + 2^-20) covers x * (127/amax) being computed in fp32.
//   e_w(k) = s_w/2 when rounded to nearest; q = 7 may be a clipped +8 (the scale maps the
//            value of largest magnitude to -8, so one of the opposite sign can reach +8):
//            then |w - 7 s_w| <= s_w (1 + 2^-8) (the bf16 scale is rounded before quantizing).
//   + fp32 rounding of the kernel: one product and one FMA per group (and one final multiply
//     for Q4C), each <= 2^-24 relative: (groups + 2) * 2^-24 * sum_k |x^_k w^_k|.
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
        const double s_w = scheme == Scheme::Q4G32 ? ref.scales[j * ref.groups + g] : ref.scales[j];
        const int q_w = ref.q[j * kp + kk];
        const double w_hat = s_w * q_w, x_hat = s_a * xq.row(i)[kk];
        const double e_w = q_w == 7 ? std::fabs(s_w) * (1.0 + 1.0 / 256) : std::fabs(s_w) / 2;  // s_w < 0 when the extreme is positive
        const double e_x = s_a / 2 * (1.0 + std::ldexp(1.0, -20));
        bound_q += std::fabs(x[i * k + kk]) * e_w + std::fabs(w_hat) * e_x;
        abs_dot += std::fabs(x_hat * w_hat);
      }
      const double bound = bound_q + (ref.groups + 2) * std::ldexp(1.0, -24) * abs_dot;
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
    for (Scheme scheme : {Scheme::Q4G32, Scheme::Q4C}) {
      uint32_t seed = 100;
      for (const Case& c : cases) {
        const ErrorStats st = check_against_fp32(level, scheme, c.m, c.n, c.k, seed += 2);
        EXPECT_LE(st.max_ratio, 1.0) << isa_name(level) << " " << scheme_name(scheme) << " m=" << c.m
                                     << " n=" << c.n << " k=" << c.k;
      }
    }
  });
}

// Reports the typical error of both schemes (kernels/README.md discusses it) and checks that
// per-group scales are the more accurate ones, as they should be.
TEST(Accuracy, GroupScalesBeatChannelScales) {
  const IsaLevel level = active_isa();
  double rel[2];
  int idx = 0;
  for (Scheme scheme : {Scheme::Q4G32, Scheme::Q4C}) {
    const ErrorStats st = check_against_fp32(level, scheme, 8, 256, 1024, 42);
    rel[idx++] = std::sqrt(st.err2 / st.ref2);
    std::printf("[ accuracy ] %s: relative RMS error vs fp32 = %.4f (max error / bound = %.3f)\n",
                scheme_name(scheme), std::sqrt(st.err2 / st.ref2), st.max_ratio);
  }
  EXPECT_LT(rel[0], rel[1]);
}

}  // namespace
}  // namespace cpuchat::kernels
