// Engine and Session: load once, then serve requests from per-conversation KV caches,
// reusing the longest common prefix of the previous request.
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

#include "engine/sampler.h"
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

std::vector<float> row_to_vector(const torch::Tensor& logits, int64_t row) {
  torch::Tensor r = logits[row].contiguous();
  const float* p = r.data_ptr<float>();
  return std::vector<float>(p, p + r.numel());
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

std::string quant_name(QuantScheme q) { return q == QuantScheme::Q4G32 ? "q4g32" : "q4c"; }

QuantScheme parse_quant(const std::string& s) {
  if (s == "q4g32") return QuantScheme::Q4G32;
  if (s == "q4c") return QuantScheme::Q4C;
  throw std::invalid_argument("unknown quantization '" + s + "' (expected q4g32 or q4c)");
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

struct Engine::Impl {
  ModelInfo info;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<Model> model;
};

struct Session::Impl {
  const Model* model = nullptr;
  int threads = 1;  // the engine's; set on whichever thread runs generate()
  const Tokenizer* tokenizer = nullptr;
  KVCache cache;
  std::vector<int> cached;  // the tokens whose keys/values are in `cache`, in order
};

Engine::Engine() : impl_(std::make_unique<Impl>()) {}
Engine::~Engine() = default;

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

  const int threads = opts.threads > 0 ? opts.threads : physical_cores();
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
  info.load_time_s = seconds_since(t0);
  return engine;
}

const ModelInfo& Engine::info() const { return impl_->info; }
void Engine::set_threads(int threads) {
  at::set_num_threads(threads);
  impl_->info.threads = threads;
}
bool Engine::has_tokenizer() const { return impl_->tokenizer != nullptr; }
const Tokenizer& Engine::tokenizer() const {
  if (!impl_->tokenizer) throw std::runtime_error("this model was loaded without a tokenizer; pass --tokenizer FILE");
  return *impl_->tokenizer;
}

std::unique_ptr<Session> Engine::new_session() {
  auto s = std::make_unique<Session::Impl>();
  s->model = impl_->model.get();
  s->tokenizer = impl_->tokenizer.get();
  s->cache = impl_->model->new_cache(impl_->info.ctx);
  s->threads = impl_->info.threads;
  return std::unique_ptr<Session>(new Session(std::move(s)));
}

std::vector<float> Engine::logits(const std::vector<int>& ids) {
  const int vocab = impl_->info.vocab_size;
  if (ids.empty()) throw std::invalid_argument("no token ids");
  for (int id : ids)
    if (id < 0 || id >= vocab) throw std::invalid_argument("token id " + std::to_string(id) + " is outside the vocabulary (0.." + std::to_string(vocab - 1) + ")");
  KVCache cache = impl_->model->new_cache(int(ids.size()));
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

Session::Session(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Session::~Session() = default;
int Session::cached_tokens() const { return int(impl_->cached.size()); }
void Session::reset() { impl_->cached.clear(); }

namespace {

// Holds back generated text that might be the start of a stop string.
class StopMatcher {
 public:
  explicit StopMatcher(const std::vector<std::string>& stops) : stops_(stops) {}
  // Adds text; returns what can be shown now. Sets `stopped` when a stop string appears
  // (the stop string and anything after it are dropped).
  std::string push(const std::string& text, bool& stopped) {
    pending_ += text;
    size_t cut = std::string::npos;
    for (const auto& s : stops_)
      if (!s.empty()) cut = std::min(cut, pending_.find(s));
    if (cut != std::string::npos) {
      stopped = true;
      std::string out = pending_.substr(0, cut);
      pending_.clear();
      return out;
    }
    size_t hold = 0;  // the longest suffix of pending_ that begins some stop string
    for (const auto& s : stops_)
      for (size_t n = std::min(s.size() - 1, pending_.size()); n > hold; --n)
        if (pending_.compare(pending_.size() - n, n, s, 0, n) == 0) {
          hold = n;
          break;
        }
    std::string out = pending_.substr(0, pending_.size() - hold);
    pending_.erase(0, pending_.size() - hold);
    return out;
  }
  std::string flush() { return std::exchange(pending_, {}); }

 private:
  const std::vector<std::string>& stops_;
  std::string pending_;
};

}  // namespace

GenerateResult Session::generate(const GenerateRequest& req, const std::function<bool(const TokenEvent&)>& on_token) {
  Impl& s = *impl_;
  const auto t0 = Clock::now();
  // OpenMP thread counts are per calling thread: a server worker must set its own.
  if (at::get_num_threads() != s.threads) at::set_num_threads(s.threads);
  const int ctx = s.cache.ctx;
  const int vocab = s.model->config().vocab_size;
  const auto& prompt = req.prompt_ids;
  if (prompt.empty()) throw std::invalid_argument("the prompt is empty");
  for (int id : prompt)
    if (id < 0 || id >= vocab) throw std::invalid_argument("token id " + std::to_string(id) + " is outside the vocabulary");
  if (int(prompt.size()) >= ctx) throw ContextOverflow(int(prompt.size()), ctx);

  // Reuse the cached prefix; at least the last prompt token is run again for its logits.
  size_t common = 0;
  while (common < s.cached.size() && common < prompt.size() && s.cached[common] == prompt[common]) ++common;
  common = std::min(common, prompt.size() - 1);
  s.cached.resize(common);

  GenerateResult result;
  Metrics& m = result.metrics;
  m.prompt_tokens = int(prompt.size());
  m.prompt_tokens_processed = int(prompt.size() - common);

  torch::Tensor logits;
  for (size_t start = common; start < prompt.size(); start += kPrefillChunk) {
    std::vector<int> chunk(prompt.begin() + start, prompt.begin() + std::min(prompt.size(), start + kPrefillChunk));
    logits = s.model->forward(chunk, int(start), s.cache, /*all_logits=*/false);
    s.cached.insert(s.cached.end(), chunk.begin(), chunk.end());
  }
  const double prefill_s = seconds_since(t0);
  m.prompt_tokens_per_s = prefill_s > 0 ? m.prompt_tokens_processed / prefill_s : 0;

  const uint64_t seed = req.sampling.seed ? *req.sampling.seed : std::random_device{}();
  Sampler sampler(req.sampling, seed);
  std::optional<StreamingDecoder> decoder;
  if (s.tokenizer) decoder.emplace(*s.tokenizer);
  StopMatcher stop(req.stop);
  const std::vector<int> no_eos;
  const std::vector<int>& eos = (req.ignore_eos || !s.tokenizer) ? no_eos : s.tokenizer->eos_ids;

  std::vector<int> history = prompt;
  Clock::time_point t_first, t_last;
  bool stopped = false;
  result.finish_reason = "length";
  while (int(result.ids.size()) < req.max_tokens) {
    std::vector<float> row = row_to_vector(logits, 0);
    std::optional<TokenLogprob> lp;
    std::vector<float> raw;
    if (req.top_logprobs >= 0) raw = row;  // logprobs describe the model, before penalties
    if (req.constraint)  // budget: max_tokens, or the context end (the token sampled at a full cache still counts)
      req.constraint->mask(row.data(), vocab, std::min(req.max_tokens - int(result.ids.size()), ctx - int(s.cached.size()) + 1));
    const int id = sampler.sample(row, history, result.ids);
    t_last = Clock::now();
    if (result.ids.empty() && !stopped) t_first = t_last;
    if (req.top_logprobs >= 0) {
      lp = logprobs_of(raw, id, req.top_logprobs);
      if (s.tokenizer) {
        lp->text = s.tokenizer->token_bytes(id);
      }
    }
    if (std::find(eos.begin(), eos.end(), id) != eos.end()) {
      if (result.ids.empty()) t_first = t_last;
      result.finish_reason = "stop";
      break;
    }
    if (req.constraint) req.constraint->accept(id);
    result.ids.push_back(id);
    history.push_back(id);
    if (lp) result.logprobs.push_back(*lp);

    TokenEvent ev;
    ev.id = id;
    ev.logprob = lp;
    if (decoder) ev.text = stop.push(decoder->push(id), stopped);
    result.text += ev.text;
    if (on_token && !on_token(ev)) {
      result.finish_reason = "cancelled";
      break;
    }
    if (stopped || (req.constraint && req.constraint->finished())) {
      result.finish_reason = "stop";
      break;
    }
    if (int(result.ids.size()) >= req.max_tokens) break;
    if (int(s.cached.size()) >= ctx) break;  // context full: "length"
    logits = s.model->forward({id}, int(s.cached.size()), s.cache, /*all_logits=*/false);
    s.cached.push_back(id);
  }
  if (decoder && !stopped && result.finish_reason != "cancelled") {
    std::string tail = stop.push(decoder->flush(), stopped);
    if (!stopped) tail += stop.flush();
    if (stopped) result.finish_reason = "stop";
    if (!tail.empty()) {
      result.text += tail;
      TokenEvent ev;  // the held-back end of the text, with no new token
      ev.id = -1;
      ev.text = tail;
      if (on_token) on_token(ev);
    }
  }
  const bool any = !result.ids.empty() || result.finish_reason == "stop";
  m.completion_tokens = int(result.ids.size());
  m.ttft_s = any ? std::chrono::duration<double>(t_first - t0).count() : seconds_since(t0);
  const double decode_s = std::chrono::duration<double>(t_last - t_first).count();
  m.decode_tokens_per_s = (m.completion_tokens > 1 && decode_s > 0) ? (m.completion_tokens - 1) / decode_s : 0;
  m.total_time_s = seconds_since(t0);
  return result;
}

}  // namespace cpuchat
