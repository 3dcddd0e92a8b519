// Causal grouped-query attention over a typed KV cache, flash-attention style: keys and
// values are read in blocks of 64 positions (keys stored transposed, so no conversion pass),
// each block used for a whole tile of query rows (all query heads of one kv head), 4 rows per
// pass so every loaded key or value vector feeds 4 FMAs, with an online softmax so no score
// matrix of the whole context is ever held. GCC vector extensions, compiled per ISA
// (AVX-512/AVX2 on x86 through target_clones, NEON on Arm), on libtorch's thread pool. Why not
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

constexpr int kQueryTile = 8;  // query positions per unit of work (a thread takes one unit at a time)
constexpr int kKeyBlock = 64;  // keys per block of the cache (stored transposed)

// 16 fp32 lanes (GCC vector extensions). GCC lowers the type to the clone's registers (one
// zmm, two ymm, four NEON q registers), so one source serves every target.
using f32x16 = float __attribute__((vector_size(64)));
using i32x16 = int32_t __attribute__((vector_size(64)));
using u32x16 = uint32_t __attribute__((vector_size(64)));
using u16x16 = uint16_t __attribute__((vector_size(32)));
using i8x16 = int8_t __attribute__((vector_size(16)));
constexpr int kLanes = 16;
// The helpers below are always inlined into attend_tile's clones: compiled for the clone's
// ISA, they never pass vectors across a call (so GCC's vector-ABI note does not apply).
#define CPUCHAT_ALWAYS_INLINE inline __attribute__((always_inline))
#pragma GCC diagnostic ignored "-Wpsabi"

// e^x for the softmax (x <= 0 once the maximum is subtracted), 16 lanes at once:
// 2^(x·log2 e) with the integer part put into the exponent bits and a degree-7 Taylor
// polynomial for 2^f, f in [0, 1): relative error below 2e-6. (std::exp is a scalar call per
// score: ~20 % of long-context decode.) floor is a truncation, corrected where it rounded up.
CPUCHAT_ALWAYS_INLINE f32x16 exp_nonpositive(f32x16 x) {
  f32x16 t = x * 1.44269504f;
  t = t < -126.0f ? f32x16{} - 126.0f : t;  // below 2^-126: zero for a softmax
  i32x16 whole = __builtin_convertvector(t, i32x16);
  whole += __builtin_convertvector(whole, f32x16) > t;  // true is -1
  const f32x16 f = t - __builtin_convertvector(whole, f32x16);
  f32x16 p = f * 1.5252734e-5f + 1.5403530e-4f;
  p = p * f + 1.3333558e-3f;
  p = p * f + 9.6181291e-3f;
  p = p * f + 5.5504109e-2f;
  p = p * f + 2.4022651e-1f;
  p = p * f + 6.9314718e-1f;
  p = p * f + 1.0f;
  return p * reinterpret_cast<f32x16>((whole + 127) << 23);
}
CPUCHAT_ALWAYS_INLINE float exp_nonpositive(float x) { return exp_nonpositive(f32x16{} + x)[0]; }

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

constexpr int kBlockVecs = kKeyBlock / kLanes;
constexpr i32x16 kLaneIndex = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
// Query rows (query position x head of the kv head's group) that share each load of a key or
// value vector: 4 rows x 4 vectors of scores, or of a 64-wide slice of the output, are 16
// independent FMA chains, and every load feeds 4 FMAs.
constexpr int kRowsPerPass = 4;

// bf16 caches store each aligned run of 32 elements pair-interleaved, element t at
// interleaved_index(t), so each 32-bit word holds elements (t, t + 16) and load32 needs one
// shift and one mask. Keys: along a block's 64 positions; values: along head_dim when it is a
// multiple of 64 (the vector path), plain otherwise.
constexpr int64_t interleaved_index(int64_t t) { return t / 32 * 32 + 2 * (t % 16) + t % 32 / 16; }
static_assert(interleaved_index(1) == 2 && interleaved_index(16) == 1 && interleaved_index(47) == 62, "");
inline bool values_interleaved(KVType type, int64_t hd) { return type == KVType::BF16 && hd % kKeyBlock == 0; }

