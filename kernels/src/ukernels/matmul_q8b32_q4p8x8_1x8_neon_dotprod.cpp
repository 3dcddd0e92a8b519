// Micro-kernel: GEMV (m = 1), q8b32 activations x q4 weights packed 8x8, NEON sdot.
// Compiled with -march=armv8.2-a+dotprod. Also the GEMV of the i8mm level (smmla would
// waste half its work on a single activation row).
//
// Packing contract (kLayoutArm, see packed_layout.h / arm_common.h):
//   - row blocks of nr=8 output channels; per group 8 x 16 B of two's complement nibbles;
//     register j holds rows 2(j%4), 2(j%4)+1 x 8 consecutive k (low nibbles k = 8(j/4)+..,
//     high nibbles k = 16+8(j/4)+..);
//   - Q4G32: per group [8 bf16 scales][128 B nibbles]; Q4C: [8 fp32 row scales] then groups.
//
// sdot(weights, activations duplicated in both 64-bit halves) leaves, per register, the
// lanes [row a k0-3, row a k4-7, row b k0-3, row b k4-7]; one vpaddq per 4 rows per group
// folds them into per-row int32 dots. fp32: cvt, mul(scale_w, scale_a), FMA in group order
// (bit-identical to the reference).
#include "ukernels/arm_common.h"

namespace cpuchat::kernels::ukernel {
namespace {
using namespace arm;

// Per-row int32 dot products (rows 0-3, rows 4-7) of one group.
inline void group_dot(const uint8_t* w, const int8_t* a, int32x4_t* rows03, int32x4_t* rows47) {
  int32x4_t pair[4] = {vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0)};
  for (int j = 0; j < 8; ++j) {
    const int8x16_t v = vld1q_s8(reinterpret_cast<const int8_t*>(w + 16 * j));
    pair[j % 4] = vdotq_s32(pair[j % 4], low_nibbles(v), dup8(a + 8 * (j / 4)));
    pair[j % 4] = vdotq_s32(pair[j % 4], high_nibbles(v), dup8(a + 16 + 8 * (j / 4)));
  }
  *rows03 = vpaddq_s32(pair[0], pair[1]);
  *rows47 = vpaddq_s32(pair[2], pair[3]);
}

template <Scheme S>
void gemv(const Args& args) {
  for (int64_t b = 0; b < args.n_blocks; ++b) {
    const uint8_t* block = args.w + b * args.block_bytes;
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    for (int64_t g = 0; g < args.groups; ++g) {
      const uint8_t* wg = block + group_weights_offset(kL, S, g);
      __builtin_prefetch(wg + 1024);
      int32x4_t d0, d1;
      group_dot(wg, args.a + g * kGroupSize, &d0, &d1);
      float32x4_t s0 = vdupq_n_f32(args.a_scales[g]), s1 = s0;
      if constexpr (S == Scheme::Q4G32) {
        const uint16x8_t raw = vld1q_u16(reinterpret_cast<const uint16_t*>(block + group_scales_offset(kL, g)));
        s0 = vmulq_f32(bf16x4_lo(raw), s0);
        s1 = vmulq_f32(bf16x4_hi(raw), s1);
      }
      acc0 = vfmaq_f32(acc0, vcvtq_f32_s32(d0), s0);
      acc1 = vfmaq_f32(acc1, vcvtq_f32_s32(d1), s1);
    }
    if constexpr (S == Scheme::Q4C) {
      acc0 = vmulq_f32(acc0, vld1q_f32(reinterpret_cast<const float*>(block)));
      acc1 = vmulq_f32(acc1, vld1q_f32(reinterpret_cast<const float*>(block) + 4));
    }
    float tmp[8];
    vst1q_f32(tmp, acc0);
    vst1q_f32(tmp + 4, acc1);
    store_partial(args.y + b * 8, tmp, std::min<int64_t>(8, args.n_cols - b * 8));
  }
}

}  // namespace

void matmul_q8b32_q4p8x8_1x8_neon_dotprod(const Args& args) {
  if (args.scheme == Scheme::Q4G32) {
    gemv<Scheme::Q4G32>(args);
  } else {
    gemv<Scheme::Q4C>(args);
  }
}

}  // namespace cpuchat::kernels::ukernel
