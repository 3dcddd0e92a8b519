// Shared inline helpers for the aarch64 Q4K micro-kernels (kLayoutArm, Scheme::Q4K). Included
// only by files compiled with the matching -march flags; everything is `static inline`.
#pragma once

#include "ukernels/arm_common.h"

namespace cpuchat::kernels::ukernel::arm {

constexpr int64_t kQ4kSuperBytes = q4k_super_block_bytes(kL);  // 1152
constexpr int64_t kQ4kDminOffset = q4k_dmin_offset(kL);        // 16
constexpr int64_t kQ4kLo4Offset = q4k_lo4_offset(kL);          // 32: 64 B, 8 B per sub-block
constexpr int64_t kQ4kHi2Offset = q4k_hi2_offset(kL);          // 96: 32 B
constexpr int64_t kQ4kGroupsOffset = q4k_groups_offset(kL);    // 128
static_assert(kQ4kSuperBytes == 1152 && kQ4kLo4Offset == 32 && kQ4kHi2Offset == 96 && kQ4kGroupsOffset == 128, "");
// Sub-block j, row r: low 4 bits at lo4[8 j + r]; high 2 bits at hi2[8 (j % 4) + r] >> 2 (j / 4).
static_assert(q4k_scale_pos(kL, 6, 3).lo4_byte == kQ4kLo4Offset + 8 * 6 + 3, "");
static_assert(q4k_scale_pos(kL, 6, 3).hi2_byte == kQ4kHi2Offset + 8 * 2 + 3 && q4k_scale_pos(kL, 6, 3).hi2_shift == 2, "");
static_assert(group_weights_offset(kL, Scheme::Q4K, 9) == kQ4kSuperBytes + kQ4kGroupsOffset + kGroupBytes, "");

// Q4K nibbles are q in [0, 15]: zero-extended, they are non-negative int8 for sdot/smmla.
static inline int8x16_t q4k_low(uint8x16_t v) { return vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0F))); }
static inline int8x16_t q4k_high(uint8x16_t v) { return vreinterpretq_s8_u8(vshrq_n_u8(v, 4)); }

// fp32 (d sc_j) and (dmin m_j) of the 8 rows of sub-block j: [rows 0-3], [rows 4-7].
struct Q4kRowScales {
  float32x4_t scale[2], min[2];
};
static inline Q4kRowScales q4k_row_scales(const uint8_t* super, int j) {
  const uint8x8_t lo = vld1_u8(super + kQ4kLo4Offset + 8 * j);
  const uint8x8_t hi = vshl_u8(vld1_u8(super + kQ4kHi2Offset + 8 * (j % 4)), vdup_n_s8(static_cast<int8_t>(-2 * (j / 4))));
  const uint8x8_t sc = vorr_u8(vand_u8(lo, vdup_n_u8(0x0F)), vshl_n_u8(vand_u8(hi, vdup_n_u8(0x03)), 4));
  const uint8x8_t m = vorr_u8(vshr_n_u8(lo, 4), vshl_n_u8(vand_u8(vshr_n_u8(hi, 4), vdup_n_u8(0x03)), 4));
  const float32x4_t d0 = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(reinterpret_cast<const uint16_t*>(super))));
  const float32x4_t d1 = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(reinterpret_cast<const uint16_t*>(super + 8))));
  const float32x4_t n0 = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(reinterpret_cast<const uint16_t*>(super + kQ4kDminOffset))));
  const float32x4_t n1 = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(reinterpret_cast<const uint16_t*>(super + kQ4kDminOffset + 8))));
  const uint16x8_t sc16 = vmovl_u8(sc), m16 = vmovl_u8(m);
  Q4kRowScales r;
  r.scale[0] = vmulq_f32(d0, vcvtq_f32_u32(vmovl_u16(vget_low_u16(sc16))));
  r.scale[1] = vmulq_f32(d1, vcvtq_f32_u32(vmovl_high_u16(sc16)));
  r.min[0] = vmulq_f32(n0, vcvtq_f32_u32(vmovl_u16(vget_low_u16(m16))));
  r.min[1] = vmulq_f32(n1, vcvtq_f32_u32(vmovl_high_u16(m16)));
  return r;
}

// a_scale * sum(a) of one activation block, from the -8 * sum the quantizer stores.
static inline float q4k_activation_sum(float a_scale, int32_t neg8_sum) {
  return a_scale * (static_cast<float>(neg8_sum) * -0.125f);
}

// Per-row int32 dot products (rows 0-3, rows 4-7) of one group with sdot.
static inline void q4k_group_dot_sdot(const uint8_t* w, const int8_t* a, int32x4_t* rows03, int32x4_t* rows47) {
  int32x4_t pair[4] = {vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0)};
  for (int j = 0; j < 8; ++j) {
    const uint8x16_t v = vld1q_u8(w + 16 * j);
    pair[j % 4] = vdotq_s32(pair[j % 4], q4k_low(v), dup8(a + 8 * (j / 4)));
    pair[j % 4] = vdotq_s32(pair[j % 4], q4k_high(v), dup8(a + 16 + 8 * (j / 4)));
  }
  *rows03 = vpaddq_s32(pair[0], pair[1]);
  *rows47 = vpaddq_s32(pair[2], pair[3]);
}

}  // namespace cpuchat::kernels::ukernel::arm
