// Weight quantizers (the packer and the references use these): q4 symmetric with an
// error-minimizing scale search (Q4G32, Q4C) and the Q4K super-block quantizer. The Q4G32
// and Q4K searches are the lane code of quantize_weights_lanes.h (the scalar references
// here, SIMD versions in ukernels/quantize_q4*_row_*.cpp); Q4C's per-row search is below.
//
// Both searches minimize the weighted squared error sum_i c_i (w_i - w^_i)^2 with the K-quant
// importance c_i = rms(block) + |w_i| (llama.cpp's quantize_row_q4_K_ref): large weights
// matter more for the matmul error, but small ones are not ignored.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "cpuchat_kernels/reference.h"
#include "quantize.h"
#include "quantize_weights_lanes.h"

namespace cpuchat::kernels {
namespace {

float round_bf16(float v) { return bf16_to_float(float_to_bf16(v)); }

// c_i = (rms + |w_i|) * column_i (column: the input channels' importance, or null for 1).
void importance(const float* w, int64_t count, const float* column, float* c) {
  double sum2 = 0.0;
  for (int64_t i = 0; i < count; ++i) sum2 += double{w[i]} * w[i];
  const float rms = static_cast<float>(std::sqrt(sum2 / static_cast<double>(std::max<int64_t>(count, 1))));
  for (int64_t i = 0; i < count; ++i) c[i] = (rms + std::fabs(w[i])) * (column != nullptr ? column[i] : 1.0f);
}

// q = clamp(round(w / d), -8, 7); returns the weighted squared error.
double quantize_symmetric_with(const float* w, const float* c, int64_t count, float d, int8_t* q) {
  const float inv = d != 0.0f ? 1.0f / d : 0.0f;
  double err = 0.0;
  for (int64_t i = 0; i < count; ++i) {
    const float v = std::min(7.0f, std::max(-8.0f, detail::round_nearest_even(w[i] * inv)));
    q[i] = static_cast<int8_t>(v);
    const double e = double{w[i]} - double{d} * v;
    err += c[i] * e * e;
  }
  return err;
}

}  // namespace

float quantize_q4_absmax(const float* w, int64_t count, bool bf16_scale, int8_t* q) {
  float extreme = 0.0f;  // the value of largest magnitude, with its sign
  for (int64_t i = 0; i < count; ++i) {
    if (std::fabs(w[i]) > std::fabs(extreme)) extreme = w[i];
  }
  float d = extreme / -8.0f;
  if (bf16_scale) d = round_bf16(d);
  const float inv = d != 0.0f ? 1.0f / d : 0.0f;
  for (int64_t i = 0; i < count; ++i) {
    const float v = detail::round_nearest_even(w[i] * inv);
    q[i] = static_cast<int8_t>(std::min(7.0f, std::max(-8.0f, v)));
  }
  return d;
}

// CPUCHAT_Q4_SCALE_SEARCH=off (read once): the old max/min rule, to measure the search.
bool scale_search_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("CPUCHAT_Q4_SCALE_SEARCH");
    return v == nullptr || std::string(v) != "off";
  }();
  return enabled;
}

namespace {

// Q4C (one scale for a whole row): the same search over the row, sums in double.
float quantize_q4_row_scale(const float* w, int64_t count, bool bf16_scale, const float* column, int8_t* q) {
  float d_best = quantize_q4_absmax(w, count, bf16_scale, q);
  if (d_best == 0.0f || count <= 1 || !scale_search_enabled()) return d_best;
  std::vector<float> c_buf(static_cast<size_t>(count));
  float* c = c_buf.data();
  importance(w, count, column, c);
  double sum_cww = 0.0;
  for (int64_t i = 0; i < count; ++i) sum_cww += double{c[i]} * w[i] * w[i];
  const double err_absmax = quantize_symmetric_with(w, c, count, d_best, q);
  double err_best = err_absmax;
  float d_found = 0.0f;
  const float extreme = d_best * -8.0f;
  // Candidate inverse scales -(8 + 0.1 s) / extreme around the absmax one, each refined by
  // the least-squares scale for its rounding L (the make_qx_quants search). The error of
  // (d, L) has a closed form; requantizing with the chosen d afterwards can only lower it
  // (nearest rounding is the best L for a given d), so the result never loses to absmax.
  for (int s = -9; s <= 9; ++s) {
    if (s == 0) continue;  // that is the absmax rounding
    const float inv = -(8.0f + 0.1f * static_cast<float>(s)) / extreme;
    double sum_cwq = 0.0, sum_cqq = 0.0;
    for (int64_t i = 0; i < count; ++i) {
      const float v = std::min(7.0f, std::max(-8.0f, detail::round_nearest_even(w[i] * inv)));
      sum_cwq += double{c[i]} * w[i] * v;
      sum_cqq += double{c[i]} * v * v;
    }
    if (sum_cqq <= 0.0) continue;
    float d = static_cast<float>(sum_cwq / sum_cqq);
    if (bf16_scale) d = round_bf16(d);
    if (d == 0.0f || !std::isfinite(d)) continue;
    const double err = sum_cww - 2.0 * d * sum_cwq + double{d} * d * sum_cqq;
    if (err < err_best) {
      err_best = err;
      d_found = d;
    }
  }
  if (d_found == 0.0f) return d_best;
  quantize_symmetric_with(w, c, count, d_found, q);
  return d_found;
}

}  // namespace

