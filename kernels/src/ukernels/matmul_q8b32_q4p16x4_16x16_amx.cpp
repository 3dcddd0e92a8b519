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
// Loop order: row block outer, row tiles inner (the block, 36 KiB at K=4096, stays in L2);
// the first row tile prefetches the next block.
#include <immintrin.h>

#include <cstdlib>

#include "ukernels/x86_avx512_common.h"
#include "ukernels/x86_common.h"

namespace cpuchat::kernels::ukernel {
namespace {
using namespace x86;

constexpr int kMaxRows = 16;
// Tile registers: activations, unpacked weights, int32 results, for even and odd groups.
// (Macros: GCC's tile intrinsics paste their tile number into the assembly text.)
#define TILE_A0 0
#define TILE_A1 1
#define TILE_B0 2
#define TILE_B1 3
#define TILE_C0 4
#define TILE_C1 5
constexpr int kBTileBytes = 8 * 64;  // one group of one row block

struct alignas(64) TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

void configure_tiles(int rows) {
  TileConfig c;
  for (int t : {TILE_A0, TILE_A1}) c.rows[t] = static_cast<uint8_t>(rows), c.colsb[t] = kGroupSize;
  for (int t : {TILE_B0, TILE_B1}) c.rows[t] = kGroupSize / 4, c.colsb[t] = 64;
  for (int t : {TILE_C0, TILE_C1}) c.rows[t] = static_cast<uint8_t>(rows), c.colsb[t] = 16 * sizeof(int32_t);
  // Not _tile_loadconfig: GCC 12 treats its builtin as reading no memory and drops the stores
  // above (measured: only palette_id was written, and the first tile load faulted).
  __asm__ volatile("ldtilecfg %0" : : "m"(c));
}

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
inline void unpack_block(const uint8_t* block, int64_t groups, uint8_t* b_tiles) {
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

// This thread's unpacked-block buffer (224 KiB at K = 14336), kept between calls.
uint8_t* unpack_buffer(int64_t bytes) {
  struct Buffer {
    uint8_t* data = nullptr;
    int64_t size = 0;
    ~Buffer() { std::free(data); }
  };
  static thread_local Buffer buffer;
  if (buffer.size < bytes) {
    std::free(buffer.data);
    buffer.data = static_cast<uint8_t*>(std::aligned_alloc(64, static_cast<size_t>((bytes + 63) / 64 * 64)));
    if (buffer.data == nullptr) std::abort();  // 224 KiB; nothing sensible to fall back to
    buffer.size = bytes;
  }
  return buffer.data;
}

// acc[i] += dot[i] * scales, for the R rows of one group's C tile.
template <Scheme S, int R>
inline void fold_group(const int32_t* dots, const uint8_t* block, int64_t g, const float* a_scales, int64_t gstride,
                       __m512* acc) {
  __m512 w_scale = _mm512_setzero_ps();
  if constexpr (S == Scheme::Q4G32) w_scale = load_bf16x16_as_f32(block + group_scales_offset(kL, g));
  for (int i = 0; i < R; ++i) {
    const __m512i dot = _mm512_load_si512(dots + 16 * i);
    const __m512 a_scale = _mm512_set1_ps(a_scales[i * gstride + g]);
    if constexpr (S == Scheme::Q4G32) {
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(w_scale, a_scale), acc[i]);
    } else {
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), a_scale, acc[i]);
    }
  }
}

// One group's exact int32 dots for the tile's rows: C = A (activations) x B (weights).
#define CPUCHAT_AMX_GROUP_DOT(TA, TB, TC, g, out)                \
  do {                                                           \
    _tile_loadd(TA, a + (g) * kGroupSize, a_stride);             \
    _tile_loadd(TB, b_tiles + (g) * kBTileBytes, 64);            \
    _tile_zero(TC);                                              \
    _tile_dpbssd(TC, TA, TB);                                    \
    _tile_stored(TC, out, 64);                                   \
  } while (0)

