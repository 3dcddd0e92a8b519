#include "model/checkpoint.h"

#include "model/make_model.h"

#include <sys/stat.h>

#include <cmath>
#include <stdexcept>

namespace cpuchat {

namespace {

bool is_directory(const std::string& p) {
  struct stat st {};
  return stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
bool exists(const std::string& p) {
  struct stat st {};
  return stat(p.c_str(), &st) == 0;
}
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string shape_string(c10::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

}  // namespace

std::string layer_tensor(int layer, const char* suffix) {
  return "model.layers." + std::to_string(layer) + "." + suffix;
}

std::vector<double> rope_inv_freq(const ModelConfig& c) {
  const int half = c.head_dim / 2;
  std::vector<double> inv(half);
  for (int i = 0; i < half; ++i) inv[i] = 1.0 / std::pow(c.rope_theta, (2.0 * i) / c.head_dim);
  if (!c.rope_scaling.enabled) return inv;
  // Llama 3.1: keep high frequencies, divide low ones by `factor`, blend in between.
  const RopeScaling& s = c.rope_scaling;
  const double low_wavelen = s.original_max_position / s.low_freq_factor;
  const double high_wavelen = s.original_max_position / s.high_freq_factor;
  for (double& f : inv) {
    const double wavelen = 2.0 * M_PI / f;
    if (wavelen < high_wavelen) continue;
    if (wavelen > low_wavelen) {
      f /= s.factor;
    } else {
      const double smooth = (s.original_max_position / wavelen - s.low_freq_factor) /
                            (s.high_freq_factor - s.low_freq_factor);
      f = (1.0 - smooth) * f / s.factor + smooth * f;
    }
  }
  return inv;
}

torch::Tensor interleaved_to_rotate_half(const torch::Tensor& w, int n_heads) {
  const int64_t rows = w.size(0), cols = w.size(1);
  const int64_t head_dim = rows / n_heads;
  return w.reshape({n_heads, head_dim / 2, 2, cols}).transpose(1, 2).reshape({rows, cols}).contiguous();
}

void adopt_tensors(const std::map<std::string, torch::Tensor>& raw, const TensorNaming& names,
                   const std::string& file, Checkpoint& ck) {
  auto move = [&](const std::string& from, const std::string& to) {
    auto it = raw.find(from);
    if (it == raw.end()) throw std::runtime_error(file + ": missing tensor " + from);
    ck.tensors[to] = it->second;
  };
  move(names.embed, "model.embed_tokens.weight");
  move(names.norm, "model.norm.weight");
  if (raw.count(names.head))
    move(names.head, "lm_head.weight");
  else
    ck.config.tied_embeddings = true;
  for (int l = 0; l < ck.config.n_layers; ++l) {
    const std::string prefix = names.layer_prefix + std::to_string(l) + ".";
    for (int i = 0; i < 9; ++i) move(prefix + names.layer[i], layer_tensor(l, kLayerTensorSuffixes[i]));
  }
}

void reorder_qk_to_rotate_half(Checkpoint& ck) {
  const ModelConfig& c = ck.config;
  for (int l = 0; l < c.n_layers; ++l)
    for (auto [name, heads] : {std::pair{"self_attn.q_proj.weight", c.n_heads}, {"self_attn.k_proj.weight", c.n_kv_heads}}) {
      torch::Tensor& w = ck.tensors.at(layer_tensor(l, name));
      if (w.is_meta()) continue;  // deferred: its decoder reorders it
      torch::Tensor reordered = interleaved_to_rotate_half(w, heads);
      ck.release_pages(w);
      w = reordered;
    }
}

torch::Tensor Checkpoint::take(const std::string& name) {
  if (auto lazy = lazy_shapes.find(name); lazy != lazy_shapes.end() && !tensors.count(name)) {
    torch::Tensor t = torch::empty(lazy->second, torch::kBFloat16);
    if (t.dim() == 1)
      t.fill_(1.0);  // norm weights
    else
      random_bf16(reinterpret_cast<uint16_t*>(t.data_ptr()), t.numel(), lazy_seed ^ std::hash<std::string>()(name));
    lazy_shapes.erase(lazy);
    return t;
  }
  auto it = tensors.find(name);
  if (it == tensors.end()) throw std::runtime_error(path + ": missing tensor " + name);
  torch::Tensor t = std::move(it->second);
  tensors.erase(it);
  if (auto d = deferred.find(name); d != deferred.end()) {
    const Deferred later = std::move(d->second);
    deferred.erase(d);
    return later.decode();
  }
  return t;
}

torch::Tensor Checkpoint::take_packed_q4k(const std::string& name) {
  auto d = deferred.find(name);
  if (d == deferred.end() || !d->second.pack_q4k_exactly) return {};
  const Deferred later = std::move(d->second);
  deferred.erase(d);
  tensors.erase(name);
  return later.pack_q4k_exactly();
}

const torch::Tensor& Checkpoint::get(const std::string& name) const {
  auto it = tensors.find(name);
  if (it == tensors.end()) throw std::runtime_error(path + ": missing tensor " + name);
  return it->second;
}

void Checkpoint::release_pages(const torch::Tensor& t) const {
  const auto* p = static_cast<const uint8_t*>(t.data_ptr());
  for (const auto& f : files)
    if (p >= f->data() && p < f->data() + f->size()) f->release(p, t.nbytes());
}

void Checkpoint::validate() const {
  const ModelConfig& c = config;
  validate_config(c, path);
  auto expect = [&](const std::string& name, std::vector<int64_t> shape) {
    const torch::Tensor& t = get(name);
    if (t.sizes() != c10::IntArrayRef(shape))
      throw std::runtime_error(path + ": tensor " + name + " has shape " + shape_string(t.sizes()) +
                               " but the config implies " + shape_string(shape));
  };
  const int64_t q = int64_t(c.n_heads) * c.head_dim, kv = int64_t(c.n_kv_heads) * c.head_dim;
  expect("model.embed_tokens.weight", {c.vocab_size, c.dim});
  expect("model.norm.weight", {c.dim});
  if (!c.tied_embeddings) expect("lm_head.weight", {c.vocab_size, c.dim});
  for (int l = 0; l < c.n_layers; ++l) {
    expect(layer_tensor(l, "input_layernorm.weight"), {c.dim});
    expect(layer_tensor(l, "post_attention_layernorm.weight"), {c.dim});
    expect(layer_tensor(l, "self_attn.q_proj.weight"), {q, c.dim});
    expect(layer_tensor(l, "self_attn.k_proj.weight"), {kv, c.dim});
    expect(layer_tensor(l, "self_attn.v_proj.weight"), {kv, c.dim});
    expect(layer_tensor(l, "self_attn.o_proj.weight"), {c.dim, q});
    expect(layer_tensor(l, "mlp.gate_proj.weight"), {c.hidden_dim, c.dim});
    expect(layer_tensor(l, "mlp.up_proj.weight"), {c.hidden_dim, c.dim});
    expect(layer_tensor(l, "mlp.down_proj.weight"), {c.dim, c.hidden_dim});
  }
}

Checkpoint synthetic_checkpoint(const ModelConfig& config, uint64_t seed) {
  Checkpoint ck;
  ck.path = "synthetic";
  ck.format = "synthetic";
  ck.config = config;
  ck.lazy_seed = seed;
  for (auto& [name, shape] : tensor_shapes(config)) ck.lazy_shapes[name] = shape;
  return ck;
}

Checkpoint load_checkpoint(const std::string& path) {
  Checkpoint ck;
  if (is_directory(path)) {
    if (exists(path + "/config.json")) {
      ck = load_hf_checkpoint(path);
    } else if (exists(path + "/params.json")) {
      ck = load_meta_checkpoint(path);
    } else {
      throw std::runtime_error(path + ": not a model directory (no config.json or params.json)");
    }
  } else if (!exists(path)) {
    throw std::runtime_error(path + ": no such file or directory");
  } else if (ends_with(path, ".gguf")) {
    ck = load_gguf_checkpoint(path);
  } else if (ends_with(path, ".bin")) {
    ck = load_llama2c_checkpoint(path);
  } else {
    throw std::runtime_error(path + ": unknown model format (expected a HF or Meta directory, a .gguf or a llama2.c .bin)");
  }
  ck.validate();
  return ck;
}

}  // namespace cpuchat
