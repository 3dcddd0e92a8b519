// GGUF (v2/v3) files of the llama architecture with float tensors (F32, F16, BF16) or
// quantized ones (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K: deferred, decoded to fp32
// by gguf_quant.cpp one tensor at a time as the model takes it; Q4_K tensors pack into q4k
// from their blocks), and the tokenizer they embed. The header is parsed (and every tensor range checked) by parse_gguf;
// here float tensors become views into the mmap.
#include <spdlog/spdlog.h>

#include <stdexcept>

#include "model/checkpoint.h"
#include "model/gguf_file.h"
#include "model/gguf_quant.h"

namespace cpuchat {

namespace {

[[noreturn]] void fail(const std::string& file, const std::string& what) { throw std::runtime_error(file + ": " + what); }

// Row r of a q/k tensor reordered to rotate-half comes from row order[r] of the file.
std::vector<int64_t> rotate_half_row_order(int64_t rows, int heads) {
  torch::Tensor index = torch::arange(rows, torch::kFloat64).view({rows, 1});
  torch::Tensor order = interleaved_to_rotate_half(index, heads).view({-1}).to(torch::kInt64);
  return std::vector<int64_t>(order.data_ptr<int64_t>(), order.data_ptr<int64_t>() + rows);
}

// Every quantized tensor is deferred (Checkpoint::deferred): decoded to fp32 when the model
// takes it, the file's pages of its blocks dropped after; a Q4_K tensor packs into q4k from
// its own blocks without any float. q/k rows are reordered like the float ones.
void defer_quantized_tensors(Checkpoint& ck, const GgufFile& g, const TensorNaming& names,
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
    if (gguf::quant_type(t.type) == nullptr || it == hf_of.end() || !ck.tensors.count(it->second.first)) continue;
    const std::vector<int64_t> shape = ck.tensors.at(it->second.first).sizes().vec();
    const int64_t k = shape.back(), n = int64_t(t.bytes / gguf::quantized_bytes(t.type, 1, k, t.name));
    const int heads = it->second.second;
    const uint8_t* data = mf->data() + g.data_start + t.offset;
    const uint32_t type = t.type;
    const uint64_t bytes = t.bytes;
    auto exact_source = [=] {
      gguf::ExactQ4kSource src{mf, data, n, k, {}};
      if (heads > 0) src.source_row = rotate_half_row_order(n, heads);
      return src;
    };
    Checkpoint::Deferred d;
    d.decode = [=] {
      torch::Tensor w = gguf::dequantize(type, data, n, k).view(shape);
      if (heads > 0) w = interleaved_to_rotate_half(w, heads);
      // int4_pack with q4k still repacks these exact blocks (e.g. a tied embedding taken as floats).
      if (type == gguf::kQ4_K && w.dim() == 2) gguf::register_exact_q4k(w, exact_source());
      mf->release(data, bytes);
      return w;
    };
    if (type == gguf::kQ4_K && shape.size() == 2) {
      d.pack_q4k_exactly = [=] {
        torch::Tensor packed = gguf::pack_q4k_blob(exact_source());
        mf->release(data, bytes);
        return packed;
      };
    }
    ck.deferred[it->second.first] = std::move(d);
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
    if (const gguf::QuantType* q = gguf::quant_type(t.type)) {  // deferred: decoded when taken
      if (t.shape.back() > 0) gguf::quantized_bytes(t.type, 1, t.shape.back(), t.name);  // checks the row length now
      raw[t.name] = torch::empty(t.shape, torch::TensorOptions().dtype(torch::kFloat32).device(torch::kMeta));
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
    defer_quantized_tensors(ck, g, kGgufNames, mf);
    std::string counts;
    for (const auto& [name, count] : quantized_counts) counts += " " + name + " x" + std::to_string(count);
    spdlog::info("{}: quantized tensors:{} decoded to fp32 one at a time as the model takes them (the int4 "
                 "backend requantizes them to its scheme; Q4_K with --quant q4k is repacked exactly from its "
                 "blocks, never in float)",
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
