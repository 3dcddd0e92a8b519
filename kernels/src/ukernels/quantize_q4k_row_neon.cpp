// Q4K weight quantizer (sub-block and super-block search), 4 sub-blocks per vector,
// NEON (aarch64 baseline: Advanced SIMD is always there; no FMA: -ffp-contract=off).
// Bit-identical to quantize_q4k_row_scalar: the same lane code (quantize_weights_lanes.h).
#include "quantize.h"
#include "quantize_weights_lanes.h"

namespace cpuchat::kernels::detail {

void quantize_q4k_row_neon(const float* row, int64_t k, const float* importance, Q4kSuperBlock* out) {
  q4k_row_lanes<4>(row, k, importance, out);
}

}  // namespace cpuchat::kernels::detail
