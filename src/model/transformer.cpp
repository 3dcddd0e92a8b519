// The Llama forward pass, top to bottom: embed, then per layer RMSNorm → attention with
// RoPE and a KV cache (GQA) → residual → RMSNorm → SwiGLU FFN → residual; final norm, head.
// Activations are fp32 throughout; only the linear layers differ between backends.
#include <cmath>

#include "model/attention.h"
#include "model/model.h"
#include "model/packed_cache.h"

namespace cpuchat {

namespace {

class TorchLinear : public Linear {
 public:
  explicit TorchLinear(torch::Tensor w) : w_(std::move(w)) {}
  torch::Tensor forward(const torch::Tensor& x) const override {
    if (w_.scalar_type() == torch::kFloat32) return torch::linear(x, w_);
    return torch::linear(x.to(w_.scalar_type()), w_).to(torch::kFloat32);  // bf16 runs in oneDNN
  }
  int64_t weight_bytes() const override { return w_.nbytes(); }

 private:
  torch::Tensor w_;
};

torch::ScalarType torch_dtype(Backend b) { return b == Backend::FP32 ? torch::kFloat32 : torch::kBFloat16; }

}  // namespace

std::unique_ptr<Linear> make_torch_linear(torch::Tensor weight, Backend backend) {
  // A mapped tensor of the right dtype is used in place; anything else is converted once.
  const auto dtype = torch_dtype(backend);
  if (weight.scalar_type() != dtype || !weight.is_contiguous()) weight = weight.to(dtype).contiguous();
  return std::make_unique<TorchLinear>(std::move(weight));
}

Model::Model(Checkpoint ck, Backend backend, QuantScheme quant, PackedCache* packed_cache)
    : config_(ck.config), backend_(backend) {
  const ModelConfig& c = config_;
  // `name` keys the packed cache; `w` is only read when the cache does not have it.
  auto make_linear = [&](const std::string& name, const torch::Tensor& w) -> std::unique_ptr<Linear> {
    if (backend != Backend::INT4) return make_torch_linear(w, backend);
    torch::Tensor packed = packed_cache ? packed_cache->find(name) : torch::Tensor();
    if (packed.defined() && !int4_packed_shape_is(packed, w.size(0), w.size(1)))
      throw std::runtime_error(packed_cache->path() + ": " + name + " has another shape than the checkpoint; delete the cache");
    if (!packed.defined()) {
      packed = int4_pack(w, quant);
      if (packed_cache) packed_cache->record(name, packed);
    }
    return make_int4_linear(packed);
  };
  auto linear = [&](const std::string& name) {
    torch::Tensor w = ck.take(name);
    n_params_ += w.numel();
    std::unique_ptr<Linear> lin = make_linear(name, w);
    if (w.scalar_type() != torch_dtype(backend) || backend == Backend::INT4) ck.release_pages(w);
    return lin;
  };
  auto norm = [&](const std::string& name) {
    torch::Tensor w = ck.take(name);
    n_params_ += w.numel();
    return w.to(torch::kFloat32).contiguous();  // tiny: always a private fp32 copy
  };

  layers_.resize(c.n_layers);
  for (int l = 0; l < c.n_layers; ++l) {
    Layer& L = layers_[l];
    L.attn_norm = norm(layer_tensor(l, "input_layernorm.weight"));
    L.ffn_norm = norm(layer_tensor(l, "post_attention_layernorm.weight"));
    L.wq = linear(layer_tensor(l, "self_attn.q_proj.weight"));
    L.wk = linear(layer_tensor(l, "self_attn.k_proj.weight"));
    L.wv = linear(layer_tensor(l, "self_attn.v_proj.weight"));
    L.wo = linear(layer_tensor(l, "self_attn.o_proj.weight"));
    L.w_gate = linear(layer_tensor(l, "mlp.gate_proj.weight"));
    L.w_up = linear(layer_tensor(l, "mlp.up_proj.weight"));
    L.w_down = linear(layer_tensor(l, "mlp.down_proj.weight"));
  }
  final_norm_ = norm("model.norm.weight");

  torch::Tensor embed = ck.take("model.embed_tokens.weight");
  n_params_ += embed.numel();
  if (c.tied_embeddings) {
    head_ = make_linear("lm_head.weight", embed);
  } else {
    torch::Tensor head = ck.take("lm_head.weight");
    n_params_ += head.numel();
    head_ = make_linear("lm_head.weight", head);
    if (backend == Backend::INT4 || head.scalar_type() != torch_dtype(backend)) ck.release_pages(head);
  }
  // The embedding table is only gathered from, a row per token: fp32 runs keep an fp32
  // copy, the others read the mapped rows as they are.
  embed_ = backend == Backend::FP32 ? embed.to(torch::kFloat32).contiguous() : embed;
  files_ = ck.files;

  const auto inv = rope_inv_freq(c);
  rope_inv_freq_ = torch::tensor(inv, torch::kFloat64);
}

int64_t Model::weight_bytes_per_token() const {
  int64_t bytes = head_->weight_bytes();
  for (const Layer& L : layers_)
    for (const auto* lin : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) bytes += (*lin)->weight_bytes();
  return bytes;
}

KVCache Model::new_cache(int ctx) const {
  const ModelConfig& c = config_;
  KVCache cache;
  cache.ctx = ctx;
  cache.k = torch::zeros({c.n_layers, c.n_kv_heads, ctx, c.head_dim}, torch::kFloat32);
  cache.v = torch::zeros({c.n_layers, c.n_kv_heads, ctx, c.head_dim}, torch::kFloat32);
  return cache;
}

torch::Tensor Model::rms_norm(const torch::Tensor& x, const torch::Tensor& weight) const {
  return x * torch::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + config_.norm_eps) * weight;
}

