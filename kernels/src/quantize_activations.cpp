// Dynamic per-block (32) symmetric int8 quantization of activations, once per matmul.
//
// Why symmetric per block of 32 rather than asymmetric per row: LLM activations have outlier
// channels; a per-row scale lets one outlier coarsen the whole row, a per-block scale confines
// it to its block (kernels/README.md has the measured error of both). The extra cost is one
// fp32 multiply per group in the kernels, which q4g32 needs per group anyway.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "cpuchat_kernels/int4_matmul.h"
#include "quantize.h"

namespace cpuchat::kernels {
namespace detail {

void quantize_q8b32_row_scalar(const float* x, int64_t k, int64_t k_padded, int8_t* q, float* scales,
                               int32_t* neg8_sums) {
  for (int64_t g = 0; g * kGroupSize < k_padded; ++g) {
    const int64_t begin = g * kGroupSize, count = std::max<int64_t>(0, std::min<int64_t>(kGroupSize, k - begin));
    float amax = 0.0f;
    for (int64_t i = 0; i < count; ++i) amax = std::max(amax, std::fabs(x[begin + i]));
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    int32_t sum = 0;
    for (int64_t i = 0; i < kGroupSize; ++i) {
      int32_t v = 0;
      if (i < count) {
        v = static_cast<int32_t>(round_nearest_even(x[begin + i] * inv));
        v = std::min(127, std::max(-127, v));
      }
      q[begin + i] = static_cast<int8_t>(v);
      sum += v;
    }
    scales[g] = amax / 127.0f;
    neg8_sums[g] = -8 * sum;
  }
}

}  // namespace detail

namespace {
using RowQuantizer = void (*)(const float*, int64_t, int64_t, int8_t*, float*, int32_t*);

RowQuantizer row_quantizer() {
#if defined(__x86_64__) || defined(_M_X64)
  const IsaLevel level = active_isa();
  if (level == IsaLevel::Avx2 || level == IsaLevel::Avx512Vnni || level == IsaLevel::AmxInt8) return detail::quantize_q8b32_row_avx2;
#endif
  return detail::quantize_q8b32_row_scalar;
}
}  // namespace

void QuantizedActivations::resize(int64_t m, int64_t k) {
  if (m <= 0 || k <= 0) {
    throw std::invalid_argument("QuantizedActivations: m and k must be positive (m=" + std::to_string(m) +
                                ", k=" + std::to_string(k) + ")");
  }
  m_ = m;
  k_ = k;
  k_padded_ = round_up(k, kActivationKAlign);
  const size_t row_bytes = static_cast<size_t>(m * k_padded_);
  if (row_bytes > capacity_rows_bytes_) {
    void* p = std::aligned_alloc(64, static_cast<size_t>(round_up(static_cast<int64_t>(row_bytes), 64)));
    if (p == nullptr) throw std::bad_alloc();
    q_ = std::unique_ptr<int8_t[], void (*)(void*)>(static_cast<int8_t*>(p), std::free);
    capacity_rows_bytes_ = row_bytes;
  }
  const size_t group_entries = static_cast<size_t>(m * groups());
  if (group_entries > capacity_groups_) {
    scales_.reset(new float[group_entries]);
    neg8_sums_.reset(new int32_t[group_entries]);
    capacity_groups_ = group_entries;
  }
}

void QuantizedActivations::quantize_rows(const float* x, int64_t ldx, int64_t row_begin, int64_t row_end) {
  if (x == nullptr || ldx < k_ || row_begin < 0 || row_end > m_ || row_begin > row_end) {
    throw std::invalid_argument("QuantizedActivations::quantize_rows: bad rows [" + std::to_string(row_begin) +
                                ", " + std::to_string(row_end) + ") of " + std::to_string(m_) +
                                " or ldx " + std::to_string(ldx) + " < k " + std::to_string(k_));
  }
  const RowQuantizer quantize_row = row_quantizer();
  for (int64_t i = row_begin; i < row_end; ++i) {
    quantize_row(x + i * ldx, k_, k_padded_, q_.get() + i * k_padded_, scales_.get() + i * groups(),
                 neg8_sums_.get() + i * groups());
  }
}

void QuantizedActivations::quantize(const float* x, int64_t m, int64_t k, int64_t ldx) {
  resize(m, k);
  quantize_rows(x, ldx, 0, m);
}

}  // namespace cpuchat::kernels
