// Internal: row quantizers shared by QuantizedActivations and the ISA-specific versions.
#pragma once

#include <cstdint>

#include "cpuchat_kernels/int4_matmul.h"

namespace cpuchat::kernels::detail {

// Round to nearest, ties to even, for |v| < 2^22 (the quantizers only see |v| <= 127.5):
// adding 1.5 * 2^23 pushes the fraction out of the mantissa under the default rounding mode.
// Same result as std::nearbyint, but no libm call on baseline x86-64 (no SSE4.1 roundss),
// and it vectorizes. Needs strict fp semantics (no -ffast-math), as the whole library does.
inline float round_nearest_even(float v) {
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23
  return (v + kMagic) - kMagic;
}

// Quantizes one activation row of k floats into k_padded int8 (zero padding), one scale and
// one -8*sum per 32 values. Every implementation computes bit-identical results:
//   amax = max |x| over the block, scale = amax / 127, q = round_to_nearest_even(x * (127 / amax))
void quantize_q8b32_row_scalar(const float* x, int64_t k, int64_t k_padded, int8_t* q, float* scales,
                               int32_t* neg8_sums);
#if defined(__x86_64__) || defined(_M_X64)
void quantize_q8b32_row_avx2(const float* x, int64_t k, int64_t k_padded, int8_t* q, float* scales,
                             int32_t* neg8_sums);
#endif

// Weight quantizers of one row of k values (the scale searches of reference.h; every version
// is bit-identical to the scalar one, see quantize_weights_lanes.h). importance: null or k
// non-negative weights of the input channels, multiplying each value's error weight.
//   q4g32: q [ceil(k/32) * 32] in [-8, 7] (zero-padded), scales [ceil(k/32)] (bf16 values)
//   q4k:   out [ceil(k/256)] super-blocks
void quantize_q4g32_row_scalar(const float* row, int64_t k, const float* importance, int8_t* q, float* scales);
void quantize_q4k_row_scalar(const float* row, int64_t k, const float* importance, Q4kSuperBlock* out);
#if defined(__x86_64__) || defined(_M_X64)
void quantize_q4g32_row_avx2(const float* row, int64_t k, const float* importance, int8_t* q, float* scales);
void quantize_q4g32_row_avx512(const float* row, int64_t k, const float* importance, int8_t* q, float* scales);
void quantize_q4k_row_avx2(const float* row, int64_t k, const float* importance, Q4kSuperBlock* out);
void quantize_q4k_row_avx512(const float* row, int64_t k, const float* importance, Q4kSuperBlock* out);
#elif defined(__aarch64__)
void quantize_q4g32_row_neon(const float* row, int64_t k, const float* importance, int8_t* q, float* scales);
void quantize_q4k_row_neon(const float* row, int64_t k, const float* importance, Q4kSuperBlock* out);
#endif
// The fastest version for the active ISA level (the packer's choice). q4g32 follows
// CPUCHAT_Q4_SCALE_SEARCH=off (the old max/min rule) like quantize_q4.
void quantize_q4g32_row(const float* row, int64_t k, const float* importance, int8_t* q, float* scales);
void quantize_q4k_row(const float* row, int64_t k, const float* importance, Q4kSuperBlock* out);

}  // namespace cpuchat::kernels::detail
