// Micro-kernel: GEMM (any m), q8b32 activations x q4 weights packed 8x8, NEON sdot.
// Register tile: 4 activation rows x 8 output channels (16 int32 + 8 fp32 accumulators).
// Compiled with -march=armv8.2-a+dotprod.
//
// Packing contract: kLayoutArm exactly as the 1x8 dotprod GEMV (see that file /
// arm_common.h). Each 16 B weight register is unpacked once and used by the 4 rows.
// fp32: cvt, mul(scale_w, scale_a), FMA in group order (bit-identical to the reference).
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
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = vdupq_n_f32(0.0f);
  for (int64_t g = 0; g < args.groups; ++g) {
    const uint8_t* wg = block + group_weights_offset(kL, S, g);
    int32x4_t pair[MR][4];
    for (int i = 0; i < MR; ++i)
      for (int p = 0; p < 4; ++p) pair[i][p] = vdupq_n_s32(0);
    for (int j = 0; j < 8; ++j) {
      const int8x16_t v = vld1q_s8(reinterpret_cast<const int8_t*>(wg + 16 * j));
      const int8x16_t lo = low_nibbles(v), hi = high_nibbles(v);
      for (int i = 0; i < MR; ++i) {
        const int8_t* ag = a + i * args.a_stride + g * kGroupSize;
        pair[i][j % 4] = vdotq_s32(pair[i][j % 4], lo, dup8(ag + 8 * (j / 4)));
        pair[i][j % 4] = vdotq_s32(pair[i][j % 4], hi, dup8(ag + 16 + 8 * (j / 4)));
      }
    }
    float32x4_t w_lo = vdupq_n_f32(1.0f), w_hi = w_lo;
    if constexpr (S == Scheme::Q4G32) {
      const uint16x8_t raw = vld1q_u16(reinterpret_cast<const uint16_t*>(block + group_scales_offset(kL, g)));
      w_lo = bf16x4_lo(raw);
      w_hi = bf16x4_hi(raw);
    }
    for (int i = 0; i < MR; ++i) {
      float32x4_t s0 = vdupq_n_f32(a_scales[i * gs + g]), s1 = s0;
      if constexpr (S == Scheme::Q4G32) {
        s0 = vmulq_f32(w_lo, s0);
        s1 = vmulq_f32(w_hi, s1);
      }
      acc[i][0] = vfmaq_f32(acc[i][0], vcvtq_f32_s32(vpaddq_s32(pair[i][0], pair[i][1])), s0);
      acc[i][1] = vfmaq_f32(acc[i][1], vcvtq_f32_s32(vpaddq_s32(pair[i][2], pair[i][3])), s1);
    }
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
