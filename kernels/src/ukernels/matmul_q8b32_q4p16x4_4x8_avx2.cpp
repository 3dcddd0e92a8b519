// Micro-kernel: GEMM (any m), q8b32 activations x q4 weights packed 16x4, AVX2 (no VNNI).
// Register tile: 4 activation rows x 8 output channels (half a row block): 4 int16 sums +
// 4 fp32 accumulators + unpacked weights fit the 16 ymm registers without spills.
// Compiled with -mavx2 -mfma.
//
// Packing contract: kLayoutX86 (see packed_layout.h / x86_common.h); half h of a 16-row
// block = bytes [32h, 32h+32) of each 64 B step. Arithmetic as in the 1x16 AVX2 GEMV:
// pmaddubsw into int16 (no saturation: <= 30480), pmaddwd(., 1), + -8*sum(a), then
// cvt + mul + FMA in group order (bit-identical to the reference).
#include <immintrin.h>

#include "ukernels/x86_common.h"

namespace cpuchat::kernels::ukernel {
namespace {
using namespace x86;

template <Scheme S, int MR>
inline void tile(const uint8_t* block, int half, int64_t groups, const int8_t* a, int64_t a_stride,
                 const float* a_scales, const int32_t* neg8, int64_t gstride, float* y, int64_t ldy, int64_t cols) {
  const __m256i low4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  __m256 acc[MR];
  for (int i = 0; i < MR; ++i) acc[i] = _mm256_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    CPUCHAT_MCA_BEGIN("4x8_avx2", S, MR, 8, 1);
    const uint8_t* wg = block + group_weights_offset(kL, S, g) + 32 * half;
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
    __m256 w_scale = _mm256_setzero_ps();
    if constexpr (S == Scheme::Q4G32) {
      const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(block + group_scales_offset(kL, g) + 16 * half));
      w_scale = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
    }
    for (int i = 0; i < MR; ++i) {
      const __m256i dot = _mm256_add_epi32(_mm256_madd_epi16(s[i], ones), _mm256_set1_epi32(neg8[i * gstride + g]));
      __m256 scale = _mm256_set1_ps(a_scales[i * gstride + g]);
      if constexpr (S == Scheme::Q4G32) scale = _mm256_mul_ps(w_scale, scale);
      acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[i]);
    }
    CPUCHAT_MCA_END("4x8_avx2", S, MR, 8, 1);
  }
  if constexpr (S == Scheme::Q4C) {
    const __m256 row_scales = _mm256_load_ps(reinterpret_cast<const float*>(block) + 8 * half);
    for (int i = 0; i < MR; ++i) acc[i] = _mm256_mul_ps(acc[i], row_scales);
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

template <Scheme S, int MR>
void tile_rows(const Args& args, const uint8_t* block, int half, int64_t m0, float* y, int64_t cols) {
  tile<S, MR>(block, half, args.groups, args.a + m0 * args.a_stride, args.a_stride,
              args.a_scales + m0 * args.a_groups_stride, args.a_neg8_sums + m0 * args.a_groups_stride,
              args.a_groups_stride, y + m0 * args.ldy, args.ldy, cols);
}

template <Scheme S>
void gemm(const Args& args) {
  for (int64_t b = 0; b < args.n_blocks; ++b) {
    const uint8_t* block = args.w + b * args.block_bytes;
    for (int half = 0; half < 2; ++half) {
      const int64_t cols = std::min<int64_t>(8, args.n_cols - b * 16 - half * 8);
      if (cols <= 0) break;
      float* y = args.y + b * 16 + half * 8;
      int64_t m0 = 0;
      for (; m0 + kMR <= args.m; m0 += kMR) tile_rows<S, kMR>(args, block, half, m0, y, cols);
      switch (args.m - m0) {
        case 3: tile_rows<S, 3>(args, block, half, m0, y, cols); break;
        case 2: tile_rows<S, 2>(args, block, half, m0, y, cols); break;
        case 1: tile_rows<S, 1>(args, block, half, m0, y, cols); break;
        default: break;
      }
    }
  }
}

}  // namespace

void matmul_q8b32_q4p16x4_4x8_avx2(const Args& args) {
  if (args.scheme == Scheme::Q4G32) {
    gemm<Scheme::Q4G32>(args);
  } else {
    gemm<Scheme::Q4C>(args);
  }
}

}  // namespace cpuchat::kernels::ukernel