// 16 fp32 / scale factors, or an accumulator slice.
CPUCHAT_ALWAYS_INLINE f32x16 load16(const float* p) {
  f32x16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// 32 cached elements as two fp32 vectors in order (int8: unscaled; the scale is applied to the
// dot products or to the softmax weights instead). bf16 runs of 32 are stored pair-interleaved
// (see interleaved_index), so one 32-bit shift and one mask convert them: GCC lowers a
// 16 x u16 -> u32 widening to five instructions.
CPUCHAT_ALWAYS_INLINE void load32(const float* p, f32x16& lo, f32x16& hi) {
  lo = load16(p);
  hi = load16(p + kLanes);
}
CPUCHAT_ALWAYS_INLINE void load32(const uint16_t* p, f32x16& lo, f32x16& hi) {
  u32x16 w;
  std::memcpy(&w, p, sizeof w);
  lo = reinterpret_cast<f32x16>(w << 16);
  hi = reinterpret_cast<f32x16>(w & 0xFFFF0000u);
}
CPUCHAT_ALWAYS_INLINE void load32(const int8_t* p, f32x16& lo, f32x16& hi) {
  i8x16 b[2];
  std::memcpy(b, p, sizeof b);
  lo = __builtin_convertvector(b[0], f32x16);
  hi = __builtin_convertvector(b[1], f32x16);
}
CPUCHAT_ALWAYS_INLINE void store16(float* p, f32x16 v) { std::memcpy(p, &v, sizeof v); }
CPUCHAT_ALWAYS_INLINE float element_fp32(float x) { return x; }
CPUCHAT_ALWAYS_INLINE float element_fp32(uint16_t x) { return bf16_to_float(x); }
CPUCHAT_ALWAYS_INLINE float element_fp32(int8_t x) { return float(x); }

// Where one kv head's cache starts, typed.
template <typename E>
const E* head_base(const void* layer, int64_t h, int64_t rows_per_head, int64_t hd) {
  return static_cast<const E*>(layer) + h * rows_per_head * hd;
}

// R query rows against one block of keys (stored transposed, [hd][kKeyBlock]) and values
// ([kKeyBlock][hd]), with an online softmax: m / l are the rows' running maximum and sum,
// acc their [hd] outputs so far. visible[r] keys of the block are in row r's past (<= 0: none).
// next_kt / next_vb (else nullptr): the next block's keys and values, pulled into the cache
// meanwhile, a slice per dimension (the hardware prefetcher stops at 4 KiB pages, and a block
// of one head is 8-16 KiB).
template <typename E, int R>
CPUCHAT_ALWAYS_INLINE void attend_block(const float* const* q, const E* kt, const float* k_scales, const E* vb,
                                        const float* v_scales, int64_t hd, const int64_t* visible, float scale,
                                        float* m, float* l, float* const* acc, const E* next_kt, const E* next_vb) {
  f32x16 d[R][kBlockVecs] = {};
  for (int64_t i = 0; i < hd; ++i) {
    if (next_kt != nullptr) {
      for (size_t line = 0; line < sizeof(E); ++line) {  // kKeyBlock elements = sizeof(E) lines
        __builtin_prefetch(reinterpret_cast<const char*>(next_kt + i * kKeyBlock) + 64 * line);
        __builtin_prefetch(reinterpret_cast<const char*>(next_vb + i * kKeyBlock) + 64 * line);
      }
    }
    f32x16 k[kBlockVecs];
    for (int j = 0; j < kBlockVecs; j += 2) load32(kt + i * kKeyBlock + j * kLanes, k[j], k[j + 1]);
    for (int r = 0; r < R; ++r) {
      const float qi = q[r][i];
      for (int j = 0; j < kBlockVecs; ++j) d[r][j] += qi * k[j];
    }
  }
  alignas(64) float p[R][kKeyBlock];
  int64_t used = 0;  // keys any row sees
  for (int r = 0; r < R; ++r) {
    const int64_t vis = visible[r];
    if (vis <= 0) {
      std::memset(p[r], 0, sizeof p[r]);
      continue;
    }
    used = std::max(used, vis);
    f32x16 sc[kBlockVecs];
    i32x16 seen[kBlockVecs];  // lanes of keys in the row's past
    f32x16 top = {};
    for (int j = 0; j < kBlockVecs; ++j) {
      sc[j] = d[r][j] * scale;
      if (k_scales != nullptr) sc[j] *= load16(k_scales + j * kLanes);
      seen[j] = kLaneIndex + j * kLanes < int32_t(vis);
      sc[j] = seen[j] ? sc[j] : -std::numeric_limits<float>::infinity();
      top = j == 0 ? sc[j] : (sc[j] > top ? sc[j] : top);
    }
    float block_max = top[0];
    for (int e = 1; e < kLanes; ++e) block_max = std::max(block_max, top[e]);
    // Online softmax: rescale what was accumulated under the old maximum.
    const float new_max = std::max(m[r], block_max);
    const float correction = exp_nonpositive(m[r] - new_max);
    f32x16 sums = {};
    for (int j = 0; j < kBlockVecs; ++j) {
      const f32x16 e = seen[j] ? exp_nonpositive(sc[j] - new_max) : f32x16{};
      sums += e;
      store16(p[r] + j * kLanes, e);
    }
    float sum = 0;
    for (int e = 0; e < kLanes; ++e) sum += sums[e];
    l[r] = l[r] * correction + sum;
    m[r] = new_max;
    if (correction != 1.0f)
      for (int64_t i = 0; i < hd; ++i) acc[r][i] *= correction;
    if (v_scales != nullptr)
      for (int64_t s = 0; s < vis; ++s) p[r][s] *= v_scales[s];
  }
  if (used == 0) return;
  if (hd % kKeyBlock != 0) {  // small heads (the fixture models): plain loops
    for (int r = 0; r < R; ++r)
      for (int64_t s = 0; s < used; ++s)
        for (int64_t i = 0; i < hd; ++i) acc[r][i] += p[r][s] * element_fp32(vb[s * hd + i]);
    return;
  }
  // Values in 64-wide slices of the head: R x 4 accumulators stay in registers over the block.
  for (int64_t i0 = 0; i0 < hd; i0 += kKeyBlock) {
    f32x16 a[R][kBlockVecs];
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < kBlockVecs; ++j) a[r][j] = load16(acc[r] + i0 + j * kLanes);
    for (int64_t s = 0; s < used; ++s) {
      f32x16 v[kBlockVecs];
      for (int j = 0; j < kBlockVecs; j += 2) load32(vb + s * hd + i0 + j * kLanes, v[j], v[j + 1]);
      for (int r = 0; r < R; ++r) {
        const float ps = p[r][s];
        for (int j = 0; j < kBlockVecs; ++j) a[r][j] += ps * v[j];
      }
    }
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < kBlockVecs; ++j) store16(acc[r] + i0 + j * kLanes, a[r][j]);
  }
}

