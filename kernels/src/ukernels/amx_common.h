// The AMX-INT8 GEMM driver shared by the AMX micro-kernels (q4g32/q4c, q4k): tile
// configuration, per-thread scratch, and the loops over row blocks, row tiles and 32-K groups.
// A kernel file supplies its format as a policy F:
//   static constexpr bool kSignedWeights;  // B tiles hold signed int8 (tdpbssd) or unsigned (tdpbsud)
//   static void unpack(const uint8_t* block, int64_t groups, uint8_t* b_tiles);
//       // every group of one row block -> 8-row x 64-byte B tiles, kBTileBytes each
//   template <int R> static void fold(const int32_t* dots, const uint8_t* block, int64_t g,
//                                     const RowScales& rows, __m512* acc);
//       // acc[i] += group g's int32 dots of row i, scaled, in the reference's operation order
//   template <int R> static void finish(const uint8_t* block, __m512* acc);  // per-row-block epilogue
// Included only by files compiled with -mamx-tile -mamx-int8 (and AVX-512); everything here
// has internal linkage, so no ISA code leaks into other objects.
#pragma once

#include <immintrin.h>

#include <cstdlib>

#include "ukernels/x86_common.h"

namespace cpuchat::kernels::ukernel::x86 {
namespace {

constexpr int kAmxMaxRows = 16;
constexpr int kBTileBytes = 8 * 64;  // one group of one row block
// Tile registers: activations, unpacked weights, int32 results, for even and odd groups.
// (Macros: GCC's tile intrinsics paste their tile number into the assembly text.)
#define TILE_A0 0
#define TILE_A1 1
#define TILE_B0 2
#define TILE_B1 3
#define TILE_C0 4
#define TILE_C1 5

struct alignas(64) TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

inline void configure_tiles(int rows) {
  TileConfig c;
  for (int t : {TILE_A0, TILE_A1}) c.rows[t] = static_cast<uint8_t>(rows), c.colsb[t] = kGroupSize;
  for (int t : {TILE_B0, TILE_B1}) c.rows[t] = kGroupSize / 4, c.colsb[t] = 64;
  for (int t : {TILE_C0, TILE_C1}) c.rows[t] = static_cast<uint8_t>(rows), c.colsb[t] = 16 * sizeof(int32_t);
  // Not _tile_loadconfig: GCC 12 treats its builtin as reading no memory and drops the stores
  // above (measured: only palette_id was written, and the first tile load faulted).
  __asm__ volatile("ldtilecfg %0" : : "m"(c));
}

// This thread's unpacked-block buffer (224 KiB at K = 14336), kept between calls.
inline uint8_t* unpack_buffer(int64_t bytes) {
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

// A row tile's activation scales and -8 * sums, row i at [i * stride + g].
struct RowScales {
  const float* a_scales;
  const int32_t* neg8;
  int64_t stride;
};

// One group's exact int32 dots for the tile's rows: C = A (activations) x B (weights).
#define CPUCHAT_AMX_GROUP_DOT(TA, TB, TC, g, out)              \
  do {                                                         \
    _tile_loadd(TA, a + (g) * kGroupSize, a_stride);           \
    _tile_loadd(TB, b_tiles + (g) * kBTileBytes, 64);          \
    _tile_zero(TC);                                            \
    if constexpr (F::kSignedWeights) _tile_dpbssd(TC, TA, TB); \
    else _tile_dpbsud(TC, TA, TB);                             \
    _tile_stored(TC, out, 64);                                 \
  } while (0)

// Groups run in pairs (even: tiles 0/2/4, odd: 1/3/5), and a pair is folded one iteration
// after its tile ops, so the vector loads never wait on the tile stores just issued.
template <class F, int R>
void amx_tile(const uint8_t* block, const uint8_t* b_tiles, int64_t block_bytes, int64_t groups, const int8_t* a,
              int64_t a_stride, const RowScales& rows, float* y, int64_t ldy, int64_t cols, const uint8_t* prefetch) {
  alignas(64) int32_t dots[2][2][kAmxMaxRows * 16];
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
      F::template fold<R>(dots[(p - 1) & 1][0], block, g - 2, rows, acc);
      F::template fold<R>(dots[(p - 1) & 1][1], block, g - 1, rows, acc);
    }
  }
  if (pairs > 0) {
    F::template fold<R>(dots[(pairs - 1) & 1][0], block, 2 * pairs - 2, rows, acc);
    F::template fold<R>(dots[(pairs - 1) & 1][1], block, 2 * pairs - 1, rows, acc);
  }
  if (groups % 2 != 0) {
    prefetch_next_blocks<1>(prefetch, block_bytes, groups - 1, groups);
    CPUCHAT_AMX_GROUP_DOT(TILE_A0, TILE_B0, TILE_C0, groups - 1, dots[0][0]);
    F::template fold<R>(dots[0][0], block, groups - 1, rows, acc);
  }
  F::template finish<R>(block, acc);
  const __mmask16 mask = static_cast<__mmask16>((1u << std::min<int64_t>(16, cols)) - 1);
  for (int i = 0; i < R; ++i) _mm512_mask_storeu_ps(y + i * ldy, mask, acc[i]);
}
#undef CPUCHAT_AMX_GROUP_DOT

template <class F, int R>
void amx_tile_rows(const Args& args, const uint8_t* block, const uint8_t* b_tiles, int64_t m0, float* y, int64_t cols) {
  const RowScales rows{args.a_scales + m0 * args.a_groups_stride, args.a_neg8_sums + m0 * args.a_groups_stride,
                       args.a_groups_stride};
  amx_tile<F, R>(block, b_tiles, args.block_bytes, args.groups, args.a + m0 * args.a_stride, args.a_stride, rows,
                 y + m0 * args.ldy, args.ldy, cols, blocks_to_prefetch<1>(args, block, m0));
}

template <class F>
void amx_block_all_rows(const Args& args, const uint8_t* block, uint8_t* b_tiles, float* y, int64_t cols) {
  F::unpack(block, args.groups, b_tiles);
  for_each_row_tile<kAmxMaxRows>(args.m, [&](int64_t m0, int64_t rows) {
    switch (rows) {
#define CPUCHAT_AMX_ROWS(r) \
  case r: amx_tile_rows<F, r>(args, block, b_tiles, m0, y, cols); break;
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
template <class F>
void amx_gemm(const Args& args) {
  const int64_t tiles = (args.m + kAmxMaxRows - 1) / kAmxMaxRows;
  configure_tiles(static_cast<int>((args.m + tiles - 1) / tiles));
  uint8_t* b_tiles = unpack_buffer(args.groups * kBTileBytes);
  for (int64_t b = 0; b < args.n_blocks; ++b) {
    amx_block_all_rows<F>(args, args.w + b * args.block_bytes, b_tiles, args.y + b * 16, args.n_cols - b * 16);
  }
  _tile_release();
}

#undef TILE_A0
#undef TILE_A1
#undef TILE_B0
#undef TILE_B1
#undef TILE_C0
#undef TILE_C1

}  // namespace
}  // namespace cpuchat::kernels::ukernel::x86
