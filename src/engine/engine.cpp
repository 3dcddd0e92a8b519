// Engine: load once, then serve requests through one scheduler (src/engine/scheduler.h)
// that owns the forward pass and batches every running sequence into each step.
#include "cpuchat/engine.h"

#include <ATen/Parallel.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "engine/cpus.h"
#include "engine/sampler.h"
#include "engine/scheduler.h"
#include "model/make_model.h"
#include "model/packed_cache.h"
#include "model/model.h"

namespace cpuchat {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

constexpr int kPrefillChunk = 512;  // bounds the attention score matrix of long prompts

std::string base_name(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  auto slash = path.find_last_of('/');
  std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  auto dot = name.find_last_of('.');
  if (dot != std::string::npos && dot > 0 && (name.substr(dot) == ".bin" || name.substr(dot) == ".gguf"))
    name = name.substr(0, dot);
  return name;
}

}  // namespace

std::string backend_name(Backend b) {
  switch (b) {
    case Backend::FP32: return "fp32";
    case Backend::BF16: return "bf16";
    case Backend::INT4: return "int4";
  }
  return "?";
}

Backend parse_backend(const std::string& s) {
  if (s == "fp32") return Backend::FP32;
  if (s == "bf16") return Backend::BF16;
  if (s == "int4") return Backend::INT4;
  throw std::invalid_argument("unknown backend '" + s + "' (expected int4, bf16 or fp32)");
}

std::string quant_name(QuantScheme q) {
  return q == QuantScheme::Q4G32 ? "q4g32" : q == QuantScheme::Q4C ? "q4c" : "q4k";
}

std::string kv_type_name(KVType t) { return t == KVType::FP32 ? "fp32" : t == KVType::BF16 ? "bf16" : "int8"; }

KVType parse_kv_type(const std::string& s) {
  if (s == "fp32") return KVType::FP32;
  if (s == "bf16") return KVType::BF16;
  if (s == "int8") return KVType::INT8;
  throw std::invalid_argument("unknown KV cache type '" + s + "' (expected fp32, bf16 or int8)");
}

QuantScheme parse_quant(const std::string& s) {
  if (s == "q4g32") return QuantScheme::Q4G32;
  if (s == "q4c") return QuantScheme::Q4C;
  if (s == "q4k") return QuantScheme::Q4K;
  throw std::invalid_argument("unknown quantization '" + s + "' (expected q4g32, q4c or q4k)");
}

ContextOverflow::ContextOverflow(int prompt, int context)
    : std::runtime_error("the prompt has " + std::to_string(prompt) + " tokens but the context size is " +
                         std::to_string(context) + " (at least one token must remain for the answer)"),
      prompt_tokens(prompt),
      ctx(context) {}

int physical_cores() {
  // Count distinct (physical id, core id) pairs: SMT siblings share one core's units.
  std::ifstream in("/proc/cpuinfo");
  std::set<std::pair<int, int>> cores;
  std::string line;
  int phys = 0;
  while (std::getline(in, line)) {
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    const std::string key = line.substr(0, line.find_last_not_of(" \t", colon - 1) + 1);
    if (key == "physical id") phys = std::atoi(line.c_str() + colon + 1);
    if (key == "core id") cores.insert({phys, std::atoi(line.c_str() + colon + 1)});
  }
  const int n = int(cores.size());
  return n > 0 ? n : std::max(1u, std::thread::hardware_concurrency());
}

int64_t peak_rss_bytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::atoll(line.c_str() + 6) * 1024;
  return 0;
}

// ---------------------------------------------------------------------------------------

// The scheduler's view of the model: one KV cache per slot and the batched forward pass.
class ModelStepper final : public StepModel {
 public:
  ModelStepper(const Model& model, int slots, int ctx, KVType kv, int threads)
      : model_(model), ctx_(ctx), kv_(kv), threads_(threads) {
    for (int i = 0; i < slots; ++i) caches_.push_back(model.new_cache(ctx, kv));
  }
  int vocab_size() const override { return model_.config().vocab_size; }
  int ctx() const override { return ctx_; }
  int64_t kv_bytes_per_token() const override { return cpuchat::kv_bytes_per_token(model_.config(), kv_); }
  void step(const std::vector<StepSpan>& spans, std::vector<float>& logits) override {
    std::vector<SeqSpan> seqs;
    for (const StepSpan& s : spans)
      seqs.push_back({&caches_[size_t(s.slot)], s.start_pos, s.tokens.data(), int(s.tokens.size()), s.logits});
    const torch::Tensor out = model_.forward_batch(seqs);
    logits.assign(out.data_ptr<float>(), out.data_ptr<float>() + out.numel());
  }
  void copy_prefix(int from, int to, int n) override { copy_kv_prefix(caches_[size_t(from)], caches_[size_t(to)], n); }
  // OpenMP thread counts are per calling thread: the loop thread sets its own.
  void on_loop_thread() override {
    const int t = threads_.load();
    if (at::get_num_threads() != t) at::set_num_threads(t);
  }
  void set_threads(int t) { threads_ = t; }

