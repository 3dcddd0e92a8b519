// Packing API (row chunks, bf16 rows), serialization, splitting, row ranges, bad input.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "cpuchat_kernels/reference.h"
#include "quantize.h"
#include "test_util.h"

namespace cpuchat::kernels {
namespace {

TEST(Packing, RowChunksEqualPackingAllAtOnce) {
  for (LayoutId id : {LayoutId::X86_N16K4, LayoutId::ARM_N8K8}) {
    for (Scheme scheme : kAllSchemes) {
      const int64_t n = 75, k = 172, ld = 180;  // ld > k: rows come from a wider tensor
      const auto w = test::random_matrix(n, ld, 3);
      PackedWeights all = PackedWeights::allocate(n, k, scheme, id);
      all.pack(w.data(), ld);
      PackedWeights chunked = PackedWeights::allocate(n, k, scheme, id);
      const int64_t chunk = 2 * chunked.row_alignment();
      for (int64_t r = 0; r < n; r += chunk) {
        const int64_t end = std::min(n, r + chunk);
        chunked.pack_rows(w.data() + r * ld, ld, r, end);  // caller hands only this chunk's rows
      }
      ASSERT_EQ(all.byte_size(), chunked.byte_size());
      EXPECT_EQ(std::memcmp(all.data(), chunked.data(), all.byte_size()), 0) << layout_name(id) << scheme_name(scheme);
    }
  }
}

TEST(Packing, Bf16RowsEqualFp32RowsOfTheSameValues) {
  const int64_t n = 40, k = 100;
  auto w = test::random_matrix(n, k, 5);
  std::vector<uint16_t> w_bf16(w.size());
  for (size_t i = 0; i < w.size(); ++i) {
    w_bf16[i] = float_to_bf16(w[i]);
    w[i] = bf16_to_float(w_bf16[i]);
  }
  for (Scheme scheme : kAllSchemes) {
    PackedWeights a = PackedWeights::allocate(n, k, scheme), b = PackedWeights::allocate(n, k, scheme);
    a.pack(w.data(), k);
    b.pack_rows_bf16(w_bf16.data(), k, 0, n);
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.byte_size()), 0);
  }
}

TEST(Packing, BlobIsAlignedAndSizedAsTheLayoutSays) {
  for (Scheme scheme : kAllSchemes) {
    const PackedWeights w = PackedWeights::allocate(513, 172, scheme);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(w.data()) % 64, 0u);
    EXPECT_EQ(w.byte_size(), static_cast<uint64_t>(packed_bytes(w.layout(), scheme, 513, 172)));
    EXPECT_EQ(w.byte_size() % 64, 0u);
  }
}

TEST(Serialization, ViewOverExternalMemoryGivesIdenticalResults) {
  const int64_t m = 3, n = 50, k = 96;
  const auto w = test::random_matrix(n, k, 11), x = test::random_matrix(m, k, 12);
  for (Scheme scheme : kAllSchemes) {
    PackedWeights owned = PackedWeights::allocate(n, k, scheme);
    owned.pack(w.data(), k);
    // "Write to a file": header + bytes; "mmap": a separate aligned buffer.
    PackedHeader header;
    std::memcpy(&header, &owned.header(), sizeof header);
    void* external = std::aligned_alloc(64, owned.byte_size());
    std::memcpy(external, owned.data(), owned.byte_size());
    const PackedWeights view = PackedWeights::view(header, external);
    EXPECT_FALSE(view.owns_memory());
    QuantizedActivations xq;
    xq.quantize(x.data(), m, k, k);
    std::vector<float> y1(static_cast<size_t>(m * n)), y2(y1.size());
    matmul(xq, owned, y1.data(), n, 0, n);
    matmul(xq, view, y2.data(), n, 0, n);
    EXPECT_EQ(std::memcmp(y1.data(), y2.data(), y1.size() * sizeof(float)), 0);
    EXPECT_THROW(const_cast<PackedWeights&>(view).pack(w.data(), k), std::invalid_argument);
    std::free(external);
  }
}

TEST(Serialization, BadHeadersAreRejected) {
  const PackedWeights w = PackedWeights::allocate(32, 64, Scheme::Q4G32);
  auto expect_bad = [&](PackedHeader h, const void* data) {
    EXPECT_THROW(PackedWeights::view(h, data), std::invalid_argument);
  };
  PackedHeader h = w.header();
  h.magic = 0;
  expect_bad(h, w.data());
  h = w.header();
  h.byte_size += 64;
  expect_bad(h, w.data());
  h = w.header();
  h.layout = static_cast<LayoutId>(99);
  expect_bad(h, w.data());
  h = w.header();
  h.scheme = static_cast<Scheme>(7);
  expect_bad(h, w.data());
  h = w.header();
  h.n = -5;
  expect_bad(h, w.data());
  expect_bad(w.header(), w.data() + 1);  // misaligned
  expect_bad(w.header(), nullptr);
}