// One unit: query rows t0..t0+nq-1 of one sequence, the `group` query heads sharing kv head h,
// R rows per pass over each block.
//   q: [T, n_heads, hd] (the sequence's queries), out: [T, n_heads * hd]
template <typename E>
CPUCHAT_ALWAYS_INLINE void attend_tile_typed(const AttentionJob& job, int64_t h, int64_t t0, int64_t nq,
                                             int64_t n_heads, int64_t group, int64_t hd, float scale) {
  const KVLayerView& kv = job.kv;
  const int64_t rows = nq * group;  // (query row, head) pairs of this tile
  // Row r's running output [hd], maximum and sum, in this thread's buffer (kept across units:
  // a decode step runs ~1000 of them).
  thread_local std::vector<float> scratch;
  scratch.assign(size_t(rows * (hd + 2)), 0.0f);
  float* acc = scratch.data();
  float* m = acc + rows * hd;
  float* l = m + rows;
  std::fill(m, m + rows, -std::numeric_limits<float>::infinity());
  // Row r's offset in q and out: query position t0 + r / group, head h * group + r % group.
  auto row_offset = [&](int64_t r) { return ((t0 + r / group) * n_heads + h * group + r % group) * hd; };
  const E* k_head = head_base<E>(kv.k, h, kv.key_blocks * kKeyBlock, hd);
  const E* v_head = head_base<E>(kv.v, h, kv.ctx, hd);
  const float* ks = kv.k_scale ? kv.k_scale + h * kv.key_blocks * kKeyBlock : nullptr;
  const float* vs = kv.v_scale ? kv.v_scale + h * kv.ctx : nullptr;
  const int64_t last_pos = job.start_pos + t0 + nq - 1;  // the tile's last row sees keys 0..last_pos
  for (int64_t s0 = 0; s0 <= last_pos; s0 += kKeyBlock) {
    const E* kt = k_head + s0 * hd;  // block s0 / kKeyBlock, [hd][kKeyBlock]
    const E* vb = v_head + s0 * hd;
    const float* kbs = ks ? ks + s0 : nullptr;
    const float* vbs = vs ? vs + s0 : nullptr;
    for (int64_t r0 = 0; r0 < rows; r0 += kRowsPerPass) {
      int64_t visible[kRowsPerPass];
      const float* qr[kRowsPerPass];
      float* ar[kRowsPerPass];
      const int64_t n = std::min<int64_t>(kRowsPerPass, rows - r0);
      for (int64_t r = 0; r < n; ++r) {
        visible[r] = std::min<int64_t>(kKeyBlock, job.start_pos + t0 + (r0 + r) / group + 1 - s0);
        qr[r] = job.q + row_offset(r0 + r);
        ar[r] = acc + (r0 + r) * hd;
      }
      const bool prefetch = r0 == 0 && s0 + kKeyBlock <= last_pos;  // later passes find the block cached
      const E* nk = prefetch ? kt + kKeyBlock * hd : nullptr;
      const E* nv = prefetch ? vb + kKeyBlock * hd : nullptr;
      switch (n) {
        case 4: attend_block<E, 4>(qr, kt, kbs, vb, vbs, hd, visible, scale, m + r0, l + r0, ar, nk, nv); break;
        case 3: attend_block<E, 3>(qr, kt, kbs, vb, vbs, hd, visible, scale, m + r0, l + r0, ar, nk, nv); break;
        case 2: attend_block<E, 2>(qr, kt, kbs, vb, vbs, hd, visible, scale, m + r0, l + r0, ar, nk, nv); break;
        default: attend_block<E, 1>(qr, kt, kbs, vb, vbs, hd, visible, scale, m + r0, l + r0, ar, nk, nv); break;
      }
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    float* o = job.out + row_offset(r);
    const float inv = 1.0f / l[r];
    for (int64_t i = 0; i < hd; ++i) o[i] = acc[r * hd + i] * inv;
  }
}

#if defined(__x86_64__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void attend_tile(const AttentionJob& job, int64_t h, int64_t t0, int64_t nq, int64_t n_heads, int64_t group,
                 int64_t hd, float scale) {
  switch (job.kv.type) {
    case KVType::FP32: return attend_tile_typed<float>(job, h, t0, nq, n_heads, group, hd, scale);
    case KVType::BF16: return attend_tile_typed<uint16_t>(job, h, t0, nq, n_heads, group, hd, scale);
    case KVType::INT8: return attend_tile_typed<int8_t>(job, h, t0, nq, n_heads, group, hd, scale);
  }
}

}  // namespace

