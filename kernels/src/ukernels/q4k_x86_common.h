// Shared inline helpers for the x86 Q4K micro-kernels (kLayoutX86, Scheme::Q4K). Included only
// by files compiled with AVX2 (or AVX-512) flags; everything is `static inline`.
#pragma once

#include <immintrin.h>

#include "ukernels/x86_common.h"

namespace cpuchat::kernels::ukernel::x86 {

constexpr int64_t kQ4kSuperBytes = q4k_super_block_bytes(kL);  // 2304
constexpr int64_t kQ4kDminOffset = q4k_dmin_offset(kL);        // 32
constexpr int64_t kQ4kLo4Offset = q4k_lo4_offset(kL);          // 64: 128 B, 16 B per sub-block
constexpr int64_t kQ4kHi2Offset = q4k_hi2_offset(kL);          // 192: 64 B
constexpr int64_t kQ4kGroupsOffset = q4k_groups_offset(kL);    // 256
static_assert(kQ4kSuperBytes == 2304 && kQ4kLo4Offset == 64 && kQ4kHi2Offset == 192 && kQ4kGroupsOffset == 256, "");
// Sub-block j, row r: low 4 bits at lo4[16 j + r]; high 2 bits at hi2[16 (j % 4) + r] >> 2 (j / 4).
static_assert(q4k_scale_pos(kL, 5, 3).lo4_byte == kQ4kLo4Offset + 16 * 5 + 3, "");
static_assert(q4k_scale_pos(kL, 5, 3).hi2_byte == kQ4kHi2Offset + 16 * 1 + 3 && q4k_scale_pos(kL, 5, 3).hi2_shift == 2, "");
static_assert(group_weights_offset(kL, Scheme::Q4K, 9) == kQ4kSuperBytes + kQ4kGroupsOffset + kGroupBytes, "");

// The 16 rows' 6-bit sc (J) and m of sub-block J as bytes: lanes 0..15 of an xmm.
template <int J>
static inline void q4k_sc_m_bytes(const uint8_t* super, __m128i* sc, __m128i* m) {
  const __m128i low4 = _mm_set1_epi8(0x0F), low2 = _mm_set1_epi8(0x03);
  const __m128i lo = _mm_load_si128(reinterpret_cast<const __m128i*>(super + kQ4kLo4Offset + 16 * J));
  const __m128i hi = _mm_srli_epi16(_mm_load_si128(reinterpret_cast<const __m128i*>(super + kQ4kHi2Offset + 16 * (J % 4))),
                                    2 * (J / 4));
  *sc = _mm_or_si128(_mm_and_si128(lo, low4), _mm_slli_epi16(_mm_and_si128(hi, low2), 4));
  *m = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(lo, 4), low4), _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(hi, 4), low2), 4));
}

// Same for a run-time sub-block index j.
static inline void q4k_sc_m_bytes(const uint8_t* super, int j, __m128i* sc, __m128i* m) {
  const __m128i low4 = _mm_set1_epi8(0x0F), low2 = _mm_set1_epi8(0x03);
  const __m128i lo = _mm_load_si128(reinterpret_cast<const __m128i*>(super + kQ4kLo4Offset + 16 * j));
  const __m128i hi = _mm_srl_epi16(_mm_load_si128(reinterpret_cast<const __m128i*>(super + kQ4kHi2Offset + 16 * (j % 4))),
                                   _mm_cvtsi32_si128(2 * (j / 4)));
  *sc = _mm_or_si128(_mm_and_si128(lo, low4), _mm_slli_epi16(_mm_and_si128(hi, low2), 4));
  *m = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(lo, 4), low4), _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(hi, 4), low2), 4));
}

// a_scale * sum(a) of one activation block, from the -8 * sum the quantizer stores (exact * -1/8).
static inline float q4k_activation_sum(float a_scale, int32_t neg8_sum) {
  return a_scale * (static_cast<float>(neg8_sum) * -0.125f);
}

#if defined(__AVX2__)
// 8 fp16 -> fp32 without F16C, exact (normal: rebias the exponent; subnormal: mant * 2^-24,
// both exact, and independent of the DAZ/FTZ modes). Same values as fp16_to_float.
static inline __m256 fp16x8_to_f32(const uint8_t* p) {
  const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m256i magnitude = _mm256_and_si256(h, _mm256_set1_epi32(0x7FFF));
  const __m256 normal = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_slli_epi32(magnitude, 13), _mm256_set1_epi32(0x38000000)));
  const __m256 subnormal = _mm256_mul_ps(_mm256_cvtepi32_ps(magnitude), _mm256_set1_ps(5.9604644775390625e-8f));  // 2^-24
  const __m256 is_subnormal = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(0x400), magnitude));
  const __m256 value = _mm256_blendv_ps(normal, subnormal, is_subnormal);
  const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(h, _mm256_set1_epi32(0x8000)), 16);
  return _mm256_or_ps(value, _mm256_castsi256_ps(sign));
}
#endif

}  // namespace cpuchat::kernels::ukernel::x86
