// `cpuchat serve` flags.
#pragma once
#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpuchat/engine.h"
#include "server/pricing.h"

namespace cpuchat::server {

struct ServeOptions {
  std::string model_path;
  std::string tokenizer_path;
  std::vector<Backend> backends{Backend::INT4};  // one engine (and model id) per backend
  QuantScheme quant = QuantScheme::Q4K;
  bool cache_packed = false;
  std::string host = "127.0.0.1";
  int port = 8080;                 // 0: any free port (logged and printed)
  int threads = 0;                 // 0: physical cores
  int ctx = 0;                     // 0: engine default
  int parallel = 4;                // slots per engine: sequences batched into each step
  int max_queue = 16;              // waiting requests per engine before 429
  KVType kv_type = KVType::BF16;
  double step_budget_ms = 300;     // prefill chunk sizing (see BatchOptions)
  int batch_tokens = 512;
  size_t max_body_bytes = 4u << 20;
  int max_connections = 512;  // open HTTP connections; more get 503
  int max_stored_responses = 1000;  // /v1/responses kept for previous_response_id and GET (LRU)
  Pricing pricing;                 // --instance / --price-per-hour
  std::string api_key;             // "": no auth
  std::string cors_origin;         // "": no CORS headers
  int drain_timeout_s = 30;        // SIGTERM: how long running generations may finish
  std::string instance_id;         // X-Cpuchat-Instance; "": host:port
  bool help = false;
};

// A bad flag: the message is one line, the exit code 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// argv[0] is "serve". Accepts "--flag value" and "--flag=value".
ServeOptions parse_serve_args(int argc, char** argv);
const char* serve_usage();

// "int4" <-> Backend without needing the engine library (keeps this file testable alone).
std::string backend_label(Backend b);

}  // namespace cpuchat::server
