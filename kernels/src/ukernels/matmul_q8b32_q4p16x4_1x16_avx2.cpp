// Micro-kernel: GEMV (m = 1), q8b32 activations x q4 weights packed 16x4, AVX2 (no VNNI).
// Compiled with -mavx2 -mfma.
//
// Packing contract: kLayoutX86 (see packed_layout.h / x86_common.h); a 16-row block is
// processed as two 8-row halves: bytes [32h, 32h+32) of each 64 B step hold rows 8h..8h+7.
//
// vpmaddubsw(u8 nibble 0..15, s8 activation -127..127) gives int16 pair sums of at most
// 2*15*127 = 3810, so the 8 steps of a group can be summed in int16 (8 * 3810 = 30480 <
// 32767, no saturation), then one vpmaddwd(., 1) gives the int32 per-row dot product; the
// Offset8 correction -8*sum(a) is added there. fp32: cvt, mul(scale_w, scale_a), FMA, in
// group order (bit-identical to the reference).
#include <immintrin.h>

#include "ukernels/x86_common.h"

namespace cpuchat::kernels::ukernel {
namespace {
using namespace x86;

inline __m256 bf16x8_to_f32(const uint8_t* p) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}

// int32 dot products of the 16 rows of one group, as two 8-row halves.
inline void group_dot(const uint8_t* w, const int8_t* a, int32_t neg8_sum, __m256i* dot0, __m256i* dot1) {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
  for (int t = 0; t < 4; ++t) {
    const __m256i a_lo = _mm256_set1_epi32(load_i32(a + 4 * t));
    const __m256i a_hi = _mm256_set1_epi32(load_i32(a + 16 + 4 * t));
    const __m256i v0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(w + 64 * t));
    const __m256i v1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(w + 64 * t + 32));
    s0 = _mm256_add_epi16(s0, _mm256_maddubs_epi16(_mm256_and_si256(v0, low4), a_lo));
    s0 = _mm256_add_epi16(s0, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v0, 4), low4), a_hi));
    s1 = _mm256_add_epi16(s1, _mm256_maddubs_epi16(_mm256_and_si256(v1, low4), a_lo));
    s1 = _mm256_add_epi16(s1, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v1, 4), low4), a_hi));
  }
  const __m256i ones = _mm256_set1_epi16(1), corr = _mm256_set1_epi32(neg8_sum);
  *dot0 = _mm256_add_epi32(_mm256_madd_epi16(s0, ones), corr);
  *dot1 = _mm256_add_epi32(_mm256_madd_epi16(s1, ones), corr);
}

template <Scheme S>
void gemv(const Args& args) {
  for (int64_t b = 0; b < args.n_blocks; ++b) {
    const uint8_t* block = args.w + b * args.block_bytes;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (int64_t g = 0; g < args.groups; ++g) {
      CPUCHAT_MCA_BEGIN("1x16_avx2", S, 1, 16, 1);
      const uint8_t* wg = block + group_weights_offset(kL, S, g);
      _mm_prefetch(reinterpret_cast<const char*>(wg + 2048), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(wg + 2048 + 64), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(wg + 2048 + 128), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(wg + 2048 + 192), _MM_HINT_T0);
      __m256i d0, d1;
      group_dot(wg, args.a + g * kGroupSize, args.a_neg8_sums[g], &d0, &d1);
      const __m256 a_scale = _mm256_set1_ps(args.a_scales[g]);
      if constexpr (S == Scheme::Q4G32) {
        const uint8_t* ws = block + group_scales_offset(kL, g);
        acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d0), _mm256_mul_ps(bf16x8_to_f32(ws), a_scale), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d1), _mm256_mul_ps(bf16x8_to_f32(ws + 16), a_scale), acc1);
      } else {
        acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d0), a_scale, acc0);
        acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d1), a_scale, acc1);
      }
      CPUCHAT_MCA_END("1x16_avx2", S, 1, 16, 1);
    }
    if constexpr (S == Scheme::Q4C) {
      acc0 = _mm256_mul_ps(acc0, _mm256_load_ps(reinterpret_cast<const float*>(block)));
      acc1 = _mm256_mul_ps(acc1, _mm256_load_ps(reinterpret_cast<const float*>(block) + 8));
    }
    const int64_t cols = std::min<int64_t>(16, args.n_cols - b * 16);
    float* y = args.y + b * 16;
    if (cols == 16) {
      _mm256_storeu_ps(y, acc0);
      _mm256_storeu_ps(y + 8, acc1);
    } else {
      alignas(32) float tmp[16];
      _mm256_store_ps(tmp, acc0);
      _mm256_store_ps(tmp + 8, acc1);
      store_partial(y, tmp, cols);
    }
  }
}

}  // namespace

void matmul_q8b32_q4p16x4_1x16_avx2(const Args& args) {
  if (args.scheme == Scheme::Q4G32) {
    gemv<Scheme::Q4G32>(args);
  } else {
    gemv<Scheme::Q4C>(args);
  }
}

}  // namespace cpuchat::kernels::ukernel
