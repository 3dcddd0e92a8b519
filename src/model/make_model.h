// Random-weight checkpoints of real Llama shapes, for benchmarks: the values don't
// matter for speed, the shapes and bytes do.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/checkpoint.h"

namespace cpuchat {

// The shapes `make-model --shape` and `bench --synthetic` know.
ModelConfig model_shape(const std::string& name);  // throws std::invalid_argument
std::vector<std::string> model_shape_names();

// Every tensor of a config, HF-named, in file order.
std::vector<std::pair<std::string, std::vector<int64_t>>> tensor_shapes(const ModelConfig& c);

// Fills `n` bf16 values with a uniform distribution of std 0.02 (norm weights get 1).
void random_bf16(uint16_t* out, int64_t n, uint64_t seed);

struct MakeModelOptions {
  std::string shape;
  std::string out_dir;
  std::string dtype = "bf16";  // bf16 or fp32
  uint64_t seed = 1;
  std::string tokenizer;       // optional file copied into out_dir
};

// Writes config.json, generation_config.json and safetensors shards (~4 GB each) to
// out_dir, streaming tensor by tensor. Returns the bytes of weights written.
int64_t make_model(const MakeModelOptions& opts);

}  // namespace cpuchat
