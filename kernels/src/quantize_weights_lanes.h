// Internal: the weight quantizers' scale searches, written over L independent blocks in
// lockstep. Lane b is one block (a 32-value q4g32 group, or a q4k sub-block); data is
// transposed, x[i * L + b] = value i of block b, and the code works on vectors of L lanes
// (GCC/Clang vector extensions: one lane per block, plain elementwise operations, accumulators
// in registers, no horizontal reduction).
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

// Vectors wider than the baseline ABI never cross a call boundary (everything is internal and
// inlined or local), so GCC's note about their calling convention does not apply.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"

namespace cpuchat::kernels::detail {
namespace {

// Inlined everywhere, so vectors wider than the ISA's registers are split into register pairs
// rather than passed through memory.
#define CPUCHAT_LANE_INLINE inline __attribute__((always_inline))

constexpr int kN = kGroupSize;  // values per lane

// fp32 vectors of L lanes and their lane masks (-1 true, 0 false). One specialization per width:
// GCC drops vector_size on a typedef whose size depends on a template parameter.
template <int L>
struct VectorTypes;
template <>
struct VectorTypes<1> {
  typedef float F __attribute__((vector_size(4)));
  typedef int32_t I __attribute__((vector_size(4)));
};
template <>
struct VectorTypes<4> {
  typedef float F __attribute__((vector_size(16)));
  typedef int32_t I __attribute__((vector_size(16)));
};
template <>
struct VectorTypes<8> {
  typedef float F __attribute__((vector_size(32)));
  typedef int32_t I __attribute__((vector_size(32)));
};
template <>
struct VectorTypes<16> {
  typedef float F __attribute__((vector_size(64)));
  typedef int32_t I __attribute__((vector_size(64)));
};

template <int L>
struct Lanes {
  using F = typename VectorTypes<L>::F;
  using I = typename VectorTypes<L>::I;

