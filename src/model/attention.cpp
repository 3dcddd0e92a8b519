// Causal grouped-query attention over a typed KV cache, flash-attention style: keys and
// values are read in blocks, each block converted to fp32 once (keys transposed) and used for
// a whole tile of query rows (all query heads of one kv head), with an online softmax so no score matrix
// of the whole context is ever held. Plain loops the compiler vectorizes (AVX-512/AVX2 on
// x86 through target_clones, NEON on Arm), on libtorch's thread pool. Why not
// torch::matmul: on Debian, libtorch's fp32 matmul goes to the reference BLAS.
#include "model/attention.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace cpuchat {
namespace {

constexpr int kQueryTile = 8;  // query rows that share one pass over the keys
constexpr int kKeyBlock = 64;  // keys converted to fp32 at a time

// e^x for the softmax (x <= 0 once the maximum is subtracted), in a form the compiler
// vectorizes (std::exp stays a scalar call per score, ~20 % of long-context decode):
// 2^(x·log2 e) with the integer part put into the exponent bits and a degree-7 Taylor
// polynomial for 2^f, f in [0, 1): relative error below 2e-6.
inline float exp_nonpositive(float x) {
  const float t = std::max(x * 1.44269504f, -126.0f);  // below 2^-126: zero for a softmax
  const float whole = std::floor(t), f = t - whole;
  float p = 1.5252734e-5f;
  p = p * f + 1.5403530e-4f;
  p = p * f + 1.3333558e-3f;
  p = p * f + 9.6181291e-3f;
  p = p * f + 5.5504109e-2f;
  p = p * f + 2.4022651e-1f;
  p = p * f + 6.9314718e-1f;
  p = p * f + 1.0f;
  const int32_t bits = (int32_t(whole) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

inline float bf16_to_float(uint16_t b) {
  const uint32_t bits = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t float_to_bf16(float f) {  // round to nearest even, as torch does
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffff) > 0x7f800000) return uint16_t((bits >> 16) | 0x40);  // NaN stays NaN
  return uint16_t((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
}

// Calls f(row, i, value) for rows [first, first + n) of one kv head, as fp32; the switch on
// the type is outside the loops.
template <typename F>
inline void for_each_fp32(KVType type, const void* base, const float* scales, int64_t first, int64_t n, int64_t hd, F f) {
  switch (type) {
    case KVType::FP32: {
      const float* src = static_cast<const float*>(base) + first * hd;
      for (int64_t r = 0; r < n; ++r)
        for (int64_t i = 0; i < hd; ++i) f(r, i, src[r * hd + i]);
      break;
    }
    case KVType::BF16: {
      const uint16_t* src = static_cast<const uint16_t*>(base) + first * hd;
      for (int64_t r = 0; r < n; ++r)
        for (int64_t i = 0; i < hd; ++i) f(r, i, bf16_to_float(src[r * hd + i]));
      break;
    }
    case KVType::INT8: {
      const int8_t* src = static_cast<const int8_t*>(base) + first * hd;
      for (int64_t r = 0; r < n; ++r) {
        const float sc = scales[first + r];
        for (int64_t i = 0; i < hd; ++i) f(r, i, float(src[r * hd + i]) * sc);
      }
      break;
    }
  }
}

// Rows [first, first + n) of one kv head's values as fp32 in `dst` ([n, hd]); returns where
// the rows are (in place for fp32).
const float* rows_fp32(KVType type, const void* base, const float* scales, int64_t first, int64_t n, int64_t hd,
                       float* dst) {
  if (type == KVType::FP32) return static_cast<const float*>(base) + first * hd;
  for_each_fp32(type, base, scales, first, n, hd, [&](int64_t r, int64_t i, float x) { dst[r * hd + i] = x; });
  return dst;
}

// The same rows of keys transposed to [hd, kKeyBlock] fp32 (missing keys zero), so that the
// scores of one query row against the whole block are kKeyBlock-wide vector FMAs, one per
// dimension, with no horizontal sum per key.
void keys_transposed(KVType type, const void* base, const float* scales, int64_t first, int64_t n, int64_t hd,
                     float* dst) {
  for_each_fp32(type, base, scales, first, n, hd, [&](int64_t r, int64_t i, float x) { dst[i * kKeyBlock + r] = x; });
  for (int64_t i = 0; i < hd; ++i)
    for (int64_t r = n; r < kKeyBlock; ++r) dst[i * kKeyBlock + r] = 0.0f;
}

// a[0..hd) += sum over s < n of p[s] * v[s * hd + ...]: with hd a multiple of 64, 64 lanes of
// the accumulator stay in registers over all the block's values (4 independent FMA chains).
inline void accumulate_values(float* a, const float* p, const float* v, int64_t n, int64_t hd) {
  if (hd % 64 != 0) {
    for (int64_t s = 0; s < n; ++s)
#pragma omp simd
      for (int64_t i = 0; i < hd; ++i) a[i] += p[s] * v[s * hd + i];
    return;
  }
  for (int64_t i0 = 0; i0 < hd; i0 += 64) {
    float t[64];
#pragma omp simd
    for (int j = 0; j < 64; ++j) t[j] = a[i0 + j];
    for (int64_t s = 0; s < n; ++s) {
      const float ps = p[s];
      const float* vr = v + s * hd + i0;
#pragma omp simd
      for (int j = 0; j < 64; ++j) t[j] += ps * vr[j];
    }
#pragma omp simd
    for (int j = 0; j < 64; ++j) a[i0 + j] = t[j];
  }
}

// One unit: query rows t0..t0+nq-1 of one sequence, the `group` query heads sharing kv head h.
//   q: [T, n_heads, hd] (the sequence's queries), out: [T, n_heads * hd]
#if defined(__x86_64__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void attend_tile(const AttentionJob& job, int64_t h, int64_t t0, int64_t nq, int64_t n_heads, int64_t group,
                 int64_t hd, float scale) {
  const KVLayerView& kv = job.kv;
  const int64_t rows = nq * group;  // (query row, head) pairs of this tile
  std::vector<float> acc(size_t(rows * hd), 0.0f), m(size_t(rows), -std::numeric_limits<float>::infinity()),
      l(size_t(rows), 0.0f), scores(size_t(rows * kKeyBlock)), kt(size_t(kKeyBlock * hd)),
      vbuf(size_t(kKeyBlock * hd));
  const size_t kv_elem = kv.type == KVType::FP32 ? 4 : kv.type == KVType::BF16 ? 2 : 1;
  const char* k_head = static_cast<const char*>(kv.k) + h * kv.ctx * hd * kv_elem;
  const char* v_head = static_cast<const char*>(kv.v) + h * kv.ctx * hd * kv_elem;
  const float* ks = kv.k_scale ? kv.k_scale + h * kv.ctx : nullptr;
  const float* vs = kv.v_scale ? kv.v_scale + h * kv.ctx : nullptr;
  const int64_t last_pos = job.start_pos + t0 + nq - 1;  // the tile's last row sees keys 0..last_pos

  for (int64_t s0 = 0; s0 <= last_pos; s0 += kKeyBlock) {
    const int64_t nk = std::min<int64_t>(kKeyBlock, last_pos + 1 - s0);
    keys_transposed(kv.type, k_head, ks, s0, nk, hd, kt.data());
    const float* vb = rows_fp32(kv.type, v_head, vs, s0, nk, hd, vbuf.data());
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t t = t0 + r / group, g = r % group;
      const int64_t pos = job.start_pos + t;
      if (s0 > pos) continue;  // the whole block lies in this row's future
      const float* qr = job.q + (t * n_heads + h * group + g) * hd;
      float* sc = scores.data() + r * kKeyBlock;
      const int64_t visible = std::min<int64_t>(nk, pos + 1 - s0);
      float dots[kKeyBlock] = {};
      for (int64_t i = 0; i < hd; ++i) {
        const float qi = qr[i];
        const float* kr = kt.data() + i * kKeyBlock;
#pragma omp simd
        for (int s = 0; s < kKeyBlock; ++s) dots[s] += qi * kr[s];
      }
      float block_max = -std::numeric_limits<float>::infinity();
      for (int64_t s = 0; s < visible; ++s) {
        sc[s] = dots[s] * scale;
        block_max = std::max(block_max, sc[s]);
      }
      // Online softmax: rescale what was accumulated under the old maximum.
      const float new_max = std::max(m[r], block_max);
      const float correction = exp_nonpositive(m[r] - new_max);
      float sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t s = 0; s < visible; ++s) {
        sc[s] = exp_nonpositive(sc[s] - new_max);
        sum += sc[s];
      }
      l[r] = l[r] * correction + sum;
      m[r] = new_max;
      float* a = acc.data() + r * hd;
      if (correction != 1.0f)
        for (int64_t i = 0; i < hd; ++i) a[i] *= correction;
      accumulate_values(a, sc, vb, visible, hd);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = t0 + r / group, g = r % group;
    float* o = job.out + (t * n_heads + h * group + g) * hd;
    const float inv = 1.0f / l[size_t(r)];
    for (int64_t i = 0; i < hd; ++i) o[i] = acc[size_t(r * hd + i)] * inv;
  }
}

}  // namespace

KVLayerView kv_layer(const KVCache& c, int layer) {
  KVLayerView v;
  v.type = c.type;
  v.ctx = c.ctx;
  v.k = static_cast<const char*>(c.k.data_ptr()) + layer * c.k.stride(0) * c.k.element_size();
  v.v = static_cast<const char*>(c.v.data_ptr()) + layer * c.v.stride(0) * c.v.element_size();
  if (c.type == KVType::INT8) {
    v.k_scale = c.k_scale.data_ptr<float>() + layer * c.k_scale.stride(0);
    v.v_scale = c.v_scale.data_ptr<float>() + layer * c.v_scale.stride(0);
  }
  return v;
}

void kv_store(KVCache& c, int layer, int start_pos, const float* k, const float* v, int64_t T, int64_t n_kv,
              int64_t hd) {
  TORCH_CHECK(start_pos >= 0 && start_pos + T <= c.ctx, "kv_store: positions past the KV cache");
  for (int which = 0; which < 2; ++which) {
    const float* src = which ? v : k;
    torch::Tensor& dst = which ? c.v : c.k;
    char* layer_base = static_cast<char*>(dst.data_ptr()) + layer * dst.stride(0) * dst.element_size();
    float* scales = c.type == KVType::INT8
                        ? (which ? c.v_scale : c.k_scale).data_ptr<float>() + layer * c.k_scale.stride(0)
                        : nullptr;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < n_kv; ++h) {
        const float* row = src + (t * n_kv + h) * hd;
        const int64_t index = h * c.ctx + start_pos + t;  // row index in [n_kv, ctx]
        switch (c.type) {
          case KVType::FP32:
            std::memcpy(reinterpret_cast<float*>(layer_base) + index * hd, row, size_t(hd) * 4);
            break;
          case KVType::BF16: {
            uint16_t* d = reinterpret_cast<uint16_t*>(layer_base) + index * hd;
            for (int64_t i = 0; i < hd; ++i) d[i] = float_to_bf16(row[i]);
            break;
          }
          case KVType::INT8: {  // symmetric, one scale per row: max |x| maps to 127
            float amax = 0;
            for (int64_t i = 0; i < hd; ++i) amax = std::max(amax, std::fabs(row[i]));
            const float s = amax / 127.0f, inv = amax > 0 ? 127.0f / amax : 0.0f;
            int8_t* d = reinterpret_cast<int8_t*>(layer_base) + index * hd;
            for (int64_t i = 0; i < hd; ++i) d[i] = int8_t(std::lrintf(row[i] * inv));
            scales[index] = s;
            break;
          }
        }
      }
  }
}

