// The llama2.c checkpoint header, parsed without libtorch: 7 int32 (dim, hidden_dim,
// n_layers, n_heads, n_kv_heads, vocab_size, seq_len; vocab_size < 0 means an untied
// classifier), then fp32 weights in run.c's order, whose total size the header implies.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "model/model_config.h"

namespace cpuchat {

struct Llama2cHeader {
  static constexpr size_t kBytes = 7 * sizeof(int32_t);
  ModelConfig config;
  uint64_t weight_floats = 0;  // fp32 values after the header, checked to fit in the file
};

// Parses the header of the llama2.c checkpoint `name` held in [data, data + size). Throws
// std::runtime_error("NAME: ...") for implausible values or a file shorter than they imply.
Llama2cHeader parse_llama2c_header(const uint8_t* data, size_t size, const std::string& name);

}  // namespace cpuchat
