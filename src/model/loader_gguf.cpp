// GGUF (v2/v3) files with float tensors (F32, F16, BF16) of the llama architecture,
// and the tokenizer they embed. The header is parsed (and every tensor range checked) by
// parse_gguf; here tensors become views into the mmap.
#include <stdexcept>

#include "model/checkpoint.h"
#include "model/gguf_file.h"

namespace cpuchat {

namespace {

[[noreturn]] void fail(const std::string& file, const std::string& what) { throw std::runtime_error(file + ": " + what); }

}  // namespace

Checkpoint load_gguf_checkpoint(const std::string& file) {
  Checkpoint ck;
  ck.path = file;
  ck.format = "gguf";
  auto mf = MappedFile::open(file);
  const GgufFile g = parse_gguf(mf->data(), mf->size(), file);
  auto num = [&](const std::string& key, std::optional<double> fallback = std::nullopt) {
    return gguf_number(g, key, file, fallback);
  };
  auto integer = [&](const char* key, std::optional<double> fallback = std::nullopt) {
    return config_int(num(key, fallback), file, key);
  };
  auto str = [&](const std::string& key) { return gguf_string(g, key); };
  const auto& kv = g.kv;
  const std::string arch = str("general.architecture");
  if (arch != "llama") fail(file, "unsupported architecture \"" + arch + "\" (supported: llama)");

  ModelConfig& c = ck.config;
  c.dim = integer("llama.embedding_length");
  c.hidden_dim = integer("llama.feed_forward_length");
  c.n_layers = integer("llama.block_count");
  c.n_heads = integer("llama.attention.head_count");
  c.n_kv_heads = integer("llama.attention.head_count_kv", c.n_heads);
  c.head_dim = c.n_heads > 0 ? integer("llama.attention.key_length", c.dim / c.n_heads) : 0;
  c.max_position = integer("llama.context_length", 2048);
  c.norm_eps = num("llama.attention.layer_norm_rms_epsilon", 1e-5);
  c.rope_theta = num("llama.rope.freq_base", 10000.0);
  if (str("llama.rope.scaling.type") == "llama3" || kv.count("llama.rope.scaling.factor")) {
    // GGUF stores llama3 scaling as precomputed rope_freqs; the factors come along as keys.
    c.rope_scaling.enabled = num("llama.rope.scaling.factor", 1.0) != 1.0;
    c.rope_scaling.factor = num("llama.rope.scaling.factor", 8.0);
    c.rope_scaling.low_freq_factor = num("llama.rope.scaling.low_freq_factor", 1.0);
    c.rope_scaling.high_freq_factor = num("llama.rope.scaling.high_freq_factor", 4.0);
    c.rope_scaling.original_max_position = integer("llama.rope.scaling.original_context_length", 8192);
  }

  std::map<std::string, torch::Tensor> raw;
  for (const GgufTensorInfo& t : g.tensors) {
    torch::ScalarType dtype;
    switch (t.type) {
      case 0: dtype = torch::kFloat32; break;
      case 1: dtype = torch::kFloat16; break;
      case 30: dtype = torch::kBFloat16; break;
      default: fail(file, "tensor " + t.name + " has unsupported ggml type " + ggml_type_info(t.type)->name +
                    " (supported: F32, F16, BF16; quantized GGUF files are not)");
    }
    void* p = const_cast<uint8_t*>(mf->data() + g.data_start + t.offset);
    raw[t.name] = torch::from_blob(p, t.shape, dtype);
  }
  ck.files.push_back(mf);

  static const TensorNaming kGgufNames = {
      "token_embd.weight", "output_norm.weight", "output.weight", "blk.",
      {"attn_norm.weight", "ffn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
       "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"}};
  adopt_tensors(raw, kGgufNames, file, ck);
  auto vocab_it = kv.find("tokenizer.ggml.tokens");
  c.vocab_size = vocab_it != kv.end() && vocab_it->second.is_array ? int(vocab_it->second.array.size())
                                                                     : integer("llama.vocab_size", 0);
  if (ck.tensors.count("model.embed_tokens.weight") && c.vocab_size == 0)
    c.vocab_size = int(ck.tensors["model.embed_tokens.weight"].size(0));
  ck.validate();
  reorder_qk_to_rotate_half(ck);  // llama.cpp's converter stores q/k in interleaved-pair order

  // The embedded tokenizer.
  c.bos_id = integer("tokenizer.ggml.bos_token_id", -1);
  const int eos = integer("tokenizer.ggml.eos_token_id", -1);
  if (eos >= 0) c.eos_ids = {eos};
  ck.embedded_tokenizer = gguf_tokenizer(g, file, c.bos_id, eos);
  return ck;
}

}  // namespace cpuchat
