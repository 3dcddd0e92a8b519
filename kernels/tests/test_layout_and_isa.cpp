// The layout definition itself and the ISA selection API.
#include <gtest/gtest.h>

#include <set>

#include "cpuchat_kernels/int4_matmul.h"
#include "test_util.h"

namespace cpuchat::kernels {
namespace {

class LayoutTest : public ::testing::TestWithParam<LayoutId> {};

TEST_P(LayoutTest, EveryValueHasItsOwnNibble) {
  const Layout& l = *find_layout(GetParam());
  std::set<std::pair<int64_t, bool>> seen;
  for (int r = 0; r < l.nr; ++r) {
    for (int k = 0; k < kGroupSize; ++k) {
      const NibblePos p = nibble_pos(l, r, k);
      ASSERT_GE(p.byte, 0);
      ASSERT_LT(p.byte, group_bytes(l));
      EXPECT_TRUE(seen.insert({p.byte, p.high}).second) << "r=" << r << " k=" << k;
    }
  }
  EXPECT_EQ(static_cast<int64_t>(seen.size()), 2 * group_bytes(l));
}

TEST_P(LayoutTest, OffsetsTileTheBlockWithoutOverlap) {
  const Layout& l = *find_layout(GetParam());
  for (Scheme s : {Scheme::Q4G32, Scheme::Q4C}) {
    for (int64_t k : {1, 31, 32, 33, 64, 172, 4096}) {
      const int64_t groups = group_count(l, k), bb = block_bytes(l, s, k);
      std::vector<int> used(static_cast<size_t>(bb), 0);
      auto mark = [&](int64_t off, int64_t len) {
        for (int64_t i = off; i < off + len; ++i) {
          ASSERT_LT(i, bb);
          used[i]++;
        }
      };
      if (s == Scheme::Q4C) mark(0, row_scale_bytes(l));
      for (int64_t g = 0; g < groups; ++g) {
        mark(group_weights_offset(l, s, g), group_bytes(l));
        if (s == Scheme::Q4G32) mark(group_scales_offset(l, g), group_scale_bytes(l));
      }
      for (int64_t i = 0; i < bb; ++i) ASSERT_EQ(used[i], 1) << "byte " << i << " k=" << k;
      EXPECT_GE(groups * kGroupSize, k);
      EXPECT_LE(padded_k(l, k), round_up(k, kActivationKAlign));  // activations cover the padding
      EXPECT_EQ(packed_bytes(l, s, 513, k) % 64, 0);
    }
  }
}

// Q4K: d, dmin, the 6-bit scale bits (4 low + 2 high of each sc and m) and the nibbles of
// every super-block each have their own bits, and the super-blocks tile the block.
TEST_P(LayoutTest, Q4kSuperBlocksTileTheBlockBitByBit) {
  const Layout& l = *find_layout(GetParam());
  for (int64_t k : {1, 255, 256, 257, 4096}) {
    const int64_t bb = block_bytes(l, Scheme::Q4K, k), supers = q4k_super_blocks(k);
    ASSERT_EQ(bb, supers * q4k_super_block_bytes(l));
    ASSERT_EQ(weight_groups(l, Scheme::Q4K, k), supers * kGroupsPerSuperBlock);
    EXPECT_LE(supers * kSuperBlockSize, round_up(k, kActivationKAlign));  // activations cover the padding
    std::vector<int> bits(static_cast<size_t>(bb * 8), 0);
    auto mark = [&](int64_t byte, int bit0, int nbits) {
      for (int b = bit0; b < bit0 + nbits; ++b) {
        ASSERT_LT(byte, bb);
        bits[byte * 8 + b]++;
      }
    };
    for (int64_t s = 0; s < supers; ++s) {
      const int64_t base = s * q4k_super_block_bytes(l);
      for (int r = 0; r < l.nr; ++r) {
        mark(base + q4k_d_offset() + 2 * r, 0, 8), mark(base + q4k_d_offset() + 2 * r + 1, 0, 8);
        mark(base + q4k_dmin_offset(l) + 2 * r, 0, 8), mark(base + q4k_dmin_offset(l) + 2 * r + 1, 0, 8);
        for (int j = 0; j < kGroupsPerSuperBlock; ++j) {
          const Q4kScalePos p = q4k_scale_pos(l, j, r);
          mark(base + p.lo4_byte, 0, 8);                // sc low 4 | m low 4
          mark(base + p.hi2_byte, p.hi2_shift, 2);      // sc high 2
          mark(base + p.hi2_byte, p.hi2_shift + 4, 2);  // m high 2
        }
      }
      for (int j = 0; j < kGroupsPerSuperBlock; ++j) {
        const int64_t g = s * kGroupsPerSuperBlock + j;
        for (int64_t i = 0; i < group_bytes(l); ++i) mark(group_weights_offset(l, Scheme::Q4K, g) + i, 0, 8);
      }
    }
    for (size_t i = 0; i < bits.size(); ++i) ASSERT_EQ(bits[i], 1) << "bit " << i << " k=" << k;
    EXPECT_EQ(packed_bytes(l, Scheme::Q4K, 513, k) % 64, 0);
    EXPECT_EQ(bb * 8, l.nr * round_up(k, kSuperBlockSize) * 9 / 2);  // 4.5 bits per weight
  }
}

TEST_P(LayoutTest, NibbleCodingRoundTrips) {
  const Layout& l = *find_layout(GetParam());
  for (int q = -8; q <= 7; ++q) EXPECT_EQ(decode_nibble(l, encode_nibble(l, q)), q);
}

INSTANTIATE_TEST_SUITE_P(All, LayoutTest, ::testing::Values(LayoutId::X86_N16K4, LayoutId::ARM_N8K8),
                         [](const auto& info) { return std::string(layout_name(info.param)); });

TEST(Isa, NamesParseBack) {
  for (IsaLevel l : {IsaLevel::Scalar, IsaLevel::Avx2, IsaLevel::Avx512Vnni, IsaLevel::AmxInt8, IsaLevel::Dotprod,
                     IsaLevel::I8mm}) {
    IsaLevel parsed;
    ASSERT_TRUE(parse_isa(isa_name(l), &parsed));
    EXPECT_EQ(parsed, l);
  }
  IsaLevel dummy;
  EXPECT_FALSE(parse_isa("sse9", &dummy));
}

TEST(Isa, SupportedLevelsStartWithScalarAndEndWithDetected) {
  const std::vector<IsaLevel> levels = supported_isas();
  ASSERT_FALSE(levels.empty());
  EXPECT_EQ(levels.front(), IsaLevel::Scalar);
  EXPECT_EQ(levels.back(), detected_isa());
}

TEST(Isa, ForcingClampsToSupportedLevels) {
  test::IsaGuard guard;
  for (IsaLevel l : supported_isas()) {
    EXPECT_EQ(force_isa(l), l);
    EXPECT_EQ(active_isa(), l);
  }
  // The highest level of each architecture: on this CPU it clamps to the best supported one.
#if defined(__x86_64__)
  EXPECT_EQ(force_isa(IsaLevel::AmxInt8), detected_isa());
  EXPECT_EQ(force_isa(IsaLevel::I8mm), detected_isa());  // other architecture: best supported
#elif defined(__aarch64__)
  EXPECT_EQ(force_isa(IsaLevel::I8mm), detected_isa());
  EXPECT_EQ(force_isa(IsaLevel::Avx2), detected_isa());
  EXPECT_EQ(force_isa(IsaLevel::AmxInt8), detected_isa());
  if (detected_isa() == IsaLevel::Scalar) EXPECT_EQ(force_isa(IsaLevel::Dotprod), IsaLevel::Scalar);
#endif
  EXPECT_EQ(force_isa(IsaLevel::Scalar), IsaLevel::Scalar);
}

TEST(Isa, EachLevelSelectsItsKernels) {
  test::for_each_isa([](IsaLevel level) {
    const PackedWeights w = PackedWeights::allocate(16, 32, Scheme::Q4G32);
    EXPECT_EQ(w.header().layout, layout_for_isa(level));
    const std::string gemv = selected_kernel_name(w, 1), gemm = selected_kernel_name(w, 8);
    std::printf("[ isa      ] %-10s gemv=%s gemm=%s\n", isa_name(level), gemv.c_str(), gemm.c_str());
    if (level == IsaLevel::Scalar) {
      EXPECT_NE(gemv.find("scalar"), std::string::npos);
    } else if (level == IsaLevel::I8mm) {
      EXPECT_NE(gemm.find("i8mm"), std::string::npos);
      EXPECT_NE(gemv.find("dotprod"), std::string::npos);
    } else if (level == IsaLevel::AmxInt8) {  // AMX for tall activations only
      EXPECT_NE(gemv.find("avx512vnni"), std::string::npos);
      EXPECT_NE(gemm.find("avx512vnni"), std::string::npos);
      EXPECT_NE(std::string(selected_kernel_name(w, 64)).find("amx"), std::string::npos);
    } else {
      EXPECT_NE(gemv.find(isa_name(level)), std::string::npos);
      EXPECT_NE(gemm.find(isa_name(level)), std::string::npos);
    }
  });
}

}  // namespace
}  // namespace cpuchat::kernels
