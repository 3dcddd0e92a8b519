// Micro-kernel: GEMM (any m), q8b32 activations x Q4K weights packed 16x4, Intel AMX-INT8
// (tiles), with AVX-512 for unpacking and the fp32 side.
// Tile: up to 16 activation rows x 16 output channels (one row block), as the q4g32 AMX kernel;
// the loops are ukernels/amx_common.h's.
// Compiled with the AVX-512 VNNI flags + -mgfni -mamx-tile -mamx-int8.
//
// Packing contract: kLayoutX86, Scheme::Q4K exactly as the Q4K 1x16 GEMV (see that file). The
// nibbles' 64-byte steps are B tiles already (low nibbles of step t: B row t, high: row 4 + t);
// q is unsigned with no offset, so a group unpacks with and / shift+and, and one TDPBSUD
// (signed activations x unsigned q) gives each row's exact int32 dot. The fold is the Q4K 6x32
// kernel's, in group order:
//   acc = fma(float(dot), (d sc_g) * a_scale, acc);  acc = fnmadd(dmin m_g, a_scale sum_a, acc)
// (bit-identical to reference_matmul). d, dmin and the group's sc/m are decoded per group.
#include <immintrin.h>

#include "ukernels/amx_common.h"
#include "ukernels/q4k_x86_common.h"

namespace cpuchat::kernels::ukernel {
namespace {
using namespace x86;

struct Q4kFormat {
  static constexpr bool kSignedWeights = false;

  static void unpack(const uint8_t* block, int64_t groups, uint8_t* b_tiles) {
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    for (int64_t g = 0; g < groups; ++g) {
      const uint8_t* wg = block + group_weights_offset(kL, Scheme::Q4K, g);
      uint8_t* b = b_tiles + g * kBTileBytes;
      for (int t = 0; t < 4; ++t) {
        const __m512i v = _mm512_load_si512(wg + 64 * t);
        _mm512_store_si512(b + 64 * t, _mm512_and_si512(v, low4));
        _mm512_store_si512(b + 64 * (4 + t), _mm512_and_si512(_mm512_srli_epi16(v, 4), low4));
      }
    }
  }

  template <int R>
  static void fold(const int32_t* dots, const uint8_t* block, int64_t g, const RowScales& rows, __m512* acc) {
    const uint8_t* super = block + g / kGroupsPerSuperBlock * kQ4kSuperBytes;
    const __m512i d_dmin = _mm512_load_si512(super);
    __m128i sc, m;
    q4k_sc_m_bytes(super, static_cast<int>(g % kGroupsPerSuperBlock), &sc, &m);
    const __m512 w_scale =
        _mm512_mul_ps(_mm512_cvtph_ps(_mm512_castsi512_si256(d_dmin)), _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(sc)));
    const __m512 w_min =
        _mm512_mul_ps(_mm512_cvtph_ps(_mm512_extracti64x4_epi64(d_dmin, 1)), _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(m)));
    for (int i = 0; i < R; ++i) {
      const float a_scale = rows.a_scales[i * rows.stride + g];
      const __m512 dot = _mm512_cvtepi32_ps(_mm512_load_si512(dots + 16 * i));
      acc[i] = _mm512_fmadd_ps(dot, _mm512_mul_ps(w_scale, _mm512_set1_ps(a_scale)), acc[i]);
      acc[i] = _mm512_fnmadd_ps(w_min, _mm512_set1_ps(q4k_activation_sum(a_scale, rows.neg8[i * rows.stride + g])), acc[i]);
    }
  }

  template <int R>
  static void finish(const uint8_t*, __m512*) {}
};

}  // namespace

void matmul_q8b32_q4kp16x4_16x16_amx(const Args& args) { amx_gemm<Q4kFormat>(args); }

}  // namespace cpuchat::kernels::ukernel
