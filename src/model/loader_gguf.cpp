// GGUF (v2/v3) files of the llama architecture with float tensors (F32, F16, BF16) or
// quantized ones (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K: decoded by gguf_quant.cpp
// to fp32; Q4_K tensors also keep their blocks for an exact q4k repack), and the tokenizer
// they embed. Layout: magic "GGUF", version, tensor and key/value
// counts, the key/values, the tensor infos, then aligned tensor data we view via mmap.
#include <stdexcept>
#include <variant>

#include <spdlog/spdlog.h>

#include "model/checkpoint.h"
#include "model/gguf_quant.h"

namespace cpuchat {

namespace {

enum GgufType : uint32_t {
  U8 = 0, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64
};

// A value from the key/value section; arrays keep their elements.
struct GgufValue {
  std::variant<int64_t, uint64_t, double, bool, std::string> scalar;
  std::vector<GgufValue> array;
  bool is_array = false;
};

class GgufReader {
 public:
  GgufReader(const MappedFile& f) : f_(f) {}
  size_t pos = 0;

  template <typename T>
  T read() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, f_.data() + pos, sizeof(T));
    pos += sizeof(T);
    return v;
  }
  std::string read_string() {
    const uint64_t n = read<uint64_t>();
    need(n);
    std::string s(reinterpret_cast<const char*>(f_.data() + pos), n);
    pos += n;
    return s;
  }
  GgufValue read_value(uint32_t type, int depth = 0) {
    GgufValue v;
    switch (type) {
      case U8: v.scalar = uint64_t(read<uint8_t>()); break;
      case I8: v.scalar = int64_t(read<int8_t>()); break;
      case U16: v.scalar = uint64_t(read<uint16_t>()); break;
      case I16: v.scalar = int64_t(read<int16_t>()); break;
      case U32: v.scalar = uint64_t(read<uint32_t>()); break;
      case I32: v.scalar = int64_t(read<int32_t>()); break;
      case F32: v.scalar = double(read<float>()); break;
      case BOOL: v.scalar = read<uint8_t>() != 0; break;
      case STRING: v.scalar = read_string(); break;
      case U64: v.scalar = read<uint64_t>(); break;
      case I64: v.scalar = read<int64_t>(); break;
      case F64: v.scalar = read<double>(); break;
      case ARRAY: {
        if (depth > 2) fail("nested arrays too deep");
        const uint32_t elem = read<uint32_t>();
        const uint64_t n = read<uint64_t>();
        if (n > f_.size() - pos) fail("truncated GGUF file (an array runs past the end)");
        v.is_array = true;
        v.array.reserve(n);
        for (uint64_t i = 0; i < n; ++i) v.array.push_back(read_value(elem, depth + 1));
        break;
      }
      default: fail("unknown metadata value type " + std::to_string(type));
    }
    return v;
  }
  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error(f_.path() + ": " + what);
  }

 private:
  void need(uint64_t n) const {
    if (n > f_.size() - pos) fail("truncated GGUF file (a header field runs past the end)");
  }
  const MappedFile& f_;
};

double as_number(const GgufValue& v) {
  if (auto p = std::get_if<int64_t>(&v.scalar)) return double(*p);
  if (auto p = std::get_if<uint64_t>(&v.scalar)) return double(*p);
  if (auto p = std::get_if<double>(&v.scalar)) return *p;
  if (auto p = std::get_if<bool>(&v.scalar)) return *p;
  throw std::runtime_error("not a number");
}

