// Q4K specifics: fp16 conversions, the integer part of every Q4K kernel through exactly
// stored super-blocks, the quantizers' error-minimizing searches and their SIMD builds.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <utility>

#include "cpuchat_kernels/reference.h"
#include "quantize.h"
#include "test_util.h"

namespace cpuchat::kernels {
namespace {

// Independent fp16 decoding from the IEEE definition, in double.
double fp16_value(uint16_t h) {
  const int sign = h >> 15, exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
  const double v = exp == 0 ? std::ldexp(mant, -24) : std::ldexp(1024 + mant, exp - 25);
  return sign ? -v : v;
}

TEST(Q4k, Fp16ConversionsAreExactAndRoundToNearestEven) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if (((h >> 10) & 0x1F) == 0x1F) continue;  // inf / nan
    const float f = fp16_to_float(static_cast<uint16_t>(h));
    ASSERT_EQ(double{f}, fp16_value(static_cast<uint16_t>(h))) << h;
    ASSERT_EQ(float_to_fp16(f), h) << h;
    // Midpoint to the next larger magnitude rounds to the even one of the two.
    if ((h & 0x7FFF) < 0x7BFF) {
      const double next = fp16_value(static_cast<uint16_t>(h + 1));
      const float mid = static_cast<float>((double{f} + next) / 2);
      ASSERT_EQ(float_to_fp16(mid), (h & 1) ? h + 1 : h) << h;
    }
  }
  EXPECT_EQ(float_to_fp16(1e6f), 0x7C00);
  EXPECT_EQ(float_to_fp16(1e-9f), 0);
}

// d = dmin = 1 and activations with scale 1: every output is the integer
// sum_g sc_g dot_g - m_g sum_a_g (< 2^24, exact in fp32). Random sc, m in [0, 63], q in [0, 15].
TEST(Q4k, IntegerPartIsExactOnEveryLevel) {
  struct Shape {
    int64_t m, n, k;
  };
  const Shape shapes[] = {{1, 16, 256}, {1, 35, 300}, {3, 17, 512}, {7, 64, 256}, {13, 40, 100}, {1, 8, 1}};
  test::for_each_isa([&](IsaLevel level) {
    for (const Shape& sh : shapes) {
      std::mt19937 rng(static_cast<uint32_t>(sh.m * 7919 + sh.n * 31 + sh.k));
      std::uniform_int_distribution<int> q4(0, 15), s6(0, 63), q8(-126, 126);
      const int64_t supers = q4k_super_blocks(sh.k);
      std::vector<Q4kSuperBlock> blocks(static_cast<size_t>(sh.n * supers));
      for (Q4kSuperBlock& b : blocks) {
        b.d = b.dmin = float_to_fp16(1.0f);
        for (int j = 0; j < kGroupsPerSuperBlock; ++j) b.sc[j] = s6(rng), b.m[j] = s6(rng);
        for (uint8_t& q : b.q) q = static_cast<uint8_t>(q4(rng));
      }
      std::vector<float> x(static_cast<size_t>(sh.m * sh.k));
      for (int64_t r = 0; r < sh.m; ++r)
        for (int64_t k = 0; k < sh.k; ++k) x[r * sh.k + k] = (k % kGroupSize == 0) ? 127.0f : float(q8(rng));
      PackedWeights w = PackedWeights::allocate(sh.n, sh.k, Scheme::Q4K, layout_for_isa(level));
      w.pack_q4k_super_blocks(blocks.data(), 0, sh.n);
      QuantizedActivations xq;
      xq.quantize(x.data(), sh.m, sh.k, sh.k);
      std::vector<float> y(static_cast<size_t>(sh.m * sh.n));
      matmul(xq, w, y.data(), sh.n, 0, sh.n);
      for (int64_t i = 0; i < sh.m; ++i) {
        for (int64_t j = 0; j < sh.n; ++j) {
          int64_t expect = 0;
          for (int64_t kk = 0; kk < sh.k; ++kk) {
            const Q4kSuperBlock& b = blocks[j * supers + kk / kSuperBlockSize];
            const int sub = static_cast<int>(kk % kSuperBlockSize / kGroupSize);
            expect += int64_t{xq.row(i)[kk]} * (b.sc[sub] * b.q[kk % kSuperBlockSize] - b.m[sub]);
          }
          ASSERT_EQ(double{y[i * sh.n + j]}, double(expect))
              << isa_name(level) << " " << selected_kernel_name(w, sh.m) << " m=" << sh.m << " n=" << sh.n
              << " k=" << sh.k << " at " << i << "," << j;
        }
      }
    }
  });
}

