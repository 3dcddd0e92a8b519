// ServedModel backed by the real cpuchat::Engine.
#include <memory>

#include "server/served_model.h"

namespace cpuchat::server {
namespace {

class EngineModel final : public ServedModel {
 public:
  explicit EngineModel(std::unique_ptr<Engine> e) : engine_(std::move(e)) {}
  const ModelInfo& info() const override { return engine_->info(); }
  std::vector<int> encode_chat(const std::vector<ChatMessage>& messages) const override {
    return cpuchat::encode_chat(engine_->tokenizer(), messages, /*add_generation_prompt=*/true);
  }
  std::vector<int> encode_text(const std::string& text) const override {
    const Tokenizer& tok = engine_->tokenizer();
    std::vector<int> ids;
    if (tok.bos_id >= 0) ids.push_back(tok.bos_id);
    std::vector<int> body = tok.encode(text, /*parse_special=*/false);
    ids.insert(ids.end(), body.begin(), body.end());
    return ids;
  }
  std::string token_bytes(int id) const override { return engine_->tokenizer().token_bytes(id); }
  const Tokenizer* tokenizer() const override { return engine_->has_tokenizer() ? &engine_->tokenizer() : nullptr; }
  std::shared_ptr<Generation> submit(GenerateRequest req) override { return engine_->submit(std::move(req)); }
  SchedulerStats stats() const override { return engine_->stats(); }
  void shutdown() override { engine_->shutdown(); }
  void drain() override { engine_->drain(); }

 private:
  std::unique_ptr<Engine> engine_;
};

}  // namespace

std::unique_ptr<ServedModel> load_engine_model(const LoadOptions& opts) {
  return std::make_unique<EngineModel>(Engine::load(opts));
}

}  // namespace cpuchat::server
