// Q4G32 weight quantizer (scale search), 4 groups in lockstep (one vector), NEON (aarch64 baseline: Advanced SIMD is always there; no FMA: -ffp-contract=off).
// Bit-identical to quantize_q4g32_row_scalar: the same lane code (quantize_weights_lanes.h).
#include "quantize.h"
#include "quantize_weights_lanes.h"

namespace cpuchat::kernels::detail {

void quantize_q4g32_row_neon(const float* row, int64_t k, const float* importance, int8_t* q, float* scales) {
  q4g32_row_lanes<4>(row, k, importance, q, scales);
}

}  // namespace cpuchat::kernels::detail
