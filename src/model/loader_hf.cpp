// Hugging Face checkpoints: config.json + model.safetensors (or sharded with
// model.safetensors.index.json). parse_safetensors checks each file's header; the tensor
// bytes are viewed through mmap.
#include <unistd.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>

#include "common/regular_file.h"
#include "model/checkpoint.h"
#include "model/json_fields.h"
#include "model/safetensors_file.h"

namespace cpuchat {

using nlohmann::json;

namespace {

json read_json_file(const std::string& path) {
  const std::string text = read_regular_file(path, 64u << 20);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw std::runtime_error(path + ": malformed JSON (" + std::string(e.what()) + ")");
  }
}

// Present at all (a FIFO or device under a known name is then refused with a clear error).
bool file_exists(const std::string& p) { return access(p.c_str(), F_OK) == 0; }

torch::ScalarType torch_dtype(const std::string& dtype) {
  if (dtype == "F32") return torch::kFloat32;
  if (dtype == "BF16") return torch::kBFloat16;
  return torch::kFloat16;  // parse_safetensors refuses any other
}

// Adds every tensor of one .safetensors file to `ck`, as views into its mmap.
void map_safetensors(const std::string& file, Checkpoint& ck) {
  auto mf = MappedFile::open(file);
  const SafetensorsFile st = parse_safetensors(mf->data(), mf->size(), file);
  for (const SafetensorsTensor& t : st.tensors) {
    if (ck.tensors.count(t.name)) throw std::runtime_error(file + ": tensor " + t.name + " is also in another shard");
    // from_blob never frees: the MappedFile in ck.files owns the memory.
    void* p = const_cast<uint8_t*>(mf->data() + st.data_start + t.begin);
    ck.tensors[t.name] = torch::from_blob(p, t.shape, torch::TensorOptions().dtype(torch_dtype(t.dtype)));
  }
  ck.files.push_back(std::move(mf));
}

void add_eos(const json& v, std::vector<int>& eos, const std::string& file) {
  auto add = [&](const json& e) {
    if (e.is_number_integer()) eos.push_back(config_int(e.get<double>(), file, "eos_token_id"));
  };
  add(v);
  if (v.is_array())
    for (auto& e : v) add(e);
}

}  // namespace

Checkpoint load_hf_checkpoint(const std::string& dir) {
  Checkpoint ck;
  ck.path = dir;
  ck.format = "hf";
  const std::string cfg_path = dir + "/config.json";
  const json cfg = read_json_file(cfg_path);
  if (!cfg.is_object()) throw std::runtime_error(cfg_path + ": not a JSON object");
  const JsonFields f(cfg, cfg_path);
  // Only Llama: another architecture's weights would load under Llama's names and answer garbage.
  const std::string model_type = f.string("model_type", "llama");
  if (model_type != "llama")
    throw std::runtime_error(cfg_path + ": model_type \"" + model_type + "\" is not supported (supported: llama)");
  if (f.has("architectures")) {
    const json& arch = cfg["architectures"];
    if (!arch.is_array() || std::find(arch.begin(), arch.end(), json("LlamaForCausalLM")) == arch.end())
      throw std::runtime_error(cfg_path + ": architectures " + arch.dump() + " is not supported (supported: LlamaForCausalLM)");
  }
  ModelConfig& c = ck.config;
  c.dim = f.integer("hidden_size");
  c.hidden_dim = f.integer("intermediate_size");
  c.n_layers = f.integer("num_hidden_layers");
  c.n_heads = f.integer("num_attention_heads");
  c.n_kv_heads = f.integer("num_key_value_heads", c.n_heads);
  c.head_dim = f.integer("head_dim", c.n_heads > 0 ? c.dim / c.n_heads : 0);
  c.vocab_size = f.integer("vocab_size");
  c.max_position = f.integer("max_position_embeddings", 2048);
  c.norm_eps = f.number("rms_norm_eps", 1e-5);
  c.rope_theta = f.number("rope_theta", 10000.0);
  c.tied_embeddings = f.boolean("tie_word_embeddings", false);
  if (f.has("rope_scaling")) {
    const json& rs = cfg["rope_scaling"];
    if (!rs.is_object()) throw std::runtime_error(cfg_path + ": \"rope_scaling\" must be an object or null");
    const JsonFields r(rs, cfg_path, "rope_scaling.");
    const std::string type = r.string("rope_type", r.string("type", ""));
    if (type == "llama3") {
      c.rope_scaling.enabled = true;
      c.rope_scaling.factor = r.number("factor", 8.0);
      c.rope_scaling.low_freq_factor = r.number("low_freq_factor", 1.0);
      c.rope_scaling.high_freq_factor = r.number("high_freq_factor", 4.0);
      c.rope_scaling.original_max_position = r.integer("original_max_position_embeddings", 8192);
    } else if (!type.empty() && type != "default") {
      throw std::runtime_error(cfg_path + ": unsupported rope_scaling type \"" + type + "\" (supported: llama3)");
    }
  }
  if (cfg.contains("bos_token_id") && cfg["bos_token_id"].is_number_integer()) c.bos_id = f.integer("bos_token_id");
  if (cfg.contains("eos_token_id")) add_eos(cfg["eos_token_id"], c.eos_ids, cfg_path);
  if (file_exists(dir + "/generation_config.json")) {
    const json gen = read_json_file(dir + "/generation_config.json");
    if (gen.is_object() && gen.contains("eos_token_id")) add_eos(gen["eos_token_id"], c.eos_ids, dir + "/generation_config.json");
  }
  std::sort(c.eos_ids.begin(), c.eos_ids.end());
  c.eos_ids.erase(std::unique(c.eos_ids.begin(), c.eos_ids.end()), c.eos_ids.end());
  validate_config(c, cfg_path);  // errors name config.json, before any weight is read

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