void causal_attention(const std::vector<AttentionJob>& jobs, int64_t n_heads, int64_t n_kv, int64_t hd) {
  TORCH_CHECK(n_heads % n_kv == 0, "causal_attention: heads must be a multiple of kv heads");
  const int64_t group = n_heads / n_kv;
  const float scale = 1.0f / std::sqrt(float(hd));
  struct Unit { int32_t job; int32_t head; int64_t t0, nq; };
  std::vector<Unit> units;
  for (size_t j = 0; j < jobs.size(); ++j)
    for (int64_t h = 0; h < n_kv; ++h)
      for (int64_t t0 = 0; t0 < jobs[j].T; t0 += kQueryTile)
        units.push_back({int32_t(j), int32_t(h), t0, std::min<int64_t>(kQueryTile, jobs[j].T - t0)});
  // Later query tiles see more keys: hand them out first, dynamically, so the threads
  // finish together. (The same OpenMP pool as at::parallel_for.)
  std::stable_sort(units.begin(), units.end(), [&](const Unit& a, const Unit& b) {
    return jobs[a.job].start_pos + a.t0 > jobs[b.job].start_pos + b.t0;
  });
  const int64_t n_units = int64_t(units.size());
  const int threads = int(std::min<int64_t>(at::get_num_threads(), n_units));
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1)
  for (int64_t u = 0; u < n_units; ++u) {
    const Unit& un = units[size_t(u)];
    attend_tile(jobs[size_t(un.job)], un.head, un.t0, un.nq, n_heads, group, hd, scale);
  }
}

}  // namespace cpuchat
