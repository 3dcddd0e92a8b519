// Meta's original checkpoints: params.json + consolidated.NN.pth (torch.save zip) +
// tokenizer.model. The zip directory and the pickle are read with libtorch's own
// readers; tensor storages become views into an mmap of the .pth (torch.save stores
// them uncompressed and aligned), so nothing is copied.
#include <caffe2/serialize/inline_container.h>
#include <dirent.h>
#include <unistd.h>
#include <torch/csrc/jit/serialization/unpickler.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "common/checked_math.h"
#include "common/regular_file.h"
#include "model/checkpoint.h"
#include "model/json_fields.h"

namespace cpuchat {

using nlohmann::json;

namespace {

std::vector<std::string> consolidated_files(const std::string& dir) {
  std::vector<std::string> out;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      std::string n = e->d_name;
      if (n.rfind("consolidated.", 0) == 0 && n.size() > 4 && n.compare(n.size() - 4, 4, ".pth") == 0)
        out.push_back(dir + "/" + n);
    }
    closedir(d);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Loads one .pth into (name -> tensor) with storages mapped, not read.
std::map<std::string, torch::Tensor> read_pth(const std::string& file, std::shared_ptr<MappedFile> mf) {
  std::map<std::string, torch::Tensor> out;
  try {
    caffe2::serialize::PyTorchStreamReader reader(file);
    if (!reader.hasRecord("data.pkl")) throw std::runtime_error(file + ": no data.pkl in the archive (not a torch.save file)");
    auto [pickle, pickle_size] = reader.getRecord("data.pkl");
    const char* pickle_bytes = static_cast<const char*>(pickle.get());
    size_t read_pos = 0;
    auto read = [&](char* buf, size_t n) {
      n = std::min(n, pickle_size - read_pos);
      std::memcpy(buf, pickle_bytes + read_pos, n);
      read_pos += n;
      return n;
    };
    // Storages are looked up by key; we hand back pointers into the mmap and check bounds below.
    std::map<const void*, std::string> storage_record;
    auto read_record = [&](const std::string& key) -> at::DataPtr {
      const std::string record = "data/" + key;
      if (!reader.hasRecord(record)) throw std::runtime_error(file + ": missing storage record " + record);
      const size_t offset = reader.getRecordOffset(record);
      if (offset > mf->size()) throw std::runtime_error(file + ": storage " + record + " lies past the end of the file");
      void* p = const_cast<uint8_t*>(mf->data() + offset);
      storage_record[p] = record;
      return at::DataPtr(p, p, [](void*) {}, at::kCPU);
    };
    auto resolve_type = [](const c10::QualifiedName&) { return c10::StrongTypePtr(nullptr, c10::AnyType::get()); };
    torch::jit::Unpickler unpickler(read, resolve_type, nullptr, read_record, c10::nullopt);
    c10::IValue root = unpickler.parse_ivalue();
    if (!root.isGenericDict()) throw std::runtime_error(file + ": the pickle is not a dict of tensors");
    for (const auto& kv : root.toGenericDict()) {
      if (!kv.key().isString() || !kv.value().isTensor()) continue;
      torch::Tensor t = kv.value().toTensor();
      // The storage must lie inside the file: a truncated .pth fails here, not on first use.
      const auto* base = static_cast<const uint8_t*>(t.storage().data());
      if (base < mf->data() || !range_inside(uint64_t(base - mf->data()), t.storage().nbytes(), mf->size()))
        throw std::runtime_error(file + ": tensor " + kv.key().toStringRef() + " lies past the end of the file (truncated?)");
      out[kv.key().toStringRef()] = t;
    }
  } catch (const c10::Error& e) {
    std::string msg = e.what_without_backtrace();
    msg = msg.substr(0, msg.find('\n'));
    throw std::runtime_error(file + ": cannot read torch archive (" + msg + ")");
  }
  return out;
}

// Meta's FFN size: 2/3 of 4*dim, scaled, rounded up to a multiple.
int meta_ffn_dim(int dim, int multiple_of, double multiplier) {
  double hidden = double(2 * (4 * int64_t(dim)) / 3);
  if (multiplier > 0) hidden = std::floor(multiplier * hidden);
  if (!(hidden < double(1 << 30))) return -1;  // validate_config reports it as hidden_dim
  const int64_t h = int64_t(hidden);
  return int(multiple_of * ((h + multiple_of - 1) / multiple_of));
}

}  // namespace

Checkpoint load_meta_checkpoint(const std::string& dir) {
  Checkpoint ck;
  ck.path = dir;
  ck.format = "meta";
  const std::string params_path = dir + "/params.json";
  json p;
  try {
    p = json::parse(read_regular_file(params_path, 1u << 20));
  } catch (const json::exception& e) {
    throw std::runtime_error(params_path + ": malformed JSON (" + std::string(e.what()) + ")");
  }
  if (!p.is_object()) throw std::runtime_error(params_path + ": not a JSON object");
  const JsonFields f(p, params_path);
  ModelConfig& c = ck.config;
  c.dim = f.integer("dim");
  c.n_layers = f.integer("n_layers");
  c.n_heads = f.integer("n_heads");
  c.n_kv_heads = f.integer("n_kv_heads", c.n_heads);
  c.vocab_size = f.integer("vocab_size");
  c.norm_eps = f.number("norm_eps", 1e-5);
  c.rope_theta = f.number("rope_theta", 10000.0);
  const int multiple_of = f.integer("multiple_of", 256);
  if (multiple_of <= 0 || multiple_of > (1 << 16))
    throw std::runtime_error(params_path + ": multiple_of is " + std::to_string(multiple_of) + " (must be between 1 and 65536)");
  if (c.dim <= 0 || c.dim > (1 << 17))
    throw std::runtime_error(params_path + ": dim is " + std::to_string(c.dim) + " (must be between 1 and 131072)");
  c.hidden_dim = meta_ffn_dim(c.dim, multiple_of, f.number("ffn_dim_multiplier", 0.0));
  c.head_dim = c.n_heads > 0 ? c.dim / c.n_heads : 0;
  if (f.boolean("use_scaled_rope", false)) {  // Llama 3.1: Meta's apply_scaling constants
    c.rope_scaling = RopeScaling{true, 8.0, 1.0, 4.0, 8192};
    c.max_position = 131072;
  } else {
    c.max_position = 8192;
  }

  validate_config(c, params_path);  // errors name params.json, before any weight is read
  const auto files = consolidated_files(dir);
  if (files.empty()) throw std::runtime_error(dir + ": no consolidated.*.pth checkpoint");
  if (files.size() > 1)
    throw std::runtime_error(dir + ": " + std::to_string(files.size()) +
                             " model-parallel shards; merge them first (only single-file checkpoints are supported)");
  auto mf = MappedFile::open(files[0]);
  auto raw = read_pth(files[0], mf);
  ck.files.push_back(mf);

  static const TensorNaming kMetaNames = {
      "tok_embeddings.weight", "norm.weight", "output.weight", "layers.",
      {"attention_norm.weight", "ffn_norm.weight", "attention.wq.weight", "attention.wk.weight", "attention.wv.weight",
       "attention.wo.weight", "feed_forward.w1.weight", "feed_forward.w3.weight", "feed_forward.w2.weight"}};
  adopt_tensors(raw, kMetaNames, files[0], ck);
  // The FFN size comes from the formula; if the weights disagree, trust and report neither.
  const auto& gate = ck.tensors[layer_tensor(0, "mlp.gate_proj.weight")];
  if (gate.dim() == 2 && gate.size(0) != c.hidden_dim)
    throw std::runtime_error(params_path + ": FFN size from multiple_of/ffn_dim_multiplier is " +
                             std::to_string(c.hidden_dim) + " but w1 has " + std::to_string(gate.size(0)) + " rows");
  ck.validate();  // shapes first, then the q/k reorder that relies on them
  reorder_qk_to_rotate_half(ck);
  if (access((dir + "/tokenizer.model").c_str(), F_OK) == 0) ck.tokenizer_path = dir + "/tokenizer.model";
  // Llama 3 specials (Meta numbers them after the 128000 ranks); eos per Llama 3.1.
  if (c.vocab_size >= 128256) {
    c.bos_id = 128000;
    c.eos_ids = {128001, 128008, 128009};
  }
  return ck;
}

}  // namespace cpuchat
