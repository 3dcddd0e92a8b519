// A scripted ServedModel for the server tests: byte tokens, a fixed story as output, real
// timing and a real prefix cache, so the HTTP layer is tested without model weights.
#pragma once
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "server/served_model.h"

namespace cpuchat::server::testing {

constexpr int kFakeBos = 256;
constexpr int kFakeEos = 257;
inline const std::string kFakeStory =
    "Once upon a time, a little robot named Bolt found a red ball. \xC3\xA9t\xC3\xA9! The end.";

struct FakeConfig {
  int ctx = 256;
  int per_token_ms = 1;      // decode time per token (disconnect/queue tests use more)
  std::string backend = "fp32";
  std::string name = "fake";
};

class FakeSession final : public GenerationSession {
 public:
  explicit FakeSession(FakeConfig cfg) : cfg_(std::move(cfg)) {}

  GenerateResult generate(const GenerateRequest& req,
                          const std::function<bool(const TokenEvent&)>& on_token) override {
    using clock = std::chrono::steady_clock;
    auto t0 = clock::now();
    GenerateResult r;
    size_t keep = 0;
    while (keep < cache_.size() && keep < req.prompt_ids.size() && cache_[keep] == req.prompt_ids[keep]) ++keep;
    if (keep == req.prompt_ids.size() && keep > 0) --keep;  // the last prompt token is always run
    cache_.assign(req.prompt_ids.begin(), req.prompt_ids.end());
    r.metrics.prompt_tokens = static_cast<int>(req.prompt_ids.size());
    r.metrics.prompt_tokens_processed = static_cast<int>(req.prompt_ids.size() - keep);
    // The story is emitted one UTF-8 character per token; temperature > 0 with a seed rotates it.
    size_t start = req.sampling.temperature > 0 && req.sampling.seed ? *req.sampling.seed % 7 : 0;
    std::vector<std::string> chars;
    for (size_t i = 0; i < kFakeStory.size();) {
      size_t n = (static_cast<unsigned char>(kFakeStory[i]) >= 0xC0) ? 2 : 1;
      chars.push_back(kFakeStory.substr(i, n));
      i += n;
    }
    r.finish_reason = "stop";
    clock::time_point first;
    for (size_t i = start; i < chars.size(); ++i) {
      if (static_cast<int>(r.ids.size()) >= req.max_tokens ||
          static_cast<int>(cache_.size()) >= cfg_.ctx) {
        r.finish_reason = "length";
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(cfg_.per_token_ms));
      int id = static_cast<unsigned char>(chars[i][0]);
      r.ids.push_back(id);
      cache_.push_back(id);
      if (r.ids.size() == 1) first = clock::now();
      bool stop_hit = false;
      for (const std::string& s : req.stop)
        if ((r.text + chars[i]).find(s) != std::string::npos) stop_hit = true;
      if (stop_hit) { r.finish_reason = "stop"; break; }
      TokenEvent ev{id, chars[i], std::nullopt};
      if (req.top_logprobs >= 0) {
        TokenLogprob lp{id, chars[i], -0.25f, {}};
        for (int k = 0; k < req.top_logprobs; ++k) lp.top.push_back({'a' + k, -1.0f - k});
        ev.logprob = lp;
        r.logprobs.push_back(lp);
      }
      r.text += chars[i];
      if (on_token && !on_token(ev)) { r.finish_reason = "cancelled"; break; }
    }
    auto t1 = clock::now();
    auto secs = [](clock::duration d) { return std::chrono::duration<double>(d).count(); };
    r.metrics.completion_tokens = static_cast<int>(r.ids.size());
    r.metrics.total_time_s = secs(t1 - t0);
    if (!r.ids.empty()) {
      r.metrics.ttft_s = secs(first - t0);
      r.metrics.prompt_tokens_per_s = r.metrics.prompt_tokens_processed / std::max(1e-9, r.metrics.ttft_s);
      if (r.ids.size() > 1) r.metrics.decode_tokens_per_s = (r.ids.size() - 1) / std::max(1e-9, secs(t1 - first));
    }
    return r;
  }
  int cached_tokens() const override { return static_cast<int>(cache_.size()); }

 private:
  FakeConfig cfg_;
  std::vector<int> cache_;
};

class FakeModel final : public ServedModel {
 public:
  explicit FakeModel(FakeConfig cfg) : cfg_(std::move(cfg)) {
    info_.name = cfg_.name;
    info_.backend = cfg_.backend;
    info_.format = "fake";
    info_.ctx = cfg_.ctx;
    info_.threads = 1;
  }
  const ModelInfo& info() const override { return info_; }
  std::vector<int> encode_chat(const std::vector<ChatMessage>& messages) const override {
    std::string text;
    for (const ChatMessage& m : messages) text += m.role + ": " + m.content + "\n";
    return encode_text(text + "assistant: ");
  }
  std::vector<int> encode_text(const std::string& text) const override {
    std::vector<int> ids{kFakeBos};
    for (unsigned char c : text) ids.push_back(c);
    return ids;
  }
  std::string token_bytes(int id) const override { return id < 256 ? std::string(1, static_cast<char>(id)) : "<s>"; }
  std::unique_ptr<GenerationSession> new_session() override { return std::make_unique<FakeSession>(cfg_); }

 private:
  FakeConfig cfg_;
  ModelInfo info_;
};

}  // namespace cpuchat::server::testing