 private:
  const Model& model_;
  int ctx_;
  KVType kv_;
  std::atomic<int> threads_;
  std::vector<KVCache> caches_;
};

struct Engine::Impl {
  ModelInfo info;
  KVType kv_type = KVType::BF16;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<Model> model;
  std::unique_ptr<ModelStepper> stepper;
  std::unique_ptr<Scheduler> scheduler;  // declared last: stopped first
};

Engine::Engine() : impl_(std::make_unique<Impl>()) {}
Engine::~Engine() {
  if (impl_->scheduler) impl_->scheduler.reset();  // joins the loop before the model goes
}

namespace {

// Builds the model; with --cache-packed (int4, real checkpoints), maps the packed weights a
// previous run saved next to the checkpoint, or saves them after packing for the next run.
std::unique_ptr<Model> load_model(Checkpoint ck, const LoadOptions& opts) {
  if (!opts.cache_packed || opts.backend != Backend::INT4 || !opts.synthetic.empty()) {
    if (opts.cache_packed && opts.backend != Backend::INT4)
      spdlog::warn("--cache-packed only applies to --backend int4; ignored for {}", backend_name(opts.backend));
    return std::make_unique<Model>(std::move(ck), opts.backend, opts.quant);
  }
  std::string why_not;
  PackedCache cache = PackedCache::open(PackedCache::path_for(opts.model_path, opts.quant),
                                        PackedCache::fingerprint(ck, opts.quant), &why_not);
  if (!why_not.empty()) spdlog::warn("packed cache not used, repacking: {}", why_not);
  if (cache.loaded()) spdlog::info("int4 weights mapped from {}", cache.path());
  auto model = std::make_unique<Model>(std::move(ck), opts.backend, opts.quant, &cache);
  if (!cache.loaded()) {
    try {
      const uint64_t bytes = cache.save();
      spdlog::info("saved int4 weights to {} ({:.2f} GB)", cache.path(), bytes / 1e9);
    } catch (const std::exception& err) {
      spdlog::warn("{}; continuing without a cache", err.what());
    }
  }
  return model;
}

}  // namespace

