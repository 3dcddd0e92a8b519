// GGUF (v2/v3) files of the llama architecture with float tensors (F32, F16, BF16) or
// quantized ones (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K: decoded to fp32 by
// gguf_quant.cpp; Q4_K tensors also keep their blocks for an exact q4k repack), and the
// tokenizer they embed. The header is parsed (and every tensor range checked) by parse_gguf;
// here float tensors become views into the mmap.
#include <spdlog/spdlog.h>

#include <stdexcept>

#include "model/checkpoint.h"
#include "model/gguf_file.h"
#include "model/gguf_quant.h"

namespace cpuchat {

namespace {

[[noreturn]] void fail(const std::string& file, const std::string& what) { throw std::runtime_error(file + ": " + what); }

// For every Q4_K tensor, tells the int4 packer where its blocks are (and, for q/k, which block
// row each reordered row came from), so q4k can repack it without a float round trip.
void register_exact_q4k_sources(Checkpoint& ck, const GgufFile& g, const TensorNaming& names,
                                const std::shared_ptr<MappedFile>& mf) {
  const ModelConfig& c = ck.config;
  std::map<std::string, std::pair<std::string, int>> hf_of = {{names.embed, {"model.embed_tokens.weight", 0}},
                                                             {names.head, {"lm_head.weight", 0}}};
  for (int l = 0; l < c.n_layers; ++l)
    for (int i = 0; i < 9; ++i)
      hf_of[names.layer_prefix + std::to_string(l) + "." + names.layer[i]] = {
          layer_tensor(l, kLayerTensorSuffixes[i]), i == 2 ? c.n_heads : i == 3 ? c.n_kv_heads : 0};
  for (const GgufTensorInfo& t : g.tensors) {
    auto it = hf_of.find(t.name);
    if (t.type != gguf::kQ4_K || it == hf_of.end() || !ck.tensors.count(it->second.first)) continue;
    const torch::Tensor& w = ck.tensors.at(it->second.first);
    if (w.dim() != 2) continue;
    gguf::ExactQ4kSource src{mf, mf->data() + g.data_start + t.offset, w.size(0), w.size(1), {}};
    if (int heads = it->second.second; heads > 0) {  // rows were reordered like the weights
      torch::Tensor rows = torch::arange(w.size(0), torch::kFloat64).view({w.size(0), 1});
      torch::Tensor order = interleaved_to_rotate_half(rows, heads).view({-1}).to(torch::kInt64);
      src.source_row.assign(order.data_ptr<int64_t>(), order.data_ptr<int64_t>() + w.size(0));
    }
    gguf::register_exact_q4k(w, std::move(src));
  }
}

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
  std::map<std::string, int> quantized_counts;
  for (const GgufTensorInfo& t : g.tensors) {
    if (const gguf::QuantType* q = gguf::quant_type(t.type)) {  // decoded to fp32
      const int64_t row = t.shape.back(), rows = row > 0 ? int64_t(t.bytes / gguf::quantized_bytes(t.type, 1, row, t.name)) : 0;
      raw[t.name] = gguf::dequantize(t.type, mf->data() + g.data_start + t.offset, rows, row).view(t.shape);
      quantized_counts[q->name]++;
      continue;
    }
    torch::ScalarType dtype;
    switch (t.type) {
      case 0: dtype = torch::kFloat32; break;
      case 1: dtype = torch::kFloat16; break;
      case 30: dtype = torch::kBFloat16; break;
      default: fail(file, "tensor " + t.name + " has unsupported ggml type " + ggml_type_info(t.type)->name +
                    " (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)");
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
  if (!quantized_counts.empty()) {
    register_exact_q4k_sources(ck, g, kGgufNames, mf);
    std::string counts;
    for (const auto& [name, count] : quantized_counts) counts += " " + name + " x" + std::to_string(count);
    spdlog::info("{}: quantized tensors:{} decoded to fp32 (the int4 backend requantizes them to its scheme; "
                 "Q4_K with --quant q4k is repacked exactly, without the float round trip)",
                 file, counts);
  }

  // The embedded tokenizer.
  c.bos_id = integer("tokenizer.ggml.bos_token_id", -1);
  const int eos = integer("tokenizer.ggml.eos_token_id", -1);
  if (eos >= 0) c.eos_ids = {eos};
  ck.embedded_tokenizer = gguf_tokenizer(g, file, c.bos_id, eos);
  // The file's own chat template, when it has one, tells the family (the vocabulary alone
  // cannot tell a base model from a chat model): Llama 3 headers, or Llama 2's [INST].
  if (const std::string tmpl = str("tokenizer.chat_template"); ck.embedded_tokenizer && !tmpl.empty()) {
    Tokenizer& tok = *ck.embedded_tokenizer;
    if (tmpl.find("<|start_header_id|>") != std::string::npos && tok.special_id("<|start_header_id|>") &&
        tok.special_id("<|end_header_id|>") && tok.special_id("<|eot_id|>")) {
      tok.chat_format = ChatFormat::Llama3;
    } else if (tmpl.find("[INST]") != std::string::npos) {
      tok.chat_format = ChatFormat::Llama2;
    } else {
      tok.chat_format = ChatFormat::Plain;
      spdlog::warn("{}: tokenizer.chat_template is of no family we render (Llama 3, Llama 2): chats use the plain format",
                   file);
    }
  }
  return ck;
}

}  // namespace cpuchat
