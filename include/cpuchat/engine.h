// The engine: a loaded model plus per-conversation sessions (each owning a KV cache),
// sampling and generation with metrics. This header has no libtorch types so the server
// and CLI compile quickly; the model lives behind a pimpl.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpuchat/constraint.h"
#include "cpuchat/tokenizer.h"

namespace cpuchat {

// How the linear layers run: plain libtorch (the "before" path) or the INT4 kernels.
enum class Backend { FP32, BF16, INT4 };
std::string backend_name(Backend b);
Backend parse_backend(const std::string& s);  // throws std::invalid_argument

// int4 weight quantization: group-wise (32 along K), per output channel, or K-quant class
// (asymmetric, 6-bit scale + min per 32 in 256-K super-blocks: llama.cpp's Q4_K).
enum class QuantScheme { Q4G32, Q4C, Q4K };
std::string quant_name(QuantScheme q);
QuantScheme parse_quant(const std::string& s);  // throws std::invalid_argument

// How the KV cache stores keys and values. bf16 halves and int8 (one fp32 scale per
// head row) quarters fp32's memory and the bytes attention reads per token.
enum class KVType { FP32, BF16, INT8 };
std::string kv_type_name(KVType t);
KVType parse_kv_type(const std::string& s);  // throws std::invalid_argument

// The engine's scheduler: how many sequences run at once and how a step is sized.
struct BatchOptions {
  int slots = 4;               // KV caches: sequences in flight (--parallel)
  int max_queue = 16;          // requests that may wait for a slot; more are refused (QueueFull)
  double step_budget_ms = 300; // target time of one forward step: bounds the prefill chunk
                               // that rides along with running decodes (--step-budget-ms)
  int batch_tokens = 512;      // token rows per forward step at most (--batch-tokens)
};

struct LoadOptions {
  std::string model_path;        // HF dir, Meta dir, llama2.c .bin, or .gguf
  std::string synthetic;         // instead of a path: random weights of a known shape ("llama3.1-8b", ...)
  std::string tokenizer_path;    // optional override (required for llama2.c .bin)
  Backend backend = Backend::INT4;
  QuantScheme quant = QuantScheme::Q4K;  // the most accurate at 4.5 bits/weight (docs/BENCHMARKS.md)
  int threads = 0;               // 0: physical cores
  int ctx = 0;                   // KV cache length per session; 0: min(model max, 4096)
  bool cache_packed = false;     // save/load the int4-packed weights next to the model
  bool require_tokenizer = true; // false: token-id-only use (logits/generate --ids) may lack one
  KVType kv_type = KVType::BF16; // KV cache storage
  BatchOptions batch;
};

struct ModelInfo {
  std::string path;
  std::string name;        // e.g. directory name
  std::string format;      // "hf", "meta", "llama2c", "gguf"
  std::string backend;     // "fp32", "bf16", "int4"
  std::string quant;       // "q4g32"/"q4c"/"q4k" for int4, "" otherwise
  std::string isa;         // kernel ISA in use ("amx", "avx512vnni", "avx2", "dotprod", "i8mm", "scalar"), "" for torch
  int threads = 0;
  int ctx = 0;             // per-session context length
  int max_position = 0;    // model's trained context
  int vocab_size = 0, dim = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, hidden_dim = 0;
  int64_t n_params = 0;
  int64_t weight_bytes_per_token = 0;  // bytes of weights read to produce one token
  std::string kv_type;                 // "fp32", "bf16", "int8"
  int64_t kv_bytes_per_token = 0;      // KV cache bytes one position costs in a slot
  int slots = 0;                       // sequences the scheduler runs at once
  int max_queue = 0;
  double load_time_s = 0;
};

struct SamplingParams {
  float temperature = 0.8f;      // 0: greedy
  int top_k = 40;                // <= 0: off
  float top_p = 0.95f;           // 1: off
  float min_p = 0.05f;           // 0: off
  float repetition_penalty = 1.0f;  // 1: off (llama.cpp style, over the last repeat_last_n tokens)
  int repeat_last_n = 64;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  std::optional<uint64_t> seed;  // same seed -> same output
};

struct GenerateRequest {
  std::vector<int> prompt_ids;          // fully rendered, with BOS
  int max_tokens = 256;                 // generated tokens at most
  SamplingParams sampling;
  std::vector<std::string> stop;        // stop strings (not included in the output)
  bool ignore_eos = false;
  int top_logprobs = -1;                // -1: no logprobs; 0..20: logprob of the chosen token + this many alternatives
  bool cache_prompt = true;             // reuse a prefix some slot's KV cache holds (false: run the whole prompt)
  // A conversation id (X-Session-Id, prompt_cache_key or user): its turns keep their slot,
  // and a free slot holding another key's conversation is only taken when no other is free.
  std::string affinity_key;
  // Grammar / JSON Schema / tool-call constraint and logit_bias (src/engine/token_constraint.h); null: free.
  std::shared_ptr<TokenConstraint> constraint;
};

struct TokenLogprob {
  int id = 0;
  std::string text;
  float logprob = 0;
  std::vector<std::pair<int, float>> top;  // (id, logprob)
};

// One step of streaming output. `text` is complete UTF-8 (may be empty while a
// character or a possible stop string is held back).
struct TokenEvent {
  int id = 0;  // -1: no new token, only text held back until the end (a partial stop string)
  std::string text;
  std::optional<TokenLogprob> logprob;
};

struct Metrics {
  int prompt_tokens = 0;            // tokens in the prompt
  int prompt_tokens_processed = 0;  // of those, how many were run (the rest came from the KV cache)
  int completion_tokens = 0;
  double ttft_s = 0;                // request start -> first token sampled
  double prompt_tokens_per_s = 0;   // processed prompt tokens / prefill time
  double decode_tokens_per_s = 0;   // tokens after the first / time after the first
  double total_time_s = 0;
  double queue_time_s = 0;          // waiting for a slot
  // Batching: the instance's time is shared by the sequences of each forward step, so an
  // answer is billed step time / sequences in the step for every step it took part in.
  double billed_time_s = 0;         // all steps (prefill and decode)
  double billed_decode_time_s = 0;  // steps after the first token
  double mean_batch_size = 0;       // sequences per step, averaged over this answer's steps
  double instance_decode_tokens_per_s = 0;  // all sequences' tokens / time, over this answer's decode steps
};

struct GenerateResult {
  std::vector<int> ids;          // sampled ids (without the prompt and without a final EOS)
  std::string text;
  std::string finish_reason;     // "stop" (EOS or stop string), "length" (max_tokens or context end), "cancelled"
  std::vector<TokenLogprob> logprobs;
  Metrics metrics;
};

// Thrown when the prompt plus at least one generated token does not fit the context.
struct ContextOverflow : std::runtime_error {
  ContextOverflow(int prompt_tokens, int ctx);
  int prompt_tokens, ctx;
};

// Thrown by submit() when max_queue requests already wait for a slot.
struct QueueFull : std::runtime_error {
  QueueFull() : std::runtime_error("too many requests are waiting for a slot") {}
};
// Thrown by submit() after shutdown() or drain().
struct SchedulerStopped : std::runtime_error {
  SchedulerStopped() : std::runtime_error("the engine is shutting down") {}
};

class Model;      // the loaded weights (src/model), shared by all slots
class Scheduler;  // src/engine/scheduler.h: slots, queue and the engine loop

using TokenCallback = std::function<bool(const TokenEvent&)>;

// A submitted request. Its tokens are produced by the engine loop; wait() hands them to
// the caller's thread, so a slow client never stalls the other sequences of a step.
class Generation {
 public:
  virtual ~Generation() = default;
  // Blocks until the request ends, calling on_token (on this thread) for each token as it
  // comes; on_token returning false, or keep_going() turning false (polled every ~20 ms,
  // also while queued), cancels: the slot is freed within one step. Throws ContextOverflow,
  // SchedulerStopped (shut down before the request finished) or the engine's error.
  virtual GenerateResult wait(const TokenCallback& on_token = {}, const std::function<bool()>& keep_going = {}) = 0;
  virtual void cancel() = 0;
};

// What the scheduler reports (for /v1/models, /metrics and the bench).
struct SchedulerStats {
  int slots = 0, busy_slots = 0, queued = 0;
  int64_t kv_bytes_in_use = 0;        // cached positions of all slots × kv_bytes_per_token
  int64_t kv_bytes_capacity = 0;      // slots × ctx × kv_bytes_per_token
  int64_t steps = 0;                  // forward steps run
  int64_t step_rows = 0;              // token rows over all steps
  std::vector<int64_t> steps_by_batch_size;  // [n]: steps that carried n sequences (index 0 unused)
  int64_t generated_tokens = 0, prompt_tokens_processed = 0, prompt_tokens_cached = 0;
};

// One conversation for the CLI: generate() submits to the engine's scheduler and waits.
// The scheduler routes each request to the slot whose cache shares the longest prefix,
// so a follow-up turn only processes its new suffix.
class Session {
 public:
  ~Session();
  // Runs one request. on_token is called for every sampled token, as it is sampled;
  // returning false cancels (finish_reason "cancelled"). Throws ContextOverflow.
  GenerateResult generate(const GenerateRequest& req, const TokenCallback& on_token = {});
  int cached_tokens() const;  // prompt + answer tokens of the last request kept in a slot
  void reset();               // forget the conversation
 private:
  friend class Engine;
  Session(Scheduler* scheduler) : scheduler_(scheduler) {}
  Scheduler* scheduler_;
  int cached_ = 0;
};

class Engine {
 public:
  // Loads model + tokenizer. Throws std::runtime_error with a one-line message naming
  // the file and the problem.
  static std::unique_ptr<Engine> load(const LoadOptions& opts);
  ~Engine();

  const ModelInfo& info() const;
  void set_threads(int threads);  // for benchmarks that sweep thread counts
  const Tokenizer& tokenizer() const;  // throws if loaded without one
  bool has_tokenizer() const;
  std::unique_ptr<Session> new_session();

  // Queues a request for the engine loop (thread-safe). Throws QueueFull, SchedulerStopped,
  // ContextOverflow or std::invalid_argument (bad token ids) at once.
  std::shared_ptr<Generation> submit(GenerateRequest req);
  SchedulerStats stats() const;
  // Cancels queued and running requests and refuses new ones.
  void shutdown();
  // Refuses new requests (SchedulerStopped) but lets queued and running ones finish.
  void drain();

  // Full-sequence forward in one pass: logits [ids.size() x vocab] (row-major fp32), with a
  // KV cache of its own of the engine's kv type (not a slot; safe beside the scheduler only
  // when nothing else runs).
  std::vector<float> logits(const std::vector<int>& ids);

 private:
  Engine();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Physical cores of this machine (the default thread count).
int physical_cores();
// Peak resident set size of this process, in bytes (VmHWM).
int64_t peak_rss_bytes();

}  // namespace cpuchat
