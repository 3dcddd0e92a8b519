// Shared inline helpers for the x86 micro-kernels that read kLayoutX86 (nr=16, kr=4,
// Offset8 nibbles, 2 groups per chunk). Included only by files compiled with the matching
// ISA flags; the helpers are `static inline` so no ISA code leaks into other objects.
#pragma once

#include "ukernels/ukernel.h"

namespace cpuchat::kernels::ukernel::x86 {

static constexpr const Layout& kL = kLayoutX86;
static_assert(kL.nr == 16 && kL.kr == 4 && kL.coding == NibbleCoding::Offset8 && kL.groups_per_chunk == 2,
              "the x86 micro-kernels hard-code this layout");
constexpr int64_t kChunkBytes = chunk_bytes(kL);             // 64 B scales + 2 x 256 B nibbles
constexpr int64_t kGroupBytes = group_bytes(kL);             // 256 B = 4 x 64 B
constexpr int64_t kScaleRunBytes = group_scale_bytes(kL);    // 32 B = 16 bf16
constexpr int64_t kChunkWeightsOffset = 2 * kScaleRunBytes;  // nibbles start after both scale runs
constexpr int64_t kRowScalesBytes = row_scale_bytes(kL);     // Q4C: 16 fp32 at the block start
static_assert(group_weights_offset(kL, Scheme::Q4G32, 1) == kChunkWeightsOffset + kGroupBytes, "");
static_assert(group_scales_offset(kL, 1) == kScaleRunBytes, "");
static_assert(group_weights_offset(kL, Scheme::Q4C, 1) == kRowScalesBytes + kGroupBytes, "");
// Byte i of 64-byte step t of a group: low nibble = row i/4, k = 4t + i%4;
//                                       high nibble = row i/4, k = 16 + 4t + i%4.
static_assert(nibble_pos(kL, 5, 4 * 2 + 3).byte == 64 * 2 + 5 * 4 + 3 && !nibble_pos(kL, 5, 11).high, "");
static_assert(nibble_pos(kL, 5, 16 + 4 * 2 + 3).byte == 64 * 2 + 5 * 4 + 3 && nibble_pos(kL, 5, 27).high, "");

static inline int32_t load_i32(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

}  // namespace cpuchat::kernels::ukernel::x86
