// The safetensors header, parsed without libtorch: an 8-byte little-endian length, a JSON
// object of tensors {dtype, shape, data_offsets}, then the raw tensor bytes. Every range is
// checked (overflow-safe) against the file, against its shape, for the element alignment,
// and against the other tensors, so a loader can view tensor data without re-checking.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace cpuchat {

struct SafetensorsTensor {
  std::string name;
  std::string dtype;  // "F32", "BF16", "F16" (others are refused)
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte range from data_start
};

struct SafetensorsFile {
  uint64_t data_start = 0;  // 8 + header length
  std::vector<SafetensorsTensor> tensors;
};

// Bytes per element of the dtypes we load, 0 for any other.
size_t safetensors_dtype_bytes(const std::string& dtype);

// Parses the safetensors file `name` held in [data, data + size). Throws
// std::runtime_error("NAME: ...") naming the tensor and the problem.
SafetensorsFile parse_safetensors(const uint8_t* data, size_t size, const std::string& name);

}  // namespace cpuchat
