// Micro-kernel: GEMM (any m), q8b32 activations x q4 weights packed 8x8, NEON sdot.
// Register tile: 4 activation rows x 8 output channels (16 int32 + 8 fp32 accumulators).
// Compiled with -march=armv8.2-a+dotprod.
//
// Packing contract: kLayoutArm exactly as the 1x8 dotprod GEMV (see that file /
// arm_common.h): register j of a group holds rows 2p, 2p+1 (p = j % 4) x 8 k, as 32-bit
// lanes [row 2p k0-3, row 2p k4-7, row 2p+1 k0-3, row 2p+1 k4-7].
//
// Unlike the GEMV, this kernel first turns the group's weights around, once for the 4 rows:
// vuzp1q/vuzp2q_s32 of the registers of rows (0,1) and (2,3) give [row 0..3 x 4 k] (same for
// rows 4..7), so the by-element sdot (vdotq_laneq_s32) can take 4 activation bytes straight
// from a plain 16 B load and leave one output column per lane: no activation duplication, no
// vpaddq, 2 int32 accumulators per row instead of 4. The nibbles are unpacked times 16
// (arm_common.h). fp32: cvt, mul(scale_w, scale_a), FMA in group order (bit-identical to the
// reference).
//
// Every loop inside a group is unrolled (#pragma GCC unroll): GCC 12 had kept a loop over the 8
// weight registers and indexed the accumulator tile with its counter, i.e. kept the tile on
// the stack (46 stores per group, 100 cycles on llvm-mca's Neoverse V2 model; see
// kernels/README.md). Registers: 8 int32 + 8 fp32 accumulators + 8 rearranged weight registers
// of one K half + 1 activation register + temporaries.
#include "ukernels/arm_common.h"

namespace cpuchat::kernels::ukernel {
namespace {
using namespace arm;

template <Scheme S, int MR>
void tile(const Args& args, const uint8_t* block, int64_t m0, float* y, int64_t cols) {
  const int8_t* a = args.a + m0 * args.a_stride;
  const float* a_scales = args.a_scales + m0 * args.a_groups_stride;
  const int64_t gs = args.a_groups_stride;
  float32x4_t acc[MR][2];
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = vdupq_n_f32(0.0f);
  for (int64_t g = 0; g < args.groups; ++g) {
    CPUCHAT_MCA_BEGIN("4x8_neon_dotprod", S, MR, 8, 1);
    const int8_t* wg = reinterpret_cast<const int8_t*>(block + group_weights_offset(kL, S, g));
    int32x4_t dot[MR][2];  // [row][columns 0-3, 4-7], times 16
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) dot[i][0] = dot[i][1] = vdupq_n_s32(0);
#pragma GCC unroll 2
    for (int half = 0; half < 2; ++half) {  // low nibbles: k 0..15, high nibbles: k 16..31
      int8x16_t w[2][4];                    // [columns 0-3, 4-7][k quad]: 4 rows x 4 k
#pragma GCC unroll 2
      for (int octet = 0; octet < 2; ++octet) {  // registers 4 octet .. 4 octet + 3: k 8 octet ..
        int32x4_t u[4];
#pragma GCC unroll 4
        for (int p = 0; p < 4; ++p) {
          const int8x16_t v = vld1q_s8(wg + 16 * (4 * octet + p));
          u[p] = vreinterpretq_s32_s8(half == 0 ? low_nibbles_x16(v) : high_nibbles_x16(v));
        }
#pragma GCC unroll 2
        for (int c = 0; c < 2; ++c) {
          w[c][2 * octet] = vreinterpretq_s8_s32(vuzp1q_s32(u[2 * c], u[2 * c + 1]));
          w[c][2 * octet + 1] = vreinterpretq_s8_s32(vuzp2q_s32(u[2 * c], u[2 * c + 1]));
        }
      }
#pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) {
        const int8x16_t x = vld1q_s8(a + i * args.a_stride + g * kGroupSize + 16 * half);
#pragma GCC unroll 2
        for (int c = 0; c < 2; ++c) {
          dot[i][c] = vdotq_laneq_s32(dot[i][c], w[c][0], x, 0);
          dot[i][c] = vdotq_laneq_s32(dot[i][c], w[c][1], x, 1);
          dot[i][c] = vdotq_laneq_s32(dot[i][c], w[c][2], x, 2);
          dot[i][c] = vdotq_laneq_s32(dot[i][c], w[c][3], x, 3);
        }
      }
    }
    float32x4_t w_lo = vdupq_n_f32(1.0f), w_hi = w_lo;
    if constexpr (S == Scheme::Q4G32) {
      const uint16x8_t raw = vld1q_u16(reinterpret_cast<const uint16_t*>(block + group_scales_offset(kL, g)));
      w_lo = bf16x4_lo(raw);
      w_hi = bf16x4_hi(raw);
    }
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      float32x4_t s0 = vdupq_n_f32(a_scales[i * gs + g]), s1 = s0;
      if constexpr (S == Scheme::Q4G32) {
        s0 = vmulq_f32(w_lo, s0);
        s1 = vmulq_f32(w_hi, s1);
      }
      acc[i][0] = vfmaq_f32(acc[i][0], dot_x16_to_f32(dot[i][0]), s0);
      acc[i][1] = vfmaq_f32(acc[i][1], dot_x16_to_f32(dot[i][1]), s1);
    }
    CPUCHAT_MCA_END("4x8_neon_dotprod", S, MR, 8, 1);
  }
  for (int i = 0; i < MR; ++i) {
    if constexpr (S == Scheme::Q4C) {
      acc[i][0] = vmulq_f32(acc[i][0], vld1q_f32(reinterpret_cast<const float*>(block)));
      acc[i][1] = vmulq_f32(acc[i][1], vld1q_f32(reinterpret_cast<const float*>(block) + 4));
    }
    float tmp[8];
    vst1q_f32(tmp, acc[i][0]);
    vst1q_f32(tmp + 4, acc[i][1]);
    store_partial(y + (m0 + i) * args.ldy, tmp, cols);
  }
}

template <Scheme S>
void gemm(const Args& args) {
  for (int64_t b = 0; b < args.n_blocks; ++b) {
    const uint8_t* block = args.w + b * args.block_bytes;
    float* y = args.y + b * 8;
    const int64_t cols = std::min<int64_t>(8, args.n_cols - b * 8);
    int64_t m0 = 0;
    for (; m0 + 4 <= args.m; m0 += 4) tile<S, 4>(args, block, m0, y, cols);
    switch (args.m - m0) {
      case 3: tile<S, 3>(args, block, m0, y, cols); break;
      case 2: tile<S, 2>(args, block, m0, y, cols); break;
      case 1: tile<S, 1>(args, block, m0, y, cols); break;
      default: break;
    }
  }
}

}  // namespace

void matmul_q8b32_q4p8x8_4x8_neon_dotprod(const Args& args) {
  if (args.scheme == Scheme::Q4G32) {
    gemm<Scheme::Q4G32>(args);
  } else {
    gemm<Scheme::Q4C>(args);
  }
}

}  // namespace cpuchat::kernels::ukernel
