// Internal contract between matmul() (src/matmul.cpp) and the micro-kernels in this folder.
// One micro-kernel per file; each file documents the packed layout it reads and is compiled
// with its own ISA flags (kernels/CMakeLists.txt), so nothing here may use ISA intrinsics.
#pragma once

#include <cstddef>
#include <cstdint>
#include <algorithm>
#include <cstring>

#include "cpuchat_kernels/packed_layout.h"

namespace cpuchat::kernels::ukernel {

// One call computes Y[0:m, 0:n_cols] for the row blocks starting at `w`.
struct Args {
  const uint8_t* w;           // first packed row block
  int64_t block_bytes;        // stride between row blocks
  int64_t n_blocks;           // blocks to compute (= ceil(n_cols / nr))
  int64_t n_cols;             // output columns to write; the last block may be partial
  int64_t groups;             // weight groups per row (the layout's padded K / 32)
  Scheme scheme;
  const Layout* layout;       // used by the generic scalar kernel; ISA kernels assert theirs

  const int8_t* a;            // activation row 0 (int8, zero-padded to a multiple of 64)
  int64_t a_stride;           // bytes between activation rows
  const float* a_scales;      // row 0's per-block scales
  const int32_t* a_neg8_sums; // row 0's -8 * block sums (Offset8 correction)
  int64_t a_groups_stride;    // elements between rows of a_scales / a_neg8_sums
  int64_t m;                  // activation rows (>= 1)

  float* y;                   // Y row 0, column 0 of this call
  int64_t ldy;
};

using Fn = void (*)(const Args&);

// llvm-mca regions for kernels/tools/mca_ukernels.py: each micro-kernel marks the body of its
// per-group loop. The markers are assembler comments, and only that tool defines
// CPUCHAT_MCA_MARKERS: as volatile asm they would be scheduling barriers, so the build's
// objects are compiled without them (the instruction mix is the same). The region is named
// <kernel>_s<scheme>_m<tile rows>_n<tile columns>_g<32-K groups it covers> (scheme 1 = q4g32,
// 2 = q4c).
#if !defined(CPUCHAT_MCA_MARKERS)
#define CPUCHAT_MCA_MARK_(what, kernel, scheme, rows, cols, groups) ((void)0)
#elif defined(__aarch64__)
#define CPUCHAT_MCA_MARK_(what, kernel, scheme, rows, cols, groups)                                        \
  asm volatile("// LLVM-MCA-" what " " kernel "_s%c0_m%c1_n%c2_g%c3" ::"i"(static_cast<int>(scheme)), "i"(rows), \
               "i"(cols), "i"(groups))
#else
#define CPUCHAT_MCA_MARK_(what, kernel, scheme, rows, cols, groups)                                       \
  asm volatile("# LLVM-MCA-" what " " kernel "_s%c0_m%c1_n%c2_g%c3" ::"i"(static_cast<int>(scheme)), "i"(rows), \
               "i"(cols), "i"(groups))
#endif
#define CPUCHAT_MCA_BEGIN(kernel, scheme, rows, cols, groups) CPUCHAT_MCA_MARK_("BEGIN", kernel, scheme, rows, cols, groups)
#define CPUCHAT_MCA_END(kernel, scheme, rows, cols, groups) CPUCHAT_MCA_MARK_("END", kernel, scheme, rows, cols, groups)

// Kernels for one layout. `gemv` runs m == 1, `gemm` any m (nullptr = not built here), and
// `tall`, where set, m >= tall_min_m.
struct KernelSet {
  const char* gemv_name;
  Fn gemv;
  const char* gemm_name;
  Fn gemm;
  const char* tall_name = nullptr;
  Fn tall = nullptr;
  int64_t tall_min_m = 0;

