// Causal grouped-query attention of T new queries against one layer of a sequence's KV
// cache (fp32, bf16 or int8 keys/values).
#pragma once
#include <torch/torch.h>

#include "model/model.h"

namespace cpuchat {

// One layer of one sequence's cache, as raw pointers: rows [n_kv_heads, ctx, head_dim].
struct KVLayerView {
  KVType type = KVType::FP32;
  const void* k = nullptr;
  const void* v = nullptr;
  const float* k_scale = nullptr;  // int8: [n_kv_heads, ctx]
  const float* v_scale = nullptr;
  int64_t ctx = 0;
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
