// Q4K weight quantizer (sub-block and super-block search), 8 sub-blocks per vector,
// AVX2 (compiled with -mavx2 -mfma; no FMA is used: -ffp-contract=off).
// Bit-identical to quantize_q4k_row_scalar: the same lane code (quantize_weights_lanes.h).
#include "quantize.h"
#include "quantize_weights_lanes.h"

namespace cpuchat::kernels::detail {

void quantize_q4k_row_avx2(const float* row, int64_t k, const float* importance, Q4kSuperBlock* out) {
  q4k_row_lanes<8>(row, k, importance, out);
}

}  // namespace cpuchat::kernels::detail
