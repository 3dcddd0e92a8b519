#include "model/llama2c_header.h"

#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "common/checked_math.h"

namespace cpuchat {

Llama2cHeader parse_llama2c_header(const uint8_t* data, size_t size, const std::string& file) {
  if (size < Llama2cHeader::kBytes) throw std::runtime_error(file + ": truncated llama2.c checkpoint (no header)");
  int32_t h[7];
  std::memcpy(h, data, sizeof(h));
  for (int i = 0; i < 7; ++i)
    if (h[i] == 0 || std::abs(int64_t(h[i])) > (1 << 24) || (i != 5 && h[i] < 0))
      throw std::runtime_error(file + ": not a llama2.c checkpoint (implausible header values)");
  Llama2cHeader out;
  ModelConfig& c = out.config;
  c.dim = h[0];
  c.hidden_dim = h[1];
  c.n_layers = h[2];
  c.n_heads = h[3];
  c.n_kv_heads = h[4];
  c.tied_embeddings = h[5] > 0;
  c.vocab_size = h[5] > 0 ? h[5] : -h[5];
  c.max_position = h[6];
  if (c.dim % c.n_heads != 0)
    throw std::runtime_error(file + ": not a llama2.c checkpoint (dim not divisible by heads)");
  c.head_dim = c.dim / c.n_heads;
  c.norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.bos_id = 1;
  c.eos_ids = {2};

  // Every value is below 2^24, so each product of three fits in 2^72: check them all.
  const uint64_t L = c.n_layers, D = c.dim, F = c.hidden_dim, V = c.vocab_size;
  const uint64_t KV = uint64_t(c.n_kv_heads) * c.head_dim, half = c.head_dim / 2;
  std::optional<uint64_t> total = 0;
  auto add = [&](std::initializer_list<uint64_t> factors) {
    std::optional<uint64_t> p = 1;
    for (uint64_t f : factors)
      if (p) p = checked_mul(*p, f);
    total = total && p ? checked_add(*total, *p) : std::nullopt;
  };
  add({V, D});                      // token embeddings
  add({L, D});                      // attention norms
  add({L, D, D});                   // wq
  add({2, L, KV, D});               // wk, wv
  add({L, D, D});                   // wo
  add({L, D});                      // ffn norms
  add({3, L, F, D});                // w1, w2, w3
  add({D});                         // final norm
  add({2, uint64_t(c.max_position), half});  // freq_cis_real, freq_cis_imag
  if (!c.tied_embeddings) add({V, D});       // classifier
  const std::optional<uint64_t> need = total ? checked_mul(*total, sizeof(float)) : std::nullopt;
  if (!need || !range_inside(Llama2cHeader::kBytes, *need, size))
    throw std::runtime_error(file + ": truncated llama2.c checkpoint (" + std::to_string(size) + " bytes, header implies " +
                             (need ? std::to_string(Llama2cHeader::kBytes + *need) : std::string("more than 2^64")) + ")");
  out.weight_floats = *total;
  return out;
}

}  // namespace cpuchat