std::unique_ptr<Engine> Engine::load(const LoadOptions& opts) {
  const auto t0 = Clock::now();
  std::unique_ptr<Engine> engine(new Engine());
  Impl& e = *engine->impl_;

  const int threads = thread_count(opts.threads);  // capped at the CPUs we may use
  at::set_num_threads(threads);

  Checkpoint ck = opts.synthetic.empty() ? load_checkpoint(opts.model_path)
                                         : synthetic_checkpoint(model_shape(opts.synthetic), /*seed=*/1);
  const ModelConfig config = ck.config;

  // Tokenizer: an explicit file wins, then one embedded in the checkpoint, then one beside it.
  if (!opts.tokenizer_path.empty()) {
    e.tokenizer = load_tokenizer(opts.tokenizer_path, config.vocab_size);
  } else if (ck.embedded_tokenizer) {
    e.tokenizer = std::move(ck.embedded_tokenizer);
  } else if (!ck.tokenizer_path.empty()) {
    e.tokenizer = load_tokenizer(ck.tokenizer_path, config.vocab_size);
  } else if (opts.require_tokenizer && opts.synthetic.empty()) {
    throw std::runtime_error(opts.model_path + ": no tokenizer found (tokenizer.json or tokenizer.model); pass --tokenizer FILE");
  }
  if (e.tokenizer) {
    if (e.tokenizer->vocab_size() > config.vocab_size)
      throw std::runtime_error("tokenizer has " + std::to_string(e.tokenizer->vocab_size()) +
                               " tokens but the model's vocabulary is " + std::to_string(config.vocab_size));
    if (e.tokenizer->bos_id < 0) e.tokenizer->bos_id = config.bos_id;
    for (int id : config.eos_ids)
      if (std::find(e.tokenizer->eos_ids.begin(), e.tokenizer->eos_ids.end(), id) == e.tokenizer->eos_ids.end())
        e.tokenizer->eos_ids.push_back(id);
  }

  int ctx = opts.ctx > 0 ? opts.ctx : std::min(config.max_position > 0 ? config.max_position : 4096, 4096);
  if (config.max_position > 0 && ctx > config.max_position)
    throw std::runtime_error("--ctx " + std::to_string(ctx) + " exceeds the model's trained context of " +
                             std::to_string(config.max_position) + " tokens");

  ModelInfo& info = e.info;
  info.path = opts.synthetic.empty() ? opts.model_path : "synthetic:" + opts.synthetic;
  info.name = opts.synthetic.empty() ? base_name(opts.model_path) : opts.synthetic;
  info.format = ck.format;
  info.backend = backend_name(opts.backend);
  info.quant = opts.backend == Backend::INT4 ? quant_name(opts.quant) : "";
  e.model = load_model(std::move(ck), opts);
  info.isa = opts.backend == Backend::INT4 ? int4_isa_name() : "";
  info.threads = threads;
  info.ctx = ctx;
  info.max_position = config.max_position;
  info.vocab_size = config.vocab_size;
  info.dim = config.dim;
  info.n_layers = config.n_layers;
  info.n_heads = config.n_heads;
  info.n_kv_heads = config.n_kv_heads;
  info.hidden_dim = config.hidden_dim;
  info.n_params = e.model->n_params();
  info.weight_bytes_per_token = e.model->weight_bytes_per_token();
  info.kv_type = kv_type_name(opts.kv_type);
  info.kv_bytes_per_token = kv_bytes_per_token(config, opts.kv_type);
  info.slots = std::max(1, opts.batch.slots);
  info.max_queue = std::max(0, opts.batch.max_queue);
  e.kv_type = opts.kv_type;
  e.stepper = std::make_unique<ModelStepper>(*e.model, info.slots, ctx, opts.kv_type, threads);
  e.scheduler = std::make_unique<Scheduler>(*e.stepper, e.tokenizer.get(), opts.batch);
  info.load_time_s = seconds_since(t0);
  return engine;
}

const ModelInfo& Engine::info() const { return impl_->info; }
void Engine::set_threads(int threads) {
  at::set_num_threads(threads);
  impl_->stepper->set_threads(threads);
  impl_->info.threads = threads;
}
bool Engine::has_tokenizer() const { return impl_->tokenizer != nullptr; }
const Tokenizer& Engine::tokenizer() const {
  if (!impl_->tokenizer) throw std::runtime_error("this model was loaded without a tokenizer; pass --tokenizer FILE");
  return *impl_->tokenizer;
}

std::unique_ptr<Session> Engine::new_session() { return std::unique_ptr<Session>(new Session(impl_->scheduler.get())); }
std::shared_ptr<Generation> Engine::submit(GenerateRequest req) { return impl_->scheduler->submit(std::move(req)); }
SchedulerStats Engine::stats() const { return impl_->scheduler->stats(); }
void Engine::shutdown() { impl_->scheduler->shutdown(); }
void Engine::drain() { impl_->scheduler->drain(); }

std::vector<float> Engine::logits(const std::vector<int>& ids) {
  const int vocab = impl_->info.vocab_size;
  if (ids.empty()) throw std::invalid_argument("no token ids");
  for (int id : ids)
    if (id < 0 || id >= vocab) throw std::invalid_argument("token id " + std::to_string(id) + " is outside the vocabulary (0.." + std::to_string(vocab - 1) + ")");
  KVCache cache = impl_->model->new_cache(int(ids.size()), impl_->kv_type);
  std::vector<float> out;
  out.reserve(ids.size() * size_t(vocab));
  for (size_t start = 0; start < ids.size(); start += kPrefillChunk) {
    std::vector<int> chunk(ids.begin() + start, ids.begin() + std::min(ids.size(), start + kPrefillChunk));
    torch::Tensor l = impl_->model->forward(chunk, int(start), cache, /*all_logits=*/true);
    out.insert(out.end(), l.data_ptr<float>(), l.data_ptr<float>() + l.numel());
  }
  return out;
}

// ---------------------------------------------------------------------------------------

Session::~Session() = default;
int Session::cached_tokens() const { return cached_; }
void Session::reset() { cached_ = 0; }

GenerateResult Session::generate(const GenerateRequest& req, const TokenCallback& on_token) {
  GenerateResult r = scheduler_->submit(req)->wait(on_token);
  cached_ = int(req.prompt_ids.size() + r.ids.size());
  return r;
}

}  // namespace cpuchat
