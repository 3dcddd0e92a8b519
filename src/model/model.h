// The Llama transformer on libtorch: weights, KV cache, and the forward pass.
#pragma once
#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "cpuchat/engine.h"
#include "model/checkpoint.h"

namespace cpuchat {
class PackedCache;
}

namespace cpuchat {

// A linear layer y = x · Wᵀ, however W is stored. x and y are fp32 [T, in] / [T, out].
class Linear {
 public:
  virtual ~Linear() = default;
  virtual torch::Tensor forward(const torch::Tensor& x) const = 0;
  virtual int64_t weight_bytes() const = 0;  // bytes read per forward
};

// libtorch's own linear (the "before" path): fp32 or bf16 weights.
std::unique_ptr<Linear> make_torch_linear(torch::Tensor weight, Backend backend);
// The INT4 kernels (the "after" path): int4_pack quantizes and repacks `weight` once (a
// uint8 tensor: kernels header + packed blob); the linear quantizes x per call.
// column_importance (optional, K values): how much each input channel's rounding error
// matters, e.g. the squared RMSNorm weights in front of the layer (see Model::Model).
torch::Tensor int4_pack(const torch::Tensor& weight, QuantScheme quant, const torch::Tensor& column_importance = {});
std::unique_ptr<Linear> make_int4_linear(torch::Tensor packed);
// What the packed bytes depend on besides the scheme and the weights (keys the packed cache).
std::string int4_quantizer_revision();
bool int4_packed_shape_is(const torch::Tensor& packed, int64_t n, int64_t k);
// The kernel ISA level in use ("avx512vnni", ...).
std::string int4_isa_name();

// RoPE rotation of T consecutive positions: cos/sin [T, head_dim/2].
struct RopeTable {
  std::vector<float> cos, sin;
};

// Keys and values of every layer for one sequence, stored as fp32, bf16, or int8 with one
// fp32 scale per (layer, head, position) row; the layout is attention.h's (make_kv_cache).
struct KVCache {
  KVType type = KVType::FP32;
  torch::Tensor k, v;              // fp32 / bf16 / int8
  torch::Tensor k_scale, v_scale;  // int8 only
  int ctx = 0;
};
// Bytes one cached position costs in every layer (keys + values, scales included).
int64_t kv_bytes_per_token(const ModelConfig& c, KVType type);
// Copies positions [0, n) of every layer from one cache into another of the same type.
void copy_kv_prefix(const KVCache& from, KVCache& to, int n);

// One sequence's share of a batched forward step: `n` tokens at positions start_pos.. of
// `cache`. `logits`: return the logits of its last row (all_logits: of every row).
struct SeqSpan {
  KVCache* cache = nullptr;
  int start_pos = 0;
  const int* tokens = nullptr;
  int n = 0;
  bool logits = true;
  bool all_logits = false;
};

class Model {
 public:
  // Consumes the checkpoint's tensors layer by layer, converting or packing each for
  // `backend` and releasing the source pages as it goes. With a packed cache (int4 only),
  // linears found in it are used from it, and the ones packed now are recorded in it.
  Model(Checkpoint checkpoint, Backend backend, QuantScheme quant, PackedCache* packed_cache = nullptr);

  const ModelConfig& config() const { return config_; }
  Backend backend() const { return backend_; }
  int64_t weight_bytes_per_token() const;
  int64_t n_params() const { return n_params_; }

  KVCache new_cache(int ctx, KVType type = KVType::FP32) const;
  // One forward step over several sequences: their rows go through every linear layer
  // together (one M = total rows matmul), attention runs per sequence over its own cache.
  // Returns fp32 logits [rows wanted, vocab], in span order.
  torch::Tensor forward_batch(const std::vector<SeqSpan>& spans) const;
  // One sequence: tokens at positions start_pos.. Returns [tokens.size() or 1, vocab].
  torch::Tensor forward(const std::vector<int>& tokens, int start_pos, KVCache& cache, bool all_logits) const;

 private:
  struct Layer {
    torch::Tensor attn_norm, ffn_norm;  // fp32 [dim]
    std::unique_ptr<Linear> wq, wk, wv, wo, w_gate, w_up, w_down;
  };
  torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight) const;
  RopeTable rope_table(const std::vector<int>& positions) const;   // cos/sin of each row's position
  void apply_rope(torch::Tensor& x, const RopeTable& rope) const;   // in place, x [T, heads, head_dim]

  ModelConfig config_;
  Backend backend_;
  std::vector<std::shared_ptr<MappedFile>> files_;  // embeddings may stay mapped
  torch::Tensor embed_;                             // [vocab, dim], fp32 or bf16
  torch::Tensor final_norm_;
  std::vector<Layer> layers_;
  std::unique_ptr<Linear> head_;
  std::vector<double> rope_inv_freq_;               // [head_dim/2], after llama3 scaling
  int64_t n_params_ = 0;
};

}  // namespace cpuchat
