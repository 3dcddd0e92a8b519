// Micro-kernel: GEMM (any m), q8b32 activations x Q4K weights packed 8x8, NEON sdot.
// Register tile: 4 activation rows x 8 output channels. Compiled with -march=armv8.2-a+dotprod.
//
// Packing contract: kLayoutArm, Scheme::Q4K as the Q4K 1x8 GEMV (see that file). Each
// 16 B register of nibbles is unpacked once and used by the 4 rows; per (row, group) the
// int32 dots come from sdot + vpaddq, then, in group order,
//   acc = fma(float(dot), (d sc_g) * a_scale, acc);  acc = fms(acc, dmin m_g, a_scale sum_a)
// (bit-identical to reference_matmul).
#include "ukernels/q4k_arm_common.h"

namespace cpuchat::kernels::ukernel {
namespace {
using namespace arm;

template <int MR>
void tile(const Args& args, const uint8_t* block, int64_t m0, float* y, int64_t cols) {
  float32x4_t acc[MR][2];
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = vdupq_n_f32(0.0f);
  for (int64_t g = 0; g < args.groups; ++g) {
    const uint8_t* super = block + g / kGroupsPerSuperBlock * kQ4kSuperBytes;
    const uint8_t* wg = block + group_weights_offset(kL, Scheme::Q4K, g);
    int32x4_t pair[MR][4];
    for (int i = 0; i < MR; ++i)
      for (int p = 0; p < 4; ++p) pair[i][p] = vdupq_n_s32(0);
    for (int j = 0; j < 8; ++j) {
      const uint8x16_t v = vld1q_u8(wg + 16 * j);
      const int8x16_t lo = q4k_low(v), hi = q4k_high(v);
      for (int i = 0; i < MR; ++i) {
        const int8_t* a = args.a + (m0 + i) * args.a_stride + g * kGroupSize;
        pair[i][j % 4] = vdotq_s32(pair[i][j % 4], lo, dup8(a + 8 * (j / 4)));
        pair[i][j % 4] = vdotq_s32(pair[i][j % 4], hi, dup8(a + 16 + 8 * (j / 4)));
      }
    }
    const Q4kRowScales ws = q4k_row_scales(super, static_cast<int>(g % kGroupsPerSuperBlock));
    for (int i = 0; i < MR; ++i) {
      const float a_scale = args.a_scales[(m0 + i) * args.a_groups_stride + g];
      const float32x4_t s = vdupq_n_f32(a_scale);
      const float32x4_t a_sum = vdupq_n_f32(q4k_activation_sum(a_scale, args.a_neg8_sums[(m0 + i) * args.a_groups_stride + g]));
      const int32x4_t d0 = vpaddq_s32(pair[i][0], pair[i][1]), d1 = vpaddq_s32(pair[i][2], pair[i][3]);
      acc[i][0] = vfmaq_f32(acc[i][0], vcvtq_f32_s32(d0), vmulq_f32(ws.scale[0], s));
      acc[i][0] = vfmsq_f32(acc[i][0], ws.min[0], a_sum);
      acc[i][1] = vfmaq_f32(acc[i][1], vcvtq_f32_s32(d1), vmulq_f32(ws.scale[1], s));
      acc[i][1] = vfmsq_f32(acc[i][1], ws.min[1], a_sum);
    }
  }
  for (int i = 0; i < MR; ++i) {
    float tmp[8];
    vst1q_f32(tmp, acc[i][0]);
    vst1q_f32(tmp + 4, acc[i][1]);
    store_partial(y + (m0 + i) * args.ldy, tmp, cols);
  }
}

}  // namespace

void matmul_q8b32_q4kp8x8_4x8_neon_dotprod(const Args& args) {
  for (int64_t b = 0; b < args.n_blocks; ++b) {
    const uint8_t* block = args.w + b * args.block_bytes;
    float* y = args.y + b * 8;
    const int64_t cols = std::min<int64_t>(8, args.n_cols - b * 8);
    int64_t m0 = 0;
    for (; m0 + 4 <= args.m; m0 += 4) tile<4>(args, block, m0, y, cols);
    switch (args.m - m0) {
      case 3: tile<3>(args, block, m0, y, cols); break;
      case 2: tile<2>(args, block, m0, y, cols); break;
      case 1: tile<1>(args, block, m0, y, cols); break;
      default: break;
    }
  }
}

}  // namespace cpuchat::kernels::ukernel
