// A loaded checkpoint in one canonical form, whatever file format it came from:
// HF tensor names, q/k rows in HF's rotate-half RoPE order, tensors as zero-copy
// views into memory-mapped files where the format allows.
#pragma once
#include <torch/torch.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "cpuchat/tokenizer.h"
#include "model/mapped_file.h"
#include "model/model_config.h"

namespace cpuchat {

// The per-pair RoPE inverse frequencies after llama3 scaling (head_dim/2 values).
std::vector<double> rope_inv_freq(const ModelConfig& c);

struct Checkpoint {
  std::string path;
  std::string format;  // "hf", "meta", "llama2c", "gguf"
  ModelConfig config;
  // HF names: model.embed_tokens.weight, model.norm.weight, lm_head.weight (absent when
  // tied), model.layers.N.{input_layernorm,post_attention_layernorm}.weight,
  // model.layers.N.self_attn.{q,k,v,o}_proj.weight, model.layers.N.mlp.{gate,up,down}_proj.weight
  std::map<std::string, torch::Tensor> tensors;
  std::vector<std::shared_ptr<MappedFile>> files;  // keep the maps alive while tensors view them
  std::unique_ptr<Tokenizer> embedded_tokenizer;   // GGUF carries its own
  std::string tokenizer_path;                      // a tokenizer file found next to the weights
  // Synthetic checkpoints (benchmarks) list shapes here and make each tensor only when
  // it is taken, so an 8B-shaped model never exists unpacked all at once.
  std::map<std::string, std::vector<int64_t>> lazy_shapes;
  uint64_t lazy_seed = 0;
  // Tensors decoded only when taken (GGUF quantized tensors): `tensors` holds a meta tensor
  // of the shape (validate() sees it), take() decodes; take_packed_q4k() packs a tensor whose
  // blocks map exactly onto q4k without decoding it at all. So a quantized model is never
  // decoded all at once.
  struct Deferred {
    std::function<torch::Tensor()> decode;           // the fp32 tensor
    std::function<torch::Tensor()> pack_q4k_exactly;  // an int4_pack blob (q4k), or empty
  };
  std::map<std::string, Deferred> deferred;

  // Takes a tensor out of the map (throws naming the tensor if missing).
  torch::Tensor take(const std::string& name);
  // If `name` is deferred and packs exactly into q4k: takes it as a packed blob (else undefined).
  torch::Tensor take_packed_q4k(const std::string& name);
  const torch::Tensor& get(const std::string& name) const;
  // Drops the pages of a mapped tensor we no longer need, so they leave our RSS.
  void release_pages(const torch::Tensor& t) const;
  // Checks every tensor's shape against the config; throws naming the tensor.
  void validate() const;
};

// A random-weight checkpoint of `config`'s shape, made tensor by tensor as it is taken.
Checkpoint synthetic_checkpoint(const ModelConfig& config, uint64_t seed);

// Detects the format of `path` (HF dir, Meta dir, llama2.c .bin, .gguf) and loads it.
// Throws std::runtime_error with one line naming the file and the problem.
Checkpoint load_checkpoint(const std::string& path);

Checkpoint load_hf_checkpoint(const std::string& dir);
Checkpoint load_meta_checkpoint(const std::string& dir);
Checkpoint load_llama2c_checkpoint(const std::string& file);
Checkpoint load_gguf_checkpoint(const std::string& file);

// Reorders q/k rows from interleaved RoPE pairs (Meta, llama2.c, GGUF) to HF's
// rotate-half order, so one RoPE implementation serves every format.
torch::Tensor interleaved_to_rotate_half(const torch::Tensor& w, int n_heads);
// Applies it to every layer's q_proj and k_proj of `ck`, dropping the source pages.
void reorder_qk_to_rotate_half(Checkpoint& ck);

// How a non-HF format names the tensors: `layer` lists its names for HF's
// kLayerTensorSuffixes, in that order, each after "<layer_prefix><N>.".
inline constexpr const char* kLayerTensorSuffixes[9] = {
    "input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_proj.weight",
    "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
    "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"};
struct TensorNaming {
  const char* embed;
  const char* norm;
  const char* head;  // absent from the file: tied embeddings
  const char* layer_prefix;
  const char* layer[9];
};
// Moves `raw` tensors into ck.tensors under HF names; throws "FILE: missing tensor X".
void adopt_tensors(const std::map<std::string, torch::Tensor>& raw, const TensorNaming& names,
                   const std::string& file, Checkpoint& ck);

// The names of layer tensors, in one place.
std::string layer_tensor(int layer, const char* suffix);

}  // namespace cpuchat