KVCache make_kv_cache(int64_t n_layers, int64_t n_kv, int64_t ctx, int64_t hd, KVType type) {
  KVCache cache;
  cache.ctx = int(ctx);
  cache.type = type;
  const int64_t key_rows = (ctx + kKeyBlock - 1) / kKeyBlock * kKeyBlock;
  // Not zeroed: attention reads only positions already written, and untouched pages cost
  // no memory (an 8B model's 4096-token fp32 cache is 1 GB; zeroing it took ~0.3 s).
  const auto dtype = type == KVType::FP32 ? torch::kFloat32 : type == KVType::BF16 ? torch::kBFloat16 : torch::kInt8;
  cache.k = torch::empty({n_layers, n_kv, key_rows / kKeyBlock, hd, kKeyBlock}, dtype);
  cache.v = torch::empty({n_layers, n_kv, ctx, hd}, dtype);
  if (type == KVType::INT8) {
    cache.k_scale = torch::empty({n_layers, n_kv, key_rows}, torch::kFloat32);
    cache.v_scale = torch::empty({n_layers, n_kv, ctx}, torch::kFloat32);
  }
  return cache;
}

void copy_kv_prefix(const KVCache& from, KVCache& to, int n) {
  TORCH_CHECK(from.type == to.type && n <= from.ctx && n <= to.ctx && from.k.sizes().slice(2, 2) == to.k.sizes().slice(2, 2),
              "copy_kv_prefix: incompatible caches");
  if (n <= 0) return;
  // Keys by whole blocks (dim 2; positions past n in the last one are rewritten before they
  // are read), values and scales by position (dim 2).
  const int64_t blocks = (n + kKeyBlock - 1) / kKeyBlock;
  to.k.narrow(2, 0, blocks).copy_(from.k.narrow(2, 0, blocks));
  to.v.narrow(2, 0, n).copy_(from.v.narrow(2, 0, n));
  if (from.type == KVType::INT8) {
    to.k_scale.narrow(2, 0, n).copy_(from.k_scale.narrow(2, 0, n));
    to.v_scale.narrow(2, 0, n).copy_(from.v_scale.narrow(2, 0, n));
  }
}

namespace {
// interleaved_index(0..n-1): where element t of each run is stored.
torch::Tensor interleaved_positions(int64_t n) {
  std::vector<int64_t> at(static_cast<size_t>(n));
  for (int64_t t = 0; t < n; ++t) at[size_t(t)] = interleaved_index(t);
  return torch::tensor(at, torch::kLong);
}
}  // namespace

