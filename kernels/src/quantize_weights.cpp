// Weight quantizers (the packer and the references use these): q4 symmetric with an
// error-minimizing scale search (Q4G32, Q4C) and the Q4K super-block quantizer.
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

namespace cpuchat::kernels {
namespace {

// Sums of 32 products in 8 fixed lanes then lanes in order: the compiler vectorizes it
// without reassociating anything, so results do not depend on the ISA.
template <typename F>
double lane_sum32(F term) {
  float lanes[8] = {};
  for (int i = 0; i < kGroupSize; i += 8)
    for (int l = 0; l < 8; ++l) lanes[l] += term(i + l);
  double s = 0.0;
  for (float v : lanes) s += v;
  return s;
}

float round_bf16(float v) { return bf16_to_float(float_to_bf16(v)); }
float round_fp16(float v) { return fp16_to_float(float_to_fp16(v)); }

void importance(const float* w, int64_t count, float* c) {
  double sum2 = 0.0;
  for (int64_t i = 0; i < count; ++i) sum2 += double{w[i]} * w[i];
  const float rms = static_cast<float>(std::sqrt(sum2 / static_cast<double>(std::max<int64_t>(count, 1))));
  for (int64_t i = 0; i < count; ++i) c[i] = rms + std::fabs(w[i]);
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

float quantize_q4(const float* w, int64_t count, bool bf16_scale, int8_t* q) {
  float d_best = quantize_q4_absmax(w, count, bf16_scale, q);
  if (d_best == 0.0f || count <= 1 || !scale_search_enabled()) return d_best;
  // Groups (<= 32) on the stack; per-row (Q4C) calls allocate once per row.
  float c_small[kGroupSize];
  std::vector<float> c_large;
  float* c = c_small;
  if (count > kGroupSize) {
    c_large.resize(static_cast<size_t>(count));
    c = c_large.data();
  }
  importance(w, count, c);
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
    if (count == kGroupSize) {  // the Q4G32 case, vectorized
      float v[kGroupSize];
      for (int i = 0; i < kGroupSize; ++i) v[i] = std::min(7.0f, std::max(-8.0f, detail::round_nearest_even(w[i] * inv)));
      sum_cwq = lane_sum32([&](int i) { return c[i] * w[i] * v[i]; });
      sum_cqq = lane_sum32([&](int i) { return c[i] * v[i] * v[i]; });
    } else {
      for (int64_t i = 0; i < count; ++i) {
        const float v = std::min(7.0f, std::max(-8.0f, detail::round_nearest_even(w[i] * inv)));
        sum_cwq += double{c[i]} * w[i] * v;
        sum_cqq += double{c[i]} * v * v;
      }
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

namespace {

// One sub-block: w ~= scale * L - min_neg with L in [0, 15], scale >= 0, min_neg >= 0
// (the offset never goes above the smallest value, as in Q4_K). make_qkx2_quants' search:
// candidate inverse scales (15 + s/10 - 1) / (max - min), each refined by weighted least
// squares for scale and offset; the offset is clamped to <= 0.
void fit_scale_min(const float* x, const float* c, float* scale_out, float* min_neg_out) {
  const int n = kGroupSize;
  float lo = x[0], hi = x[0];
  double sum_c = 0.0, sum_cx = 0.0, sum_cxx = 0.0;
  for (int i = 0; i < n; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
    sum_c += c[i];
    sum_cx += double{c[i]} * x[i];
    sum_cxx += double{c[i]} * x[i] * x[i];
  }
  if (lo > 0.0f) lo = 0.0f;
  if (hi == lo) {
    *scale_out = 0.0f;
    *min_neg_out = -lo;
    return;
  }
  auto error_of = [&](float scale, float offset) {
    const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
    double err = 0.0;
    for (int i = 0; i < n; ++i) {
      const float l = std::min(15.0f, std::max(0.0f, detail::round_nearest_even((x[i] - offset) * inv)));
      const double e = double{scale} * l + offset - x[i];
      err += c[i] * e * e;
    }
    return err;
  };
  float best_scale = (hi - lo) / 15.0f, best_offset = lo;
  double best_err = error_of(best_scale, best_offset);
  for (int s = 0; s <= 20; ++s) {
    const float inv = (15.0f - 1.0f + 0.1f * static_cast<float>(s)) / (hi - lo);
    float l[kGroupSize];
    for (int i = 0; i < kGroupSize; ++i) l[i] = std::min(15.0f, std::max(0.0f, detail::round_nearest_even(inv * (x[i] - lo))));
    const double sum_l = lane_sum32([&](int i) { return c[i] * l[i]; });
    const double sum_l2 = lane_sum32([&](int i) { return c[i] * l[i] * l[i]; });
    const double sum_xl = lane_sum32([&](int i) { return c[i] * l[i] * x[i]; });
    const double det = sum_c * sum_l2 - sum_l * sum_l;
    if (det <= 0.0) continue;
    double scale = (sum_c * sum_xl - sum_cx * sum_l) / det;
    double offset = (sum_l2 * sum_cx - sum_l * sum_xl) / det;
    if (offset > 0.0) {
      offset = 0.0;
      scale = sum_l2 > 0.0 ? sum_xl / sum_l2 : 0.0;
    }
    if (!(scale > 0.0)) continue;
    // Error of (scale, offset) with this rounding L, in closed form (as make_qkx2_quants
    // scores candidates with their own L; the final q is re-rounded later).
    const double err = scale * scale * sum_l2 + offset * offset * sum_c + sum_cxx + 2.0 * scale * offset * sum_l -
                       2.0 * scale * sum_xl - 2.0 * offset * sum_cx;
    if (err < best_err) {
      best_err = err;
      best_scale = static_cast<float>(scale);
      best_offset = static_cast<float>(offset);
    }
  }
  // Alternate: round with the best (scale, offset), re-solve them for that rounding.
  for (int iter = 0; iter < 2; ++iter) {
    const float inv = 1.0f / best_scale;
    double sum_l = 0.0, sum_l2 = 0.0, sum_xl = 0.0;
    for (int i = 0; i < n; ++i) {
      const double l = std::min(15.0f, std::max(0.0f, detail::round_nearest_even((x[i] - best_offset) * inv)));
      sum_l += c[i] * l;
      sum_l2 += c[i] * l * l;
      sum_xl += c[i] * l * x[i];
    }
    const double det = sum_c * sum_l2 - sum_l * sum_l;
    if (det <= 0.0) break;
    double scale = (sum_c * sum_xl - sum_cx * sum_l) / det, offset = (sum_l2 * sum_cx - sum_l * sum_xl) / det;
    if (offset > 0.0) offset = 0.0, scale = sum_xl / sum_l2;
    if (!(scale > 0.0)) break;
    const double err = error_of(static_cast<float>(scale), static_cast<float>(offset));
    if (!(err < best_err)) break;
    best_err = err;
    best_scale = static_cast<float>(scale);
    best_offset = static_cast<float>(offset);
  }
  *scale_out = best_scale;
  *min_neg_out = -best_offset;
}

}  // namespace

Q4kSuperBlock quantize_q4k_super_block(const float* w, int64_t count) {
  Q4kSuperBlock b;
  float x[kSuperBlockSize] = {}, c[kSuperBlockSize] = {};
  std::copy(w, w + std::min<int64_t>(count, kSuperBlockSize), x);
  float scale[kGroupsPerSuperBlock], min_neg[kGroupsPerSuperBlock];
  float max_scale = 0.0f, max_min = 0.0f;
  for (int j = 0; j < kGroupsPerSuperBlock; ++j) {
    importance(x + j * kGroupSize, kGroupSize, c + j * kGroupSize);
    for (int i = j * kGroupSize; i < (j + 1) * kGroupSize; ++i) {
      if (i >= count) c[i] = 0.0f;  // zero padding: its error does not matter
    }
    fit_scale_min(x + j * kGroupSize, c + j * kGroupSize, &scale[j], &min_neg[j]);
    max_scale = std::max(max_scale, scale[j]);
    max_min = std::max(max_min, min_neg[j]);
  }
  // 6-bit sc and m against the fp16-ROUNDED super-scales, so their rounding is absorbed:
  // of the (floor, ceil) choices of sc and of m, the one whose requantized sub-block has the
  // smallest weighted error (6-bit rounding alone costs up to 0.5/sc relative in the scale).
  const float d = round_fp16(max_scale / 63.0f), dmin = round_fp16(max_min / 63.0f);
  b.d = float_to_fp16(d);
  b.dmin = float_to_fp16(dmin);
  const float inv_d = d > 0.0f ? 1.0f / d : 0.0f, inv_dmin = dmin > 0.0f ? 1.0f / dmin : 0.0f;
  for (int j = 0; j < kGroupsPerSuperBlock; ++j) {
    const float* xj = x + j * kGroupSize;
    const float* cj = c + j * kGroupSize;
    const float sc_f = std::min(63.0f, scale[j] * inv_d), m_f = std::min(63.0f, min_neg[j] * inv_dmin);
    double best_err = -1.0;
    for (float sc : {std::floor(sc_f), std::ceil(sc_f)}) {
      for (float m : {std::floor(m_f), std::ceil(m_f)}) {
        const uint8_t sc_i = static_cast<uint8_t>(sc), m_i = static_cast<uint8_t>(m);
        const float es = q4k_effective_scale(b.d, sc_i), em = q4k_effective_min(b.dmin, m_i);
        const float inv_s = es > 0.0f ? 1.0f / es : 0.0f;
        uint8_t q[kGroupSize];
        double err = 0.0;
        for (int i = 0; i < kGroupSize; ++i) {
          const float l = std::min(15.0f, std::max(0.0f, detail::round_nearest_even((xj[i] + em) * inv_s)));
          q[i] = static_cast<uint8_t>(l);
          const double e = double{es} * l - em - xj[i];
          err += cj[i] * e * e;
        }
        if (best_err < 0.0 || err < best_err) {
          best_err = err;
          b.sc[j] = sc_i;
          b.m[j] = m_i;
          std::copy(q, q + kGroupSize, b.q + j * kGroupSize);
        }
      }
    }
  }
  return b;
}

}  // namespace cpuchat::kernels
