#include "model/gguf_file.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "common/checked_math.h"

namespace cpuchat {

namespace {

class Reader {
 public:
  Reader(const uint8_t* data, size_t size, const std::string& name) : data_(data), size_(size), name_(name) {}
  size_t pos = 0;

  template <typename T>
  T read() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, data_ + pos, sizeof(T));
    pos += sizeof(T);
    return v;
  }
  std::string read_string() {
    const uint64_t n = read<uint64_t>();
    need(n);
    std::string s(reinterpret_cast<const char*>(data_ + pos), n);
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
        // Every element takes at least one byte, so a count beyond the rest of the file is a lie.
        if (n > size_ - pos) fail("truncated GGUF file (an array runs past the end)");
        v.is_array = true;
        v.array.reserve(n);
        for (uint64_t i = 0; i < n; ++i) v.array.push_back(read_value(elem, depth + 1));
        break;
      }
      default: fail("unknown metadata value type " + std::to_string(type));
    }
    return v;
  }
  [[noreturn]] void fail(const std::string& what) const { throw std::runtime_error(name_ + ": " + what); }

 private:
  void need(uint64_t n) const {
    if (n > size_ - pos) fail("truncated GGUF file (a header field runs past the end)");
  }
  const uint8_t* data_;
  size_t size_;
  const std::string& name_;
};

double as_number(const GgufValue& v) {
  if (v.is_array) throw std::runtime_error("an array");
  if (auto p = std::get_if<int64_t>(&v.scalar)) return double(*p);
  if (auto p = std::get_if<uint64_t>(&v.scalar)) return double(*p);
  if (auto p = std::get_if<double>(&v.scalar)) return *p;
  if (auto p = std::get_if<bool>(&v.scalar)) return *p;
  throw std::runtime_error("not a number");
}

}  // namespace

std::optional<GgmlTypeInfo> ggml_type_info(uint32_t type) {
  switch (type) {  // ggml.h's type numbers and block layouts
    case 0: return GgmlTypeInfo{"F32", 1, 4};
    case 1: return GgmlTypeInfo{"F16", 1, 2};
    case 2: return GgmlTypeInfo{"Q4_0", 32, 18};
    case 3: return GgmlTypeInfo{"Q4_1", 32, 20};
    case 6: return GgmlTypeInfo{"Q5_0", 32, 22};
    case 7: return GgmlTypeInfo{"Q5_1", 32, 24};
    case 8: return GgmlTypeInfo{"Q8_0", 32, 34};
    case 9: return GgmlTypeInfo{"Q8_1", 32, 36};
    case 10: return GgmlTypeInfo{"Q2_K", 256, 84};
    case 11: return GgmlTypeInfo{"Q3_K", 256, 110};
    case 12: return GgmlTypeInfo{"Q4_K", 256, 144};
    case 13: return GgmlTypeInfo{"Q5_K", 256, 176};
    case 14: return GgmlTypeInfo{"Q6_K", 256, 210};
    case 15: return GgmlTypeInfo{"Q8_K", 256, 292};
    case 24: return GgmlTypeInfo{"I8", 1, 1};
    case 25: return GgmlTypeInfo{"I16", 1, 2};
    case 26: return GgmlTypeInfo{"I32", 1, 4};
    case 27: return GgmlTypeInfo{"I64", 1, 8};
    case 28: return GgmlTypeInfo{"F64", 1, 8};
    case 30: return GgmlTypeInfo{"BF16", 1, 2};
    default: return std::nullopt;
  }
}

