// Micro-kernel: GEMM (any m), q8b32 activations x q4 weights packed 8x8, NEON i8mm (smmla).
// Register tile: 4 activation rows (2 row pairs) x 8 output channels.
// Compiled with -march=armv8.6-a+i8mm.
//
// Packing contract: kLayoutArm (see packed_layout.h / arm_common.h). Its kr=8 row pairs are
// exactly smmla's right operand: register j = [row 2p: 8 k][row 2p+1: 8 k], p = j%4. The left
// operand pairs two activation rows: [x_2P: 8 k][x_2P+1: 8 k]. smmla then adds the 2x2 block
//   [x_2P.w_2p, x_2P.w_2p+1, x_2P+1.w_2p, x_2P+1.w_2p+1]
// and per group vzip1/vzip2 on 64-bit lanes turn two such blocks into 4 consecutive output
// channels of one row. fp32: cvt, mul(scale_w, scale_a), FMA in group order (bit-identical
// to the reference). An odd last row is computed as a pair with itself and stored once.
#include "ukernels/arm_common.h"

namespace cpuchat::kernels::ukernel {
namespace {
using namespace arm;

inline int8x16_t row_pair(const int8_t* r0, const int8_t* r1) { return vcombine_s8(vld1_s8(r0), vld1_s8(r1)); }

// Rows m0 .. m0 + 2*PAIRS - 1 (clamped to `rows` valid ones) x 8 columns.
template <Scheme S, int PAIRS>
void tile(const Args& args, const uint8_t* block, int64_t m0, int rows, float* y, int64_t cols) {
  constexpr int MR = 2 * PAIRS;
  const int8_t* a_row[MR];
  const float* s_row[MR];
  for (int i = 0; i < MR; ++i) {
    const int64_t m = m0 + std::min(i, rows - 1);
    a_row[i] = args.a + m * args.a_stride;
    s_row[i] = args.a_scales + m * args.a_groups_stride;
  }
  float32x4_t acc[MR][2];
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = vdupq_n_f32(0.0f);
  for (int64_t g = 0; g < args.groups; ++g) {
    CPUCHAT_MCA_BEGIN("4x8_neon_i8mm", S, MR, 8, 1);
    const uint8_t* wg = block + group_weights_offset(kL, S, g);
    // The accumulators start at kMagic's bits: each lane ends as the fp32 kMagic + dot
    // (arm_common.h), one fsub instead of an scvtf.
    int32x4_t mm[PAIRS][4];
#pragma GCC unroll 2
    for (int P = 0; P < PAIRS; ++P)
#pragma GCC unroll 4
      for (int p = 0; p < 4; ++p) mm[P][p] = magic_bits();
#pragma GCC unroll 2
    for (int half = 0; half < 2; ++half) {  // registers 4 half .. 4 half + 3: k 8 half .. (+16)
      int8x16_t x_lo[PAIRS], x_hi[PAIRS];
#pragma GCC unroll 2
      for (int P = 0; P < PAIRS; ++P) {
        const int64_t k = g * kGroupSize + 8 * half;
        x_lo[P] = row_pair(a_row[2 * P] + k, a_row[2 * P + 1] + k);
        x_hi[P] = row_pair(a_row[2 * P] + k + 16, a_row[2 * P + 1] + k + 16);
      }
#pragma GCC unroll 4
      for (int p = 0; p < 4; ++p) {
        const int8x16_t v = vld1q_s8(reinterpret_cast<const int8_t*>(wg + 16 * (4 * half + p)));
        const int8x16_t lo = low_nibbles_x16(v), hi = high_nibbles_x16(v);
#pragma GCC unroll 2
        for (int P = 0; P < PAIRS; ++P) {
          mm[P][p] = vmmlaq_s32(mm[P][p], x_lo[P], lo);
          mm[P][p] = vmmlaq_s32(mm[P][p], x_hi[P], hi);
        }
      }
    }
    float32x4_t w_lo = vdupq_n_f32(1.0f), w_hi = w_lo;
    if constexpr (S == Scheme::Q4G32) {
      const uint16x8_t raw = vld1q_u16(reinterpret_cast<const uint16_t*>(block + group_scales_offset(kL, g)));
      w_lo = bf16x4_lo(raw);
      w_hi = bf16x4_hi(raw);
    }
#pragma GCC unroll 2
    for (int P = 0; P < PAIRS; ++P) {
#pragma GCC unroll 2
      for (int half = 0; half < 2; ++half) {  // columns 4*half .. 4*half+3
        const int64x2_t c0 = vreinterpretq_s64_s32(mm[P][2 * half]), c1 = vreinterpretq_s64_s32(mm[P][2 * half + 1]);
        const int32x4_t dots[2] = {vreinterpretq_s32_s64(vzip1q_s64(c0, c1)), vreinterpretq_s32_s64(vzip2q_s64(c0, c1))};
#pragma GCC unroll 2
        for (int r = 0; r < 2; ++r) {
          const int i = 2 * P + r;
          float32x4_t s = vdupq_n_f32(s_row[i][g]);
          if constexpr (S == Scheme::Q4G32) s = vmulq_f32(half == 0 ? w_lo : w_hi, s);
          acc[i][half] = vfmaq_f32(acc[i][half], magic_dot_to_f32(dots[r]), s);
        }
      }
    }
    CPUCHAT_MCA_END("4x8_neon_i8mm", S, MR, 8, 1);
  }
  for (int i = 0; i < rows; ++i) {
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
    for (; m0 + 4 <= args.m; m0 += 4) tile<S, 2>(args, block, m0, 4, y, cols);
    const int rest = static_cast<int>(args.m - m0);
    if (rest > 2) {
      tile<S, 2>(args, block, m0, rest, y, cols);
    } else if (rest > 0) {
      tile<S, 1>(args, block, m0, rest, y, cols);
    }
  }
}

}  // namespace

void matmul_q8b32_q4p8x8_4x8_neon_i8mm(const Args& args) {
  if (args.scheme == Scheme::Q4G32) {
    gemm<Scheme::Q4G32>(args);
  } else {
    gemm<Scheme::Q4C>(args);
  }
}

}  // namespace cpuchat::kernels::ukernel
