// Turns a row of logits into the next token: penalties, temperature, top-k, top-p,
// min-p, then a draw from a seeded generator (greedy when temperature is 0).
#pragma once
#include <cstdint>
#include <random>
#include <vector>

#include "cpuchat/engine.h"

namespace cpuchat {

class Sampler {
 public:
  Sampler(const SamplingParams& params, uint64_t seed);
  // `history`: the tokens so far (prompt and generated) for the penalties.
  // `logits` is modified in place.
  int sample(std::vector<float>& logits, const std::vector<int>& history, const std::vector<int>& generated);

 private:
  SamplingParams p_;
  std::mt19937_64 rng_;
};

// log-softmax of one logit row: the logprob of `id` and the `top` best (id, logprob).
TokenLogprob logprobs_of(const std::vector<float>& logits, int id, int top);

}  // namespace cpuchat
