// Every micro-kernel (via every ISA level this CPU supports, forced through force_isa) against
// the layout-independent scalar reference: bit-exact, integer part and fp32 result.
//
// Why exact equality is the right check: the int32 group dot products are exact in every
// kernel, |dot| <= 32*15*127 < 2^24 converts to fp32 exactly, and every kernel then performs
// the same fp32 operations in the same order (mul scale_w*scale_a, FMA per group in group
// order; Q4C: FMA per group, one final mul; Q4K: two FMAs per group, the scale term then
// the min term) with FP contraction disabled.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "cpuchat_kernels/reference.h"
#include "test_util.h"

namespace cpuchat::kernels {
namespace {

struct Shape {
  int64_t m, n, k;
};

const Shape kShapes[] = {
    {1, 1, 1},    {1, 3, 31},    {1, 16, 32},  {1, 17, 33},   {1, 172, 64}, {1, 513, 172}, {1, 64, 1000},
    {2, 3, 33},   {5, 172, 172}, {8, 16, 64},  {9, 33, 31},   {3, 512, 64}, {13, 40, 100}, {17, 64, 512},
    {4, 24, 256}, {7, 1, 95},    {16, 48, 96}, {32, 32, 160}, {3, 40, 768}, {1, 48, 1280},
    // more than one 16-row AMX tile, of unequal sizes (17 = 8 + 9, 41 = 13 + 14 + 14)
    {17, 40, 96}, {41, 20, 224}, {24, 33, 64},
};

std::string describe(IsaLevel level, Scheme s, const Shape& sh) {
  return std::string(isa_name(level)) + " " + scheme_name(s) + " m=" + std::to_string(sh.m) +
         " n=" + std::to_string(sh.n) + " k=" + std::to_string(sh.k);
}

// Counts elements that differ in any bit (== would also accept -0 vs +0, which padded
// zero groups may legitimately flip).
int64_t count_mismatches(const std::vector<float>& a, const std::vector<float>& b, std::string* first) {
  int64_t bad = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!(a[i] == b[i])) {
      if (bad++ == 0) *first = "at " + std::to_string(i) + ": " + std::to_string(a[i]) + " vs " + std::to_string(b[i]);
    }
  }
  return bad;
}

TEST(UkernelExact, Fp32ResultEqualsReferenceOnEveryLevel) {
  test::for_each_isa([](IsaLevel level) {
    for (Scheme scheme : kAllSchemes) {
      uint32_t seed = 1;
      for (const Shape& sh : kShapes) {
        const auto w = test::random_matrix(sh.n, sh.k, seed++);
        const auto x = test::random_matrix(sh.m, sh.k, seed++);
        const PackedWeights packed = test::pack_for(level, w, sh.n, sh.k, scheme);
        QuantizedActivations xq;
        xq.quantize(x.data(), sh.m, sh.k, sh.k);
        const ReferenceWeights ref = reference_quantize_weights(w.data(), sh.n, sh.k, sh.k, scheme);
        std::vector<float> y_ref(static_cast<size_t>(sh.m * sh.n)), y(y_ref.size(), -1.0f), y2(y_ref.size(), -1.0f);
        reference_matmul(xq, ref, y_ref.data(), sh.n);
        matmul(xq, packed, y.data(), sh.n, 0, sh.n);
        test::threaded_matmul(xq, packed, y2.data(), sh.n, 2);
        std::string first;
        EXPECT_EQ(count_mismatches(y, y_ref, &first), 0)
            << describe(level, scheme, sh) << " kernel " << selected_kernel_name(packed, sh.m) << " " << first;
        EXPECT_EQ(count_mismatches(y2, y_ref, &first), 0) << describe(level, scheme, sh) << " (2 threads) " << first;
      }
    }
  });
}

// Weights and activations chosen so that every scale is exactly 1: then Y is exactly the sum
// of the int32 group dot products, which checks the integer part in isolation.
TEST(UkernelExact, IntegerDotProductsAreExact) {
  test::for_each_isa([](IsaLevel level) {
    for (Scheme scheme : {Scheme::Q4G32, Scheme::Q4C}) {  // Q4K: test_q4k.cpp
      for (const Shape& sh : kShapes) {
        std::mt19937 rng(static_cast<uint32_t>(sh.m * 1000003 + sh.n * 1009 + sh.k));
        std::uniform_int_distribution<int> q4(-7, 7), q8(-126, 126);
        std::vector<float> w(static_cast<size_t>(sh.n * sh.k)), x(static_cast<size_t>(sh.m * sh.k));
        for (int64_t r = 0; r < sh.n; ++r)
          for (int64_t k = 0; k < sh.k; ++k) w[r * sh.k + k] = (k % kGroupSize == 0) ? -8.0f : float(q4(rng));
        for (int64_t r = 0; r < sh.m; ++r)
          for (int64_t k = 0; k < sh.k; ++k) x[r * sh.k + k] = (k % kGroupSize == 0) ? 127.0f : float(q8(rng));
        const PackedWeights packed = test::pack_for(level, w, sh.n, sh.k, scheme);
        QuantizedActivations xq;
        xq.quantize(x.data(), sh.m, sh.k, sh.k);
        ASSERT_EQ(xq.scales(0)[0], 1.0f);
        const ReferenceWeights ref = reference_quantize_weights(w.data(), sh.n, sh.k, sh.k, scheme);
        ASSERT_EQ(ref.scales[0], 1.0f);
        std::vector<float> y(static_cast<size_t>(sh.m * sh.n));
        matmul(xq, packed, y.data(), sh.n, 0, sh.n);
        for (int64_t i = 0; i < sh.m; ++i) {
          for (int64_t j = 0; j < sh.n; ++j) {
            int64_t sum = 0;
            for (int64_t g = 0; g < ref.groups; ++g) sum += reference_group_dot(xq, ref, i, j, g);
            ASSERT_EQ(static_cast<int64_t>(y[i * sh.n + j]), sum) << describe(level, scheme, sh) << " at " << i << "," << j;
          }
        }
      }
    }
  });
}

// A buffer packed for the other architecture still runs (through the scalar kernel).
TEST(UkernelExact, ForeignLayoutFallsBackToScalar) {
  for (LayoutId id : {LayoutId::X86_N16K4, LayoutId::ARM_N8K8}) {
    const Shape sh{3, 37, 70};
    const auto w = test::random_matrix(sh.n, sh.k, 7), x = test::random_matrix(sh.m, sh.k, 8);
    PackedWeights packed = PackedWeights::allocate(sh.n, sh.k, Scheme::Q4G32, id);
    packed.pack(w.data(), sh.k);
    QuantizedActivations xq;
    xq.quantize(x.data(), sh.m, sh.k, sh.k);
    std::vector<float> y_ref(static_cast<size_t>(sh.m * sh.n)), y(y_ref.size());
    reference_matmul(xq, reference_quantize_weights(w.data(), sh.n, sh.k, sh.k, Scheme::Q4G32), y_ref.data(), sh.n);
    matmul(xq, packed, y.data(), sh.n, 0, sh.n);
    std::string first;
    EXPECT_EQ(count_mismatches(y, y_ref, &first), 0) << layout_name(id) << " " << first;
  }
}

}  // namespace
}  // namespace cpuchat::kernels
