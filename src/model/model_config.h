// The shape and hyperparameters of a Llama model, whatever file they came from (no libtorch,
// so the header parsers that produce it can be fuzzed on their own).
#pragma once
#include <string>
#include <vector>

namespace cpuchat {

struct RopeScaling {  // Llama 3.1 "llama3" scaling of the RoPE frequencies
  bool enabled = false;
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int original_max_position = 8192;
};

struct ModelConfig {
  int dim = 0;          // hidden size
  int hidden_dim = 0;   // FFN size
  int n_layers = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int vocab_size = 0;
  int max_position = 0;  // trained context length
  double norm_eps = 1e-5;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tied_embeddings = false;
  int bos_id = -1;
  std::vector<int> eos_ids;
};

// Checks a config read from an untrusted file: every size positive and plausible, heads that
// divide, rope_theta and norm_eps positive and finite. Throws std::runtime_error naming
// `file` and the field, one line.
void validate_config(const ModelConfig& c, const std::string& file);

// `value` (a number from a header) as an int; throws naming `file` and `field` when it is
// not an integer or does not fit, instead of wrapping (1e12 must not become -727379968).
int config_int(double value, const std::string& file, const char* field);

}  // namespace cpuchat
