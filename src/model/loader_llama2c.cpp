// llama2.c checkpoints (legacy format): the header (parse_llama2c_header checks it and the
// file size it implies), then fp32 weights grouped by kind across layers, in run.c's order.
#include <stdexcept>

#include "model/checkpoint.h"
#include "model/llama2c_header.h"

namespace cpuchat {

Checkpoint load_llama2c_checkpoint(const std::string& file) {
  Checkpoint ck;
  ck.path = file;
  ck.format = "llama2c";
  auto mf = MappedFile::open(file);
  const Llama2cHeader header = parse_llama2c_header(mf->data(), mf->size(), file);
  ModelConfig& c = ck.config;
  c = header.config;
  const int64_t L = c.n_layers, D = c.dim, F = c.hidden_dim, V = c.vocab_size;
  const int64_t KV = int64_t(c.n_kv_heads) * c.head_dim;
  const int64_t half = c.head_dim / 2;

  float* p = reinterpret_cast<float*>(const_cast<uint8_t*>(mf->data()) + Llama2cHeader::kBytes);
  auto next = [&](std::vector<int64_t> shape) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    torch::Tensor t = torch::from_blob(p, shape, torch::kFloat32);
    p += n;
    return t;
  };
  auto per_layer = [&](const char* name, std::vector<int64_t> shape) {
    std::vector<int64_t> all{L};
    all.insert(all.end(), shape.begin(), shape.end());
    torch::Tensor t = next(all);
    for (int l = 0; l < L; ++l) ck.tensors[layer_tensor(l, name)] = t[l];
  };
  ck.tensors["model.embed_tokens.weight"] = next({V, D});
  per_layer("input_layernorm.weight", {D});
  per_layer("self_attn.q_proj.weight", {D, D});
  per_layer("self_attn.k_proj.weight", {KV, D});
  per_layer("self_attn.v_proj.weight", {KV, D});
  per_layer("self_attn.o_proj.weight", {D, D});
  per_layer("post_attention_layernorm.weight", {D});
  per_layer("mlp.gate_proj.weight", {F, D});
  per_layer("mlp.down_proj.weight", {D, F});
  per_layer("mlp.up_proj.weight", {F, D});
  ck.tensors["model.norm.weight"] = next({D});
  next({c.max_position, half});  // freq_cis_real: we compute RoPE ourselves
  next({c.max_position, half});  // freq_cis_imag
  if (!c.tied_embeddings) ck.tensors["lm_head.weight"] = next({V, D});
  ck.files.push_back(mf);

  ck.validate();
  reorder_qk_to_rotate_half(ck);  // llama2.c rotates interleaved pairs
  return ck;
}

}  // namespace cpuchat
