// Micro-kernel: GEMM (any m), q8b32 activations x q4 weights packed 16x4, Intel AMX-INT8
// (tiles), with AVX-512 + GFNI for unpacking and the fp32 side.
// Tile: up to 16 activation rows x 16 output channels (one row block); m rows run as
// ceil(m / 16) tiles of nearly equal size.
// Compiled with the AVX-512 VNNI flags + -mgfni -mamx-tile -mamx-int8. The OS must have
// granted the process the tile data state (isa.cpp asks for it before it reports this level).
//
// Packing contract: kLayoutX86 exactly as the 1x16 GEMV (see that file / x86_common.h). Its
// 64-byte steps are already in AMX's B-tile ("VNNI") order: the low nibbles of step t are
// B row t (channel n's bytes 4n..4n+3 = k 4t..4t+3), the high nibbles B row 4 + t. So a
// group unpacks into an 8-row x 64-byte B tile with one byte transform per half, no shuffles.
//
// Per 32-K group: one TDPBSSD (signed activations x signed weights, exact int32, equal to the
// reference's Offset8-corrected dot) per tile of rows, then per row the same cvt + mul + FMA
// fold as the 6x32 AVX-512 kernel, in group order: bit-identical to the reference. The
// scales change every 32 K, so a tile op covers K = 32, and the fold (3 vector ops per row
// and group, against 11 in the AVX-512 kernel) sets the pace.
// Loop order (ukernels/amx_common.h): row block outer, its groups unpacked once, row tiles
// inner (the block, 36 KiB at K=4096, stays in L2); the first row tile prefetches the next block.
#include <immintrin.h>

#include "ukernels/amx_common.h"
#include "ukernels/x86_avx512_common.h"

namespace cpuchat::kernels::ukernel {
namespace {
using namespace x86;

// Offset8 nibble n (= q + 8) -> signed q, one GF(2) affine byte transform per nibble half:
// q's 4-bit two's complement is n with bit 3 flipped, sign-extended, so output bits 0-2 copy
// the nibble's bits 0-2 and bits 3-7 are NOT its bit 3 (a matrix row per output bit, and the
// constant 0xF8 for the NOT). With signed weights the tile op needs no -8*sum(a) correction.
constexpr uint64_t affine_rows(int first_bit) {
  uint64_t m = 0;
  for (int out = 0; out < 8; ++out) {
    const int in = first_bit + (out < 3 ? out : 3);
    m |= uint64_t{1} << in << (8 * (7 - out));  // row `out` of the matrix is byte 7 - out
  }
  return m;
}
constexpr long long kLowNibbleToSigned = static_cast<long long>(affine_rows(0));
constexpr long long kHighNibbleToSigned = static_cast<long long>(affine_rows(4));
constexpr int kNotSignBits = 0xF8;

// A row block's groups -> signed B tiles (rows 0-3: low nibbles, rows 4-7: high nibbles), all
// up front: a tile load waits for earlier stores to reach the cache, so unpacking inside the
// group loop put that wait on every group's critical path, and row tiles after the first
// reuse the unpacked block.
template <Scheme S>
void unpack_block(const uint8_t* block, int64_t groups, uint8_t* b_tiles) {
  const __m512i low = _mm512_set1_epi64(kLowNibbleToSigned), high = _mm512_set1_epi64(kHighNibbleToSigned);
  for (int64_t g = 0; g < groups; ++g) {
    const uint8_t* wg = block + group_weights_offset(kL, S, g);
    uint8_t* b = b_tiles + g * kBTileBytes;
    for (int t = 0; t < 4; ++t) {
      const __m512i v = _mm512_load_si512(wg + 64 * t);
      _mm512_store_si512(b + 64 * t, _mm512_gf2p8affine_epi64_epi8(v, low, kNotSignBits));
      _mm512_store_si512(b + 64 * (4 + t), _mm512_gf2p8affine_epi64_epi8(v, high, kNotSignBits));
    }
  }
}

// acc[i] += dot[i] * scales, for the R rows of one group's C tile.
template <Scheme S, int R>
inline void fold_group(const int32_t* dots, const uint8_t* block, int64_t g, const RowScales& rows, __m512* acc) {
  __m512 w_scale = _mm512_setzero_ps();
  if constexpr (S == Scheme::Q4G32) w_scale = load_bf16x16_as_f32(block + group_scales_offset(kL, g));
  for (int i = 0; i < R; ++i) {
    const __m512i dot = _mm512_load_si512(dots + 16 * i);
    const __m512 a_scale = _mm512_set1_ps(rows.a_scales[i * rows.stride + g]);
    if constexpr (S == Scheme::Q4G32) {
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(w_scale, a_scale), acc[i]);
    } else {
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), a_scale, acc[i]);
    }
  }
}

template <Scheme S>
struct Format {
  static constexpr bool kSignedWeights = true;
  static void unpack(const uint8_t* block, int64_t groups, uint8_t* b_tiles) { unpack_block<S>(block, groups, b_tiles); }
  template <int R>
  static void fold(const int32_t* dots, const uint8_t* block, int64_t g, const RowScales& rows, __m512* acc) {
    fold_group<S, R>(dots, block, g, rows, acc);
  }
  template <int R>
  static void finish(const uint8_t* block, __m512* acc) {
    if constexpr (S == Scheme::Q4C) {
      const __m512 row_scales = _mm512_load_ps(block);
      for (int i = 0; i < R; ++i) acc[i] = _mm512_mul_ps(acc[i], row_scales);
    }
  }
};

}  // namespace

void matmul_q8b32_q4p16x4_16x16_amx(const Args& args) {
  if (args.scheme == Scheme::Q4G32) {
    amx_gemm<Format<Scheme::Q4G32>>(args);
  } else {
    amx_gemm<Format<Scheme::Q4C>>(args);
  }
}

}  // namespace cpuchat::kernels::ukernel
