// Micro-kernel: GEMV (m = 1), q8b32 activations x Q4K weights packed 16x4, AVX-512 VNNI.
// Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni -mfma.
//
// Packing contract (kLayoutX86, Scheme::Q4K; packed_layout.h, q4k_x86_common.h):
//   - row blocks of nr=16 output channels, each zmm lane = one output row;
//   - per 256-K super-block (2304 B): [16 fp16 d][16 fp16 dmin][lo4: 128 B][hi2: 64 B]
//     then 8 groups of 4 x 64 B nibbles (q in [0, 15], low nibbles k = 4t..4t+3, high
//     nibbles k = 16+4t..16+4t+3 of step t, as the q4g32 layout).
//
// Per super-block: d and dmin of the 16 rows with one vcvtph2ps each (exact, like
// fp16_to_float); per group: vpdpbusd(q unsigned, a signed) gives the exact int32 dots, then
//   acc = fma(float(dot), (d sc_g) * a_scale, acc);  acc = fnmadd(dmin m_g, a_scale sum_a, acc)
// in that order (bit-identical to reference_matmul). No horizontal reduction.
#include <immintrin.h>

#include "ukernels/q4k_x86_common.h"

namespace cpuchat::kernels::ukernel {
namespace {
using namespace x86;

// int32 dot products of 16 rows x 32 K of one group (q in [0, 15], exact).
inline __m512i group_dot(const uint8_t* w, const int8_t* a) {
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  __m512i dot_lo = _mm512_setzero_si512(), dot_hi = _mm512_setzero_si512();  // two chains
  for (int t = 0; t < 4; ++t) {
    const __m512i v = _mm512_load_si512(w + 64 * t);
    dot_lo = _mm512_dpbusd_epi32(dot_lo, _mm512_and_si512(v, low4), _mm512_set1_epi32(load_i32(a + 4 * t)));
    dot_hi = _mm512_dpbusd_epi32(dot_hi, _mm512_and_si512(_mm512_srli_epi16(v, 4), low4),
                                 _mm512_set1_epi32(load_i32(a + 16 + 4 * t)));
  }
  return _mm512_add_epi32(dot_lo, dot_hi);
}

template <int J>
inline __m512 sub_block(const uint8_t* super, __m512 d, __m512 dmin, const int8_t* a, float a_scale, int32_t neg8,
                        __m512 acc) {
  __m128i sc, m;
  q4k_sc_m_bytes<J>(super, &sc, &m);
  const __m512 w_scale = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(sc)));
  const __m512 w_min = _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(m)));
  const __m512i dot = group_dot(super + kQ4kGroupsOffset + J * kGroupBytes, a + J * kGroupSize);
  acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(w_scale, _mm512_set1_ps(a_scale)), acc);
  return _mm512_fnmadd_ps(w_min, _mm512_set1_ps(q4k_activation_sum(a_scale, neg8)), acc);
}

void gemv_block(const Args& args, const uint8_t* block, float* y, int64_t cols) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t g = 0; g < args.groups; g += kGroupsPerSuperBlock) {
    const uint8_t* super = block + g / kGroupsPerSuperBlock * kQ4kSuperBytes;
    const __m512i d_dmin = _mm512_load_si512(super);
    const __m512 d = _mm512_cvtph_ps(_mm512_castsi512_si256(d_dmin));
    const __m512 dmin = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(d_dmin, 1));
    const int8_t* a = args.a + g * kGroupSize;
    const float* s = args.a_scales + g;
    const int32_t* n8 = args.a_neg8_sums + g;
    acc = sub_block<0>(super, d, dmin, a, s[0], n8[0], acc);
    acc = sub_block<1>(super, d, dmin, a, s[1], n8[1], acc);
    acc = sub_block<2>(super, d, dmin, a, s[2], n8[2], acc);
    acc = sub_block<3>(super, d, dmin, a, s[3], n8[3], acc);
    acc = sub_block<4>(super, d, dmin, a, s[4], n8[4], acc);
    acc = sub_block<5>(super, d, dmin, a, s[5], n8[5], acc);
    acc = sub_block<6>(super, d, dmin, a, s[6], n8[6], acc);
    acc = sub_block<7>(super, d, dmin, a, s[7], n8[7], acc);
  }
  const int64_t c = std::min<int64_t>(16, cols);
  _mm512_mask_storeu_ps(y, static_cast<__mmask16>((1u << c) - 1), acc);
}

}  // namespace

void matmul_q8b32_q4kp16x4_1x16_avx512vnni(const Args& args) {
  for (int64_t b = 0; b < args.n_blocks; ++b) {
    gemv_block(args, args.w + b * args.block_bytes, args.y + b * 16, args.n_cols - b * 16);
  }
}

}  // namespace cpuchat::kernels::ukernel
