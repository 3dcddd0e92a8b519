// Micro-kernel: q8b32 activations x q4 packed weights (ANY layout), any m, portable C++.
//
// Packing contract: reads whatever layout args.layout describes, only through the
// functions of packed_layout.h (nibble_pos, group_*_offset, decode_nibble). It is the
// "scalar" ISA level and the fallback when a buffer's layout has no ISA kernel on this CPU
// (e.g. an x86-packed blob used on aarch64).
//
// Per block it decodes one group of nr x 32 int4 values at a time into int8 and reuses
// them for all m activation rows. fp32 operations are exactly those of reference_matmul().
#include <cmath>
#include <vector>

#include "ukernels/ukernel.h"

namespace cpuchat::kernels::ukernel {

void matmul_q8b32_q4p_any_scalar(const Args& args) {
  const Layout& l = *args.layout;
  const int nr = l.nr;
  const bool per_group = args.scheme == Scheme::Q4G32;
  std::vector<int8_t> q(static_cast<size_t>(nr) * kGroupSize);
  std::vector<float> w_scale(nr);
  std::vector<float> acc(static_cast<size_t>(args.m) * nr);

  for (int64_t b = 0; b < args.n_blocks; ++b) {
    const uint8_t* block = args.w + b * args.block_bytes;
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int64_t g = 0; g < args.groups; ++g) {
      const uint8_t* bytes = block + group_weights_offset(l, args.scheme, g);
      for (int r = 0; r < nr; ++r) {
        for (int k = 0; k < kGroupSize; ++k) {
          const NibblePos pos = nibble_pos(l, r, k);
          const uint8_t nib = pos.high ? bytes[pos.byte] >> 4 : bytes[pos.byte] & 0xF;
          q[r * kGroupSize + k] = static_cast<int8_t>(decode_nibble(l, nib));
        }
        if (per_group) w_scale[r] = bf16_to_float(load_u16(block + group_scales_offset(l, g) + 2 * r));
      }
      for (int64_t i = 0; i < args.m; ++i) {
        const int8_t* a = args.a + i * args.a_stride + g * kGroupSize;
        const float a_scale = args.a_scales[i * args.a_groups_stride + g];
        for (int r = 0; r < nr; ++r) {
          int32_t dot = 0;
          for (int k = 0; k < kGroupSize; ++k) dot += int32_t{a[k]} * q[r * kGroupSize + k];
          const float scale = per_group ? w_scale[r] * a_scale : a_scale;
          float& s = acc[i * nr + r];
          s = std::fma(static_cast<float>(dot), scale, s);
        }
      }
    }
    const int64_t cols = std::min<int64_t>(nr, args.n_cols - b * nr);
    for (int64_t i = 0; i < args.m; ++i) {
      float* y = args.y + i * args.ldy + b * nr;
      for (int64_t r = 0; r < cols; ++r) {
        y[r] = per_group ? acc[i * nr + r] : acc[i * nr + r] * load_f32(block + 4 * r);
      }
    }
  }
}

}  // namespace cpuchat::kernels::ukernel
