// Micro-kernel: GEMV (m = 1), q8b32 activations x Q4K weights packed 8x8, NEON sdot.
// Compiled with -march=armv8.2-a+dotprod. Also the Q4K GEMV of the i8mm level.
//
// Packing contract (kLayoutArm, Scheme::Q4K; packed_layout.h, q4k_arm_common.h):
//   - row blocks of nr=8 output channels; per 256-K super-block (1152 B):
//     [8 fp16 d][8 fp16 dmin][lo4: 64 B][hi2: 32 B] then 8 groups of 8 x 16 B nibbles
//     (q in [0, 15]; register j = rows 2(j%4), 2(j%4)+1 x 8 k, as the q4g32 layout).
//
// sdot(q zero-extended, a) per register pair, vpaddq to per-row int32 (as the q4g32 GEMV),
// then in group order acc = fma(float(dot), (d sc_g) * a_scale, acc) and
// acc = fms(acc, dmin m_g, a_scale sum_a) (bit-identical to reference_matmul).
#include "ukernels/q4k_arm_common.h"

namespace cpuchat::kernels::ukernel {
namespace {
using namespace arm;
}  // namespace

void matmul_q8b32_q4kp8x8_1x8_neon_dotprod(const Args& args) {
  for (int64_t b = 0; b < args.n_blocks; ++b) {
    const uint8_t* block = args.w + b * args.block_bytes;
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    for (int64_t g = 0; g < args.groups; ++g) {
      const uint8_t* super = block + g / kGroupsPerSuperBlock * kQ4kSuperBytes;
      const Q4kRowScales ws = q4k_row_scales(super, static_cast<int>(g % kGroupsPerSuperBlock));
      int32x4_t d0, d1;
      q4k_group_dot_sdot(block + group_weights_offset(kL, Scheme::Q4K, g), args.a + g * kGroupSize, &d0, &d1);
      const float a_scale = args.a_scales[g];
      const float32x4_t s = vdupq_n_f32(a_scale), a_sum = vdupq_n_f32(q4k_activation_sum(a_scale, args.a_neg8_sums[g]));
      acc0 = vfmaq_f32(acc0, vcvtq_f32_s32(d0), vmulq_f32(ws.scale[0], s));
      acc0 = vfmsq_f32(acc0, ws.min[0], a_sum);
      acc1 = vfmaq_f32(acc1, vcvtq_f32_s32(d1), vmulq_f32(ws.scale[1], s));
      acc1 = vfmsq_f32(acc1, ws.min[1], a_sum);
    }
    float tmp[8];
    vst1q_f32(tmp, acc0);
    vst1q_f32(tmp + 4, acc1);
    store_partial(args.y + b * 8, tmp, std::min<int64_t>(8, args.n_cols - b * 8));
  }
}

}  // namespace cpuchat::kernels::ukernel
