// A scripted StepModel for scheduler and server tests: byte tokens (0..255, BOS 256,
// EOS 257), and logits that continue a fixed story, so answers are known without weights
// while the real Scheduler (slots, queue, batching, chunked prefill, sampling, stop
// strings, UTF-8 holding) does all the work. Each step sleeps `step_ms`, whatever its size,
// as a memory-bound decode step would; it records every step for the tests to inspect.
#pragma once
#include <chrono>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "cpuchat/tokenizer.h"
#include "engine/scheduler.h"

namespace cpuchat::testing {

constexpr int kByteBos = 256;
constexpr int kByteEos = 257;
inline const std::string kStory =
    "Once upon a time, a little robot named Bolt found a red ball. \xC3\xA9t\xC3\xA9! The end.";

class ByteTokenizer final : public Tokenizer {
 public:
  ByteTokenizer() {
    bos_id = kByteBos;
    eos_ids = {kByteEos};
  }
  std::vector<int> encode(std::string_view text, bool) const override {
    std::vector<int> ids;
    for (unsigned char c : text) ids.push_back(c);
    return ids;
  }
  std::string token_bytes(int id) const override {
    if (id < 256) return std::string(1, char(id));
    return id == kByteBos ? "<s>" : "</s>";
  }
  int vocab_size() const override { return 258; }
  std::optional<int> special_id(std::string_view) const override { return std::nullopt; }
  bool is_special(int id) const override { return id >= 256; }
};

class ScriptedStepModel final : public StepModel {
 public:
  ScriptedStepModel(int slots, int ctx, int step_ms) : ctx_(ctx), step_ms_(step_ms), history_(size_t(slots)) {}

  int vocab_size() const override { return 258; }
  int ctx() const override { return ctx_; }
  int64_t kv_bytes_per_token() const override { return 64; }

  void step(const std::vector<StepSpan>& spans, std::vector<float>& logits) override {
    if (step_ms_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(step_ms_));
    std::lock_guard<std::mutex> lock(mu_);
    steps_.push_back(spans);
    logits.clear();
    for (const StepSpan& s : spans) {
      std::vector<int>& h = history_[size_t(s.slot)];
      if (int(h.size()) < s.start_pos) throw std::runtime_error("scripted model: a gap in slot " + std::to_string(s.slot));
      h.resize(size_t(s.start_pos));
      h.insert(h.end(), s.tokens.begin(), s.tokens.end());
      if (!s.logits) continue;
      std::vector<float> row(258, 0.0f);
      row[size_t(next_token(h))] = 30.0f;
      logits.insert(logits.end(), row.begin(), row.end());
    }
  }
  void copy_prefix(int from, int to, int n) override {
    std::lock_guard<std::mutex> lock(mu_);
    const std::vector<int>& src = history_[size_t(from)];
    if (int(src.size()) < n) throw std::runtime_error("scripted model: copy past the source's cache");
    history_[size_t(to)].assign(src.begin(), src.begin() + n);
    copies_.push_back({from, to, n});
  }

  // The story continues after the longest suffix of the history that is a prefix of it.
  static int next_token(const std::vector<int>& h) {
    for (size_t k = std::min(kStory.size(), h.size()); k > 0; --k) {
      bool match = true;
      for (size_t i = 0; i < k && match; ++i) match = h[h.size() - k + i] == (unsigned char)kStory[i];
      if (match) return k == kStory.size() ? kByteEos : (unsigned char)kStory[k];
    }
    return (unsigned char)kStory[0];
  }

  struct Copy { int from, to, n; };
  std::vector<std::vector<StepSpan>> steps() const { std::lock_guard<std::mutex> l(mu_); return steps_; }
  std::vector<Copy> copies() const { std::lock_guard<std::mutex> l(mu_); return copies_; }

 private:
  int ctx_, step_ms_;
  mutable std::mutex mu_;
  std::vector<std::vector<int>> history_;  // what each slot's "cache" holds
  std::vector<std::vector<StepSpan>> steps_;
  std::vector<Copy> copies_;
};

}  // namespace cpuchat::testing