TEST(Splitting, RangesAreAlignedBalancedAndCoverN) {
  for (int64_t n : {1, 15, 16, 17, 172, 513, 4096, 14336}) {
    const PackedWeights w = PackedWeights::allocate(n, 32, Scheme::Q4G32);
    for (int64_t parts : {1, 2, 3, 7, 64}) {
      int64_t expected_begin = 0, min_blocks = INT64_MAX, max_blocks = 0;
      for (int64_t p = 0; p < parts; ++p) {
        const ColumnRange r = split_columns(w, parts, p);
        EXPECT_EQ(r.begin, expected_begin);
        EXPECT_TRUE(r.begin == n || r.begin % w.row_alignment() == 0);
        EXPECT_TRUE(r.end == n || r.end % w.row_alignment() == 0);
        const int64_t blocks = (r.end - r.begin + w.row_alignment() - 1) / w.row_alignment();
        min_blocks = std::min(min_blocks, blocks);
        max_blocks = std::max(max_blocks, blocks);
        expected_begin = r.end;
      }
      EXPECT_EQ(expected_begin, n);
      EXPECT_LE(max_blocks - min_blocks, 1);
    }
  }
}

TEST(Matmul, RowAndColumnRangesComposeToTheFullResult) {
  const int64_t m = 11, n = 70, k = 130;
  const auto w = test::random_matrix(n, k, 21), x = test::random_matrix(m, k, 22);
  test::for_each_isa([&](IsaLevel level) {
    const PackedWeights packed = test::pack_for(level, w, n, k, Scheme::Q4G32);
    QuantizedActivations xq;
    xq.quantize(x.data(), m, k, k);
    std::vector<float> full(static_cast<size_t>(m * n)), parts(full.size(), -1.0f);
    matmul(xq, packed, full.data(), n, 0, n);
    const int64_t nr = packed.row_alignment();
    for (int64_t m0 = 0; m0 < m; m0 += 4) {
      for (int64_t n0 = 0; n0 < n; n0 += 2 * nr) {
        matmul(xq, packed, parts.data(), n, n0, std::min(n, n0 + 2 * nr), m0, std::min(m, m0 + 4));
      }
    }
    EXPECT_EQ(std::memcmp(full.data(), parts.data(), full.size() * sizeof(float)), 0) << isa_name(level);
  });
}

TEST(Matmul, OutputLeadingDimensionIsRespected) {
  const int64_t m = 3, n = 20, k = 40, ldy = 27;
  const auto w = test::random_matrix(n, k, 31), x = test::random_matrix(m, k, 32);
  const PackedWeights packed = test::pack_for(active_isa(), w, n, k, Scheme::Q4C);
  std::vector<float> y(static_cast<size_t>(m * ldy), 123.0f), dense(static_cast<size_t>(m * n));
  matmul_f32(x.data(), m, k, packed, y.data(), ldy);
  matmul_f32(x.data(), m, k, packed, dense.data(), n);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < ldy; ++j) {
      if (j < n) EXPECT_EQ(y[i * ldy + j], dense[i * n + j]);
      else EXPECT_EQ(y[i * ldy + j], 123.0f) << "wrote past N";
    }
  }
}

TEST(Activations, QuantizeRowsEqualsQuantizeAndPadsWithZeros) {
  const int64_t m = 5, k = 77;
  const auto x = test::random_matrix(m, k, 41);
  QuantizedActivations a, b;
  a.quantize(x.data(), m, k, k);
  b.resize(m, k);
  b.quantize_rows(x.data(), k, 2, 5);
  b.quantize_rows(x.data(), k, 0, 2);
  EXPECT_EQ(a.k_padded() % kActivationKAlign, 0);
  for (int64_t i = 0; i < m; ++i) {
    EXPECT_EQ(std::memcmp(a.row(i), b.row(i), a.k_padded()), 0);
    for (int64_t kk = k; kk < a.k_padded(); ++kk) EXPECT_EQ(a.row(i)[kk], 0);
    for (int64_t g = 0; g < a.groups(); ++g) {
      EXPECT_EQ(a.scales(i)[g], b.scales(i)[g]);
      int32_t sum = 0;
      for (int kk = 0; kk < kGroupSize; ++kk) sum += a.row(i)[g * kGroupSize + kk];
      EXPECT_EQ(a.neg8_sums(i)[g], -8 * sum);
    }
  }
}

