// Internal: the weight quantizers' scale searches, written over L independent blocks in
// lockstep. Lane b is one block (a 32-value q4g32 group, or a q4k sub-block); data is
// transposed, x[i * L + b] = value i of block b, so every loop over b is a plain elementwise
// SIMD operation and no horizontal reduction is needed.
//
// Every lane does the same fp32 operations in the same order whatever L is (sums over i in
// index order, no fused multiply-add: the library builds with -ffp-contract=off), so a block's
// result does not depend on L or on the ISA the code is compiled for. quantize_weights.cpp
// instantiates the scalar reference (one q4g32 group / one q4k super-block at a time), the
// files in ukernels/quantize_q4_weights_*.cpp the same code 16 lanes wide with AVX2 / AVX-512
// / NEON flags, and the tests check they agree bit for bit.
//
// Everything here has internal linkage, so an ISA-compiled copy never leaks to baseline code
// (cmake/check_isa_objects.cmake).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpuchat_kernels/int4_matmul.h"

namespace cpuchat::kernels::detail {
namespace {

constexpr int kN = kGroupSize;  // values per lane

inline float lane_round(float v) {  // round to nearest even (quantize.h: round_nearest_even)
  constexpr float kMagic = 12582912.0f;
  return (v + kMagic) - kMagic;
}
inline float lane_min(float a, float b) { return b < a ? b : a; }
inline float lane_max(float a, float b) { return a < b ? b : a; }
inline float lane_clamp(float v, float lo, float hi) { return lane_min(hi, lane_max(lo, v)); }
inline float lane_abs(float v) { return std::fabs(v); }

inline float round_bf16_lane(float v) {  // = bf16_to_float(float_to_bf16(v)) for finite v
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  if ((bits & 0x7F800000u) != 0x7F800000u) bits += 0x7FFFu + ((bits >> 16) & 1u);
  bits &= 0xFFFF0000u;
  std::memcpy(&v, &bits, 4);
  return v;
}

// ---------------------------------------------------------------------------------------------
// Q4G32: symmetric int4, one bf16 scale per lane (see quantize_q4 in reference.h).
// x: [32][L] (zero beyond count[b]); q: [32][L] out; d: [L] out.
template <int L>
void q4g32_search_lanes(const float* x, const int* count, int8_t* q, float* d) {
  float extreme[L], rms[L], d0[L], inv[L], sum_cww[L], err_best[L], d_best[L], ext_inv[L];
  float c[kN * L], cw[kN * L];
  for (int b = 0; b < L; ++b) extreme[b] = 0.0f, rms[b] = 0.0f, sum_cww[b] = 0.0f, err_best[b] = 0.0f;
  // The value of largest magnitude, with its sign; sum of squares for the importance.
  for (int i = 0; i < kN; ++i) {
    for (int b = 0; b < L; ++b) {
      const float v = x[i * L + b];
      extreme[b] = lane_abs(v) > lane_abs(extreme[b]) ? v : extreme[b];
      rms[b] += v * v;
    }
  }
  for (int b = 0; b < L; ++b) {
    d0[b] = round_bf16_lane(extreme[b] / -8.0f);
    inv[b] = d0[b] != 0.0f ? 1.0f / d0[b] : 0.0f;
    rms[b] = std::sqrt(rms[b] / static_cast<float>(count[b] > 0 ? count[b] : 1));
    ext_inv[b] = extreme[b] != 0.0f ? 1.0f / extreme[b] : 0.0f;
  }
  // Importance c_i = rms + |w_i| (0 for padding), and the max/min scale's weighted error.
  for (int i = 0; i < kN; ++i) {
    for (int b = 0; b < L; ++b) {
      const float v = x[i * L + b];
      const float ci = i < count[b] ? rms[b] + lane_abs(v) : 0.0f;
      c[i * L + b] = ci;
      cw[i * L + b] = ci * v;
      sum_cww[b] += (ci * v) * v;
      const float l = lane_clamp(lane_round(v * inv[b]), -8.0f, 7.0f);
      const float e = v - d0[b] * l;
      err_best[b] += (ci * e) * e;
    }
  }
  for (int b = 0; b < L; ++b) d_best[b] = d0[b];
  // Candidate inverse scales -(8 + 0.1 s) / extreme around the max/min one, each refined by the
  // weighted least-squares scale for its rounding L (make_qx_quants). The error of (d, L) has a
  // closed form; requantizing with the chosen d afterwards can only lower it (nearest rounding is
  // the best L for a given d), so the result never loses to max/min.
  for (int s = -9; s <= 9; ++s) {
    if (s == 0) continue;  // that is the max/min rounding
    const float factor = -(8.0f + 0.1f * static_cast<float>(s));
    float sum_cwq[L], sum_cqq[L], inv_s[L];
    for (int b = 0; b < L; ++b) sum_cwq[b] = 0.0f, sum_cqq[b] = 0.0f, inv_s[b] = factor * ext_inv[b];
    for (int i = 0; i < kN; ++i) {
      for (int b = 0; b < L; ++b) {
        const float l = lane_clamp(lane_round(x[i * L + b] * inv_s[b]), -8.0f, 7.0f);
        sum_cwq[b] += cw[i * L + b] * l;
        sum_cqq[b] += (c[i * L + b] * l) * l;
      }
    }
    for (int b = 0; b < L; ++b) {
      const float dc = sum_cqq[b] > 0.0f ? round_bf16_lane(sum_cwq[b] / sum_cqq[b]) : 0.0f;
      const float err = (sum_cww[b] - (2.0f * dc) * sum_cwq[b]) + (dc * dc) * sum_cqq[b];
      const bool better = dc != 0.0f && std::isfinite(dc) && err < err_best[b] && count[b] > 1;
      err_best[b] = better ? err : err_best[b];
      d_best[b] = better ? dc : d_best[b];
    }
  }
  for (int b = 0; b < L; ++b) {
    d[b] = d_best[b];
    inv[b] = d_best[b] != 0.0f ? 1.0f / d_best[b] : 0.0f;
  }
  for (int i = 0; i < kN; ++i) {
    for (int b = 0; b < L; ++b) {
      q[i * L + b] = static_cast<int8_t>(lane_clamp(lane_round(x[i * L + b] * inv[b]), -8.0f, 7.0f));
    }
  }
}

// One row of k values: q [ceil(k/32) * 32] (zero-padded), scales [ceil(k/32)].
template <int L>
void q4g32_row_lanes(const float* row, int64_t k, int8_t* q, float* scales) {
  const int64_t groups = (k + kN - 1) / kN;
  float x[kN * L];
  int8_t qt[kN * L];
  float d[L];
  int count[L];
  for (int64_t g0 = 0; g0 < groups; g0 += L) {
    for (int b = 0; b < L; ++b) {
      const int64_t begin = (g0 + b) * kN;
      count[b] = static_cast<int>(begin < k ? (k - begin < kN ? k - begin : kN) : 0);
      for (int i = 0; i < kN; ++i) x[i * L + b] = i < count[b] ? row[begin + i] : 0.0f;
    }
    q4g32_search_lanes<L>(x, count, qt, d);
    for (int b = 0; b < L && g0 + b < groups; ++b) {
      scales[g0 + b] = d[b];
      for (int i = 0; i < kN; ++i) q[(g0 + b) * kN + i] = qt[i * L + b];
    }
  }
}


// ---------------------------------------------------------------------------------------------
// Q4K: w ~= scale * l - min_neg, l in [0, 15], per sub-block; L sub-blocks (L % 8 == 0, lanes
// 8p .. 8p+7 are super-block p). x: [32][L] (zero padding), count[b]: real values of lane b.

// The weighted error of lane b's values against (scale, offset) with nearest rounding.
template <int L>
void q4k_lane_errors(const float* x, const float* c, const float* scale, const float* offset, float* err,
                     uint8_t* q_out) {
  float inv[L];
  for (int b = 0; b < L; ++b) inv[b] = scale[b] > 0.0f ? 1.0f / scale[b] : 0.0f, err[b] = 0.0f;
  for (int i = 0; i < kN; ++i) {
    for (int b = 0; b < L; ++b) {
      const float l = lane_clamp(lane_round((x[i * L + b] - offset[b]) * inv[b]), 0.0f, 15.0f);
      const float e = (scale[b] * l + offset[b]) - x[i * L + b];
      err[b] += (c[i * L + b] * e) * e;
      if (q_out != nullptr) q_out[i * L + b] = static_cast<uint8_t>(l);
    }
  }
}

// Weighted least squares for (scale, offset) given the rounding l = round((x - offset) / scale)
// of the current (scale, offset); offset is clamped to <= 0 as in Q4_K.
template <int L>
void q4k_lane_refit(const float* x, const float* c, const float* scale, const float* offset, const float* sum_c,
                    const float* sum_cx, float* new_scale, float* new_offset) {
  float inv[L], sl[L], sl2[L], sxl[L];
  for (int b = 0; b < L; ++b) inv[b] = scale[b] > 0.0f ? 1.0f / scale[b] : 0.0f, sl[b] = sl2[b] = sxl[b] = 0.0f;
  for (int i = 0; i < kN; ++i) {
    for (int b = 0; b < L; ++b) {
      const float l = lane_clamp(lane_round((x[i * L + b] - offset[b]) * inv[b]), 0.0f, 15.0f);
      const float cl = c[i * L + b] * l;
      sl[b] += cl;
      sl2[b] += cl * l;
      sxl[b] += cl * x[i * L + b];
    }
  }
  for (int b = 0; b < L; ++b) {
    const float det = sum_c[b] * sl2[b] - sl[b] * sl[b];
    float s = det > 0.0f ? (sum_c[b] * sxl[b] - sum_cx[b] * sl[b]) / det : 0.0f;
    float o = det > 0.0f ? (sl2[b] * sum_cx[b] - sl[b] * sxl[b]) / det : 0.0f;
    if (o > 0.0f) o = 0.0f, s = sl2[b] > 0.0f ? sxl[b] / sl2[b] : 0.0f;
    new_scale[b] = s;
    new_offset[b] = o;
  }
}

// Quantizes L / 8 super-blocks (see quantize_q4k_super_block in reference.h).
template <int L>
void q4k_search_lanes(const float* x, const int* count, Q4kSuperBlock* out) {
  static_assert(L % kGroupsPerSuperBlock == 0, "whole super-blocks");
  constexpr int P = L / kGroupsPerSuperBlock;
  float c[kN * L];
  float lo[L], hi[L], rms[L], sum_c[L], sum_cx[L], sum_cxx[L];
  for (int b = 0; b < L; ++b) lo[b] = hi[b] = x[b], rms[b] = sum_c[b] = sum_cx[b] = sum_cxx[b] = 0.0f;
  for (int i = 0; i < kN; ++i) {
    for (int b = 0; b < L; ++b) {
      const float v = x[i * L + b];
      lo[b] = lane_min(lo[b], v);
      hi[b] = lane_max(hi[b], v);
      rms[b] += v * v;
    }
  }
  for (int b = 0; b < L; ++b) rms[b] = std::sqrt(rms[b] / static_cast<float>(kN)), lo[b] = lane_min(lo[b], 0.0f);
  for (int i = 0; i < kN; ++i) {
    for (int b = 0; b < L; ++b) {
      const float v = x[i * L + b];
      const float ci = i < count[b] ? rms[b] + lane_abs(v) : 0.0f;  // padding's error does not matter
      c[i * L + b] = ci;
      sum_c[b] += ci;
      sum_cx[b] += ci * v;
      sum_cxx[b] += (ci * v) * v;
    }
  }
  // 1. Each sub-block's scale and offset: make_qkx2_quants' search. Candidate inverse scales
  //    (14 + 0.1 s) / (hi - lo), each refined by weighted least squares for its rounding and
  //    scored by the closed-form error of that rounding; then two alternations of rounding
  //    and re-solving, scored by their true error.
  float scale[L], offset[L], best_err[L], range_inv[L];
  for (int b = 0; b < L; ++b) {
    scale[b] = (hi[b] - lo[b]) / 15.0f;
    offset[b] = lo[b];
    range_inv[b] = hi[b] > lo[b] ? 1.0f / (hi[b] - lo[b]) : 0.0f;
  }
  q4k_lane_errors<L>(x, c, scale, offset, best_err, nullptr);
  for (int s = 0; s <= 20; ++s) {
    const float factor = 14.0f + 0.1f * static_cast<float>(s);
    float inv[L], sl[L], sl2[L], sxl[L];
    for (int b = 0; b < L; ++b) inv[b] = factor * range_inv[b], sl[b] = sl2[b] = sxl[b] = 0.0f;
    for (int i = 0; i < kN; ++i) {
      for (int b = 0; b < L; ++b) {
        const float l = lane_clamp(lane_round(inv[b] * (x[i * L + b] - lo[b])), 0.0f, 15.0f);
        const float cl = c[i * L + b] * l;
        sl[b] += cl;
        sl2[b] += cl * l;
        sxl[b] += cl * x[i * L + b];
      }
    }
    for (int b = 0; b < L; ++b) {
      const float det = sum_c[b] * sl2[b] - sl[b] * sl[b];
      float sc = det > 0.0f ? (sum_c[b] * sxl[b] - sum_cx[b] * sl[b]) / det : 0.0f;
      float of = det > 0.0f ? (sl2[b] * sum_cx[b] - sl[b] * sxl[b]) / det : 0.0f;
      if (of > 0.0f) of = 0.0f, sc = sl2[b] > 0.0f ? sxl[b] / sl2[b] : 0.0f;
      const float err = ((((sc * sc) * sl2[b] + (of * of) * sum_c[b]) + sum_cxx[b]) + (2.0f * sc * of) * sl[b]) -
                        (2.0f * sc) * sxl[b] - (2.0f * of) * sum_cx[b];
      const bool better = det > 0.0f && sc > 0.0f && err < best_err[b];
      best_err[b] = better ? err : best_err[b];
      scale[b] = better ? sc : scale[b];
      offset[b] = better ? of : offset[b];
    }
  }
  for (int iter = 0; iter < 2; ++iter) {
    float ns[L], no[L], err[L];
    q4k_lane_refit<L>(x, c, scale, offset, sum_c, sum_cx, ns, no);
    q4k_lane_errors<L>(x, c, ns, no, err, nullptr);
    for (int b = 0; b < L; ++b) {
      const bool better = ns[b] > 0.0f && err[b] < best_err[b];
      best_err[b] = better ? err[b] : best_err[b];
      scale[b] = better ? ns[b] : scale[b];
      offset[b] = better ? no[b] : offset[b];
    }
  }
  for (int b = 0; b < L; ++b) {
    if (!(hi[b] > lo[b])) scale[b] = 0.0f, offset[b] = lo[b];  // constant sub-block
  }

  // 2. The super-block: fp16 d = max scale / 63 and dmin = max min / 63, then each sub-block's
  //    6-bit sc and m: of the (floor, ceil) choices against the ROUNDED d and dmin, the one whose
  //    requantized sub-block has the smallest weighted error.
  float d[P], dmin[P];
  for (int p = 0; p < P; ++p) {
    float max_scale = 0.0f, max_min = 0.0f;
    for (int j = 0; j < kGroupsPerSuperBlock; ++j) {
      max_scale = lane_max(max_scale, scale[p * kGroupsPerSuperBlock + j]);
      max_min = lane_max(max_min, -offset[p * kGroupsPerSuperBlock + j]);
    }
    out[p].d = float_to_fp16(max_scale / 63.0f);
    out[p].dmin = float_to_fp16(max_min / 63.0f);
    d[p] = fp16_to_float(out[p].d);
    dmin[p] = fp16_to_float(out[p].dmin);
  }
  float sc_best[L], m_best[L], err_best[L];
  uint8_t q[kN * L], q_try[kN * L];
  for (int b = 0; b < L; ++b) err_best[b] = -1.0f, sc_best[b] = m_best[b] = 0.0f;
  float sc_f[L], m_f[L];
  for (int b = 0; b < L; ++b) {
    const int p = b / kGroupsPerSuperBlock;
    sc_f[b] = d[p] > 0.0f ? lane_min(63.0f, scale[b] * (1.0f / d[p])) : 0.0f;
    m_f[b] = dmin[p] > 0.0f ? lane_min(63.0f, -offset[b] * (1.0f / dmin[p])) : 0.0f;
  }
  for (int choice = 0; choice < 4; ++choice) {
    float sc[L], m[L], es[L], em[L], err[L];
    for (int b = 0; b < L; ++b) {
      const int p = b / kGroupsPerSuperBlock;
      sc[b] = (choice & 2) ? std::ceil(sc_f[b]) : std::floor(sc_f[b]);
      m[b] = (choice & 1) ? std::ceil(m_f[b]) : std::floor(m_f[b]);
      es[b] = d[p] * sc[b];    // q4k_effective_scale
      em[b] = -(dmin[p] * m[b]);  // offset = -q4k_effective_min
    }
    q4k_lane_errors<L>(x, c, es, em, err, q_try);
    for (int b = 0; b < L; ++b) {
      const bool better = err_best[b] < 0.0f || err[b] < err_best[b];
      err_best[b] = better ? err[b] : err_best[b];
      sc_best[b] = better ? sc[b] : sc_best[b];
      m_best[b] = better ? m[b] : m_best[b];
    }
    for (int i = 0; i < kN; ++i) {
      for (int b = 0; b < L; ++b) {
        const bool chosen = sc_best[b] == sc[b] && m_best[b] == m[b];
        q[i * L + b] = chosen ? q_try[i * L + b] : q[i * L + b];
      }
    }
  }
  for (int b = 0; b < L; ++b) {
    Q4kSuperBlock& o = out[b / kGroupsPerSuperBlock];
    const int j = b % kGroupsPerSuperBlock;
    o.sc[j] = static_cast<uint8_t>(sc_best[b]);
    o.m[j] = static_cast<uint8_t>(m_best[b]);
    for (int i = 0; i < kN; ++i) o.q[j * kN + i] = q[i * L + b];
  }
}

// One row of k values: ceil(k / 256) super-blocks.
template <int L>
void q4k_row_lanes(const float* row, int64_t k, Q4kSuperBlock* out) {
  constexpr int P = L / kGroupsPerSuperBlock;
  const int64_t supers = q4k_super_blocks(k);
  float x[kN * L];
  int count[L];
  for (int64_t s0 = 0; s0 < supers; s0 += P) {
    for (int b = 0; b < L; ++b) {
      const int64_t begin = s0 * kSuperBlockSize + int64_t{b} * kN;
      count[b] = static_cast<int>(begin < k ? (k - begin < kN ? k - begin : kN) : 0);
      for (int i = 0; i < kN; ++i) x[i * L + b] = i < count[b] ? row[begin + i] : 0.0f;
    }
    Q4kSuperBlock blocks[P];
    q4k_search_lanes<L>(x, count, blocks);
    for (int p = 0; p < P && s0 + p < supers; ++p) out[s0 + p] = blocks[p];
  }
}

}  // namespace
}  // namespace cpuchat::kernels::detail
