// The Llama forward pass, top to bottom: embed, then per layer RMSNorm → attention with
// RoPE and a KV cache (GQA) → residual → RMSNorm → SwiGLU FFN → residual; final norm, head.
// A step may carry several sequences: their rows share every linear layer (one matmul of
// all rows, so the weights are read once per step), while RoPE positions, KV caches and
// attention stay per sequence. Activations are fp32 throughout; only the linear layers
// differ between backends.
#include <cmath>
#include <cstdlib>
#include <string>

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

// CPUCHAT_Q4_NORM_IMPORTANCE=off (read once) packs without the norm weights, to measure
// what they buy.
bool norm_importance_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("CPUCHAT_Q4_NORM_IMPORTANCE");
    return v == nullptr || std::string(v) != "off";
  }();
  return enabled;
}

// The int4 quantizer's column weights for a layer behind RMSNorm weights g. The input is
// x_k = g_k n_k (n: the normalized residual), so column k's rounding error reaches the output
// scaled by g_k; but n's own per-channel scale is unknown without data, and weighting by g^2
// over-trusts g. sqrt|g| (AWQ's usual alpha = 0.5) measured best on stories260K: KL on
// tests/data/tinystory.txt against no weights g^2 +13 %, |g| +6 %, |g|^0.25 +3 %, sqrt|g| -4 %
// (and -4 % on a second text; docs/BENCHMARKS.md).
torch::Tensor column_importance_of(const torch::Tensor& norm) {
  if (!norm_importance_enabled() || !norm.defined()) return {};
  return norm.abs().sqrt();
}

}  // namespace

std::string int4_quantizer_revision() { return norm_importance_enabled() ? "sqrt-norm-importance" : "plain"; }

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
  // `norm`: the RMSNorm weights that scale this layer's input, or undefined: the quantizer
  // weighs each column's error by them (column_importance_of).
  auto make_linear = [&](const std::string& name, const torch::Tensor& w,
                         const torch::Tensor& norm = {}) -> std::unique_ptr<Linear> {
    if (backend != Backend::INT4) return make_torch_linear(w, backend);
    torch::Tensor packed = packed_cache ? packed_cache->find(name) : torch::Tensor();
    if (packed.defined() && !int4_packed_shape_is(packed, w.size(0), w.size(1)))
      throw std::runtime_error(packed_cache->path() + ": " + name + " has another shape than the checkpoint; delete the cache");
    if (!packed.defined()) {
      packed = int4_pack(w, quant, column_importance_of(norm));
      if (packed_cache) packed_cache->record(name, packed);
    }
    return make_int4_linear(packed);
  };
  // A deferred GGUF Q4_K tensor with q4k packs from its own blocks, never decoded to float.
  auto exact_q4k = [&](const std::string& name) -> std::unique_ptr<Linear> {
    if (backend != Backend::INT4 || quant != QuantScheme::Q4K || !ck.deferred.count(name)) return nullptr;
    if (packed_cache && packed_cache->find(name).defined()) return nullptr;  // the cache has it
    const int64_t numel = ck.get(name).numel();
    torch::Tensor packed = ck.take_packed_q4k(name);
    if (!packed.defined()) return nullptr;
    n_params_ += numel;
    if (packed_cache) packed_cache->record(name, packed);
    return make_int4_linear(packed);
  };
  auto linear = [&](const std::string& name, const torch::Tensor& norm = {}) {
    if (std::unique_ptr<Linear> exact = exact_q4k(name)) return exact;
    torch::Tensor w = ck.take(name);
    n_params_ += w.numel();
    std::unique_ptr<Linear> lin = make_linear(name, w, norm);
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
    L.wq = linear(layer_tensor(l, "self_attn.q_proj.weight"), L.attn_norm);
    L.wk = linear(layer_tensor(l, "self_attn.k_proj.weight"), L.attn_norm);
    L.wv = linear(layer_tensor(l, "self_attn.v_proj.weight"), L.attn_norm);
    L.wo = linear(layer_tensor(l, "self_attn.o_proj.weight"));
    L.w_gate = linear(layer_tensor(l, "mlp.gate_proj.weight"), L.ffn_norm);
    L.w_up = linear(layer_tensor(l, "mlp.up_proj.weight"), L.ffn_norm);
    L.w_down = linear(layer_tensor(l, "mlp.down_proj.weight"));
  }
  final_norm_ = norm("model.norm.weight");

  const bool embed_decoded = ck.deferred.count("model.embed_tokens.weight") > 0;  // a quantized GGUF table
  torch::Tensor embed = ck.take("model.embed_tokens.weight");
  n_params_ += embed.numel();
  if (c.tied_embeddings) {
    head_ = make_linear("lm_head.weight", embed, final_norm_);
  } else if (!(head_ = exact_q4k("lm_head.weight"))) {
    torch::Tensor head = ck.take("lm_head.weight");
    n_params_ += head.numel();
    head_ = make_linear("lm_head.weight", head, final_norm_);
    if (backend == Backend::INT4 || head.scalar_type() != torch_dtype(backend)) ck.release_pages(head);
  }
  // The embedding table is only gathered from, a row per token: fp32 runs keep an fp32
  // copy, the others read the mapped rows as they are (a table decoded from a quantized file:
  // as bf16, half the memory of its fp32 decode).
  embed_ = backend == Backend::FP32 ? embed.to(torch::kFloat32).contiguous()
           : embed_decoded          ? embed.to(torch::kBFloat16)
                                    : embed;
  files_ = ck.files;

  rope_inv_freq_ = rope_inv_freq(c);
}