GgufFile parse_gguf(const uint8_t* data, size_t size, const std::string& name) {
  GgufFile g;
  Reader r(data, size, name);
  if (size < 4 || std::memcmp(data, "GGUF", 4) != 0) r.fail("not a GGUF file (wrong magic)");
  r.pos = 4;
  g.version = r.read<uint32_t>();
  if (g.version != 2 && g.version != 3)
    r.fail("unsupported GGUF version " + std::to_string(g.version) + " (supported: 2, 3)");
  const uint64_t n_tensors = r.read<uint64_t>();
  const uint64_t n_kv = r.read<uint64_t>();
  if (n_tensors > (1u << 20) || n_kv > (1u << 20)) r.fail("implausible tensor or key count (corrupt header)");

  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = r.read_string();
    const uint32_t type = r.read<uint32_t>();
    g.kv[key] = r.read_value(type);
  }

  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    t.name = r.read_string();
    const uint32_t n_dims = r.read<uint32_t>();
    if (n_dims == 0 || n_dims > 4) r.fail("tensor " + t.name + " has " + std::to_string(n_dims) + " dimensions");
    std::vector<int64_t> ne(n_dims);
    for (auto& d : ne) {
      const uint64_t v = r.read<uint64_t>();
      if (v == 0 || v > (uint64_t(1) << 32)) r.fail("tensor " + t.name + " has an implausible dimension");
      d = int64_t(v);
    }
    t.shape.assign(ne.rbegin(), ne.rend());
    t.type = r.read<uint32_t>();
    t.offset = r.read<uint64_t>();
    const auto type = ggml_type_info(t.type);
    if (!type) r.fail("tensor " + t.name + " has unknown ggml type " + std::to_string(t.type));
    if (ne[0] % type->block_elems != 0)
      r.fail("tensor " + t.name + " has a row of " + std::to_string(ne[0]) + " elements, not a multiple of the " +
             type->name + " block of " + std::to_string(type->block_elems));
    std::optional<uint64_t> bytes = uint64_t(ne[0]) / type->block_elems * type->block_bytes;
    for (size_t d = 1; d < ne.size() && bytes; ++d) bytes = checked_mul(*bytes, uint64_t(ne[d]));
    if (!bytes) r.fail("tensor " + t.name + " is too large (its size overflows)");
    t.bytes = *bytes;
    g.tensors.push_back(std::move(t));
  }

  if (auto it = g.kv.find("general.alignment"); it != g.kv.end()) {
    double a = 0;
    try {
      a = as_number(it->second);
    } catch (const std::exception&) {
      r.fail("general.alignment is not a number");
    }
    if (!(a >= 1 && a <= 65536)) r.fail("general.alignment " + std::to_string(a) + " is not a power of two up to 65536");
    g.alignment = uint64_t(a);
  }
  if (g.alignment & (g.alignment - 1)) r.fail("general.alignment " + std::to_string(g.alignment) + " is not a power of two");
  g.data_start = (r.pos + g.alignment - 1) / g.alignment * g.alignment;

  // Tensor data: aligned as the format requires, inside the file, and not overlapping.
  const uint64_t data_bytes = g.data_start <= size ? size - g.data_start : 0;
  for (const auto& t : g.tensors) {
    if (t.offset % g.alignment != 0)
      r.fail("tensor " + t.name + " has offset " + std::to_string(t.offset) + ", not a multiple of the alignment " +
             std::to_string(g.alignment));
    if (!range_inside(t.offset, t.bytes, data_bytes))
      r.fail("tensor " + t.name + " lies past the end of the file (truncated?)");
  }
  std::vector<const GgufTensorInfo*> by_offset;
  for (const auto& t : g.tensors) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i)
    if (by_offset[i - 1]->offset + by_offset[i - 1]->bytes > by_offset[i]->offset)
      r.fail("tensors " + by_offset[i - 1]->name + " and " + by_offset[i]->name + " overlap");
  return g;
}

double gguf_number(const GgufFile& g, const std::string& key, const std::string& name, std::optional<double> fallback) {
  auto it = g.kv.find(key);
  if (it == g.kv.end()) {
    if (fallback) return *fallback;
    throw std::runtime_error(name + ": missing metadata key " + key);
  }
  try {
    return as_number(it->second);
  } catch (const std::exception&) {
    throw std::runtime_error(name + ": metadata key " + key + " is not a number");
  }
}

std::string gguf_string(const GgufFile& g, const std::string& key) {
  auto it = g.kv.find(key);
  if (it == g.kv.end() || it->second.is_array) return "";
  auto p = std::get_if<std::string>(&it->second.scalar);
  return p ? *p : "";
}

namespace {

const std::vector<GgufValue>* array_of(const GgufFile& g, const std::string& key, const std::string& name) {
  auto it = g.kv.find(key);
  if (it == g.kv.end()) return nullptr;
  if (!it->second.is_array) throw std::runtime_error(name + ": metadata key " + key + " is not an array");
  return &it->second.array;
}

std::vector<std::string> strings_of(const GgufFile& g, const std::string& key, const std::string& name) {
  std::vector<std::string> out;
  if (auto a = array_of(g, key, name))
    for (const auto& v : *a) {
      auto s = std::get_if<std::string>(&v.scalar);
      if (!s || v.is_array) throw std::runtime_error(name + ": metadata key " + key + " is not an array of strings");
      out.push_back(*s);
    }
  return out;
}

template <typename T>
std::vector<T> numbers_of(const GgufFile& g, const std::string& key, const std::string& name) {
  std::vector<T> out;
  if (auto a = array_of(g, key, name))
    for (const auto& v : *a) {
      try {
        out.push_back(T(as_number(v)));
      } catch (const std::exception&) {
        throw std::runtime_error(name + ": metadata key " + key + " is not an array of numbers");
      }
    }
  return out;
}

}  // namespace

std::unique_ptr<Tokenizer> gguf_tokenizer(const GgufFile& g, const std::string& name, int bos_id, int eos_id) {
  if (!array_of(g, "tokenizer.ggml.tokens", name)) return nullptr;
  std::vector<std::string> tokens = strings_of(g, "tokenizer.ggml.tokens", name);
  std::vector<int> types;
  for (double t : numbers_of<double>(g, "tokenizer.ggml.token_type", name))
    types.push_back(t >= -1e9 && t <= 1e9 ? int(t) : 0);
  const std::string model = gguf_string(g, "tokenizer.ggml.model");
  if (model == "llama")
    return make_score_bpe_tokenizer(std::move(tokens), numbers_of<float>(g, "tokenizer.ggml.scores", name),
                                    std::move(types), bos_id, eos_id);
  if (model == "gpt2")
    return make_byte_bpe_tokenizer(std::move(tokens), strings_of(g, "tokenizer.ggml.merges", name), std::move(types));
  throw std::runtime_error(name + ": unsupported embedded tokenizer model \"" + model + "\" (supported: llama, gpt2)");
}

}  // namespace cpuchat
