#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <unordered_map>

namespace cpuchat {

Sampler::Sampler(const SamplingParams& params, uint64_t seed) : p_(params), rng_(seed) {}

int Sampler::sample(std::vector<float>& logits, const std::vector<int>& history, const std::vector<int>& generated) {
  const int n = static_cast<int>(logits.size());
  // Repetition penalty (llama.cpp / CTRL style) over the recent window of all tokens.
  if (p_.repetition_penalty != 1.0f && p_.repeat_last_n != 0) {
    const size_t window = p_.repeat_last_n < 0 ? history.size() : std::min<size_t>(history.size(), p_.repeat_last_n);
    std::vector<bool> seen(n, false);
    for (size_t i = history.size() - window; i < history.size(); ++i) {
      const int id = history[i];
      if (id < 0 || id >= n || seen[id]) continue;
      seen[id] = true;
      logits[id] = logits[id] > 0 ? logits[id] / p_.repetition_penalty : logits[id] * p_.repetition_penalty;
    }
  }
  // OpenAI presence/frequency penalties over the generated tokens.
  if (p_.presence_penalty != 0.0f || p_.frequency_penalty != 0.0f) {
    std::unordered_map<int, int> counts;
    for (int id : generated) counts[id]++;
    for (auto [id, count] : counts)
      if (id >= 0 && id < n) logits[id] -= p_.presence_penalty + p_.frequency_penalty * count;
  }
  if (p_.temperature <= 0.0f) return int(std::max_element(logits.begin(), logits.end()) - logits.begin());

  // Candidates sorted by logit, cut by top-k first (cheap partial sort).
  std::vector<int> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  const int k = (p_.top_k > 0 && p_.top_k < n) ? p_.top_k : n;
  auto by_logit = [&](int a, int b) { return logits[a] > logits[b]; };
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), by_logit);
  idx.resize(k);

  std::vector<double> probs(k);
  const double max_logit = logits[idx[0]];
  double sum = 0;
  for (int i = 0; i < k; ++i) sum += probs[i] = std::exp((logits[idx[i]] - max_logit) / p_.temperature);
  for (double& q : probs) q /= sum;

  int keep = k;
  if (p_.min_p > 0.0f) {  // drop tokens far less likely than the best one
    const double floor = p_.min_p * probs[0];
    while (keep > 1 && probs[keep - 1] < floor) --keep;
  }
  if (p_.top_p < 1.0f) {  // smallest prefix whose mass reaches top_p
    double mass = 0;
    for (int i = 0; i < keep; ++i) {
      mass += probs[i];
      if (mass >= p_.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  std::discrete_distribution<int> pick(probs.begin(), probs.begin() + keep);
  return idx[pick(rng_)];
}

TokenLogprob logprobs_of(const std::vector<float>& logits, int id, int top) {
  const float max_logit = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float l : logits) sum += std::exp(double(l) - max_logit);
  const float log_z = float(max_logit + std::log(sum));
  TokenLogprob out;
  out.id = id;
  out.logprob = logits[id] - log_z;
  if (top > 0) {
    std::vector<int> idx(logits.size());
    std::iota(idx.begin(), idx.end(), 0);
    top = std::min<int>(top, int(idx.size()));
    std::partial_sort(idx.begin(), idx.begin() + top, idx.end(), [&](int a, int b) { return logits[a] > logits[b]; });
    for (int i = 0; i < top; ++i) out.top.emplace_back(idx[i], logits[idx[i]] - log_z);
  }
  return out;
}

}  // namespace cpuchat