  const char* name_for(int64_t m) const { return m == 1 ? gemv_name : tall != nullptr && m >= tall_min_m ? tall_name : gemm_name; }
  Fn kernel_for(int64_t m) const { return m == 1 ? gemv : tall != nullptr && m >= tall_min_m ? tall : gemm; }
};

// Generic kernel: reads any layout through packed_layout.h; the "scalar" level.
void matmul_q8b32_q4p_any_scalar(const Args& args);
void matmul_q8b32_q4kp_any_scalar(const Args& args);  // Scheme::Q4K

#if defined(__x86_64__) || defined(_M_X64)
void matmul_q8b32_q4p16x4_1x16_avx2(const Args& args);
void matmul_q8b32_q4p16x4_4x8_avx2(const Args& args);
void matmul_q8b32_q4p16x4_1x16_avx512vnni(const Args& args);
void matmul_q8b32_q4p16x4_6x32_avx512vnni(const Args& args);
void matmul_q8b32_q4kp16x4_1x16_avx2(const Args& args);
void matmul_q8b32_q4kp16x4_4x8_avx2(const Args& args);
void matmul_q8b32_q4kp16x4_1x16_avx512vnni(const Args& args);
void matmul_q8b32_q4kp16x4_6x32_avx512vnni(const Args& args);
void matmul_q8b32_q4p16x4_16x16_amx(const Args& args);
void matmul_q8b32_q4kp16x4_16x16_amx(const Args& args);
#endif
#if defined(__aarch64__)
void matmul_q8b32_q4p8x8_1x8_neon_dotprod(const Args& args);
void matmul_q8b32_q4p8x8_4x8_neon_dotprod(const Args& args);
void matmul_q8b32_q4p8x8_4x8_neon_i8mm(const Args& args);
void matmul_q8b32_q4kp8x8_1x8_neon_dotprod(const Args& args);
void matmul_q8b32_q4kp8x8_4x8_neon_dotprod(const Args& args);
void matmul_q8b32_q4kp8x8_4x8_neon_i8mm(const Args& args);
#endif

// Runs tile(m0, rows) over m activation rows in ceil(m / MR) tiles of nearly equal size (at
// most MR rows each), so that a remainder never runs as a tile of one or two rows, whose few
// independent accumulator chains cannot hide the dot-product latency (m = 8 with MR = 6: 4 + 4,
// not 6 + 2). Rows are computed independently, so the split changes no result. `static`: an
// ISA-compiled instance stays in its object (cmake/check_isa_objects.cmake).
template <int MR, typename TileFn>
static inline void for_each_row_tile(int64_t m, TileFn&& tile) {
  const int64_t tiles = (m + MR - 1) / MR;
  int64_t m0 = 0;
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t rows = (m - m0) / (tiles - t);  // never above ceil(m / tiles) <= MR
    tile(m0, rows);
    m0 += rows;
  }
}

// Software prefetch for the GEMM tiles, of two kinds, each needed on one of the machines drawn:
// - Next blocks: while the first row tile of a block (pair) walks it from memory, it pulls the
//   next NB blocks into L2, one slice per 32-K group, so every block starts in cache. Without
//   it gemm_m8 was 20-30 % slower on Zen 4 (session 6); the AMX tiles use it for their unpack.
// - Ahead in the stream: at each group a tile pulls the same span of bytes kPrefetchAhead
//   further on in each of its blocks into L1, [from, to) being the group's own span. On Zen 5
//   (session 8) the next-block prefetch alone left a tile's time the sum of its cached compute
//   time and the memory time: 1B qo (2048 x 2048), m = 8, 2 threads, 151 us against 69 cached
//   and 70 for the memory-bound GEMV; with this one, 97-126 us.
// `next` is nullptr past the call's last block. Addresses past the weights are harmless: a
// prefetch never faults. A prefetch changes no result.
template <int NB>
static inline void prefetch_next_blocks(const uint8_t* next, int64_t block_bytes, int64_t g, int64_t groups) {
  if (next == nullptr) return;
  const int64_t per_group = (block_bytes + groups - 1) / groups;
  const int64_t begin = g * per_group / 64 * 64, end = std::min(g * per_group + per_group, block_bytes);
  for (int j = 0; j < NB; ++j)
    for (int64_t at = begin; at < end; at += 64) __builtin_prefetch(next + j * block_bytes + at, 0, 2);
}

constexpr int64_t kPrefetchAhead = 2048;

template <int NB>
static inline void prefetch_ahead(const uint8_t* from, const uint8_t* to, int64_t block_bytes) {
  const uintptr_t first = (reinterpret_cast<uintptr_t>(from) + kPrefetchAhead) & ~uintptr_t{63};
  const uintptr_t last = reinterpret_cast<uintptr_t>(to) + kPrefetchAhead;
  for (int j = 0; j < NB; ++j)
    for (uintptr_t at = first; at < last; at += 64)
      __builtin_prefetch(reinterpret_cast<const void*>(at + uintptr_t(j * block_bytes)), 0, 3);
}

// The blocks after the NB at `block` when they exist in this call and the tile starting at
// row m0 is the first of its blocks (the later tiles find the blocks in cache), else nullptr.
template <int NB>
static inline const uint8_t* blocks_to_prefetch(const Args& args, const uint8_t* block, int64_t m0) {
  const uint8_t* next = block + NB * args.block_bytes;
  return m0 == 0 && next + NB * args.block_bytes <= args.w + args.n_blocks * args.block_bytes ? next : nullptr;
}

// What the tile at row m0 of the NB blocks at `block` prefetches. Ahead in the stream: in a
// decode batch (two tiles or fewer) every tile, since each one's compute is short beside the
// memory time; in a taller GEMM only the first tile, while the rest find the blocks in L2
// (prefetching in every tile measured no gain at m = 128).
struct TilePrefetch {
  const uint8_t* next_blocks;
  bool ahead;
};
template <int NB, int MR>
static inline TilePrefetch tile_prefetch(const Args& args, const uint8_t* block, int64_t m0) {
  return {blocks_to_prefetch<NB>(args, block, m0), m0 == 0 || args.m <= 2 * MR};
}

// Writes `count` floats from a full tile row to Y (partial last blocks).
inline void store_partial(float* dst, const float* tile, int64_t count) {
  std::memcpy(dst, tile, static_cast<size_t>(count) * sizeof(float));
}

inline uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
inline float load_f32(const uint8_t* p) {
  float v;
  std::memcpy(&v, p, 4);
  return v;
}

}  // namespace cpuchat::kernels::ukernel
