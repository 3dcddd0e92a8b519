// Micro-kernel: GEMM (any m), q8b32 activations x q4 weights packed 16x4, AVX-512 VNNI.
// Register tile: 6 activation rows x 32 output channels (two consecutive row blocks; a last
// odd block runs as 6 x 16); m rows run as ceil(m / 6) tiles of nearly equal size.
// Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni -mfma.
//
// Packing contract: kLayoutX86 exactly as the 1x16 GEMV (see that file / x86_common.h).
//
// Each 64 B step of nibbles is unpacked once (and, shift+and) into two zmm of u8 and used by
// all 6 rows, each broadcast activation by both blocks: per group 96 vpdpbusd for 24 unpack
// ops. Each (row, group) int32 accumulator starts at -8*sum(a) (Offset8 correction) and is
// folded into the fp32 accumulator with one cvt + mul + FMA in group order (bit-identical to
// the reference).
// Loop order: block pair outer, 6-row tiles inner, so the pair (72 KiB at K=4096) stays in
// L2 while every activation row passes over it.
#include <immintrin.h>

#include "ukernels/x86_avx512_common.h"
#include "ukernels/x86_common.h"

namespace cpuchat::kernels::ukernel {
namespace {
using namespace x86;

// MR activation rows x NB row blocks (16 * NB output channels).
template <Scheme S, int MR, int NB>
inline void tile(const uint8_t* block, int64_t block_bytes, int64_t groups, const int8_t* a, int64_t a_stride,
                 const float* a_scales, const int32_t* neg8, int64_t gstride, float* y, int64_t ldy, int64_t cols,
                 const TilePrefetch& prefetch) {
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  __m512 acc[MR][NB];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    CPUCHAT_MCA_BEGIN("6x32_avx512vnni", S, MR, 16 * NB, 1);
    const uint8_t* wg = block + group_weights_offset(kL, S, g);
    prefetch_next_blocks<NB>(prefetch.next_blocks, block_bytes, g, groups);
    if (prefetch.ahead) prefetch_ahead<NB>(wg, block + group_weights_offset(kL, S, g + 1), block_bytes);
    __m512i dot[MR][NB];
    for (int i = 0; i < MR; ++i) {
      const __m512i init = _mm512_set1_epi32(neg8[i * gstride + g]);
      for (int j = 0; j < NB; ++j) dot[i][j] = init;
    }
    const int8_t* ag = a + g * kGroupSize;
    for (int t = 0; t < 4; ++t) {
      __m512i lo[NB], hi[NB];
      for (int j = 0; j < NB; ++j) {
        const __m512i v = _mm512_load_si512(wg + j * block_bytes + 64 * t);
        lo[j] = _mm512_and_si512(v, low4);
        hi[j] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
      }
      for (int i = 0; i < MR; ++i) {
        const __m512i a_lo = _mm512_set1_epi32(load_i32(ag + i * a_stride + 4 * t));
        const __m512i a_hi = _mm512_set1_epi32(load_i32(ag + i * a_stride + 16 + 4 * t));
        for (int j = 0; j < NB; ++j) {
          dot[i][j] = _mm512_dpbusd_epi32(dot[i][j], lo[j], a_lo);
          dot[i][j] = _mm512_dpbusd_epi32(dot[i][j], hi[j], a_hi);
        }
      }
    }
    if constexpr (S == Scheme::Q4G32) {
      __m512 w_scale[NB];
      for (int j = 0; j < NB; ++j) w_scale[j] = load_bf16x16_as_f32(block + j * block_bytes + group_scales_offset(kL, g));
      for (int i = 0; i < MR; ++i) {
        const __m512 a_scale = _mm512_set1_ps(a_scales[i * gstride + g]);
        for (int j = 0; j < NB; ++j) {
          acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[i][j]), _mm512_mul_ps(w_scale[j], a_scale), acc[i][j]);
        }
      }
    } else {
      for (int i = 0; i < MR; ++i) {
        const __m512 a_scale = _mm512_set1_ps(a_scales[i * gstride + g]);
        for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[i][j]), a_scale, acc[i][j]);
      }
    }
    CPUCHAT_MCA_END("6x32_avx512vnni", S, MR, 16 * NB, 1);
  }
  for (int j = 0; j < NB; ++j) {
    if constexpr (S == Scheme::Q4C) {
      const __m512 row_scales = _mm512_load_ps(block + j * block_bytes);
      for (int i = 0; i < MR; ++i) acc[i][j] = _mm512_mul_ps(acc[i][j], row_scales);
    }
    const int64_t c = std::min<int64_t>(16, cols - 16 * j);
    const __mmask16 mask = static_cast<__mmask16>((1u << c) - 1);
    for (int i = 0; i < MR; ++i) _mm512_mask_storeu_ps(y + i * ldy + 16 * j, mask, acc[i][j]);
  }
}

// 6 x 2 blocks: 12 int32 + 12 fp32 accumulators + 4 unpacked weight registers + constants
// fit the 32 zmm registers (measured on Zen 5, m=128, K=4096, GOPS per core: 8x16 ~590,
// 4x32 ~720, 6x32 ~780, 8x32 ~650 (spills)).
constexpr int kMR = 6;
constexpr int kNB = 2;

template <Scheme S, int MR, int NB>
void tile_rows(const Args& args, const uint8_t* block, int64_t m0, float* y, int64_t cols) {
  tile<S, MR, NB>(block, args.block_bytes, args.groups, args.a + m0 * args.a_stride, args.a_stride,
                  args.a_scales + m0 * args.a_groups_stride, args.a_neg8_sums + m0 * args.a_groups_stride,
                  args.a_groups_stride, y + m0 * args.ldy, args.ldy, cols, tile_prefetch<NB, kMR>(args, block, m0));
}

template <Scheme S, int NB>
void blocks_all_rows(const Args& args, const uint8_t* block, float* y, int64_t cols) {
  static_assert(kMR == 6, "the cases below");
  for_each_row_tile<kMR>(args.m, [&](int64_t m0, int64_t rows) {
    switch (rows) {
      case 6: tile_rows<S, 6, NB>(args, block, m0, y, cols); break;
      case 5: tile_rows<S, 5, NB>(args, block, m0, y, cols); break;
      case 4: tile_rows<S, 4, NB>(args, block, m0, y, cols); break;
      case 3: tile_rows<S, 3, NB>(args, block, m0, y, cols); break;
      case 2: tile_rows<S, 2, NB>(args, block, m0, y, cols); break;
      case 1: tile_rows<S, 1, NB>(args, block, m0, y, cols); break;
      default: break;
    }
  });
}

template <Scheme S>
void gemm(const Args& args) {
  int64_t b = 0;
  for (; b + kNB <= args.n_blocks; b += kNB) {
    blocks_all_rows<S, kNB>(args, args.w + b * args.block_bytes, args.y + b * 16, args.n_cols - b * 16);
  }
  for (; b < args.n_blocks; ++b) {
    blocks_all_rows<S, 1>(args, args.w + b * args.block_bytes, args.y + b * 16, args.n_cols - b * 16);
  }
}

}  // namespace

void matmul_q8b32_q4p16x4_6x32_avx512vnni(const Args& args) {
  if (args.scheme == Scheme::Q4G32) {
    gemm<Scheme::Q4G32>(args);
  } else {
    gemm<Scheme::Q4C>(args);
  }
}

}  // namespace cpuchat::kernels::ukernel
