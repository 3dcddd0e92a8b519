// Scalar references, independent of any packed layout (for tests and for validating the
// engine): the quantizers the packer uses, a quantized matmul over plain arrays that does
// exactly the fp32 operations every micro-kernel does (so results compare bit-exactly), and a
// plain fp32 matmul.
#pragma once

#include <cstdint>
#include <vector>

#include "cpuchat_kernels/int4_matmul.h"

namespace cpuchat::kernels {

// Symmetric int4 quantization of `count` values, q in [-8, 7], w ~= d * q. The scale is
// searched to minimize the weighted squared error sum_i c_i (w_i - d q_i)^2 with K-quant
// weights c_i = rms(w) + |w_i| (candidates around v / -8, v the value of largest magnitude,
// each refined by least squares; the max/min scale v / -8 is one of them); with `bf16_scale`
// every candidate is rounded to bf16 FIRST and the values are quantized with the rounded
// scale, so the stored scale is the one the values were rounded against.
// q[i] = clamp(round_to_nearest_even(w[i] * (1/d)), -8, 7). Returns d (0 for an all-zero input).
// column_importance (null, or `count` non-negative weights): how much each input channel's
// error matters (e.g. E[x_i^2] of the activations it multiplies); c_i is multiplied by it.
float quantize_q4(const float* w, int64_t count, bool bf16_scale, int8_t* q, const float* column_importance = nullptr);
// The former rule (d = v / -8, no search), kept to measure what the search buys.
float quantize_q4_absmax(const float* w, int64_t count, bool bf16_scale, int8_t* q);

// Q4K (Q4_K arithmetic) quantization of one row's super-block of up to 256 values (the rest
// are zero padding): w ~= d * sc[j] * q - dmin * m[j] for sub-block j = i / 32.
// (struct Q4kSuperBlock: int4_matmul.h)
// Per sub-block, scale and min minimize sum c_i (w_i - (s q_i - m))^2 (c_i = sqrt(rms^2 + w_i^2),
// the search of llama.cpp's make_qkx2_quants, 41 candidates); then sc/m are rounded to 6 bits
// against the fp16-rounded d/dmin (of floor - 1 .. floor + 2 each, whichever requantizes best), and twice (d, dmin) are
// re-solved by weighted least squares for the chosen integers and q re-rounded, kept if the
// super-block's error drops. column_importance: as for quantize_q4.
Q4kSuperBlock quantize_q4k_super_block(const float* w, int64_t count, const float* column_importance = nullptr);
// fp32 values the kernels multiply by (one fp32 product each).
inline float q4k_effective_scale(uint16_t d, uint8_t sc) { return fp16_to_float(d) * static_cast<float>(sc); }
inline float q4k_effective_min(uint16_t dmin, uint8_t m) { return fp16_to_float(dmin) * static_cast<float>(m); }

// Unpacked quantized weights.
struct ReferenceWeights {
  int64_t n = 0, k = 0, groups = 0;  // groups = ceil(K / 32) (Q4K: ceil(K / 256) * 8); q is zero-padded to groups*32
  Scheme scheme = Scheme::Q4G32;
  std::vector<int8_t> q;             // [n][groups * 32] (Q4K: 0..15)
  std::vector<float> scales;         // Q4G32: [n][groups] (bf16 values); Q4C: [n]; Q4K: [n][groups] d * sc
  std::vector<float> mins;           // Q4K only: [n][groups] dmin * m
  std::vector<Q4kSuperBlock> super_blocks;  // Q4K only: [n][groups / 8], what the packer stores

  float dequantized(int64_t row, int64_t col) const;  // the value the kernels multiply by
};
// column_importance: null or K weights, as PackedWeights::pack_rows takes them.
ReferenceWeights reference_quantize_weights(const float* w, int64_t n, int64_t k, int64_t ld, Scheme scheme,
                                            const float* column_importance = nullptr);

// Exact int32 dot product of activation row m and weight row n over group g.
int32_t reference_group_dot(const QuantizedActivations& x, const ReferenceWeights& w, int64_t m, int64_t n,
                            int64_t g);
// Q4K packs these super-blocks as they are (e.g. repacked from a GGUF Q4_K tensor, no float
// round trip): [n][ceil(k / 256)] in row order.
ReferenceWeights reference_weights_from_q4k(const std::vector<Q4kSuperBlock>& blocks, int64_t n, int64_t k);

// Y = dequant(X) . dequant(W)^T with the fp32 operation order of the micro-kernels:
//   Q4G32: acc = fma(float(dot_g), scale_w * scale_a, acc)
//   Q4C  : acc = fma(float(dot_g), scale_a, acc), y = acc * scale_w
//   Q4K  : acc = fma(float(dot_g), (d sc_g) * scale_a, acc);
//          acc = fma(-(dmin m_g), scale_a * (float(-8 sum_a) * -0.125f), acc)
void reference_matmul(const QuantizedActivations& x, const ReferenceWeights& w, float* y, int64_t ldy);
// Plain fp32 loops (double accumulation), no quantization.
void reference_matmul_f32(const float* x, int64_t m, int64_t k, int64_t ldx, const float* w, int64_t n,
                          int64_t ldw, float* y, int64_t ldy);

}  // namespace cpuchat::kernels