torch::Tensor Model::apply_rope(const torch::Tensor& x, int start_pos) const {
  // Rotate-half convention: pair i is (x[i], x[i + head_dim/2]). Angles in float64, like
  // the reference, so long positions keep their precision.
  const int64_t T = x.size(0), half = x.size(2) / 2;
  auto pos = torch::arange(start_pos, start_pos + T, torch::kFloat64).unsqueeze(1);
  auto angles = pos * rope_inv_freq_.unsqueeze(0);                 // [T, half]
  auto cos = angles.cos().to(torch::kFloat32).unsqueeze(1);       // [T, 1, half]
  auto sin = angles.sin().to(torch::kFloat32).unsqueeze(1);
  auto x1 = x.narrow(2, 0, half), x2 = x.narrow(2, half, half);
  return torch::cat({x1 * cos - x2 * sin, x2 * cos + x1 * sin}, 2);
}


torch::Tensor Model::forward(const std::vector<int>& tokens, int start_pos, KVCache& cache, bool all_logits) const {
  torch::NoGradGuard no_grad;
  const ModelConfig& c = config_;
  const int T = static_cast<int>(tokens.size());
  TORCH_CHECK(T > 0 && start_pos >= 0 && start_pos + T <= cache.ctx, "forward: positions past the KV cache");
  auto ids = torch::tensor(std::vector<int64_t>(tokens.begin(), tokens.end()), torch::kLong);
  torch::Tensor x = embed_.index_select(0, ids).to(torch::kFloat32);  // [T, dim]

  for (int l = 0; l < c.n_layers; ++l) {
    const Layer& L = layers_[l];
    torch::Tensor h = rms_norm(x, L.attn_norm);
    auto q = apply_rope(L.wq->forward(h).view({T, c.n_heads, c.head_dim}), start_pos);
    auto k = apply_rope(L.wk->forward(h).view({T, c.n_kv_heads, c.head_dim}), start_pos);
    auto v = L.wv->forward(h).view({T, c.n_kv_heads, c.head_dim});
    cache.k[l].narrow(1, start_pos, T).copy_(k.permute({1, 0, 2}));
    cache.v[l].narrow(1, start_pos, T).copy_(v.permute({1, 0, 2}));
    x = x + L.wo->forward(causal_attention(q, cache.k[l], cache.v[l], start_pos));

    h = rms_norm(x, L.ffn_norm);
    x = x + L.w_down->forward(torch::silu(L.w_gate->forward(h)) * L.w_up->forward(h));
  }
  if (!all_logits) x = x.narrow(0, T - 1, 1);
  return head_->forward(rms_norm(x, final_norm_)).contiguous();
}

}  // namespace cpuchat
