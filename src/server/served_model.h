// What the HTTP layer needs from a loaded model, as an interface: the real implementation
// wraps cpuchat::Engine (engine_model.cpp); the server tests plug in the real scheduler over
// a scripted step model, so the whole HTTP surface is testable without model weights.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cpuchat/engine.h"
#include "cpuchat/tokenizer.h"

namespace cpuchat::server {

class ServedModel {
 public:
  virtual ~ServedModel() = default;
  virtual const ModelInfo& info() const = 0;
  // Chat messages -> prompt ids (template + BOS), with the assistant turn opened.
  virtual std::vector<int> encode_chat(const std::vector<ChatMessage>& messages) const = 0;
  // Plain text -> prompt ids (BOS + text, special tokens not parsed).
  virtual std::vector<int> encode_text(const std::string& text) const = 0;
  // Raw bytes of one token (for logprob alternatives).
  virtual std::string token_bytes(int id) const = 0;
  // Queues a generation on the model's scheduler. Throws QueueFull, SchedulerStopped,
  // ContextOverflow, std::invalid_argument.
  virtual std::shared_ptr<Generation> submit(GenerateRequest req) = 0;
  virtual SchedulerStats stats() const = 0;
  virtual void shutdown() = 0;  // cancel running generations, refuse new ones
  virtual void drain() = 0;     // refuse new ones, let queued and running ones finish
  // The tokenizer, for tool prompts and constrained decoding; null when there is none
  // (a scripted test model), and then those features answer 400.
  virtual const Tokenizer* tokenizer() const { return nullptr; }
};

// Loads a cpuchat::Engine (throws std::runtime_error like Engine::load).
std::unique_ptr<ServedModel> load_engine_model(const LoadOptions& opts);

}  // namespace cpuchat::server
