// Scalar references, independent of any packed layout (for tests and for validating the
// engine): the quantizers the packer uses, a quantized matmul over plain arrays that does
// exactly the fp32 operations every micro-kernel does (so results compare bit-exactly), and a
// plain fp32 matmul.
#pragma once

#include <cstdint>
#include <vector>

#include "cpuchat_kernels/int4_matmul.h"

namespace cpuchat::kernels {

// Symmetric int4 quantization of `count` values: scale d = v / -8 where v is the value of
// largest magnitude (so v maps exactly to -8 and the full [-8, 7] range is used); with
// `bf16_scale` the scale is rounded to bf16 FIRST and the values are quantized with the
// rounded scale, so the stored scale is the one the values were rounded against.
// q[i] = clamp(round_to_nearest_even(w[i] * (1/d)), -8, 7). Returns d (0 for an all-zero input).
float quantize_q4(const float* w, int64_t count, bool bf16_scale, int8_t* q);

// Unpacked quantized weights.
struct ReferenceWeights {
  int64_t n = 0, k = 0, groups = 0;  // groups = ceil(K / 32); q is zero-padded to groups*32
  Scheme scheme = Scheme::Q4G32;
  std::vector<int8_t> q;             // [n][groups * 32]
  std::vector<float> scales;         // Q4G32: [n][groups] (bf16 values); Q4C: [n]
};
ReferenceWeights reference_quantize_weights(const float* w, int64_t n, int64_t k, int64_t ld, Scheme scheme);

// Exact int32 dot product of activation row m and weight row n over group g.
int32_t reference_group_dot(const QuantizedActivations& x, const ReferenceWeights& w, int64_t m, int64_t n,
                            int64_t g);
// Y = dequant(X) . dequant(W)^T with the fp32 operation order of the micro-kernels.
void reference_matmul(const QuantizedActivations& x, const ReferenceWeights& w, float* y, int64_t ldy);
// Plain fp32 loops (double accumulation), no quantization.
void reference_matmul_f32(const float* x, int64_t m, int64_t k, int64_t ldx, const float* w, int64_t n,
                          int64_t ldw, float* y, int64_t ldy);

}  // namespace cpuchat::kernels