// For every Q4_K tensor, tells the int4 packer where its blocks are (and, for q/k, which block
// row each reordered row came from), so q4k can repack it without a float round trip.
template <typename Infos>
void register_exact_q4k_sources(Checkpoint& ck, const Infos& infos, const TensorNaming& names, const std::shared_ptr<MappedFile>& mf, uint64_t data_start) {
  const ModelConfig& c = ck.config;
  std::map<std::string, std::pair<std::string, int>> hf_of = {{names.embed, {"model.embed_tokens.weight", 0}},
                                                             {names.head, {"lm_head.weight", 0}}};
  for (int l = 0; l < c.n_layers; ++l)
    for (int i = 0; i < 9; ++i)
      hf_of[names.layer_prefix + std::to_string(l) + "." + names.layer[i]] = {
          layer_tensor(l, kLayerTensorSuffixes[i]), i == 2 ? c.n_heads : i == 3 ? c.n_kv_heads : 0};
  for (const auto& info : infos) {
    auto it = hf_of.find(info.name);
    if (info.ggml_type != gguf::kQ4_K || it == hf_of.end() || !ck.tensors.count(it->second.first)) continue;
    const torch::Tensor& w = ck.tensors.at(it->second.first);
    if (w.dim() != 2) continue;
    gguf::ExactQ4kSource src{mf, mf->data() + data_start + info.offset, w.size(0), w.size(1), {}};
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
  GgufReader r(*mf);
  if (mf->size() < 4 || std::memcmp(mf->data(), "GGUF", 4) != 0) r.fail("not a GGUF file (wrong magic)");
  r.pos = 4;
  const uint32_t version = r.read<uint32_t>();
  if (version != 2 && version != 3) r.fail("unsupported GGUF version " + std::to_string(version) + " (supported: 2, 3)");
  const uint64_t n_tensors = r.read<uint64_t>();
  const uint64_t n_kv = r.read<uint64_t>();
  if (n_tensors > (1u << 20) || n_kv > (1u << 20)) r.fail("implausible tensor or key count (corrupt header)");

  std::map<std::string, GgufValue> kv;
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = r.read_string();
    const uint32_t type = r.read<uint32_t>();
    kv[key] = r.read_value(type);
  }
  auto num = [&](const std::string& key, std::optional<double> fallback = std::nullopt) -> double {
    auto it = kv.find(key);
    if (it == kv.end()) {
      if (fallback) return *fallback;
      r.fail("missing metadata key " + key);
    }
    try {
      return as_number(it->second);
    } catch (...) {
      r.fail("metadata key " + key + " is not a number");
    }
  };
  auto str = [&](const std::string& key) -> std::string {
    auto it = kv.find(key);
    if (it == kv.end()) return "";
    auto p = std::get_if<std::string>(&it->second.scalar);
    return p ? *p : "";
  };
  const std::string arch = str("general.architecture");
  if (arch != "llama") r.fail("unsupported architecture \"" + arch + "\" (supported: llama)");

  ModelConfig& c = ck.config;
  c.dim = int(num("llama.embedding_length"));
  c.hidden_dim = int(num("llama.feed_forward_length"));
  c.n_layers = int(num("llama.block_count"));
  c.n_heads = int(num("llama.attention.head_count"));
  c.n_kv_heads = int(num("llama.attention.head_count_kv", c.n_heads));
  c.head_dim = c.n_heads > 0 ? int(num("llama.attention.key_length", c.dim / c.n_heads)) : 0;
  c.max_position = int(num("llama.context_length", 2048));
  c.norm_eps = num("llama.attention.layer_norm_rms_epsilon", 1e-5);
  c.rope_theta = num("llama.rope.freq_base", 10000.0);
  if (str("llama.rope.scaling.type") == "llama3" || kv.count("llama.rope.scaling.factor")) {
    // GGUF stores llama3 scaling as precomputed rope_freqs; the factors come along as keys.
    c.rope_scaling.enabled = num("llama.rope.scaling.factor", 1.0) != 1.0;
    c.rope_scaling.factor = num("llama.rope.scaling.factor", 8.0);
    c.rope_scaling.low_freq_factor = num("llama.rope.scaling.low_freq_factor", 1.0);
    c.rope_scaling.high_freq_factor = num("llama.rope.scaling.high_freq_factor", 4.0);
    c.rope_scaling.original_max_position = int(num("llama.rope.scaling.original_context_length", 8192));
  }

  // Tensor infos.
  struct Info { std::string name; std::vector<int64_t> shape; torch::ScalarType dtype; uint64_t offset; uint32_t ggml_type; };
  std::vector<Info> infos;
  std::map<std::string, int> type_counts;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    Info info;
    info.name = r.read_string();
    const uint32_t n_dims = r.read<uint32_t>();
    if (n_dims == 0 || n_dims > 4) r.fail("tensor " + info.name + " has " + std::to_string(n_dims) + " dimensions");
    std::vector<int64_t> ne(n_dims);
    for (auto& d : ne) {
      d = int64_t(r.read<uint64_t>());
      if (d <= 0 || d > (int64_t(1) << 32)) r.fail("tensor " + info.name + " has an implausible dimension");
    }
    info.shape.assign(ne.rbegin(), ne.rend());  // GGUF lists the fastest-varying dimension first
    const uint32_t type = r.read<uint32_t>();
    info.ggml_type = type;
    if (gguf::quant_type(type) != nullptr) type_counts[gguf::quant_type(type)->name]++;
    switch (type) {
      case 0: info.dtype = torch::kFloat32; break;
      case 1: info.dtype = torch::kFloat16; break;
      case 30: info.dtype = torch::kBFloat16; break;
      default:
        if (gguf::quant_type(type) == nullptr)
          r.fail("tensor " + info.name + " has unsupported ggml type " + std::to_string(type) +
                 " (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)");
        info.dtype = torch::kFloat32;  // decoded to fp32 below
    }
    info.offset = r.read<uint64_t>();
    infos.push_back(info);
  }
  const uint64_t alignment = uint64_t(num("general.alignment", 32));
  if (alignment == 0 || (alignment & (alignment - 1))) r.fail("general.alignment is not a power of two");
  const uint64_t data_start = (r.pos + alignment - 1) / alignment * alignment;

  std::map<std::string, torch::Tensor> raw;
  for (const auto& info : infos) {
    int64_t numel = 1;
    for (int64_t d : info.shape) numel *= d;
    const bool quantized = gguf::quant_type(info.ggml_type) != nullptr;
    const int64_t row = info.shape.back();
    uint64_t nbytes = uint64_t(numel) * c10::elementSize(info.dtype);
    if (quantized) {
      try {
        nbytes = gguf::quantized_bytes(info.ggml_type, numel / row, row, info.name);
      } catch (const std::exception& e) {
        r.fail(e.what());
      }
    }
    if (data_start + info.offset + nbytes > mf->size())
      r.fail("tensor " + info.name + " lies past the end of the file (truncated?)");
    void* p = const_cast<uint8_t*>(mf->data() + data_start + info.offset);
    if (quantized) {
      raw[info.name] = gguf::dequantize(info.ggml_type, static_cast<const uint8_t*>(p), numel / row, row).view(info.shape);
    } else {
      raw[info.name] = torch::from_blob(p, info.shape, info.dtype);
    }
  }
  ck.files.push_back(mf);

  static const TensorNaming kGgufNames = {
      "token_embd.weight", "output_norm.weight", "output.weight", "blk.",
      {"attn_norm.weight", "ffn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
       "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"}};
  adopt_tensors(raw, kGgufNames, file, ck);
  auto vocab_it = kv.find("tokenizer.ggml.tokens");
  c.vocab_size = vocab_it != kv.end() && vocab_it->second.is_array ? int(vocab_it->second.array.size())
                                                                     : int(num("llama.vocab_size", 0));
  if (ck.tensors.count("model.embed_tokens.weight") && c.vocab_size == 0)
    c.vocab_size = int(ck.tensors["model.embed_tokens.weight"].size(0));
  ck.validate();
  reorder_qk_to_rotate_half(ck);  // llama.cpp's converter stores q/k in interleaved-pair order
  if (!type_counts.empty()) {
    register_exact_q4k_sources(ck, infos, kGgufNames, mf, data_start);
    std::string counts;
    for (const auto& [name, count] : type_counts) counts += " " + name + " x" + std::to_string(count);
    spdlog::info("{}: quantized tensors:{} decoded to fp32 (the int4 backend requantizes them to its scheme; "
                 "Q4_K with --quant q4k is repacked exactly, without the float round trip)",
                 file, counts);
  }

  // The embedded tokenizer.
  c.bos_id = int(num("tokenizer.ggml.bos_token_id", -1));
  const int eos = int(num("tokenizer.ggml.eos_token_id", -1));
  if (eos >= 0) c.eos_ids = {eos};
  if (vocab_it != kv.end() && vocab_it->second.is_array) {
    std::vector<std::string> tokens;
    for (const auto& t : vocab_it->second.array) tokens.push_back(std::get<std::string>(t.scalar));
    std::vector<int> types;
    if (kv.count("tokenizer.ggml.token_type"))
      for (const auto& t : kv["tokenizer.ggml.token_type"].array) types.push_back(int(as_number(t)));
    const std::string model = str("tokenizer.ggml.model");
    if (model == "llama") {
      std::vector<float> scores;
      if (kv.count("tokenizer.ggml.scores"))
        for (const auto& s : kv["tokenizer.ggml.scores"].array) scores.push_back(float(as_number(s)));
      ck.embedded_tokenizer = make_score_bpe_tokenizer(std::move(tokens), std::move(scores), std::move(types), c.bos_id, eos);
    } else if (model == "gpt2") {
      std::vector<std::string> merges;
      if (kv.count("tokenizer.ggml.merges"))
        for (const auto& m : kv["tokenizer.ggml.merges"].array) merges.push_back(std::get<std::string>(m.scalar));
      ck.embedded_tokenizer = make_byte_bpe_tokenizer(std::move(tokens), std::move(merges), std::move(types));
    } else {
      r.fail("unsupported embedded tokenizer model \"" + model + "\" (supported: llama, gpt2)");
    }
  }
  return ck;
}

}  // namespace cpuchat
