// Hugging Face checkpoints: config.json + model.safetensors (or sharded with
// model.safetensors.index.json). Safetensors is parsed here: an 8-byte header length,
// a JSON header, then raw little-endian tensor bytes that we view through mmap.
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>

#include "model/checkpoint.h"

namespace cpuchat {

using nlohmann::json;

namespace {

json read_json_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot open");
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    throw std::runtime_error(path + ": malformed JSON (" + std::string(e.what()) + ")");
  }
}

bool file_exists(const std::string& p) { return std::ifstream(p).good(); }

torch::ScalarType safetensors_dtype(const std::string& dtype, const std::string& file, const std::string& name) {
  if (dtype == "F32") return torch::kFloat32;
  if (dtype == "BF16") return torch::kBFloat16;
  if (dtype == "F16") return torch::kFloat16;
  throw std::runtime_error(file + ": tensor " + name + " has unsupported dtype " + dtype +
                           " (supported: F32, BF16, F16)");
}

// Adds every tensor of one .safetensors file to `ck`, as views into its mmap.
void map_safetensors(const std::string& file, Checkpoint& ck) {
  auto mf = MappedFile::open(file);
  const size_t size = mf->size();
  if (size < 8) throw std::runtime_error(file + ": truncated safetensors file (" + std::to_string(size) + " bytes)");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | mf->data()[i];
  if (header_len > size - 8)
    throw std::runtime_error(file + ": safetensors header length " + std::to_string(header_len) +
                             " runs past the end of the file (" + std::to_string(size) + " bytes)");
  json header;
  try {
    header = json::parse(mf->data() + 8, mf->data() + 8 + header_len);
  } catch (const json::exception& e) {
    throw std::runtime_error(file + ": malformed safetensors header (" + std::string(e.what()) + ")");
  }
  if (!header.is_object()) throw std::runtime_error(file + ": safetensors header is not a JSON object");
  const uint8_t* data = mf->data() + 8 + header_len;
  const size_t data_size = size - 8 - header_len;
  for (auto& [name, info] : header.items()) {
    if (name == "__metadata__") continue;
    try {
      const auto dtype = safetensors_dtype(info.at("dtype").get<std::string>(), file, name);
      const auto shape = info.at("shape").get<std::vector<int64_t>>();
      const auto offsets = info.at("data_offsets").get<std::vector<uint64_t>>();
      if (offsets.size() != 2 || offsets[0] > offsets[1] || offsets[1] > data_size)
        throw std::runtime_error(file + ": tensor " + name + " lies past the end of the file (truncated?)");
      int64_t numel = 1;
      for (int64_t d : shape) {
        if (d < 0) throw std::runtime_error(file + ": tensor " + name + " has a negative dimension");
        numel *= d;
      }
      const uint64_t nbytes = uint64_t(numel) * c10::elementSize(dtype);
      if (nbytes != offsets[1] - offsets[0])
        throw std::runtime_error(file + ": tensor " + name + " has " + std::to_string(offsets[1] - offsets[0]) +
                                 " bytes but its shape needs " + std::to_string(nbytes));
      // from_blob never frees: the MappedFile in ck.files owns the memory.
      void* p = const_cast<uint8_t*>(data + offsets[0]);
      ck.tensors[name] = torch::from_blob(p, shape, torch::TensorOptions().dtype(dtype));
    } catch (const json::exception& e) {
      throw std::runtime_error(file + ": bad safetensors entry for " + name + " (" + e.what() + ")");
    }
  }
  ck.files.push_back(std::move(mf));
}

template <typename T>
T config_value(const json& cfg, const char* key, const std::string& file) {
  if (!cfg.contains(key) || cfg[key].is_null()) throw std::runtime_error(file + ": missing \"" + key + "\"");
  try {
    return cfg[key].get<T>();
  } catch (const json::exception&) {
    throw std::runtime_error(file + ": \"" + key + "\" has the wrong type");
  }
}

void add_eos(const json& v, std::vector<int>& eos) {
  if (v.is_number_integer()) eos.push_back(v.get<int>());
  if (v.is_array())
    for (auto& e : v)
      if (e.is_number_integer()) eos.push_back(e.get<int>());
}

}  // namespace

