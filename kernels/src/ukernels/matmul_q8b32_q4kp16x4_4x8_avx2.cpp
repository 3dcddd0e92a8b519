// Micro-kernel: GEMM (any m), q8b32 activations x Q4K weights packed 16x4, AVX2 (no VNNI).
// Register tile: 4 activation rows x 8 output channels (half a row block), as the q4g32
// 4x8 AVX2 kernel. Compiled with -mavx2 -mfma.
//
// Packing contract: kLayoutX86, Scheme::Q4K as the Q4K 1x16 AVX2 GEMV (see that file).
// Arithmetic as there: pmaddubsw into int16 (<= 30480), pmaddwd(., 1), then per group
//   acc = fma(float(dot), (d sc_g) * a_scale, acc);  acc = fnmadd(dmin m_g, a_scale sum_a, acc)
#include <immintrin.h>

#include "ukernels/q4k_x86_common.h"

namespace cpuchat::kernels::ukernel {
namespace {
using namespace x86;

template <int MR>
inline void tile(const uint8_t* block, int half, int64_t groups, const int8_t* a, int64_t a_stride,
                 const float* a_scales, const int32_t* neg8, int64_t gstride, float* y, int64_t ldy, int64_t cols) {
  const __m256i low4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  __m256 acc[MR];
  for (int i = 0; i < MR; ++i) acc[i] = _mm256_setzero_ps();
  __m256 d = _mm256_setzero_ps(), dmin = d;
  for (int64_t g = 0; g < groups; ++g) {
    const int sub = static_cast<int>(g % kGroupsPerSuperBlock);
    const uint8_t* super = block + g / kGroupsPerSuperBlock * kQ4kSuperBytes;
    if (sub == 0) {
      d = fp16x8_to_f32(super + 16 * half);
      dmin = fp16x8_to_f32(super + kQ4kDminOffset + 16 * half);
    }
    const uint8_t* wg = block + group_weights_offset(kL, Scheme::Q4K, g) + 32 * half;
    const int8_t* ag = a + g * kGroupSize;
    __m256i s[MR];
    for (int i = 0; i < MR; ++i) s[i] = _mm256_setzero_si256();
    for (int t = 0; t < 4; ++t) {
      const __m256i v = _mm256_load_si256(reinterpret_cast<const __m256i*>(wg + 64 * t));
      const __m256i lo = _mm256_and_si256(v, low4);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
      for (int i = 0; i < MR; ++i) {
        s[i] = _mm256_add_epi16(s[i], _mm256_maddubs_epi16(lo, _mm256_set1_epi32(load_i32(ag + i * a_stride + 4 * t))));
        s[i] = _mm256_add_epi16(s[i], _mm256_maddubs_epi16(hi, _mm256_set1_epi32(load_i32(ag + i * a_stride + 16 + 4 * t))));
      }
    }
    __m128i sc, m;
    q4k_sc_m_bytes(super, sub, &sc, &m);
    if (half) {
      sc = _mm_srli_si128(sc, 8);
      m = _mm_srli_si128(m, 8);
    }
    const __m256 w_scale = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(sc)));
    const __m256 w_min = _mm256_mul_ps(dmin, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(m)));
    for (int i = 0; i < MR; ++i) {
      const __m256i dot = _mm256_madd_epi16(s[i], ones);
      const float a_scale = a_scales[i * gstride + g];
      acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(w_scale, _mm256_set1_ps(a_scale)), acc[i]);
      acc[i] = _mm256_fnmadd_ps(w_min, _mm256_set1_ps(q4k_activation_sum(a_scale, neg8[i * gstride + g])), acc[i]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    if (cols >= 8) {
      _mm256_storeu_ps(y + i * ldy, acc[i]);
    } else {
      alignas(32) float tmp[8];
      _mm256_store_ps(tmp, acc[i]);
      store_partial(y + i * ldy, tmp, cols);
    }
  }
}

constexpr int kMR = 4;

template <int MR>
void tile_rows(const Args& args, const uint8_t* block, int half, int64_t m0, float* y, int64_t cols) {
  tile<MR>(block, half, args.groups, args.a + m0 * args.a_stride, args.a_stride,
           args.a_scales + m0 * args.a_groups_stride, args.a_neg8_sums + m0 * args.a_groups_stride,
           args.a_groups_stride, y + m0 * args.ldy, args.ldy, cols);
}

}  // namespace

void matmul_q8b32_q4kp16x4_4x8_avx2(const Args& args) {
  for (int64_t b = 0; b < args.n_blocks; ++b) {
    const uint8_t* block = args.w + b * args.block_bytes;
    for (int half = 0; half < 2; ++half) {
      const int64_t cols = std::min<int64_t>(8, args.n_cols - b * 16 - half * 8);
      if (cols <= 0) break;
      float* y = args.y + b * 16 + half * 8;
      int64_t m0 = 0;
      for (; m0 + kMR <= args.m; m0 += kMR) tile_rows<kMR>(args, block, half, m0, y, cols);
      switch (args.m - m0) {
        case 3: tile_rows<3>(args, block, half, m0, y, cols); break;
        case 2: tile_rows<2>(args, block, half, m0, y, cols); break;
        case 1: tile_rows<1>(args, block, half, m0, y, cols); break;
        default: break;
      }
    }
  }
}

}  // namespace cpuchat::kernels::ukernel
