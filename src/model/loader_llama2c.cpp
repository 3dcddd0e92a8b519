// llama2.c checkpoints (legacy format): a header of 7 int32 (dim, hidden_dim, n_layers,
// n_heads, n_kv_heads, vocab_size, seq_len; vocab_size < 0 means an untied classifier),
// then fp32 weights grouped by kind across layers, in run.c's order.
#include <stdexcept>

#include "model/checkpoint.h"

namespace cpuchat {

Checkpoint load_llama2c_checkpoint(const std::string& file) {
  Checkpoint ck;
  ck.path = file;
  ck.format = "llama2c";
  auto mf = MappedFile::open(file);
  if (mf->size() < 7 * sizeof(int32_t))
    throw std::runtime_error(file + ": truncated llama2.c checkpoint (no header)");
  int32_t h[7];
  std::memcpy(h, mf->data(), sizeof(h));
  ModelConfig& c = ck.config;
  c.dim = h[0];
  c.hidden_dim = h[1];
  c.n_layers = h[2];
  c.n_heads = h[3];
  c.n_kv_heads = h[4];
  c.tied_embeddings = h[5] > 0;
  c.vocab_size = h[5] > 0 ? h[5] : -int64_t(h[5]);
  c.max_position = h[6];
  for (int v : h)
    if (v == 0 || std::abs(int64_t(v)) > (1 << 24))
      throw std::runtime_error(file + ": not a llama2.c checkpoint (implausible header values)");
  if (c.n_heads <= 0 || c.n_kv_heads <= 0 || c.dim % c.n_heads != 0)
    throw std::runtime_error(file + ": not a llama2.c checkpoint (dim not divisible by heads)");
  c.head_dim = c.dim / c.n_heads;
  c.norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.bos_id = 1;
  c.eos_ids = {2};

  const int64_t L = c.n_layers, D = c.dim, F = c.hidden_dim, V = c.vocab_size;
  const int64_t KV = int64_t(c.n_kv_heads) * c.head_dim;
  const int64_t half = c.head_dim / 2;
  // Bytes needed, before touching any of them.
  const int64_t floats = V * D + L * D + L * D * D + 2 * L * KV * D + L * D * D + L * D + 3 * L * F * D + D +
                         2 * int64_t(c.max_position) * half + (c.tied_embeddings ? 0 : V * D);
  const size_t need = sizeof(h) + size_t(floats) * sizeof(float);
  if (mf->size() < need)
    throw std::runtime_error(file + ": truncated llama2.c checkpoint (" + std::to_string(mf->size()) + " bytes, header implies " +
                             std::to_string(need) + ")");

  float* p = reinterpret_cast<float*>(const_cast<uint8_t*>(mf->data()) + sizeof(h));
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