Checkpoint load_hf_checkpoint(const std::string& dir) {
  Checkpoint ck;
  ck.path = dir;
  ck.format = "hf";
  const std::string cfg_path = dir + "/config.json";
  const json cfg = read_json_file(cfg_path);
  ModelConfig& c = ck.config;
  c.dim = config_value<int>(cfg, "hidden_size", cfg_path);
  c.hidden_dim = config_value<int>(cfg, "intermediate_size", cfg_path);
  c.n_layers = config_value<int>(cfg, "num_hidden_layers", cfg_path);
  c.n_heads = config_value<int>(cfg, "num_attention_heads", cfg_path);
  c.n_kv_heads = cfg.value("num_key_value_heads", c.n_heads);
  c.head_dim = cfg.contains("head_dim") && cfg["head_dim"].is_number() ? cfg["head_dim"].get<int>()
                                                                        : (c.n_heads ? c.dim / c.n_heads : 0);
  c.vocab_size = config_value<int>(cfg, "vocab_size", cfg_path);
  c.max_position = cfg.value("max_position_embeddings", 2048);
  c.norm_eps = cfg.value("rms_norm_eps", 1e-5);
  c.rope_theta = cfg.value("rope_theta", 10000.0);
  c.tied_embeddings = cfg.value("tie_word_embeddings", false);
  if (cfg.contains("rope_scaling") && cfg["rope_scaling"].is_object()) {
    const json& rs = cfg["rope_scaling"];
    const std::string type = rs.value("rope_type", rs.value("type", std::string()));
    if (type == "llama3") {
      c.rope_scaling.enabled = true;
      c.rope_scaling.factor = rs.value("factor", 8.0);
      c.rope_scaling.low_freq_factor = rs.value("low_freq_factor", 1.0);
      c.rope_scaling.high_freq_factor = rs.value("high_freq_factor", 4.0);
      c.rope_scaling.original_max_position = rs.value("original_max_position_embeddings", 8192);
    } else if (!type.empty() && type != "default") {
      throw std::runtime_error(cfg_path + ": unsupported rope_scaling type \"" + type + "\" (supported: llama3)");
    }
  }
  if (cfg.contains("bos_token_id") && cfg["bos_token_id"].is_number_integer()) c.bos_id = cfg["bos_token_id"];
  if (cfg.contains("eos_token_id")) add_eos(cfg["eos_token_id"], c.eos_ids);
  if (file_exists(dir + "/generation_config.json")) {
    const json gen = read_json_file(dir + "/generation_config.json");
    if (gen.contains("eos_token_id")) add_eos(gen["eos_token_id"], c.eos_ids);
  }
  std::sort(c.eos_ids.begin(), c.eos_ids.end());
  c.eos_ids.erase(std::unique(c.eos_ids.begin(), c.eos_ids.end()), c.eos_ids.end());

  // Weights: one file, or shards listed by the index.
  const std::string index_path = dir + "/model.safetensors.index.json";
  if (file_exists(dir + "/model.safetensors")) {
    map_safetensors(dir + "/model.safetensors", ck);
  } else if (file_exists(index_path)) {
    const json index = read_json_file(index_path);
    if (!index.contains("weight_map") || !index["weight_map"].is_object())
      throw std::runtime_error(index_path + ": no \"weight_map\" object");
    std::set<std::string> shards;
    for (auto& [name, shard] : index["weight_map"].items()) {
      if (!shard.is_string()) throw std::runtime_error(index_path + ": weight_map entry " + name + " is not a file name");
      const std::string s = shard.get<std::string>();
      if (s.find('/') != std::string::npos) throw std::runtime_error(index_path + ": shard name " + s + " is not a plain file name");
      shards.insert(s);
    }
    for (const auto& s : shards) map_safetensors(dir + "/" + s, ck);
  } else {
    throw std::runtime_error(dir + ": no model.safetensors or model.safetensors.index.json");
  }
  if (!ck.tensors.count("lm_head.weight")) c.tied_embeddings = true;
  if (c.tied_embeddings) ck.tensors.erase("lm_head.weight");

  if (file_exists(dir + "/tokenizer.json"))
    ck.tokenizer_path = dir + "/tokenizer.json";
  else if (file_exists(dir + "/tokenizer.model"))
    ck.tokenizer_path = dir + "/tokenizer.model";
  return ck;
}

}  // namespace cpuchat