// Groups run in pairs (even: tiles 0/2/4, odd: 1/3/5), and a pair is folded one iteration
// after its tile ops, so the vector loads never wait on the tile stores just issued.
template <Scheme S, int R>
void tile(const uint8_t* block, const uint8_t* b_tiles, int64_t block_bytes, int64_t groups, const int8_t* a,
          int64_t a_stride, const float* a_scales, int64_t gstride, float* y, int64_t ldy,
          int64_t cols, const uint8_t* prefetch) {
  alignas(64) int32_t dots[2][2][kMaxRows * 16];
  __m512 acc[R];
  for (int i = 0; i < R; ++i) acc[i] = _mm512_setzero_ps();
  const int64_t pairs = groups / 2;
  for (int64_t p = 0; p < pairs; ++p) {
    const int64_t g = 2 * p;
    CPUCHAT_AMX_GROUP_DOT(TILE_A0, TILE_B0, TILE_C0, g, dots[p & 1][0]);
    CPUCHAT_AMX_GROUP_DOT(TILE_A1, TILE_B1, TILE_C1, g + 1, dots[p & 1][1]);
    prefetch_next_blocks<1>(prefetch, block_bytes, g, groups);
    prefetch_next_blocks<1>(prefetch, block_bytes, g + 1, groups);
    if (p > 0) {
      fold_group<S, R>(dots[(p - 1) & 1][0], block, g - 2, a_scales, gstride, acc);
      fold_group<S, R>(dots[(p - 1) & 1][1], block, g - 1, a_scales, gstride, acc);
    }
  }
  if (pairs > 0) {
    fold_group<S, R>(dots[(pairs - 1) & 1][0], block, 2 * pairs - 2, a_scales, gstride, acc);
    fold_group<S, R>(dots[(pairs - 1) & 1][1], block, 2 * pairs - 1, a_scales, gstride, acc);
  }
  if (groups % 2 != 0) {
    prefetch_next_blocks<1>(prefetch, block_bytes, groups - 1, groups);
    CPUCHAT_AMX_GROUP_DOT(TILE_A0, TILE_B0, TILE_C0, groups - 1, dots[0][0]);
    fold_group<S, R>(dots[0][0], block, groups - 1, a_scales, gstride, acc);
  }
  if constexpr (S == Scheme::Q4C) {
    const __m512 row_scales = _mm512_load_ps(block);
    for (int i = 0; i < R; ++i) acc[i] = _mm512_mul_ps(acc[i], row_scales);
  }
  const __mmask16 mask = static_cast<__mmask16>((1u << std::min<int64_t>(16, cols)) - 1);
  for (int i = 0; i < R; ++i) _mm512_mask_storeu_ps(y + i * ldy, mask, acc[i]);
}
#undef CPUCHAT_AMX_GROUP_DOT

template <Scheme S, int R>
void tile_rows(const Args& args, const uint8_t* block, const uint8_t* b_tiles, int64_t m0, float* y, int64_t cols) {
  tile<S, R>(block, b_tiles, args.block_bytes, args.groups, args.a + m0 * args.a_stride, args.a_stride,
             args.a_scales + m0 * args.a_groups_stride, args.a_groups_stride, y + m0 * args.ldy, args.ldy, cols, blocks_to_prefetch<1>(args, block, m0));
}

template <Scheme S>
void block_all_rows(const Args& args, const uint8_t* block, uint8_t* b_tiles, float* y, int64_t cols) {
  unpack_block<S>(block, args.groups, b_tiles);
  for_each_row_tile<kMaxRows>(args.m, [&](int64_t m0, int64_t rows) {
    switch (rows) {
#define CPUCHAT_AMX_ROWS(r) \
  case r: tile_rows<S, r>(args, block, b_tiles, m0, y, cols); break;
      CPUCHAT_AMX_ROWS(16) CPUCHAT_AMX_ROWS(15) CPUCHAT_AMX_ROWS(14) CPUCHAT_AMX_ROWS(13)
      CPUCHAT_AMX_ROWS(12) CPUCHAT_AMX_ROWS(11) CPUCHAT_AMX_ROWS(10) CPUCHAT_AMX_ROWS(9)
      CPUCHAT_AMX_ROWS(8) CPUCHAT_AMX_ROWS(7) CPUCHAT_AMX_ROWS(6) CPUCHAT_AMX_ROWS(5)
      CPUCHAT_AMX_ROWS(4) CPUCHAT_AMX_ROWS(3) CPUCHAT_AMX_ROWS(2) CPUCHAT_AMX_ROWS(1)
#undef CPUCHAT_AMX_ROWS
      default: break;
    }
  });
}

// The tiles' row count is part of their configuration, set once per call: every tile loads
// the largest tile's rows. for_each_row_tile's tiles never shrink, so a smaller tile's extra
// rows are the next tile's (real memory; their results are not read) and the last is exact.
template <Scheme S>
void gemm(const Args& args) {
  const int64_t tiles = (args.m + kMaxRows - 1) / kMaxRows;
  configure_tiles(static_cast<int>((args.m + tiles - 1) / tiles));
  uint8_t* b_tiles = unpack_buffer(args.groups * kBTileBytes);
  for (int64_t b = 0; b < args.n_blocks; ++b) {
    block_all_rows<S>(args, args.w + b * args.block_bytes, b_tiles, args.y + b * 16, args.n_cols - b * 16);
  }
  _tile_release();
}

}  // namespace

#undef TILE_A0
#undef TILE_A1
#undef TILE_B0
#undef TILE_B1
#undef TILE_C0
#undef TILE_C1

void matmul_q8b32_q4p16x4_16x16_amx(const Args& args) {
  if (args.scheme == Scheme::Q4G32) {
    gemm<Scheme::Q4G32>(args);
  } else {
    gemm<Scheme::Q4C>(args);
  }
}

}  // namespace cpuchat::kernels::ukernel