float quantize_q4(const float* w, int64_t count, bool bf16_scale, int8_t* q, const float* column_importance) {
  if (count <= 0) return 0.0f;
  if (!scale_search_enabled()) return quantize_q4_absmax(w, count, bf16_scale, q);
  if (bf16_scale && count <= kGroupSize) {  // one Q4G32 group: the lane code, one lane
    float x[kGroupSize] = {}, col[kGroupSize];
    std::copy(w, w + count, x);
    for (int i = 0; i < kGroupSize; ++i) col[i] = detail::column_importance_at(column_importance, count, i);
    const int n = static_cast<int>(count);
    int8_t qt[kGroupSize];
    float d;
    detail::q4g32_search_lanes<1>(x, col, &n, qt, &d);
    std::copy(qt, qt + count, q);
    return d;
  }
  return quantize_q4_row_scale(w, count, bf16_scale, column_importance, q);
}

Q4kSuperBlock quantize_q4k_super_block(const float* w, int64_t count, const float* column_importance) {
  Q4kSuperBlock b;
  detail::q4k_row_lanes<1>(w, std::min<int64_t>(count, kSuperBlockSize), column_importance, &b);
  return b;
}

namespace detail {

// The baseline build: 4 lanes (SSE2 / Advanced SIMD registers are always there).
void quantize_q4g32_row_scalar(const float* row, int64_t k, const float* importance, int8_t* q, float* scales) {
  q4g32_row_lanes<4>(row, k, importance, q, scales);
}

void quantize_q4k_row_scalar(const float* row, int64_t k, const float* importance, Q4kSuperBlock* out) {
  q4k_row_lanes<4>(row, k, importance, out);
}

void quantize_q4g32_row(const float* row, int64_t k, const float* importance, int8_t* q, float* scales) {
  if (!scale_search_enabled()) {
    for (int64_t g = 0; g * kGroupSize < k; ++g) {
      const int64_t begin = g * kGroupSize;
      scales[g] = quantize_q4_absmax(row + begin, std::min<int64_t>(kGroupSize, k - begin), true, q + begin);
    }
    return;
  }
  const IsaLevel level = active_isa();
#if defined(__x86_64__) || defined(_M_X64)
  if (level == IsaLevel::Avx512Vnni || level == IsaLevel::AmxInt8) return quantize_q4g32_row_avx512(row, k, importance, q, scales);
  if (level == IsaLevel::Avx2) return quantize_q4g32_row_avx2(row, k, importance, q, scales);
#elif defined(__aarch64__)
  if (level != IsaLevel::Scalar) return quantize_q4g32_row_neon(row, k, importance, q, scales);
#endif
  (void)level;
  quantize_q4g32_row_scalar(row, k, importance, q, scales);
}

void quantize_q4k_row(const float* row, int64_t k, const float* importance, Q4kSuperBlock* out) {
  const IsaLevel level = active_isa();
#if defined(__x86_64__) || defined(_M_X64)
  if (level == IsaLevel::Avx512Vnni || level == IsaLevel::AmxInt8) return quantize_q4k_row_avx512(row, k, importance, out);
  if (level == IsaLevel::Avx2) return quantize_q4k_row_avx2(row, k, importance, out);
#elif defined(__aarch64__)
  if (level != IsaLevel::Scalar) return quantize_q4k_row_neon(row, k, importance, out);
#endif
  (void)level;
  quantize_q4k_row_scalar(row, k, importance, out);
}

}  // namespace detail

}  // namespace cpuchat::kernels