  static CPUCHAT_LANE_INLINE F load(const float* p) {
    F v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static CPUCHAT_LANE_INLINE void store(float* p, F v) { std::memcpy(p, &v, sizeof v); }
  static CPUCHAT_LANE_INLINE F splat(float v) { return F{} + v; }
  static CPUCHAT_LANE_INLINE F min(F a, F b) { return a < b ? a : b; }
  static CPUCHAT_LANE_INLINE F max(F a, F b) { return a > b ? a : b; }
  static CPUCHAT_LANE_INLINE F clamp(F v, float lo, float hi) { return min(max(v, splat(lo)), splat(hi)); }
  // Round to nearest even (quantize.h round_nearest_even), |v| < 2^22.
  static CPUCHAT_LANE_INLINE F round(F v) { return (v + 12582912.0f) - 12582912.0f; }
  static CPUCHAT_LANE_INLINE I bits(F v) {
    I r;
    std::memcpy(&r, &v, sizeof r);
    return r;
  }
  static CPUCHAT_LANE_INLINE F from_bits(I v) {
    F r;
    std::memcpy(&r, &v, sizeof r);
    return r;
  }
  static CPUCHAT_LANE_INLINE F abs(F v) { return from_bits(bits(v) & 0x7FFFFFFF); }
  // = bf16_to_float(float_to_bf16(v)) (round to nearest even; inf/nan kept)
  static CPUCHAT_LANE_INLINE F round_bf16(F v) {
    const I b = bits(v);
    const I rounded = (b + (0x7FFF + ((b >> 16) & 1))) & static_cast<int32_t>(0xFFFF0000u);
    return from_bits((b & 0x7F800000) == 0x7F800000 ? b & static_cast<int32_t>(0xFFFF0000u) : rounded);
  }
  // 1 / v where v != 0, else 0.
  static CPUCHAT_LANE_INLINE F inverse_or_zero(F v) {
    const I nonzero = v != 0.0f;
    return nonzero ? 1.0f / (nonzero ? v : splat(1.0f)) : splat(0.0f);
  }
  static CPUCHAT_LANE_INLINE F sqrt(F v) {
    for (int b = 0; b < L; ++b) v[b] = std::sqrt(v[b]);
    return v;
  }
  static CPUCHAT_LANE_INLINE F floor(F v) {
    for (int b = 0; b < L; ++b) v[b] = std::floor(v[b]);
    return v;
  }
  static CPUCHAT_LANE_INLINE F ceil(F v) {
    for (int b = 0; b < L; ++b) v[b] = std::ceil(v[b]);
    return v;
  }
};

// ---------------------------------------------------------------------------------------------
// Q4G32: symmetric int4, one bf16 scale per lane (see quantize_q4 in reference.h).
// x: [32][L] (zero beyond count[b]); col: [32][L] the input channels' importance (1 when the
// caller has none); q: [32][L] out; d: [L] out.
template <int L>
void q4g32_search_lanes(const float* x, const float* col, const int* count, int8_t* q, float* d_out) {
  using V = Lanes<L>;
  using F = typename V::F;
  using I = typename V::I;
  F countf = {};
  for (int b = 0; b < L; ++b) countf[b] = static_cast<float>(count[b]);
  // The value of largest magnitude, with its sign; sum of squares for the importance.
  F extreme = {}, sum2 = {};
  for (int i = 0; i < kN; ++i) {
    const F v = V::load(x + i * L);
    extreme = V::abs(v) > V::abs(extreme) ? v : extreme;
    sum2 += v * v;
  }
  const F d0 = V::round_bf16(extreme / -8.0f);
  const F inv0 = V::inverse_or_zero(d0);
  const F rms = V::sqrt(sum2 / V::max(countf, V::splat(1.0f)));
  const F ext_inv = V::inverse_or_zero(extreme);
  // Importance c_i = rms + |w_i| (0 for padding), and the max/min scale's weighted error.
  F c[kN], cw[kN];
  F sum_cww = {}, err_best = {};
  for (int i = 0; i < kN; ++i) {
    const F v = V::load(x + i * L);
    const F ci = static_cast<float>(i) < countf ? (rms + V::abs(v)) * V::load(col + i * L) : V::splat(0.0f);
    c[i] = ci;
    cw[i] = ci * v;
    sum_cww += (ci * v) * v;
    const F l = V::clamp(V::round(v * inv0), -8.0f, 7.0f);
    const F e = v - d0 * l;
    err_best += (ci * e) * e;
  }
  F d_best = d0;
  // Candidate inverse scales -(8 + 0.1 s) / extreme around the max/min one, each refined by the
  // weighted least-squares scale for its rounding L (make_qx_quants). The error of (d, L) has a
  // closed form; requantizing with the chosen d afterwards can only lower it (nearest rounding is
  // the best L for a given d), so the result never loses to max/min.
  const I searchable = countf > 1.0f;
  for (int s = -9; s <= 9; ++s) {
    if (s == 0) continue;  // that is the max/min rounding
    const F inv = ext_inv * -(8.0f + 0.1f * static_cast<float>(s));
    F sum_cwq = {}, sum_cqq = {};
    for (int i = 0; i < kN; ++i) {
      const F l = V::clamp(V::round(V::load(x + i * L) * inv), -8.0f, 7.0f);
      sum_cwq += cw[i] * l;
      sum_cqq += (c[i] * l) * l;
    }
    const I positive = sum_cqq > 0.0f;
    const F dc = positive ? V::round_bf16(sum_cwq / (positive ? sum_cqq : V::splat(1.0f))) : V::splat(0.0f);
    const F err = (sum_cww - (2.0f * dc) * sum_cwq) + (dc * dc) * sum_cqq;
    const I finite = (V::bits(dc) & 0x7F800000) != 0x7F800000;
    const I better = (dc != 0.0f) & finite & (err < err_best) & searchable;
    err_best = better ? err : err_best;
    d_best = better ? dc : d_best;
  }
  V::store(d_out, d_best);
  const F inv = V::inverse_or_zero(d_best);
  for (int i = 0; i < kN; ++i) {
    const F l = V::clamp(V::round(V::load(x + i * L) * inv), -8.0f, 7.0f);
    for (int b = 0; b < L; ++b) q[i * L + b] = static_cast<int8_t>(l[b]);
  }
}

// Column importance of value i of a lane starting at `begin` (1 without any, or in padding).
CPUCHAT_LANE_INLINE float column_importance_at(const float* importance, int64_t k, int64_t col) {
  return importance != nullptr && col < k ? importance[col] : 1.0f;
}

// One row of k values: q [ceil(k/32) * 32] (zero-padded), scales [ceil(k/32)]; importance: [k]
// or null.
template <int L>
void q4g32_row_lanes(const float* row, int64_t k, const float* importance, int8_t* q, float* scales) {
  const int64_t groups = (k + kN - 1) / kN;
  float x[kN * L], col[kN * L];
  int8_t qt[kN * L];
  float d[L];
  int count[L];
  for (int64_t g0 = 0; g0 < groups; g0 += L) {
    for (int b = 0; b < L; ++b) {
      const int64_t begin = (g0 + b) * kN;
      count[b] = static_cast<int>(begin < k ? (k - begin < kN ? k - begin : kN) : 0);
      for (int i = 0; i < kN; ++i) {
        x[i * L + b] = i < count[b] ? row[begin + i] : 0.0f;
        col[i * L + b] = column_importance_at(importance, k, begin + i);
      }
    }
    q4g32_search_lanes<L>(x, col, count, qt, d);
    for (int b = 0; b < L && g0 + b < groups; ++b) {
      scales[g0 + b] = d[b];
      for (int i = 0; i < kN; ++i) q[(g0 + b) * kN + i] = qt[i * L + b];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Q4K: w ~= scale * l + offset, l in [0, 15], offset <= 0, per sub-block; L sub-blocks
// (L % 8 == 0, lanes 8p .. 8p+7 are super-block p). x: [32][L] (zero padding), count[b]: the
// real values of lane b.
template <int L>
struct Q4kLanes {
  using V = Lanes<L>;
  using F = typename V::F;
  using I = typename V::I;
  F x[kN], c[kN];
  F sum_c = {}, sum_cx = {}, sum_cxx = {};

  // Weighted error of (scale, offset) with nearest rounding; the rounding in l_out if given.
  CPUCHAT_LANE_INLINE F error(F scale, F offset, F* l_out = nullptr) const {
    const F inv = V::inverse_or_zero(V::max(scale, V::splat(0.0f)));
    F err = {};
    for (int i = 0; i < kN; ++i) {
      const F l = V::clamp(V::round((x[i] - offset) * inv), 0.0f, 15.0f);
      const F e = (scale * l + offset) - x[i];
      err += (c[i] * e) * e;
      if (l_out != nullptr) l_out[i] = l;
    }
    return err;
  }
  // Weighted least squares for (scale, offset) given a rounding l; offset clamped to <= 0 as in
  // Q4_K. Returns the closed-form error of (scale, offset, l); ok = a valid solution.
  CPUCHAT_LANE_INLINE F solve(const F* l, F* scale, F* offset, I* ok) const {
    F sl = {}, sl2 = {}, sxl = {};
    for (int i = 0; i < kN; ++i) {
      const F cl = c[i] * l[i];
      sl += cl;
      sl2 += cl * l[i];
      sxl += cl * x[i];
    }
    const F det = sum_c * sl2 - sl * sl;
    const I solvable = det > 0.0f;
    const F safe_det = solvable ? det : V::splat(1.0f);
    F sc = (sum_c * sxl - sum_cx * sl) / safe_det, of = (sl2 * sum_cx - sl * sxl) / safe_det;
    const I clamp_offset = of > 0.0f;
    of = clamp_offset ? V::splat(0.0f) : of;
    sc = clamp_offset ? (sl2 > 0.0f ? sxl / (sl2 > 0.0f ? sl2 : V::splat(1.0f)) : V::splat(0.0f)) : sc;
    *scale = sc;
    *offset = of;
    *ok = solvable & (sc > 0.0f);
    return ((((sc * sc) * sl2 + (of * of) * sum_c) + sum_cxx) + (2.0f * sc * of) * sl) - (2.0f * sc) * sxl -
           (2.0f * of) * sum_cx;
  }
};

// Stage 1 of the q4k quantizer for W sub-blocks (W lanes starting at xt, row stride ld): each
// sub-block's scale and offset, make_qkx2_quants' search. Candidate inverse scales
// (13 + 0.1 s) / (hi - lo), s = 0..40 (llama.cpp: 14..16; the wider range measured better on
// stories260K's KL, docs/BENCHMARKS.md), each refined by weighted least squares for its rounding and scored
// by the closed-form error of that rounding; then two alternations of rounding and re-solving,
// scored by their true error.
template <int W>
CPUCHAT_LANE_INLINE void q4k_load_lanes(const float* xt, const float* colt, int ld, const int* count, Q4kLanes<W>* s,
                                        typename Lanes<W>::F* lo, typename Lanes<W>::F* hi) {
  using V = Lanes<W>;
  using F = typename V::F;
  F countf = {};
  for (int b = 0; b < W; ++b) countf[b] = static_cast<float>(count[b]);
  *lo = V::load(xt);
  *hi = *lo;
  F sum2 = {};
  for (int i = 0; i < kN; ++i) {
    s->x[i] = V::load(xt + i * ld);
    *lo = V::min(*lo, s->x[i]);
    *hi = V::max(*hi, s->x[i]);
    sum2 += s->x[i] * s->x[i];
  }
  const F rms = V::sqrt(sum2 / static_cast<float>(kN));
  *lo = V::min(*lo, V::splat(0.0f));
  for (int i = 0; i < kN; ++i) {
    // Importance sqrt(rms^2 + w^2): large weights matter more, small ones are not ignored
    // (measured on stories260K: KL 0.0606 vs 0.0621 with llama.cpp's rms + |w|, with the
    // (d, dmin) refit below).
    const F imp = V::sqrt(s->x[i] * s->x[i] + rms * rms) * V::load(colt + i * ld);
    const F ci = static_cast<float>(i) < countf ? imp : V::splat(0.0f);  // padding: no weight
    s->c[i] = ci;
    s->sum_c += ci;
    s->sum_cx += ci * s->x[i];
    s->sum_cxx += (ci * s->x[i]) * s->x[i];
  }
}

template <int W>
void q4k_fit_lanes(const Q4kLanes<W>& s, typename Lanes<W>::F lo, typename Lanes<W>::F hi, float* scale_out,
                   float* offset_out) {
  using V = Lanes<W>;
  using F = typename V::F;
  using I = typename V::I;
  const I varying = hi > lo;
  const F range_inv = V::inverse_or_zero(hi - lo);
  F scale = (hi - lo) / 15.0f, offset = lo;
  F best_err = s.error(scale, offset);
  F l[kN];
  for (int step = 0; step <= 40; ++step) {
    const F inv = range_inv * (13.0f + 0.1f * static_cast<float>(step));
    for (int i = 0; i < kN; ++i) l[i] = V::clamp(V::round(inv * (s.x[i] - lo)), 0.0f, 15.0f);
    F sc, of;
    I ok;
    const F err = s.solve(l, &sc, &of, &ok);
    const I better = ok & (err < best_err);
    best_err = better ? err : best_err;
    scale = better ? sc : scale;
    offset = better ? of : offset;
  }
  for (int iter = 0; iter < 2; ++iter) {
    s.error(scale, offset, l);
    F sc, of;
    I ok;
    s.solve(l, &sc, &of, &ok);
    const F err = s.error(sc, of);
    const I better = ok & (err < best_err);
    best_err = better ? err : best_err;
    scale = better ? sc : scale;
    offset = better ? of : offset;
  }
  V::store(scale_out, varying ? scale : V::splat(0.0f));  // a constant sub-block is all offset
  V::store(offset_out, varying ? offset : lo);
}

// Stage 3: W sub-blocks' 6-bit sc and m against their super-block's ROUNDED d and dmin: of the
// 4 x 4 choices floor - 1 .. floor + 2 of each (not only floor/ceil: rounding one of them the
// other way can suit the other), the one whose requantized sub-block has the smallest error.
// sc, m: [W] out; q: [32][ld] out (lanes b of rows i).
template <int W>
void q4k_choose_lanes(const Q4kLanes<W>& s, const float* scale_in, const float* offset_in, const float* d_in,
                      const float* dmin_in, float* sc_out, float* m_out, float* q_out, int ld, float* err_out) {
  using V = Lanes<W>;
  using F = typename V::F;
  using I = typename V::I;
  const F scale = V::load(scale_in), offset = V::load(offset_in), d = V::load(d_in), dmin = V::load(dmin_in);
  const F sc_f = d > 0.0f ? V::min(V::splat(63.0f), scale * V::inverse_or_zero(d)) : V::splat(0.0f);
  const F m_f = dmin > 0.0f ? V::min(V::splat(63.0f), -offset * V::inverse_or_zero(dmin)) : V::splat(0.0f);
  F sc_best = {}, m_best = {}, err_best = V::splat(-1.0f), q[kN] = {}, q_try[kN];
  for (int choice = 0; choice < 16; ++choice) {  // floor - 1 .. floor + 2 for each
    const F sc = V::clamp(V::floor(sc_f) + static_cast<float>(choice / 4 - 1), 0.0f, 63.0f);
    const F m = V::clamp(V::floor(m_f) + static_cast<float>(choice % 4 - 1), 0.0f, 63.0f);
    // (d sc) and (dmin m): q4k_effective_scale and q4k_effective_min
    const F err = s.error(d * sc, -(dmin * m), q_try);
    const I better = (err_best < 0.0f) | (err < err_best);
    err_best = better ? err : err_best;
    sc_best = better ? sc : sc_best;
    m_best = better ? m : m_best;
    for (int i = 0; i < kN; ++i) q[i] = better ? q_try[i] : q[i];
  }
  V::store(sc_out, sc_best);
  V::store(err_out, err_best);
  V::store(m_out, m_best);
  for (int i = 0; i < kN; ++i) V::store(q_out + i * ld, q[i]);
}

template <int W>
void q4k_refit_sums(const Q4kLanes<W>& s, const float* sc_in, const float* m_in, const float* q_in, int ld, float* saa,
                    float* sab, float* sbb, float* saw, float* sbw) {
  using V = Lanes<W>;
  using F = typename V::F;
  const F sc = V::load(sc_in), m = V::load(m_in);
  F a2 = {}, ab = {}, b2 = {}, aw = {}, bw = {};
  for (int i = 0; i < kN; ++i) {
    const F a = sc * V::load(q_in + i * ld);
    a2 += (s.c[i] * a) * a;
    ab += (s.c[i] * a) * m;
    b2 += (s.c[i] * m) * m;
    aw += (s.c[i] * a) * s.x[i];
    bw += (s.c[i] * m) * s.x[i];
  }
  V::store(saa, a2);
  V::store(sab, ab);
  V::store(sbb, b2);
  V::store(saw, aw);
  V::store(sbw, bw);
}

// Quantizes L / 8 super-blocks (see quantize_q4k_super_block in reference.h) in vectors of W
// lanes. xt: [32][L] (zero padding), colt: [32][L] column importance, count[b]: the real values
// of lane b.
template <int L, int W>
void q4k_search_lanes(const float* xt, const float* colt, const int* count, Q4kSuperBlock* out) {
  static_assert(L % kGroupsPerSuperBlock == 0 && L % W == 0, "whole super-blocks, whole vectors");
  constexpr int P = L / kGroupsPerSuperBlock, C = L / W;
  Q4kLanes<W> s[C];
  float scale[L], offset[L], d[L], dmin[L], sc[L], m[L], q[kN * L], err[L];
  for (int ch = 0; ch < C; ++ch) {
    typename Lanes<W>::F lo, hi;
    q4k_load_lanes<W>(xt + ch * W, colt + ch * W, L, count + ch * W, &s[ch], &lo, &hi);
    q4k_fit_lanes<W>(s[ch], lo, hi, scale + ch * W, offset + ch * W);
  }
  // Stage 2: the super-block's fp16 d = max scale / 63 and dmin = max min / 63.
  for (int p = 0; p < P; ++p) {
    float max_scale = 0.0f, max_min = 0.0f;
    for (int b = p * kGroupsPerSuperBlock; b < (p + 1) * kGroupsPerSuperBlock; ++b) {
      max_scale = scale[b] > max_scale ? scale[b] : max_scale;
      max_min = -offset[b] > max_min ? -offset[b] : max_min;
    }
    out[p].d = float_to_fp16(max_scale / 63.0f);
    out[p].dmin = float_to_fp16(max_min / 63.0f);
    for (int b = p * kGroupsPerSuperBlock; b < (p + 1) * kGroupsPerSuperBlock; ++b) {
      d[b] = fp16_to_float(out[p].d);
      dmin[b] = fp16_to_float(out[p].dmin);
    }
  }
  for (int ch = 0; ch < C; ++ch) {
    const int b0 = ch * W;
    q4k_choose_lanes<W>(s[ch], scale + b0, offset + b0, d + b0, dmin + b0, sc + b0, m + b0, q + b0, L, err + b0);
  }
  {
    for (int iter = 0; iter < 2; ++iter) {
      // 4. (d, dmin) by weighted least squares for the chosen integers (w ~= d sc q - dmin m),
      //    q re-rounded against them; kept per super-block if its error drops.
      float saa[L], sab[L], sbb[L], saw[L], sbw[L];
      for (int ch = 0; ch < C; ++ch) q4k_refit_sums<W>(s[ch], sc + ch * W, m + ch * W, q + ch * W, L, saa + ch * W, sab + ch * W, sbb + ch * W, saw + ch * W, sbw + ch * W);
      float d2[L], dmin2[L];
      uint16_t d2_bits[P], dmin2_bits[P];
      for (int p = 0; p < P; ++p) {
        double a = 0, ab = 0, bb = 0, aw = 0, bw = 0;
        for (int b = p * kGroupsPerSuperBlock; b < (p + 1) * kGroupsPerSuperBlock; ++b) a += saa[b], ab += sab[b], bb += sbb[b], aw += saw[b], bw += sbw[b];
        // d a - dmin ab = aw ; d ab - dmin bb = bw
        const double det = -a * bb + ab * ab;
        double dd = fp16_to_float(out[p].d), dm = fp16_to_float(out[p].dmin);
        if (det != 0.0) {
          dd = (-aw * bb + ab * bw) / det;
          dm = (a * bw - ab * aw) / det;
        }
        if (!(dd > 0.0)) dd = fp16_to_float(out[p].d);
        if (!(dm >= 0.0)) dm = fp16_to_float(out[p].dmin);
        d2_bits[p] = float_to_fp16(static_cast<float>(dd));
        dmin2_bits[p] = float_to_fp16(static_cast<float>(dm));
        for (int b = p * kGroupsPerSuperBlock; b < (p + 1) * kGroupsPerSuperBlock; ++b) d2[b] = fp16_to_float(d2_bits[p]), dmin2[b] = fp16_to_float(dmin2_bits[p]);
      }
      float err2[L], q2[kN * L];
      for (int ch = 0; ch < C; ++ch) {
        using V = Lanes<W>;
        typename V::F qt[kN];
        const typename V::F e = s[ch].error(V::load(d2 + ch * W) * V::load(sc + ch * W), -(V::load(dmin2 + ch * W) * V::load(m + ch * W)), qt);
        V::store(err2 + ch * W, e);
        for (int i = 0; i < kN; ++i) V::store(q2 + i * L + ch * W, qt[i]);
      }
      for (int p = 0; p < P; ++p) {
        float e_old = 0, e_new = 0;
        for (int b = p * kGroupsPerSuperBlock; b < (p + 1) * kGroupsPerSuperBlock; ++b) e_old += err[b], e_new += err2[b];
        if (!(e_new < e_old)) continue;
        out[p].d = d2_bits[p];
        out[p].dmin = dmin2_bits[p];
        for (int b = p * kGroupsPerSuperBlock; b < (p + 1) * kGroupsPerSuperBlock; ++b) {
          err[b] = err2[b];
          for (int i = 0; i < kN; ++i) q[i * L + b] = q2[i * L + b];
        }
      }
    }
  }
  for (int b = 0; b < L; ++b) {
    Q4kSuperBlock& o = out[b / kGroupsPerSuperBlock];
    const int j = b % kGroupsPerSuperBlock;
    o.sc[j] = static_cast<uint8_t>(sc[b]);
    o.m[j] = static_cast<uint8_t>(m[b]);
    for (int i = 0; i < kN; ++i) o.q[j * kN + i] = static_cast<uint8_t>(q[i * L + b]);
  }
}

// One row of k values: ceil(k / 256) super-blocks, in vectors of W lanes; importance: [k] or null.
template <int W>
void q4k_row_lanes(const float* row, int64_t k, const float* importance, Q4kSuperBlock* out) {
  constexpr int L = W > kGroupsPerSuperBlock ? W : kGroupsPerSuperBlock, P = L / kGroupsPerSuperBlock;
  const int64_t supers = q4k_super_blocks(k);
  float x[kN * L], col[kN * L];
  int count[L];
  for (int64_t s0 = 0; s0 < supers; s0 += P) {
    for (int b = 0; b < L; ++b) {
      const int64_t begin = s0 * kSuperBlockSize + int64_t{b} * kN;
      count[b] = static_cast<int>(begin < k ? (k - begin < kN ? k - begin : kN) : 0);
      for (int i = 0; i < kN; ++i) {
        x[i * L + b] = i < count[b] ? row[begin + i] : 0.0f;
        col[i * L + b] = column_importance_at(importance, k, begin + i);
      }
    }
    Q4kSuperBlock blocks[P];
    q4k_search_lanes<L, W>(x, col, count, blocks);
    for (int p = 0; p < P && s0 + p < supers; ++p) out[s0 + p] = blocks[p];
  }
}

}  // namespace
}  // namespace cpuchat::kernels::detail

#undef CPUCHAT_LANE_INLINE
#pragma GCC diagnostic pop
