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
torch::Tensor int4_pack(const torch::Tensor& weight, QuantScheme quant);
std::unique_ptr<Linear> make_int4_linear(torch::Tensor packed);
bool int4_packed_shape_is(const torch::Tensor& packed, int64_t n, int64_t k);
// The kernel ISA level in use ("avx512vnni", ...).
std::string int4_isa_name();

// RoPE rotation of T consecutive positions: cos/sin [T, head_dim/2].
struct RopeTable {
  std::vector<float> cos, sin;
};

// Keys and values of every layer for one sequence: [n_layers, n_kv_heads, ctx, head_dim].
struct KVCache {
  torch::Tensor k, v;
  int ctx = 0;
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

  KVCache new_cache(int ctx) const;
  // Runs tokens at positions start_pos.. through the model, filling the cache.
  // Returns fp32 logits [tokens.size(), vocab] if all_logits, else [1, vocab] for the last.
  torch::Tensor forward(const std::vector<int>& tokens, int start_pos, KVCache& cache, bool all_logits) const;

 private:
  struct Layer {
    torch::Tensor attn_norm, ffn_norm;  // fp32 [dim]
    std::unique_ptr<Linear> wq, wk, wv, wo, w_gate, w_up, w_down;
  };
  torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight) const;
  RopeTable rope_table(int start_pos, int T) const;                 // cos/sin of T positions
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
