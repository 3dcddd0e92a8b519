#include "model/make_model.h"

#include "common/regular_file.h"

#include <filesystem>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace cpuchat {

using nlohmann::json;

namespace {

ModelConfig llama3(int dim, int hidden, int layers, int heads, int kv_heads, bool tied, double rope_factor) {
  ModelConfig c;
  c.dim = dim;
  c.hidden_dim = hidden;
  c.n_layers = layers;
  c.n_heads = heads;
  c.n_kv_heads = kv_heads;
  c.head_dim = dim / heads;
  c.vocab_size = 128256;
  c.max_position = 131072;
  c.norm_eps = 1e-5;
  c.rope_theta = 500000.0;
  c.rope_scaling = RopeScaling{true, rope_factor, 1.0, 4.0, 8192};
  c.tied_embeddings = tied;
  c.bos_id = 128000;
  c.eos_ids = {128001, 128008, 128009};
  return c;
}

}  // namespace

ModelConfig model_shape(const std::string& name) {
  if (name == "llama3.1-8b") return llama3(4096, 14336, 32, 32, 8, false, 8.0);
  if (name == "llama3.2-3b") return llama3(3072, 8192, 28, 24, 8, true, 32.0);
  if (name == "llama3.2-1b") return llama3(2048, 8192, 16, 32, 8, true, 32.0);
  if (name == "tiny") {  // Llama 3 vocabulary, toy width: exercises every code path in seconds
    ModelConfig c = llama3(64, 192, 2, 4, 2, false, 8.0);
    c.max_position = 4096;
    return c;
  }
  std::string known;
  for (const auto& n : model_shape_names()) known += (known.empty() ? "" : ", ") + n;
  throw std::invalid_argument("unknown model shape '" + name + "' (known: " + known + ")");
}

std::vector<std::string> model_shape_names() { return {"llama3.1-8b", "llama3.2-3b", "llama3.2-1b", "tiny"}; }

std::vector<std::pair<std::string, std::vector<int64_t>>> tensor_shapes(const ModelConfig& c) {
  const int64_t q = int64_t(c.n_heads) * c.head_dim, kv = int64_t(c.n_kv_heads) * c.head_dim;
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  out.push_back({"model.embed_tokens.weight", {c.vocab_size, c.dim}});
  for (int l = 0; l < c.n_layers; ++l) {
    out.push_back({layer_tensor(l, "input_layernorm.weight"), {c.dim}});
    out.push_back({layer_tensor(l, "self_attn.q_proj.weight"), {q, c.dim}});
    out.push_back({layer_tensor(l, "self_attn.k_proj.weight"), {kv, c.dim}});
    out.push_back({layer_tensor(l, "self_attn.v_proj.weight"), {kv, c.dim}});
    out.push_back({layer_tensor(l, "self_attn.o_proj.weight"), {c.dim, q}});
    out.push_back({layer_tensor(l, "post_attention_layernorm.weight"), {c.dim}});
    out.push_back({layer_tensor(l, "mlp.gate_proj.weight"), {c.hidden_dim, c.dim}});
    out.push_back({layer_tensor(l, "mlp.up_proj.weight"), {c.hidden_dim, c.dim}});
    out.push_back({layer_tensor(l, "mlp.down_proj.weight"), {c.dim, c.hidden_dim}});
  }
  out.push_back({"model.norm.weight", {c.dim}});
  if (!c.tied_embeddings) out.push_back({"lm_head.weight", {c.vocab_size, c.dim}});
  return out;
}