torch::Tensor key_rows_fp32(const KVCache& c, int layer) {
  torch::Tensor k = c.k[layer].to(torch::kFloat32);  // [n_kv, blocks, hd, kKeyBlock]
  if (c.type == KVType::BF16) k = k.index_select(-1, interleaved_positions(kKeyBlock));
  k = k.permute({0, 1, 3, 2}).reshape({k.size(0), -1, k.size(2)});  // [n_kv, blocks * kKeyBlock, hd]
  if (c.type == KVType::INT8) k = k * c.k_scale[layer].unsqueeze(-1);
  return k.narrow(1, 0, c.ctx).contiguous();
}

torch::Tensor value_rows_fp32(const KVCache& c, int layer) {
  torch::Tensor v = c.v[layer].to(torch::kFloat32);  // [n_kv, ctx, hd]
  if (values_interleaved(c.type, v.size(-1))) v = v.index_select(-1, interleaved_positions(v.size(-1)));
  if (c.type == KVType::INT8) v = v * c.v_scale[layer].unsqueeze(-1);
  return v.contiguous();
}

KVLayerView kv_layer(const KVCache& c, int layer) {
  KVLayerView v;
  v.type = c.type;
  v.ctx = c.ctx;
  v.key_blocks = c.k.size(2);
  v.k = static_cast<const char*>(c.k.data_ptr()) + layer * c.k.stride(0) * c.k.element_size();
  v.v = static_cast<const char*>(c.v.data_ptr()) + layer * c.v.stride(0) * c.v.element_size();
  if (c.type == KVType::INT8) {
    v.k_scale = c.k_scale.data_ptr<float>() + layer * c.k_scale.stride(0);
    v.v_scale = c.v_scale.data_ptr<float>() + layer * c.v_scale.stride(0);
  }
  return v;
}

namespace {
// Writes one row of hd values (fp32 in) as the cache's type, `stride` elements apart (1 for a
// value row, kKeyBlock for a key column; `interleave`: bf16 values in interleaved_index order);
// int8 returns its scale.
float store_row(KVType type, char* base, int64_t index, int64_t stride, bool interleave, const float* row, int64_t hd) {
  switch (type) {
    case KVType::FP32: {
      float* d = reinterpret_cast<float*>(base) + index;
      for (int64_t i = 0; i < hd; ++i) d[i * stride] = row[i];
      return 1.0f;
    }
    case KVType::BF16: {
      uint16_t* d = reinterpret_cast<uint16_t*>(base) + index;
      for (int64_t i = 0; i < hd; ++i) d[(interleave ? interleaved_index(i) : i) * stride] = float_to_bf16(row[i]);
      return 1.0f;
    }
    case KVType::INT8: {  // symmetric, one scale per row: max |x| maps to 127
      float amax = 0;
      for (int64_t i = 0; i < hd; ++i) amax = std::max(amax, std::fabs(row[i]));
      const float inv = amax > 0 ? 127.0f / amax : 0.0f;
      int8_t* d = reinterpret_cast<int8_t*>(base) + index;
      for (int64_t i = 0; i < hd; ++i) d[i * stride] = int8_t(std::lrintf(row[i] * inv));
      return amax / 127.0f;
    }
  }
  return 1.0f;
}
}  // namespace

void kv_store(KVCache& c, int layer, int start_pos, const float* k, const float* v, int64_t T, int64_t n_kv,
              int64_t hd) {
  TORCH_CHECK(start_pos >= 0 && start_pos + T <= c.ctx, "kv_store: positions past the KV cache");
  char* k_layer = static_cast<char*>(c.k.data_ptr()) + layer * c.k.stride(0) * c.k.element_size();
  char* v_layer = static_cast<char*>(c.v.data_ptr()) + layer * c.v.stride(0) * c.v.element_size();
  const int64_t key_rows = c.k.size(2) * kKeyBlock;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < n_kv; ++h) {
      const int64_t pos = start_pos + t, row = (t * n_kv + h) * hd;
      // keys: head h, block pos / kKeyBlock, column pos % kKeyBlock of its [hd][kKeyBlock]
      const int64_t column = c.type == KVType::BF16 ? interleaved_index(pos % kKeyBlock) : pos % kKeyBlock;
      const int64_t key_index = (h * key_rows + pos / kKeyBlock * kKeyBlock) * hd + column;
      const float k_scale = store_row(c.type, k_layer, key_index, kKeyBlock, false, k + row, hd);
      const float v_scale =
          store_row(c.type, v_layer, (h * c.ctx + pos) * hd, 1, values_interleaved(c.type, hd), v + row, hd);
      if (c.type == KVType::INT8) {
        c.k_scale.data_ptr<float>()[layer * c.k_scale.stride(0) + h * key_rows + pos] = k_scale;
        c.v_scale.data_ptr<float>()[layer * c.v_scale.stride(0) + h * c.ctx + pos] = v_scale;
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
