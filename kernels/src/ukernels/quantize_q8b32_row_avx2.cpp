// Activation quantizer (fp32 -> q8b32), AVX2. Compiled with -mavx2 -mfma.
// Bit-identical to quantize_q8b32_row_scalar: same amax, same 127/amax, x * inv rounded by
// cvtps2dq (round to nearest even, as nearbyint in the default rounding mode).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "cpuchat_kernels/packed_layout.h"
#include "quantize.h"

namespace cpuchat::kernels::detail {
namespace {

inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

inline int32_t hsum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

void quantize_block(const float* x, int8_t* q, float* scale, int32_t* neg8_sum) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 v[4];
  __m256 amax8 = _mm256_setzero_ps();
  for (int i = 0; i < 4; ++i) {
    v[i] = _mm256_loadu_ps(x + 8 * i);
    amax8 = _mm256_max_ps(amax8, _mm256_and_ps(v[i], abs_mask));
  }
  const float amax = hmax(amax8);
  const __m256 inv = _mm256_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
  const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
  __m256i qi[4];
  __m256i sum = _mm256_setzero_si256();
  for (int i = 0; i < 4; ++i) {
    qi[i] = _mm256_min_epi32(hi, _mm256_max_epi32(lo, _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inv))));
    sum = _mm256_add_epi32(sum, qi[i]);
  }
  // int32 -> int8 keeping order: packs work per 128-bit lane, the permute restores it.
  const __m256i p01 = _mm256_packs_epi32(qi[0], qi[1]), p23 = _mm256_packs_epi32(qi[2], qi[3]);
  const __m256i p = _mm256_packs_epi16(p01, p23);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(q),
                      _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
  *scale = amax / 127.0f;
  *neg8_sum = -8 * hsum(sum);
}

}  // namespace

void quantize_q8b32_row_avx2(const float* x, int64_t k, int64_t k_padded, int8_t* q, float* scales,
                             int32_t* neg8_sums) {
  for (int64_t g = 0; g * kGroupSize < k_padded; ++g) {
    const int64_t begin = g * kGroupSize;
    if (begin + kGroupSize <= k) {
      quantize_block(x + begin, q + begin, scales + g, neg8_sums + g);
    } else {
      alignas(32) float tail[kGroupSize] = {};
      if (begin < k) std::memcpy(tail, x + begin, static_cast<size_t>(k - begin) * sizeof(float));
      quantize_block(tail, q + begin, scales + g, neg8_sums + g);
    }
  }
}

}  // namespace cpuchat::kernels::detail