void random_bf16(uint16_t* out, int64_t n, uint64_t seed) {
  // xorshift64*: fast enough to write GBs; uniform on [-a, a] with a = 0.02·√3 (std 0.02).
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  const float a = 0.02f * 1.7320508f;
  for (int64_t i = 0; i < n; ++i) {
    s ^= s >> 12, s ^= s << 25, s ^= s >> 27;
    const uint32_t r = uint32_t((s * 0x2545F4914F6CDD1Dull) >> 40);  // 24 random bits
    const float f = (float(r) * (1.0f / 16777216.0f) * 2.0f - 1.0f) * a;
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    out[i] = uint16_t((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);  // round to nearest even
  }
}

int64_t make_model(const MakeModelOptions& o) {
  const ModelConfig c = model_shape(o.shape);
  if (o.dtype != "bf16" && o.dtype != "fp32") throw std::invalid_argument("--dtype must be bf16 or fp32");
  const int64_t elem = o.dtype == "bf16" ? 2 : 4;
  std::error_code ec;
  std::filesystem::create_directories(o.out_dir, ec);
  if (ec) throw std::runtime_error(o.out_dir + ": cannot create directory (" + ec.message() + ")");

  // Split into shards of about 4 GB, never splitting a tensor.
  const auto shapes = tensor_shapes(c);
  const int64_t shard_limit = int64_t(4) << 30;
  std::vector<std::vector<size_t>> shards(1);
  int64_t in_shard = 0;
  for (size_t i = 0; i < shapes.size(); ++i) {
    int64_t n = elem;
    for (int64_t d : shapes[i].second) n *= d;
    if (in_shard > 0 && in_shard + n > shard_limit) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(i);
    in_shard += n;
  }

  json weight_map;
  int64_t total = 0;
  std::vector<uint16_t> buf(1 << 22);
  std::vector<float> fbuf;
  for (size_t s = 0; s < shards.size(); ++s) {
    char name[64];
    if (shards.size() == 1)
      snprintf(name, sizeof name, "model.safetensors");
    else
      snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
    json header;
    header["__metadata__"] = {{"format", "pt"}, {"generator", "cpuchat make-model " + o.shape}};
    int64_t offset = 0;
    for (size_t i : shards[s]) {
      int64_t n = elem;
      for (int64_t d : shapes[i].second) n *= d;
      header[shapes[i].first] = {{"dtype", elem == 2 ? "BF16" : "F32"}, {"shape", shapes[i].second}, {"data_offsets", {offset, offset + n}}};
      offset += n;
      weight_map[shapes[i].first] = name;
    }
    std::string h = header.dump();
    h.append((8 - h.size() % 8) % 8, ' ');  // keep tensor data 8-byte aligned
    const std::string path = o.out_dir + "/" + name;
    FILE* f = fopen(path.c_str(), "wb");
    if (!f) throw std::runtime_error(path + ": cannot write");
    const uint64_t hlen = h.size();
    fwrite(&hlen, 8, 1, f);
    fwrite(h.data(), 1, h.size(), f);
    for (size_t i : shards[s]) {
      int64_t n = 1;
      for (int64_t d : shapes[i].second) n *= d;
      const bool is_norm = shapes[i].second.size() == 1;
      for (int64_t done = 0; done < n; done += int64_t(buf.size())) {
        const int64_t m = std::min<int64_t>(int64_t(buf.size()), n - done);
        if (is_norm)
          std::fill(buf.begin(), buf.begin() + m, uint16_t(0x3F80));  // 1.0
        else
          random_bf16(buf.data(), m, o.seed ^ (uint64_t(i) << 40) ^ uint64_t(done));
        if (elem == 2) {
          fwrite(buf.data(), 2, size_t(m), f);
        } else {
          fbuf.resize(size_t(m));
          for (int64_t j = 0; j < m; ++j) {
            uint32_t bits = uint32_t(buf[j]) << 16;
            std::memcpy(&fbuf[j], &bits, 4);
          }
          fwrite(fbuf.data(), 4, size_t(m), f);
        }
      }
      total += n * elem;
    }
    if (fclose(f) != 0) throw std::runtime_error(path + ": write failed (disk full?)");
  }
  if (shards.size() > 1) {
    std::ofstream(o.out_dir + "/model.safetensors.index.json")
        << json{{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}}.dump(1) << "\n";
  }

  json cfg = {{"architectures", {"LlamaForCausalLM"}},
              {"model_type", "llama"},
              {"hidden_size", c.dim},
              {"intermediate_size", c.hidden_dim},
              {"num_hidden_layers", c.n_layers},
              {"num_attention_heads", c.n_heads},
              {"num_key_value_heads", c.n_kv_heads},
              {"head_dim", c.head_dim},
              {"vocab_size", c.vocab_size},
              {"max_position_embeddings", c.max_position},
              {"rms_norm_eps", c.norm_eps},
              {"rope_theta", c.rope_theta},
              {"rope_scaling", {{"rope_type", "llama3"}, {"factor", c.rope_scaling.factor},
                                {"low_freq_factor", c.rope_scaling.low_freq_factor},
                                {"high_freq_factor", c.rope_scaling.high_freq_factor},
                                {"original_max_position_embeddings", c.rope_scaling.original_max_position}}},
              {"tie_word_embeddings", c.tied_embeddings},
              {"bos_token_id", c.bos_id},
              {"eos_token_id", c.eos_ids},
              {"torch_dtype", elem == 2 ? "bfloat16" : "float32"}};
  std::ofstream(o.out_dir + "/config.json") << cfg.dump(2) << "\n";
  std::ofstream(o.out_dir + "/generation_config.json") << json{{"bos_token_id", c.bos_id}, {"eos_token_id", c.eos_ids}}.dump(2) << "\n";
  if (!o.tokenizer.empty()) {
    const std::string contents = read_regular_file(o.tokenizer, size_t(1) << 30);
    const auto slash = o.tokenizer.find_last_of('/');
    std::ofstream(o.out_dir + "/" + (slash == std::string::npos ? o.tokenizer : o.tokenizer.substr(slash + 1)), std::ios::binary)
        << contents;
  }
  return total;
}

}  // namespace cpuchat
