// Micro-kernel: GEMM (any m), q8b32 activations x Q4K weights packed 8x8, NEON i8mm (smmla).
// Register tile: 4 activation rows (2 row pairs) x 8 output channels.
// Compiled with -march=armv8.6-a+i8mm.
//
// Packing contract: kLayoutArm, Scheme::Q4K as the Q4K 1x8 GEMV. Register j of a group =
// [row 2p: 8 k][row 2p+1: 8 k] (p = j%4) is smmla's right operand as is (q in [0, 15] is a
// non-negative int8); the left operand pairs two activation rows. vzip1/vzip2 on 64-bit
// lanes give 4 consecutive output channels of one row (as the q4g32 i8mm kernel). Then in
// group order acc = fma(float(dot), (d sc_g) * a_scale, acc); acc = fms(acc, dmin m_g,
// a_scale sum_a) (bit-identical to reference_matmul). An odd last row is paired with itself.
#include "ukernels/q4k_arm_common.h"

namespace cpuchat::kernels::ukernel {
namespace {
using namespace arm;

inline int8x16_t row_pair(const int8_t* r0, const int8_t* r1) { return vcombine_s8(vld1_s8(r0), vld1_s8(r1)); }

template <int PAIRS>
void tile(const Args& args, const uint8_t* block, int64_t m0, int rows, float* y, int64_t cols) {
  constexpr int MR = 2 * PAIRS;
  const int8_t* a_row[MR];
  int64_t m_of[MR];
  for (int i = 0; i < MR; ++i) {
    m_of[i] = m0 + std::min(i, rows - 1);
    a_row[i] = args.a + m_of[i] * args.a_stride;
  }
  float32x4_t acc[MR][2];
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = vdupq_n_f32(0.0f);
  for (int64_t g = 0; g < args.groups; ++g) {
    const uint8_t* super = block + g / kGroupsPerSuperBlock * kQ4kSuperBytes;
    const uint8_t* wg = block + group_weights_offset(kL, Scheme::Q4K, g);
    int8x16_t x[PAIRS][4];
    for (int P = 0; P < PAIRS; ++P)
      for (int s = 0; s < 4; ++s)
        x[P][s] = row_pair(a_row[2 * P] + g * kGroupSize + 8 * s, a_row[2 * P + 1] + g * kGroupSize + 8 * s);
    int32x4_t mm[PAIRS][4];
    for (int P = 0; P < PAIRS; ++P)
      for (int p = 0; p < 4; ++p) mm[P][p] = vdupq_n_s32(0);
    for (int j = 0; j < 8; ++j) {
      const uint8x16_t v = vld1q_u8(wg + 16 * j);
      const int8x16_t lo = q4k_low(v), hi = q4k_high(v);
      for (int P = 0; P < PAIRS; ++P) {
        mm[P][j % 4] = vmmlaq_s32(mm[P][j % 4], x[P][j / 4], lo);
        mm[P][j % 4] = vmmlaq_s32(mm[P][j % 4], x[P][2 + j / 4], hi);
      }
    }
    const Q4kRowScales ws = q4k_row_scales(super, static_cast<int>(g % kGroupsPerSuperBlock));
    for (int P = 0; P < PAIRS; ++P) {
      for (int half = 0; half < 2; ++half) {
        const int64x2_t c0 = vreinterpretq_s64_s32(mm[P][2 * half]), c1 = vreinterpretq_s64_s32(mm[P][2 * half + 1]);
        const int32x4_t dots[2] = {vreinterpretq_s32_s64(vzip1q_s64(c0, c1)), vreinterpretq_s32_s64(vzip2q_s64(c0, c1))};
        for (int r = 0; r < 2; ++r) {
          const int i = 2 * P + r;
          const float a_scale = args.a_scales[m_of[i] * args.a_groups_stride + g];
          const float a_sum = q4k_activation_sum(a_scale, args.a_neg8_sums[m_of[i] * args.a_groups_stride + g]);
          acc[i][half] = vfmaq_f32(acc[i][half], vcvtq_f32_s32(dots[r]), vmulq_f32(ws.scale[half], vdupq_n_f32(a_scale)));
          acc[i][half] = vfmsq_f32(acc[i][half], ws.min[half], vdupq_n_f32(a_sum));
        }
      }
    }
  }
  for (int i = 0; i < rows; ++i) {
    float tmp[8];
    vst1q_f32(tmp, acc[i][0]);
    vst1q_f32(tmp + 4, acc[i][1]);
    store_partial(y + (m0 + i) * args.ldy, tmp, cols);
  }
}

}  // namespace

void matmul_q8b32_q4kp8x8_4x8_neon_i8mm(const Args& args) {
  for (int64_t b = 0; b < args.n_blocks; ++b) {
    const uint8_t* block = args.w + b * args.block_bytes;
    float* y = args.y + b * 8;
    const int64_t cols = std::min<int64_t>(8, args.n_cols - b * 8);
    int64_t m0 = 0;
    for (; m0 + 4 <= args.m; m0 += 4) tile<2>(args, block, m0, 4, y, cols);
    const int rest = static_cast<int>(args.m - m0);
    if (rest > 2) {
      tile<2>(args, block, m0, rest, y, cols);
    } else if (rest > 0) {
      tile<1>(args, block, m0, rest, y, cols);
    }
  }
}

}  // namespace cpuchat::kernels::ukernel