TEST(Q4k, PackedSuperBlocksRoundTripThroughTheReference) {
  const int64_t n = 21, k = 520;
  const auto w = test::random_matrix(n, k, 3);
  const ReferenceWeights ref = reference_quantize_weights(w.data(), n, k, k, Scheme::Q4K);
  PackedWeights from_floats = PackedWeights::allocate(n, k, Scheme::Q4K);
  from_floats.pack(w.data(), k);
  PackedWeights from_blocks = PackedWeights::allocate(n, k, Scheme::Q4K);
  from_blocks.pack_q4k_super_blocks(ref.super_blocks.data(), 0, n);
  ASSERT_EQ(from_floats.byte_size(), from_blocks.byte_size());
  EXPECT_EQ(std::memcmp(from_floats.data(), from_blocks.data(), from_blocks.byte_size()), 0);
  Q4kSuperBlock bad = ref.super_blocks[0];
  bad.sc[3] = 64;
  std::vector<Q4kSuperBlock> bad_blocks(ref.super_blocks);
  bad_blocks[0] = bad;
  EXPECT_THROW(from_blocks.pack_q4k_super_blocks(bad_blocks.data(), 0, n), std::invalid_argument);
  PackedWeights g32 = PackedWeights::allocate(n, k, Scheme::Q4G32);
  EXPECT_THROW(g32.pack_q4k_super_blocks(ref.super_blocks.data(), 0, n), std::invalid_argument);
}

double weighted_error(const float* w, const std::vector<float>& w_hat, int64_t count) {
  double sum2 = 0.0, err = 0.0;
  for (int64_t i = 0; i < count; ++i) sum2 += double{w[i]} * w[i];
  const double rms = std::sqrt(sum2 / count);
  for (int64_t i = 0; i < count; ++i) err += (rms + std::fabs(w[i])) * std::pow(w[i] - w_hat[i], 2);
  return err;
}

// The searched scale is never worse than max/min in the error it minimizes, and better on
// average; Q4K beats Q4G32 (same bytes) on Gaussian weights with outliers.
TEST(Q4k, ScaleSearchesReduceTheError) {
  const int64_t n = 64, k = 1024;
  const auto w = test::random_matrix(n, k, 11, 0.002f, 8.0f);
  double err_search = 0.0, err_absmax = 0.0;
  for (int64_t g = 0; g < n * k / kGroupSize; ++g) {
    const float* src = w.data() + g * kGroupSize;
    int8_t q[kGroupSize];
    std::vector<float> a(kGroupSize), b(kGroupSize);
    const float d1 = quantize_q4(src, kGroupSize, true, q);
    for (int i = 0; i < kGroupSize; ++i) a[i] = d1 * q[i];
    const float d0 = quantize_q4_absmax(src, kGroupSize, true, q);
    for (int i = 0; i < kGroupSize; ++i) b[i] = d0 * q[i];
    const double e1 = weighted_error(src, a, kGroupSize), e0 = weighted_error(src, b, kGroupSize);
    ASSERT_LE(e1, e0 * (1 + 1e-9)) << g;
    err_search += e1;
    err_absmax += e0;
  }
  EXPECT_LT(err_search, 0.97 * err_absmax);  // measured 0.942 here
  double e_q4k = 0.0, e_g32 = 0.0;
  const ReferenceWeights rk = reference_quantize_weights(w.data(), n, k, k, Scheme::Q4K);
  const ReferenceWeights rg = reference_quantize_weights(w.data(), n, k, k, Scheme::Q4G32);
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t c = 0; c < k; ++c) {
      e_q4k += std::pow(w[r * k + c] - rk.dequantized(r, c), 2);
      e_g32 += std::pow(w[r * k + c] - rg.dequantized(r, c), 2);
    }
  }
  std::printf("[ accuracy ] weight RMS error: q4k %.5f, q4g32 %.5f; q4g32 weighted error search/absmax %.3f\n",
              std::sqrt(e_q4k / (n * k)), std::sqrt(e_g32 / (n * k)), err_search / err_absmax);
  EXPECT_LT(e_q4k, e_g32);
}

