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
// sdot(16 x weights, activations duplicated in both 64-bit halves) leaves, per register, the
// lanes [row a k0-3, row a k4-7, row b k0-3, row b k4-7] (times 16, see arm_common.h). Four
// running int32 sums (one per register pair) are never reset: one vpaddq per 4 rows gives the
// per-row totals so far, and the group's dot is the difference from the previous group's
// totals (exact even if the running sums wrap). fp32: cvt, mul(scale_w, scale_a), FMA in group
// order (bit-identical to the reference).
//
// Vector µops per group (8 rows x 32 K = 144 B of q4g32): 8 shl + 8 and + 16 sdot + 4 dup +
// 2 addp + 2 sub + 2 cvt + 2 bf16 shll + 2 fmul + 2 fmla (was 24 shifts + 4 movs for the
// unpacking and zeroing); see kernels/README.md for the llvm-mca numbers.
#include "ukernels/arm_common.h"

namespace cpuchat::kernels::ukernel {
namespace {
using namespace arm;

// One group into the running sums; returns the group's per-row dots (x16) and updates `before`.
template <Scheme S>
inline void group(const Args& args, const uint8_t* block, int64_t g, int32x4_t run[4], int32x4_t* before03,
                  int32x4_t* before47, float32x4_t* acc0, float32x4_t* acc1) {
  const uint8_t* wg = block + group_weights_offset(kL, S, g);
  const int8_t* ag = args.a + g * kGroupSize;
  __builtin_prefetch(wg + 1024);
  const int8x16_t x[4] = {dup8(ag), dup8(ag + 8), dup8(ag + 16), dup8(ag + 24)};
#pragma GCC unroll 8
  for (int j = 0; j < 8; ++j) {
    const int8x16_t v = vld1q_s8(reinterpret_cast<const int8_t*>(wg + 16 * j));
    run[j % 4] = vdotq_s32(run[j % 4], low_nibbles_x16(v), x[j / 4]);
    run[j % 4] = vdotq_s32(run[j % 4], high_nibbles_x16(v), x[2 + j / 4]);
  }
  const int32x4_t total03 = vpaddq_s32(run[0], run[1]), total47 = vpaddq_s32(run[2], run[3]);
  const int32x4_t d0 = vsubq_s32(total03, *before03), d1 = vsubq_s32(total47, *before47);
  *before03 = total03;
  *before47 = total47;
  float32x4_t s0 = vdupq_n_f32(args.a_scales[g]), s1 = s0;
  if constexpr (S == Scheme::Q4G32) {
    const uint16x8_t raw = vld1q_u16(reinterpret_cast<const uint16_t*>(block + group_scales_offset(kL, g)));
    s0 = vmulq_f32(bf16x4_lo(raw), s0);
    s1 = vmulq_f32(bf16x4_hi(raw), s1);
  }
  *acc0 = vfmaq_f32(*acc0, dot_x16_to_f32(d0), s0);
  *acc1 = vfmaq_f32(*acc1, dot_x16_to_f32(d1), s1);
}

template <Scheme S>
void gemv(const Args& args) {
  for (int64_t b = 0; b < args.n_blocks; ++b) {
    const uint8_t* block = args.w + b * args.block_bytes;
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    int32x4_t run[4] = {vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0)};
    int32x4_t before03 = vdupq_n_s32(0), before47 = vdupq_n_s32(0);
    int64_t g = 0;
    // Two groups per iteration: the running totals alternate registers instead of being copied.
    for (; g + 2 <= args.groups; g += 2) {
      CPUCHAT_MCA_BEGIN("1x8_neon_dotprod", S, 1, 8, 2);
      group<S>(args, block, g, run, &before03, &before47, &acc0, &acc1);
      group<S>(args, block, g + 1, run, &before03, &before47, &acc0, &acc1);
      CPUCHAT_MCA_END("1x8_neon_dotprod", S, 1, 8, 2);
    }
    if (g < args.groups) group<S>(args, block, g, run, &before03, &before47, &acc0, &acc1);
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
