// The GGUF (v2/v3) header, parsed without libtorch: magic, version, the key/values, the
// tensor infos, and where the aligned tensor data starts. Every size and offset is checked
// (overflow-safe) against the file, so a loader can view tensor data without re-checking.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "cpuchat/tokenizer.h"

namespace cpuchat {

enum GgufValueType : uint32_t { U8 = 0, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 };

// A value from the key/value section; arrays keep their elements.
struct GgufValue {
  std::variant<int64_t, uint64_t, double, bool, std::string> scalar;
  std::vector<GgufValue> array;
  bool is_array = false;
};

// ggml tensor types by number (ggml.h); block_elems elements take block_bytes bytes.
struct GgmlTypeInfo {
  const char* name;
  uint32_t block_elems, block_bytes;
};
std::optional<GgmlTypeInfo> ggml_type_info(uint32_t type);

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> shape;  // outermost dimension first (GGUF lists the innermost first)
  uint32_t type = 0;           // ggml type number
  uint64_t offset = 0;         // from data_start, a multiple of the alignment
  uint64_t bytes = 0;          // checked to lie inside the file
};

struct GgufFile {
  uint32_t version = 0;
  std::map<std::string, GgufValue> kv;
  std::vector<GgufTensorInfo> tensors;
  uint64_t alignment = 32;
  uint64_t data_start = 0;  // file offset of the tensor data
};

// Parses and checks the header of the GGUF file `name` held in [data, data + size): tensors
// of unknown type, unaligned, overlapping or past the end are refused. Throws
// std::runtime_error("NAME: ...") naming the field.
GgufFile parse_gguf(const uint8_t* data, size_t size, const std::string& name);

// Number access to the key/values: `fallback` when absent; throws naming the key when absent
// without a fallback or not a number.
double gguf_number(const GgufFile& g, const std::string& key, const std::string& name,
                   std::optional<double> fallback = std::nullopt);
std::string gguf_string(const GgufFile& g, const std::string& key);  // "" when absent or not a string

// The tokenizer the file embeds (tokenizer.ggml.*), or null when it has none. Throws naming
// the key when its arrays have the wrong types or the model is not llama/gpt2.
std::unique_ptr<Tokenizer> gguf_tokenizer(const GgufFile& g, const std::string& name, int bos_id, int eos_id);

}  // namespace cpuchat
