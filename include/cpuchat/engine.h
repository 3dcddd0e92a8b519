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

// int4 weight quantization: group-wise (32 along K) or per output channel.
enum class QuantScheme { Q4G32, Q4C };
std::string quant_name(QuantScheme q);
QuantScheme parse_quant(const std::string& s);  // throws std::invalid_argument

struct LoadOptions {
  std::string model_path;        // HF dir, Meta dir, llama2.c .bin, or .gguf
  std::string synthetic;         // instead of a path: random weights of a known shape ("llama3.1-8b", ...)
  std::string tokenizer_path;    // optional override (required for llama2.c .bin)
  Backend backend = Backend::INT4;
  QuantScheme quant = QuantScheme::Q4G32;
  int threads = 0;               // 0: physical cores
  int ctx = 0;                   // KV cache length per session; 0: min(model max, 4096)
  bool cache_packed = false;     // save/load the int4-packed weights next to the model
  bool require_tokenizer = true; // false: token-id-only use (logits/generate --ids) may lack one
};

struct ModelInfo {
  std::string path;
  std::string name;        // e.g. directory name
  std::string format;      // "hf", "meta", "llama2c", "gguf"
  std::string backend;     // "fp32", "bf16", "int4"
  std::string quant;       // "q4g32"/"q4c" for int4, "" otherwise
  std::string isa;         // kernel ISA in use ("avx512vnni", "avx2", "dotprod", "i8mm", "scalar"), "" for torch
  int threads = 0;
  int ctx = 0;             // per-session context length
  int max_position = 0;    // model's trained context
  int vocab_size = 0, dim = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, hidden_dim = 0;
  int64_t n_params = 0;
  int64_t weight_bytes_per_token = 0;  // bytes of weights read to produce one token
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

class Model;  // the loaded weights (src/model), shared by all sessions

// One conversation slot: owns a KV cache of LoadOptions::ctx positions. Reuses the
// cached prefix of the previous request (longest common token prefix), so a follow-up
// turn only processes its new suffix. Not thread-safe: one request at a time per session.
class Session {
 public:
  ~Session();
  // Runs one request. on_token is called for every sampled token, as it is sampled;
  // returning false cancels (finish_reason "cancelled"). Throws ContextOverflow.
  GenerateResult generate(const GenerateRequest& req,
                          const std::function<bool(const TokenEvent&)>& on_token = {});
  int cached_tokens() const;  // positions currently valid in the KV cache
  void reset();               // forget the cache
 private:
  friend class Engine;
  struct Impl;
  explicit Session(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
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

  // Full-sequence forward in one pass: logits [ids.size() x vocab] (row-major fp32).
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
