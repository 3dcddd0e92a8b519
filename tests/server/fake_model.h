// A ServedModel for the server tests: the real engine Scheduler over a scripted step model
// (tests/common/scripted_model.h: byte tokens, a fixed story as output, a fixed time per
// step), so the HTTP layer is tested against real queueing, batching and prefix reuse
// without model weights.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "../common/scripted_model.h"
#include "server/served_model.h"

namespace cpuchat::server::testing {

using cpuchat::testing::kStory;
inline const std::string kFakeStory = kStory;
constexpr int kFakeBos = cpuchat::testing::kByteBos;

struct FakeConfig {
  int ctx = 256;
  int per_token_ms = 1;      // time per forward step (disconnect/queue tests use more)
  std::string backend = "fp32";
  std::string name = "fake";
  int parallel = 1;          // slots
  int max_queue = 16;
};

class FakeModel final : public ServedModel {
 public:
  explicit FakeModel(FakeConfig cfg)
      : cfg_(std::move(cfg)), step_model_(cfg_.parallel, cfg_.ctx, cfg_.per_token_ms) {
    info_.name = cfg_.name;
    info_.backend = cfg_.backend;
    info_.format = "fake";
    info_.ctx = cfg_.ctx;
    info_.threads = 1;
    info_.slots = cfg_.parallel;
    info_.max_queue = cfg_.max_queue;
    info_.kv_type = "fp32";
    info_.kv_bytes_per_token = step_model_.kv_bytes_per_token();
    BatchOptions b;
    b.slots = cfg_.parallel;
    b.max_queue = cfg_.max_queue;
    scheduler_ = std::make_unique<Scheduler>(step_model_, &tokenizer_, b);
  }
  const ModelInfo& info() const override { return info_; }
  std::vector<int> encode_chat(const std::vector<ChatMessage>& messages) const override {
    std::string text;
    for (const ChatMessage& m : messages) text += m.role + ": " + m.content + "\n";
    return encode_text(text + "assistant: ");
  }
  std::vector<int> encode_text(const std::string& text) const override {
    std::vector<int> ids{kFakeBos};
    for (int id : tokenizer_.encode(text, false)) ids.push_back(id);
    return ids;
  }
  std::string token_bytes(int id) const override { return tokenizer_.token_bytes(id); }
  std::shared_ptr<Generation> submit(GenerateRequest req) override { return scheduler_->submit(std::move(req)); }
  SchedulerStats stats() const override { return scheduler_->stats(); }
  void shutdown() override { scheduler_->shutdown(); }
  void drain() override { scheduler_->drain(); }
  const cpuchat::testing::ScriptedStepModel& step_model() const { return step_model_; }

 private:
  FakeConfig cfg_;
  ModelInfo info_;
  cpuchat::testing::ByteTokenizer tokenizer_;
  cpuchat::testing::ScriptedStepModel step_model_;
  std::unique_ptr<Scheduler> scheduler_;  // last: stopped before the step model goes
};

}  // namespace cpuchat::server::testing
