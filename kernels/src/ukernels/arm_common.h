// Shared inline helpers for the aarch64 micro-kernels that read kLayoutArm (nr=8, kr=8,
// two's complement nibbles, 1 group per chunk). Included only by files compiled with the
// matching -march flags; everything is `static inline`.
#pragma once

#include <arm_neon.h>

#include "ukernels/ukernel.h"

namespace cpuchat::kernels::ukernel::arm {

static constexpr const Layout& kL = kLayoutArm;
static_assert(kL.nr == 8 && kL.kr == 8 && kL.coding == NibbleCoding::TwosComplement && kL.groups_per_chunk == 1,
              "the aarch64 micro-kernels hard-code this layout");
constexpr int64_t kGroupBytes = group_bytes(kL);        // 128 B = 8 x 16 B registers
constexpr int64_t kScaleRunBytes = group_scale_bytes(kL);  // 16 B = 8 bf16
constexpr int64_t kRowScalesBytes = row_scale_bytes(kL);   // Q4C: 8 fp32 at the block start
// Register j (bytes 16j..16j+15) of a group: low nibbles = rows 2(j%4), 2(j%4)+1, each
// k = 8(j/4)..8(j/4)+7; high nibbles = the same rows, k = 16+8(j/4)..16+8(j/4)+7.
static_assert(nibble_pos(kL, 3, 8 + 5).byte == 16 * 5 + 8 + 5 && !nibble_pos(kL, 3, 13).high, "");
static_assert(nibble_pos(kL, 3, 16 + 8 + 5).byte == 16 * 5 + 8 + 5 && nibble_pos(kL, 3, 29).high, "");
static_assert(group_weights_offset(kL, Scheme::Q4G32, 1) == 2 * kScaleRunBytes + kGroupBytes, "");

// Sign-extended int4 -> int8 of both nibbles of 16 bytes.
static inline int8x16_t low_nibbles(int8x16_t v) { return vshrq_n_s8(vshlq_n_s8(v, 4), 4); }
static inline int8x16_t high_nibbles(int8x16_t v) { return vshrq_n_s8(v, 4); }

// The same nibbles times 16, in one instruction each instead of two / one shift: the low nibble
// moved up (shl #4) and the high nibble masked in place (and 0xF0) are 16 * the signed value.
// A dot product of them is 16 * the true one (|16 * dot| < 2^20: no overflow), and
// vcvtq_n_f32_s32(x, 4) converts and divides by 16 exactly, so the fp32 results are unchanged.
// (Shifts issue on 2 of V2's 4 vector pipes, AND on all 4.)
static inline int8x16_t low_nibbles_x16(int8x16_t v) { return vshlq_n_s8(v, 4); }
static inline int8x16_t high_nibbles_x16(int8x16_t v) { return vandq_s8(v, vdupq_n_s8(static_cast<int8_t>(0xF0))); }
static inline float32x4_t dot_x16_to_f32(int32x4_t dot_x16) { return vcvtq_n_f32_s32(dot_x16, 4); }

// int32 -> fp32 without scvtf (2 µops, both on pipe V0, in V2's model) for the GEMMs: an
// accumulator that starts at the bits of kMagic = 1.5 * 2^19 (ulp 1/16) and then adds 16 * dot
// holds the fp32 value kMagic + dot exactly (|dot| <= 32 * 8 * 127 keeps it in [2^19, 2^20)
// and the mantissa from carrying), and subtracting kMagic again is exact: one fsub on any pipe.
constexpr float kMagic = 786432.0f;  // 1.5 * 2^19
static inline int32x4_t magic_bits() { return vreinterpretq_s32_f32(vdupq_n_f32(kMagic)); }
static inline float32x4_t magic_dot_to_f32(int32x4_t acc) {
  return vsubq_f32(vreinterpretq_f32_s32(acc), vdupq_n_f32(kMagic));
}

// 8 activation bytes repeated in both halves: one sdot lane pair sees k0..3 and k4..7.
static inline int8x16_t dup8(const int8_t* p) {
  int64_t v;
  std::memcpy(&v, p, 8);
  return vreinterpretq_s8_s64(vdupq_n_s64(v));
}

static inline float32x4_t bf16x4_lo(uint16x8_t v) { return vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(v), 16)); }
static inline float32x4_t bf16x4_hi(uint16x8_t v) { return vreinterpretq_f32_u32(vshll_high_n_u16(v, 16)); }

}  // namespace cpuchat::kernels::ukernel::arm
