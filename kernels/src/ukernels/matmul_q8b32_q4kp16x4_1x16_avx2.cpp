// Micro-kernel: GEMV (m = 1), q8b32 activations x Q4K weights packed 16x4, AVX2 (no VNNI).
// Compiled with -mavx2 -mfma (no F16C: fp16 super-scales are converted with integer ops).
//
// Packing contract: kLayoutX86, Scheme::Q4K (packed_layout.h, q4k_x86_common.h); a 16-row
// block is processed as two 8-row halves: bytes [32h, 32h+32) of each 64 B step hold rows
// 8h..8h+7, and rows 8h.. of d, dmin, sc, m are the halves of their 16-entry runs.
//
// vpmaddubsw(q 0..15, a -127..127): int16 pair sums <= 3810, 8 steps sum to <= 30480 (no
// saturation), vpmaddwd(., 1) -> exact int32 dots. Then, in group order,
//   acc = fma(float(dot), (d sc_g) * a_scale, acc);  acc = fnmadd(dmin m_g, a_scale sum_a, acc)
// (bit-identical to reference_matmul).
#include <immintrin.h>

#include "ukernels/q4k_x86_common.h"

namespace cpuchat::kernels::ukernel {
namespace {
using namespace x86;

// int32 dot products of the 16 rows of one group, as two 8-row halves.
inline void group_dot(const uint8_t* w, const int8_t* a, __m256i* dot0, __m256i* dot1) {
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
  const __m256i ones = _mm256_set1_epi16(1);
  *dot0 = _mm256_madd_epi16(s0, ones);
  *dot1 = _mm256_madd_epi16(s1, ones);
}

inline __m256 bytes_to_f32(__m128i v) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)); }

void gemv_block(const Args& args, const uint8_t* block, float* y, int64_t cols) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  __m256 d0 = _mm256_setzero_ps(), d1 = d0, dmin0 = d0, dmin1 = d0;
  for (int64_t g = 0; g < args.groups; ++g) {
    const int sub = static_cast<int>(g % kGroupsPerSuperBlock);
    const uint8_t* super = block + g / kGroupsPerSuperBlock * kQ4kSuperBytes;
    if (sub == 0) {
      d0 = fp16x8_to_f32(super);
      d1 = fp16x8_to_f32(super + 16);
      dmin0 = fp16x8_to_f32(super + kQ4kDminOffset);
      dmin1 = fp16x8_to_f32(super + kQ4kDminOffset + 16);
    }
    __m128i sc, m;
    q4k_sc_m_bytes(super, sub, &sc, &m);
    __m256i dot0, dot1;
    group_dot(block + group_weights_offset(kL, Scheme::Q4K, g), args.a + g * kGroupSize, &dot0, &dot1);
    const float a_scale_s = args.a_scales[g];
    const __m256 a_scale = _mm256_set1_ps(a_scale_s);
    const __m256 a_sum = _mm256_set1_ps(q4k_activation_sum(a_scale_s, args.a_neg8_sums[g]));
    const __m256 s0 = _mm256_mul_ps(d0, bytes_to_f32(sc)), s1 = _mm256_mul_ps(d1, bytes_to_f32(_mm_srli_si128(sc, 8)));
    const __m256 m0 = _mm256_mul_ps(dmin0, bytes_to_f32(m)), m1 = _mm256_mul_ps(dmin1, bytes_to_f32(_mm_srli_si128(m, 8)));
    acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot0), _mm256_mul_ps(s0, a_scale), acc0);
    acc0 = _mm256_fnmadd_ps(m0, a_sum, acc0);
    acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot1), _mm256_mul_ps(s1, a_scale), acc1);
    acc1 = _mm256_fnmadd_ps(m1, a_sum, acc1);
  }
  if (cols >= 16) {
    _mm256_storeu_ps(y, acc0);
    _mm256_storeu_ps(y + 8, acc1);
  } else {
    alignas(32) float tmp[16];
    _mm256_store_ps(tmp, acc0);
    _mm256_store_ps(tmp + 8, acc1);
    store_partial(y, tmp, cols);
  }
}

}  // namespace

void matmul_q8b32_q4kp16x4_1x16_avx2(const Args& args) {
  for (int64_t b = 0; b < args.n_blocks; ++b) {
    gemv_block(args, args.w + b * args.block_bytes, args.y + b * 16, args.n_cols - b * 16);
  }
}

}  // namespace cpuchat::kernels::ukernel
