// Micro-kernel: q8b32 activations x Q4K packed weights (ANY layout), any m, portable C++.
//
// Packing contract: Scheme::Q4K in whatever layout args.layout describes, read only through
// packed_layout.h (q4k_* offsets, q4k_scale_pos, nibble_pos); nibbles are q in [0, 15].
// It is the "scalar" ISA level for Q4K and the fallback for a foreign layout.
//
// Per super-block it decodes the nr rows' fp32 (d sc_j) and (dmin m_j) once, then per group
// the nr x 32 nibbles, and reuses them for all m activation rows. fp32 operations are exactly
// those of reference_matmul():
//   acc = fma(float(dot_g), (d sc_g) * a_scale, acc)
//   acc = fma(-(dmin m_g), a_scale * (float(-8 sum_a) * -0.125f), acc)
#include <cmath>
#include <vector>

#include "ukernels/ukernel.h"

namespace cpuchat::kernels::ukernel {

void matmul_q8b32_q4kp_any_scalar(const Args& args) {
  const Layout& l = *args.layout;
  const int nr = l.nr;
  std::vector<uint8_t> q(static_cast<size_t>(nr) * kGroupSize);
  std::vector<float> w_scale(static_cast<size_t>(nr) * kGroupsPerSuperBlock), w_min(w_scale.size());
  std::vector<float> acc(static_cast<size_t>(args.m) * nr);

  for (int64_t b = 0; b < args.n_blocks; ++b) {
    const uint8_t* block = args.w + b * args.block_bytes;
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int64_t g = 0; g < args.groups; ++g) {
      const int j = static_cast<int>(g % kGroupsPerSuperBlock);
      const uint8_t* super = block + g / kGroupsPerSuperBlock * q4k_super_block_bytes(l);
      if (j == 0) {
        for (int r = 0; r < nr; ++r) {
          const float d = fp16_to_float(load_u16(super + q4k_d_offset() + 2 * r));
          const float dmin = fp16_to_float(load_u16(super + q4k_dmin_offset(l) + 2 * r));
          for (int jj = 0; jj < kGroupsPerSuperBlock; ++jj) {
            const Q4kScalePos p = q4k_scale_pos(l, jj, r);
            const int sc = (super[p.lo4_byte] & 15) | ((super[p.hi2_byte] >> p.hi2_shift) & 3) << 4;
            const int m = (super[p.lo4_byte] >> 4) | ((super[p.hi2_byte] >> (p.hi2_shift + 4)) & 3) << 4;
            w_scale[jj * nr + r] = d * static_cast<float>(sc);
            w_min[jj * nr + r] = dmin * static_cast<float>(m);
          }
        }
      }
      const uint8_t* bytes = block + group_weights_offset(l, Scheme::Q4K, g);
      for (int r = 0; r < nr; ++r) {
        for (int k = 0; k < kGroupSize; ++k) {
          const NibblePos pos = nibble_pos(l, r, k);
          q[r * kGroupSize + k] = pos.high ? bytes[pos.byte] >> 4 : bytes[pos.byte] & 0xF;
        }
      }
      for (int64_t i = 0; i < args.m; ++i) {
        const int8_t* a = args.a + i * args.a_stride + g * kGroupSize;
        const float a_scale = args.a_scales[i * args.a_groups_stride + g];
        const float a_sum = a_scale * (static_cast<float>(args.a_neg8_sums[i * args.a_groups_stride + g]) * -0.125f);
        for (int r = 0; r < nr; ++r) {
          int32_t dot = 0;
          for (int k = 0; k < kGroupSize; ++k) dot += int32_t{a[k]} * q[r * kGroupSize + k];
          float& s = acc[i * nr + r];
          s = std::fma(static_cast<float>(dot), w_scale[j * nr + r] * a_scale, s);
          s = std::fma(-w_min[j * nr + r], a_sum, s);
        }
      }
    }
    const int64_t cols = std::min<int64_t>(nr, args.n_cols - b * nr);
    for (int64_t i = 0; i < args.m; ++i) {
      std::memcpy(args.y + i * args.ldy + b * nr, acc.data() + i * nr, static_cast<size_t>(cols) * sizeof(float));
    }
  }
}

}  // namespace cpuchat::kernels::ukernel
