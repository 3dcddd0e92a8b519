// Causal grouped-query attention of T new queries against one layer of a sequence's KV
// cache (fp32, bf16 or int8 keys/values).
#pragma once
#include <torch/torch.h>

#include "model/model.h"

namespace cpuchat {

// The cache layout (allocated by make_kv_cache, written by kv_store):
//   keys   [n_layers, n_kv_heads, ceil(ctx / 64), head_dim, 64]: blocks of 64 positions stored
//          transposed, so a block's scores for one query are 64-wide vector FMAs over head_dim
//          with no conversion pass;
//   values [n_layers, n_kv_heads, ctx, head_dim];
//   int8 scales, one per (layer, head, position): keys [.., ceil(ctx / 64) * 64], values [.., ctx].
KVCache make_kv_cache(int64_t n_layers, int64_t n_kv_heads, int64_t ctx, int64_t head_dim, KVType type);
// (bf16 stores each run of 32 keys of a block, and of 32 value dimensions when head_dim is a
// multiple of 64, in a pair-interleaved order: attention.cpp's interleaved_index.)
// One layer's keys / values as fp32 rows [n_kv_heads, ctx, head_dim] (int8 scaled): for tests.
torch::Tensor key_rows_fp32(const KVCache& cache, int layer);
torch::Tensor value_rows_fp32(const KVCache& cache, int layer);

// One layer of one sequence's cache, as raw pointers.
struct KVLayerView {
  KVType type = KVType::FP32;
  const void* k = nullptr;
  const void* v = nullptr;
  const float* k_scale = nullptr;  // int8
  const float* v_scale = nullptr;
  int64_t ctx = 0;
  int64_t key_blocks = 0;          // ceil(ctx / 64)
};
KVLayerView kv_layer(const KVCache& cache, int layer);

// Writes T rows of keys/values (fp32 [T, n_kv_heads, head_dim]) at positions start_pos..
void kv_store(KVCache& cache, int layer, int start_pos, const float* k, const float* v, int64_t T, int64_t n_kv,
              int64_t head_dim);

// Attention of one sequence's queries, for a batch of sequences at once (so the thread
// pool sees every (sequence, kv head, query tile) unit of a step together).
struct AttentionJob {
  const float* q = nullptr;  // [T, n_heads, head_dim] at positions start_pos..start_pos+T-1
  float* out = nullptr;      // [T, n_heads * head_dim]
  int64_t T = 0;
  int start_pos = 0;
  KVLayerView kv;            // holds keys/values 0..start_pos+T-1
};
void causal_attention(const std::vector<AttentionJob>& jobs, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim);

}  // namespace cpuchat