#if defined(__x86_64__)
TEST(Activations, Avx2QuantizerIsBitIdenticalToScalar) {
  if (detected_isa() == IsaLevel::Scalar) GTEST_SKIP() << "no AVX2";
  for (int64_t k : {1, 31, 32, 33, 100, 4096}) {
    auto x = test::random_matrix(1, k, static_cast<uint32_t>(k));
    x[0] = 0.5f;  // ties for round-to-nearest-even are possible with integer-ish values too
    const int64_t kp = round_up(k, kActivationKAlign), g = kp / kGroupSize;
    std::vector<int8_t> q1(kp), q2(kp);
    std::vector<float> s1(g), s2(g);
    std::vector<int32_t> n1(g), n2(g);
    detail::quantize_q8b32_row_scalar(x.data(), k, kp, q1.data(), s1.data(), n1.data());
    detail::quantize_q8b32_row_avx2(x.data(), k, kp, q2.data(), s2.data(), n2.data());
    EXPECT_EQ(q1, q2);
    EXPECT_EQ(s1, s2);
    EXPECT_EQ(n1, n2);
  }
}
#endif

TEST(BadInput, NonsensicalDimensionsThrowClearErrors) {
  EXPECT_THROW(PackedWeights::allocate(0, 32, Scheme::Q4G32), std::invalid_argument);
  EXPECT_THROW(PackedWeights::allocate(16, 0, Scheme::Q4G32), std::invalid_argument);
  EXPECT_THROW(PackedWeights::allocate(-1, 32, Scheme::Q4C), std::invalid_argument);
  EXPECT_THROW(PackedWeights::allocate(16, -32, Scheme::Q4C), std::invalid_argument);
  EXPECT_THROW(PackedWeights::allocate(16, 32, static_cast<Scheme>(0)), std::invalid_argument);
  EXPECT_THROW(PackedWeights::allocate(16, 32, Scheme::Q4G32, static_cast<LayoutId>(42)), std::invalid_argument);
  try {
    PackedWeights::allocate(0, 32, Scheme::Q4G32);
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("N=0"), std::string::npos) << e.what();
  }

  QuantizedActivations xq;
  EXPECT_THROW(xq.quantize(nullptr, 0, 32, 32), std::invalid_argument);
  const std::vector<float> x(64, 1.0f);
  EXPECT_THROW(xq.quantize(x.data(), 1, -3, 32), std::invalid_argument);
  EXPECT_THROW(xq.quantize(x.data(), 2, 32, 16), std::invalid_argument);  // ldx < k

  PackedWeights w = PackedWeights::allocate(40, 32, Scheme::Q4G32);
  const std::vector<float> wf(40 * 32, 0.5f);
  const int64_t nr = w.row_alignment();
  EXPECT_THROW(w.pack_rows(wf.data(), 32, 1, 40), std::invalid_argument);       // unaligned begin
  EXPECT_THROW(w.pack_rows(wf.data(), 32, 0, nr + 1), std::invalid_argument);   // unaligned end
  EXPECT_THROW(w.pack_rows(wf.data(), 32, 0, 41), std::invalid_argument);       // past N
  EXPECT_THROW(w.pack_rows(wf.data(), 16, 0, 40), std::invalid_argument);       // ld < K
  EXPECT_THROW(w.pack_rows(nullptr, 32, 0, 40), std::invalid_argument);
  EXPECT_THROW(PackedWeights().pack(wf.data(), 32), std::invalid_argument);
  w.pack(wf.data(), 32);

  xq.quantize(x.data(), 2, 32, 32);
  std::vector<float> y(2 * 40);
  EXPECT_THROW(matmul(xq, w, y.data(), 40, 1, 40), std::invalid_argument);      // unaligned column
  EXPECT_THROW(matmul(xq, w, y.data(), 40, 0, 41), std::invalid_argument);
  EXPECT_THROW(matmul(xq, w, y.data(), 39, 0, 40), std::invalid_argument);      // ldy < N
  EXPECT_THROW(matmul(xq, w, nullptr, 40, 0, 40), std::invalid_argument);
  EXPECT_THROW(matmul(xq, w, y.data(), 40, 0, 40, 1, 3), std::invalid_argument);  // rows past M
  EXPECT_THROW(matmul(xq, PackedWeights(), y.data(), 40, 0, 40), std::invalid_argument);
  QuantizedActivations other_k;
  other_k.quantize(x.data(), 1, 64, 64);
  EXPECT_THROW(matmul(other_k, w, y.data(), 40, 0, 40), std::invalid_argument);
  QuantizedActivations empty;
  EXPECT_THROW(matmul(empty, w, y.data(), 40, 0, 40), std::invalid_argument);
  EXPECT_THROW(split_columns(w, 0, 0), std::invalid_argument);
  EXPECT_THROW(split_columns(w, 2, 2), std::invalid_argument);
  EXPECT_NO_THROW(matmul(xq, w, y.data(), 40, 16, 16));  // empty ranges are fine,
  EXPECT_NO_THROW(matmul(xq, w, y.data(), 40, 40, 40));  // including the one at N
}

}  // namespace
}  // namespace cpuchat::kernels
