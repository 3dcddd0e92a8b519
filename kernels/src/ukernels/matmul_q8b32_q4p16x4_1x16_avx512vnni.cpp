// Micro-kernel: GEMV (m = 1), q8b32 activations x q4 weights packed 16x4, AVX-512 VNNI.
// Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni -mfma.
//
// Packing contract (kLayoutX86, see packed_layout.h and x86_common.h):
//   - row blocks of nr=16 output channels, each lane of a zmm = one output row;
//   - per group, 4 x 64 B of Offset8 nibbles: step t's low nibbles are k = 4t..4t+3 and its
//     high nibbles k = 16+4t..16+4t+3 of the 16 rows (4 bytes per row = one vpdpbusd lane);
//   - Q4G32: chunks of [2 x 16 bf16 scales][group 2c][group 2c+1] (576 B, 64 B aligned);
//     Q4C: [16 fp32 row scales] then the groups.
//
// Per group: the 4 activation bytes of a step are broadcast to every lane (embedded
// broadcast), vpdpbusd(unsigned nibbles, signed activations) accumulates 16 row dot products
// at once starting from -8*sum(a) (undoes the +8 of Offset8), then one cvt + FMA with
// scale_w * scale_a. No horizontal reduction anywhere: lane r is output row r.
// The block is read strictly sequentially; blocks are contiguous, so the whole column range
// is one stream.
#include <immintrin.h>

#include "ukernels/x86_avx512_common.h"
#include "ukernels/x86_common.h"

namespace cpuchat::kernels::ukernel {
namespace {
using namespace x86;

// No software prefetch: the hardware prefetcher follows the single sequential stream, and
// prefetch instructions only take slots in the out-of-order window that keeps misses in
// flight. Measured on one Zen 5 thread over a 295 MB matrix, alternating in one process:
// 38.2 GB/s without, 36.5 GB/s with 2 KB-ahead T0 prefetch, 35.8-37.3 GB/s with 16-64 KB T1.
// (A plain AVX-512 read of the same bytes: 44.6 GB/s; the gap is the compute per byte.)

// int32 dot products of 16 rows x 32 K of one group (exact, Offset8 corrected).
inline __m512i group_dot(const uint8_t* w, const int8_t* a, int32_t neg8_sum) {
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  // Two chains halve the vpdpbusd dependency depth.
  __m512i dot_lo = _mm512_set1_epi32(neg8_sum), dot_hi = _mm512_setzero_si512();
  for (int t = 0; t < 4; ++t) {
    const __m512i v = _mm512_load_si512(w + 64 * t);
    const __m512i lo = _mm512_and_si512(v, low4);
    const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
    dot_lo = _mm512_dpbusd_epi32(dot_lo, lo, _mm512_set1_epi32(load_i32(a + 4 * t)));
    dot_hi = _mm512_dpbusd_epi32(dot_hi, hi, _mm512_set1_epi32(load_i32(a + 16 + 4 * t)));
  }
  return _mm512_add_epi32(dot_lo, dot_hi);
}

// NB row blocks at a time (NB independent streams / accumulation chains).
template <Scheme S, int NB>
inline void gemv_blocks(const Args& args, const uint8_t* first, float* y, int64_t cols) {
  const int8_t* a = args.a;
  const float* a_scales = args.a_scales;
  const int32_t* neg8 = args.a_neg8_sums;
  __m512 acc[NB];
  for (int j = 0; j < NB; ++j) acc[j] = _mm512_setzero_ps();
  if constexpr (S == Scheme::Q4G32) {
    for (int64_t g = 0; g < args.groups; g += 2) {
      CPUCHAT_MCA_BEGIN("1x16_avx512vnni", S, 1, 16, 2);
      const __m512 a_scale0 = _mm512_set1_ps(a_scales[g]), a_scale1 = _mm512_set1_ps(a_scales[g + 1]);
      for (int j = 0; j < NB; ++j) {
        const uint8_t* chunk = first + j * args.block_bytes + (g / 2) * kChunkBytes;
        const __m512i scales = _mm512_load_si512(chunk);
        const __m512 w0 = bf16x16_to_f32(_mm512_castsi512_si256(scales));
        const __m512 w1 = bf16x16_to_f32(_mm512_extracti64x4_epi64(scales, 1));
        const __m512i d0 = group_dot(chunk + kChunkWeightsOffset, a + g * kGroupSize, neg8[g]);
        const __m512i d1 = group_dot(chunk + kChunkWeightsOffset + kGroupBytes, a + (g + 1) * kGroupSize, neg8[g + 1]);
        acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d0), _mm512_mul_ps(w0, a_scale0), acc[j]);
        acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d1), _mm512_mul_ps(w1, a_scale1), acc[j]);
      }
      CPUCHAT_MCA_END("1x16_avx512vnni", S, 1, 16, 1);
    }
  } else {
    for (int64_t g = 0; g < args.groups; ++g) {
      CPUCHAT_MCA_BEGIN("1x16_avx512vnni", S, 1, 16, 1);
      const __m512 a_scale = _mm512_set1_ps(a_scales[g]);
      for (int j = 0; j < NB; ++j) {
        const uint8_t* wg = first + j * args.block_bytes + kRowScalesBytes + g * kGroupBytes;
        const __m512i d = group_dot(wg, a + g * kGroupSize, neg8[g]);
        acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), a_scale, acc[j]);
      }
      CPUCHAT_MCA_END("1x16_avx512vnni", S, 1, 16, 1);
    }
    for (int j = 0; j < NB; ++j) acc[j] = _mm512_mul_ps(acc[j], _mm512_load_ps(first + j * args.block_bytes));
  }
  for (int j = 0; j < NB; ++j) {
    const int64_t c = std::min<int64_t>(16, cols - 16 * j);
    _mm512_mask_storeu_ps(y + 16 * j, static_cast<__mmask16>((1u << c) - 1), acc[j]);
  }
}

// Blocks per pass: 1, 2 and 4 measured equal within noise (the stream is DRAM-bound);
// 1 keeps the fewest registers live.
constexpr int kNB = 1;

template <Scheme S>
void gemv(const Args& args) {
  int64_t b = 0;
  for (; b + kNB <= args.n_blocks; b += kNB) {
    gemv_blocks<S, kNB>(args, args.w + b * args.block_bytes, args.y + b * 16, args.n_cols - b * 16);
  }
  if constexpr (kNB > 1) {
    for (; b < args.n_blocks; ++b) {
      gemv_blocks<S, 1>(args, args.w + b * args.block_bytes, args.y + b * 16, args.n_cols - b * 16);
    }
  }
}

}  // namespace

void matmul_q8b32_q4p16x4_1x16_avx512vnni(const Args& args) {
  if (args.scheme == Scheme::Q4G32) {
    gemv<Scheme::Q4G32>(args);
  } else {
    gemv<Scheme::Q4C>(args);
  }
}

}  // namespace cpuchat::kernels::ukernel
