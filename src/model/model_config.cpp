#include "model/model_config.h"

#include <cmath>
#include <cstdio>
#include <stdexcept>

namespace cpuchat {

namespace {

[[noreturn]] void bad_field(const std::string& file, const char* field, const std::string& value, const char* rule) {
  throw std::runtime_error(file + ": " + field + " is " + value + " (" + rule + ")");
}

std::string shortest(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.10g", v);
  return buf;
}

void check_size(const std::string& file, const char* field, int64_t v, int64_t max) {
  if (v <= 0 || v > max)
    bad_field(file, field, std::to_string(v), ("must be between 1 and " + std::to_string(max)).c_str());
}

void check_positive(const std::string& file, const char* field, double v) {
  if (!(v > 0) || !std::isfinite(v)) bad_field(file, field, shortest(v), "must be positive and finite");
}

}  // namespace

void validate_config(const ModelConfig& c, const std::string& file) {
  // Generous upper bounds (Llama 3.1 405B is dim 16384, ffn 53248, 126 layers, 128 heads):
  // beyond them the header is corrupt, and products of them would overflow.
  check_size(file, "dim", c.dim, 1 << 17);
  check_size(file, "hidden_dim", c.hidden_dim, 1 << 20);
  check_size(file, "n_layers", c.n_layers, 1 << 12);
  check_size(file, "n_heads", c.n_heads, 1 << 12);
  check_size(file, "n_kv_heads", c.n_kv_heads, c.n_heads);
  check_size(file, "head_dim", c.head_dim, 1 << 12);
  check_size(file, "vocab_size", c.vocab_size, 1 << 24);
  if (c.max_position < 0 || c.max_position > (1 << 24))
    bad_field(file, "max_position", std::to_string(c.max_position), "must be between 0 and 16777216");
  if (c.n_heads % c.n_kv_heads != 0)
    bad_field(file, "n_kv_heads", std::to_string(c.n_kv_heads), ("must divide n_heads " + std::to_string(c.n_heads)).c_str());
  if (c.head_dim % 2 != 0) bad_field(file, "head_dim", std::to_string(c.head_dim), "must be even for RoPE");
  check_positive(file, "rope_theta", c.rope_theta);
  check_positive(file, "norm_eps", c.norm_eps);
  if (c.rope_scaling.enabled) {
    const RopeScaling& s = c.rope_scaling;
    check_positive(file, "rope_scaling.factor", s.factor);
    check_positive(file, "rope_scaling.low_freq_factor", s.low_freq_factor);
    check_positive(file, "rope_scaling.high_freq_factor", s.high_freq_factor);
    if (s.high_freq_factor <= s.low_freq_factor)
      bad_field(file, "rope_scaling.high_freq_factor", shortest(s.high_freq_factor), "must exceed low_freq_factor");
    check_size(file, "rope_scaling.original_max_position_embeddings", s.original_max_position, 1 << 24);
  }
  if (c.bos_id >= c.vocab_size)
    bad_field(file, "bos_token_id", std::to_string(c.bos_id), "outside the vocabulary");
  for (int eos : c.eos_ids)
    if (eos < 0 || eos >= c.vocab_size) bad_field(file, "eos_token_id", std::to_string(eos), "outside the vocabulary");
}

int config_int(double value, const std::string& file, const char* field) {
  if (!std::isfinite(value) || value != std::floor(value) || value < -2147483648.0 || value > 2147483647.0)
    bad_field(file, field, shortest(value), "not a 32-bit integer");
  return static_cast<int>(value);
}

}  // namespace cpuchat