// The weight searches' SIMD builds (16 / 8 / 4 lanes) against the one-block-at-a-time scalar
// code (quantize_q4 per group, quantize_q4k_super_block): bit for bit, on rows with a partial
// last group and super-block, outliers, an all-zero group and a constant sub-block, without and
// with per-column importance.
TEST(Q4k, WeightSearchesAreBitIdenticalOnEveryLevel) {
  using RowG32 = void (*)(const float*, int64_t, const float*, int8_t*, float*);
  using RowQ4k = void (*)(const float*, int64_t, const float*, Q4kSuperBlock*);
  std::vector<std::pair<const char*, std::pair<RowG32, RowQ4k>>> versions = {
      {"baseline", {detail::quantize_q4g32_row_scalar, detail::quantize_q4k_row_scalar}}};
#if defined(__x86_64__)
  if (detected_isa() >= IsaLevel::Avx2) versions.push_back({"avx2", {detail::quantize_q4g32_row_avx2, detail::quantize_q4k_row_avx2}});
  if (detected_isa() >= IsaLevel::Avx512Vnni)
    versions.push_back({"avx512", {detail::quantize_q4g32_row_avx512, detail::quantize_q4k_row_avx512}});
#elif defined(__aarch64__)
  versions.push_back({"neon", {detail::quantize_q4g32_row_neon, detail::quantize_q4k_row_neon}});
#endif
  const int64_t n = 6, k = 2 * kSuperBlockSize + 3 * kGroupSize + 7;  // 3 super-blocks, the last partial
  std::vector<float> w = test::random_matrix(n, k, 23, 0.01f, 10.0f);
  for (int64_t i = 0; i < kGroupSize; ++i) w[1 * k + 64 + i] = 0.0f;     // an all-zero group
  for (int64_t i = 0; i < kGroupSize; ++i) w[2 * k + 288 + i] = 0.003f;  // a constant sub-block
  std::vector<float> column = test::random_matrix(1, k, 29, 0.0f, 1.0f);
  for (float& c : column) c = 0.05f + c * c * 20.0f;  // positive, spread over 400x
  const int64_t groups = (k + kGroupSize - 1) / kGroupSize, supers = q4k_super_blocks(k);
  for (const float* importance : {static_cast<const float*>(nullptr), static_cast<const float*>(column.data())}) {
    const auto at = [&](int64_t begin) { return importance != nullptr ? importance + begin : nullptr; };
    for (int64_t r = 0; r < n; ++r) {
      const float* row = w.data() + r * k;
      std::vector<int8_t> q_ref(static_cast<size_t>(groups * kGroupSize), 0);
      std::vector<float> d_ref(static_cast<size_t>(groups));
      std::vector<Q4kSuperBlock> b_ref(static_cast<size_t>(supers));
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t begin = g * kGroupSize;
        d_ref[g] = quantize_q4(row + begin, std::min<int64_t>(kGroupSize, k - begin), true, q_ref.data() + begin,
                               at(begin));
      }
      for (int64_t s = 0; s < supers; ++s) {
        const int64_t begin = s * kSuperBlockSize;
        b_ref[s] = quantize_q4k_super_block(row + begin, std::min<int64_t>(kSuperBlockSize, k - begin), at(begin));
      }
      for (const auto& [name, fns] : versions) {
        const std::string what = std::string(name) + (importance ? " with importance" : "") + " row " + std::to_string(r);
        std::vector<int8_t> q(q_ref.size(), 0);
        std::vector<float> d(d_ref.size());
        std::vector<Q4kSuperBlock> b(b_ref.size());
        fns.first(row, k, importance, q.data(), d.data());
        fns.second(row, k, importance, b.data());
        EXPECT_EQ(q, q_ref) << what;
        EXPECT_EQ(std::memcmp(d.data(), d_ref.data(), d.size() * sizeof(float)), 0) << what;
        EXPECT_EQ(std::memcmp(b.data(), b_ref.data(), b.size() * sizeof(Q4kSuperBlock)), 0) << what;
      }
    }
  }
}

// Column importance (pack_rows' optional weights) reaches every scheme's packer as the
// reference sees it, and trades error where it is cheap for error where it matters.
TEST(Q4k, ColumnImportanceIsUsedAsTheReferenceUsesIt) {
  const int64_t n = 32, k = 2 * kSuperBlockSize + 40, m = 3;
  const std::vector<float> w = test::random_matrix(n, k, 41);
  const std::vector<float> x = test::random_matrix(m, k, 43);
  std::vector<float> column(static_cast<size_t>(k));
  for (int64_t i = 0; i < k; ++i) column[i] = i % 3 == 0 ? 8.0f : 0.5f;  // every third input matters 16x more
  QuantizedActivations xq;
  xq.quantize(x.data(), m, k, k);
  for (Scheme scheme : kAllSchemes) {
    PackedWeights packed = PackedWeights::allocate(n, k, scheme);
    packed.pack_rows(w.data(), k, 0, n, column.data());
    const ReferenceWeights ref = reference_quantize_weights(w.data(), n, k, k, scheme, column.data());
    const ReferenceWeights plain = reference_quantize_weights(w.data(), n, k, k, scheme);
    std::vector<float> y(static_cast<size_t>(m * n)), y_ref(y.size());
    matmul(xq, packed, y.data(), n, 0, n);
    reference_matmul(xq, ref, y_ref.data(), n);
    EXPECT_EQ(std::memcmp(y.data(), y_ref.data(), y.size() * sizeof(float)), 0) << scheme_name(scheme);
    double err_weighted = 0, err_plain = 0;  // the importance-weighted squared weight error
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = 0; c < k; ++c) {
        const double e1 = w[r * k + c] - ref.dequantized(r, c), e0 = w[r * k + c] - plain.dequantized(r, c);
        err_weighted += column[c] * e1 * e1;
        err_plain += column[c] * e0 * e0;
      }
    EXPECT_LT(err_weighted, 0.97 * err_plain) << scheme_name(scheme);
  }
}

}  // namespace
}  // namespace cpuchat::kernels