int64_t Model::weight_bytes_per_token() const {
  int64_t bytes = head_->weight_bytes();
  for (const Layer& L : layers_)
    for (const auto* lin : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) bytes += (*lin)->weight_bytes();
  return bytes;
}

int64_t kv_bytes_per_token(const ModelConfig& c, KVType type) {
  const int64_t per_row = type == KVType::FP32 ? 4 * c.head_dim : type == KVType::BF16 ? 2 * c.head_dim : c.head_dim + 4;
  return 2 * int64_t(c.n_layers) * c.n_kv_heads * per_row;  // keys and values
}

KVCache Model::new_cache(int ctx, KVType type) const {
  return make_kv_cache(config_.n_layers, config_.n_kv_heads, ctx, config_.head_dim, type);
}

// The element-wise steps below are plain loops rather than chains of libtorch ops: at decode
// (one token) each libtorch op costs microseconds of dispatch for a few KB of work, and the
// chains (RMSNorm 6 ops, RoPE ~17 per call, SwiGLU 2) added up to ~10 % of 8B decode time.

torch::Tensor Model::rms_norm(const torch::Tensor& x_in, const torch::Tensor& weight) const {
  const torch::Tensor x = x_in.contiguous();
  const int64_t dim = x.size(-1), rows = x.numel() / dim;
  torch::Tensor out = torch::empty_like(x);
  const float *xp = x.data_ptr<float>(), *w = weight.data_ptr<float>();
  float* op = out.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = xp + r * dim;
    float ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < dim; ++i) ss += xr[i] * xr[i];
    const float scale = 1.0f / std::sqrt(ss / float(dim) + float(config_.norm_eps));
    for (int64_t i = 0; i < dim; ++i) op[r * dim + i] = xr[i] * scale * w[i];
  }
  return out;
}

RopeTable Model::rope_table(const std::vector<int>& positions) const {
  // Angles in float64, like the reference, so long positions keep their precision.
  const int64_t half = int64_t(rope_inv_freq_.size()), T = int64_t(positions.size());
  RopeTable t{std::vector<float>(size_t(T * half)), std::vector<float>(size_t(T * half))};
  for (int64_t p = 0; p < T; ++p)
    for (int64_t i = 0; i < half; ++i) {
      const double angle = double(positions[size_t(p)]) * rope_inv_freq_[size_t(i)];
      t.cos[size_t(p * half + i)] = float(std::cos(angle));
      t.sin[size_t(p * half + i)] = float(std::sin(angle));
    }
  return t;
}

