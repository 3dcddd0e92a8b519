// Micro-kernel: GEMM (any m), q8b32 activations x Q4K weights packed 16x4, AVX-512 VNNI.
// Register tile: 6 activation rows x 32 output channels (two consecutive row blocks; a last
// odd block runs as 6 x 16, the last rows as smaller tiles), as the q4g32 6x32 kernel.
// Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni -mfma.
//
// Packing contract: kLayoutX86, Scheme::Q4K exactly as the Q4K 1x16 GEMV (see that file).
//
// Each 64 B step of nibbles is unpacked once and used by all 6 rows; each (row, group) int32
// dot starts at 0 (q is unsigned, no offset), and is folded in group order with
//   acc = fma(float(dot), (d sc_g) * a_scale, acc);  acc = fnmadd(dmin m_g, a_scale sum_a, acc)
// (bit-identical to reference_matmul). d, dmin and the group's sc/m are decoded per block.
#include <immintrin.h>

#include "ukernels/q4k_x86_common.h"

namespace cpuchat::kernels::ukernel {
namespace {
using namespace x86;

template <int MR, int NB>
inline void tile(const uint8_t* block, int64_t block_bytes, int64_t groups, const int8_t* a, int64_t a_stride,
                 const float* a_scales, const int32_t* neg8, int64_t gstride, float* y, int64_t ldy, int64_t cols,
                 const TilePrefetch& prefetch) {
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  __m512 acc[MR][NB];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    const int sub = static_cast<int>(g % kGroupsPerSuperBlock);
    const uint8_t* super = block + g / kGroupsPerSuperBlock * kQ4kSuperBytes;
    const uint8_t* wg = block + group_weights_offset(kL, Scheme::Q4K, g);
    prefetch_next_blocks<NB>(prefetch.next_blocks, block_bytes, g, groups);
    if (prefetch.ahead) prefetch_ahead<NB>(wg, block + group_weights_offset(kL, Scheme::Q4K, g + 1), block_bytes);
    __m512i dot[MR][NB];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NB; ++j) dot[i][j] = _mm512_setzero_si512();
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
    for (int j = 0; j < NB; ++j) {
      const uint8_t* sj = super + j * block_bytes;
      const __m512i d_dmin = _mm512_load_si512(sj);
      __m128i sc, m;
      q4k_sc_m_bytes(sj, sub, &sc, &m);
      const __m512 w_scale =
          _mm512_mul_ps(_mm512_cvtph_ps(_mm512_castsi512_si256(d_dmin)), _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(sc)));
      const __m512 w_min =
          _mm512_mul_ps(_mm512_cvtph_ps(_mm512_extracti64x4_epi64(d_dmin, 1)), _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(m)));
      for (int i = 0; i < MR; ++i) {
        const float a_scale = a_scales[i * gstride + g];
        acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[i][j]), _mm512_mul_ps(w_scale, _mm512_set1_ps(a_scale)),
                                    acc[i][j]);
        acc[i][j] = _mm512_fnmadd_ps(w_min, _mm512_set1_ps(q4k_activation_sum(a_scale, neg8[i * gstride + g])), acc[i][j]);
      }
    }
  }
  for (int j = 0; j < NB; ++j) {
    const int64_t c = std::min<int64_t>(16, cols - 16 * j);
    const __mmask16 mask = static_cast<__mmask16>((1u << c) - 1);
    for (int i = 0; i < MR; ++i) _mm512_mask_storeu_ps(y + i * ldy + 16 * j, mask, acc[i][j]);
  }
}

constexpr int kMR = 6;
constexpr int kNB = 2;

template <int MR, int NB>
void tile_rows(const Args& args, const uint8_t* block, int64_t m0, float* y, int64_t cols) {
  tile<MR, NB>(block, args.block_bytes, args.groups, args.a + m0 * args.a_stride, args.a_stride,
               args.a_scales + m0 * args.a_groups_stride, args.a_neg8_sums + m0 * args.a_groups_stride,
               args.a_groups_stride, y + m0 * args.ldy, args.ldy, cols, tile_prefetch<NB, kMR>(args, block, m0));
}

template <int NB>
void blocks_all_rows(const Args& args, const uint8_t* block, float* y, int64_t cols) {
  for_each_row_tile<kMR>(args.m, [&](int64_t m0, int64_t rows) {
    switch (rows) {
      case 6: tile_rows<6, NB>(args, block, m0, y, cols); break;
      case 5: tile_rows<5, NB>(args, block, m0, y, cols); break;
      case 4: tile_rows<4, NB>(args, block, m0, y, cols); break;
      case 3: tile_rows<3, NB>(args, block, m0, y, cols); break;
      case 2: tile_rows<2, NB>(args, block, m0, y, cols); break;
      case 1: tile_rows<1, NB>(args, block, m0, y, cols); break;
      default: break;
    }
  });
}

}  // namespace

void matmul_q8b32_q4kp16x4_6x32_avx512vnni(const Args& args) {
  int64_t b = 0;
  for (; b + kNB <= args.n_blocks; b += kNB) {
    blocks_all_rows<kNB>(args, args.w + b * args.block_bytes, args.y + b * 16, args.n_cols - b * 16);
  }
  for (; b < args.n_blocks; ++b) {
    blocks_all_rows<1>(args, args.w + b * args.block_bytes, args.y + b * 16, args.n_cols - b * 16);
  }
}

}  // namespace cpuchat::kernels::ukernel
