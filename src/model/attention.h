// Causal grouped-query attention of T new queries against a layer's fp32 KV cache.
#pragma once
#include <torch/torch.h>

namespace cpuchat {

// q: [T, n_heads, head_dim] at positions start_pos..start_pos+T-1; k_cache, v_cache:
// contiguous fp32 [n_kv_heads, ctx, head_dim] already holding keys/values 0..start_pos+T-1.
// Returns [T, n_heads * head_dim] fp32.
torch::Tensor causal_attention(const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
                               int start_pos);

}  // namespace cpuchat