void Model::apply_rope(torch::Tensor& x, const RopeTable& rope) const {
  // Rotate-half convention: pair i is (x[i], x[i + head_dim/2]). x: contiguous [T, heads, head_dim].
  const int64_t T = x.size(0), heads = x.size(1), half = x.size(2) / 2;
  float* xp = x.data_ptr<float>();
  for (int64_t p = 0; p < T; ++p) {
    const float *cos = rope.cos.data() + p * half, *sin = rope.sin.data() + p * half;
    for (int64_t h = 0; h < heads; ++h) {
      float* x1 = xp + (p * heads + h) * 2 * half;
      float* x2 = x1 + half;
      for (int64_t i = 0; i < half; ++i) {
        const float a = x1[i], b = x2[i];
        x1[i] = a * cos[i] - b * sin[i];
        x2[i] = b * cos[i] + a * sin[i];
      }
    }
  }
}

// SwiGLU's gate: silu(gate) * up, in place in `gate`.
// A batch's elements split over the threads (8 rows of 1B: -2.5 % step time); one row's few
// thousand exps run inline, cheaper than waking a thread.
static void silu_mul_(torch::Tensor& gate, const torch::Tensor& up) {
  float* g = gate.data_ptr<float>();
  const float* u = up.data_ptr<float>();
  at::parallel_for(0, gate.numel(), 16384, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
  });
}

torch::Tensor Model::forward_batch(const std::vector<SeqSpan>& spans) const {
  torch::NoGradGuard no_grad;
  const ModelConfig& c = config_;
  // The step's rows: every span's tokens, one after another, each with its own position.
  std::vector<int64_t> ids;
  std::vector<int> positions;
  std::vector<int64_t> logit_rows;
  for (const SeqSpan& s : spans) {
    TORCH_CHECK(s.n > 0 && s.start_pos >= 0 && s.start_pos + s.n <= s.cache->ctx, "forward: positions past the KV cache");
    for (int i = 0; i < s.n; ++i) {
      if (s.all_logits || (s.logits && i == s.n - 1)) logit_rows.push_back(int64_t(ids.size()));
      ids.push_back(s.tokens[i]);
      positions.push_back(s.start_pos + i);
    }
  }
  const int64_t T = int64_t(ids.size());
  torch::Tensor x = embed_.index_select(0, torch::tensor(ids, torch::kLong)).to(torch::kFloat32);  // [T, dim]
  const RopeTable rope = rope_table(positions);
  torch::Tensor attn = torch::empty({T, c.n_heads * c.head_dim}, torch::kFloat32);

  for (int l = 0; l < c.n_layers; ++l) {
    const Layer& L = layers_[l];
    torch::Tensor h = rms_norm(x, L.attn_norm);
    auto q = L.wq->forward(h).contiguous().view({T, c.n_heads, c.head_dim});
    auto k = L.wk->forward(h).contiguous().view({T, c.n_kv_heads, c.head_dim});
    auto v = L.wv->forward(h).contiguous();
    apply_rope(q, rope);
    apply_rope(k, rope);
    std::vector<AttentionJob> jobs;
    int64_t row = 0;
    for (const SeqSpan& s : spans) {
      const int64_t kv_row = row * c.n_kv_heads * c.head_dim;
      kv_store(*s.cache, l, s.start_pos, k.data_ptr<float>() + kv_row, v.data_ptr<float>() + kv_row, s.n,
               c.n_kv_heads, c.head_dim);
      jobs.push_back({q.data_ptr<float>() + row * c.n_heads * c.head_dim,
                      attn.data_ptr<float>() + row * c.n_heads * c.head_dim, s.n, s.start_pos, kv_layer(*s.cache, l)});
      row += s.n;
    }
    causal_attention(jobs, c.n_heads, c.n_kv_heads, c.head_dim);
    x += L.wo->forward(attn);

    h = rms_norm(x, L.ffn_norm);
    torch::Tensor gate = L.w_gate->forward(h).contiguous();
    silu_mul_(gate, L.w_up->forward(h).contiguous());
    x += L.w_down->forward(gate);
  }
  if (logit_rows.empty()) return torch::empty({0, c.vocab_size}, torch::kFloat32);
  if (int64_t(logit_rows.size()) < T) x = x.index_select(0, torch::tensor(logit_rows, torch::kLong));
  return head_->forward(rms_norm(x, final_norm_)).contiguous();
}

torch::Tensor Model::forward(const std::vector<int>& tokens, int start_pos, KVCache& cache, bool all_logits) const {
  SeqSpan span{&cache, start_pos, tokens.data(), int(tokens.size()), /*logits=*/true, all_logits};
  return forward_batch({span});
}

}  // namespace cpuchat
