#include "server/serve_options.h"

#include <cerrno>
#include <cstdlib>
#include <optional>

namespace cpuchat::server {

namespace {

long long parse_int(const std::string& flag, const std::string& v, long long lo, long long hi) {
  errno = 0;
  char* end = nullptr;
  long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end || errno || x < lo || x > hi)
    throw UsageError(flag + " expects an integer in [" + std::to_string(lo) + ", " +
                     std::to_string(hi) + "], got '" + v + "'");
  return x;
}

double parse_double(const std::string& flag, const std::string& v, double lo, double hi) {
  errno = 0;
  char* end = nullptr;
  double x = std::strtod(v.c_str(), &end);
  if (v.empty() || *end || errno || !(x >= lo && x <= hi))
    throw UsageError(flag + " expects a number in [" + std::to_string(lo) + ", " +
                     std::to_string(hi) + "], got '" + v + "'");
  return x;
}

Backend parse_backend_label(const std::string& s) {
  if (s == "int4") return Backend::INT4;
  if (s == "bf16") return Backend::BF16;
  if (s == "fp32") return Backend::FP32;
  throw UsageError("--backend: unknown backend '" + s + "' (expected int4, bf16 or fp32)");
}

}  // namespace

std::string backend_label(Backend b) {
  switch (b) {
    case Backend::INT4: return "int4";
    case Backend::BF16: return "bf16";
    default: return "fp32";
  }
}

const char* serve_usage() {
  return "usage: cpuchat serve --model PATH [flags]\n"
         "  --model PATH            HF dir, Meta dir, llama2.c .bin or .gguf (required)\n"
         "  --tokenizer FILE        tokenizer override (required for llama2.c .bin)\n"
         "  --backend LIST          int4|bf16|fp32, or a comma list (one model id each) [int4]\n"
         "  --quant q4g32|q4c|q4k   int4 weight scheme [q4k]\n"
         "  --cache-packed          save/load int4-packed weights next to the model\n"
         "  --host ADDR             bind address [127.0.0.1]\n"
         "  --port N                port, 0 for any free port [8080]\n"
         "  --threads N             compute threads [physical cores]\n"
         "  --ctx N                 context length per session [min(model, 4096)]\n"
         "  --parallel N            slots per model: requests batched together into each forward step [4]\n"
         "  --kv-type fp32|bf16|int8  KV cache storage [bf16]. Bytes per token and slot (kv_bytes_per_token in\n"
         "                          /v1/models) = 2 x layers x kv_heads x head_dim x 4 | 2 | 1 (+4 per head row for\n"
         "                          int8): Llama 3.1 8B 256 | 128 | 66 KiB, 3.2 1B 64 | 32 | 17 KiB\n"
         "  --step-budget-ms MS     target time of a forward step while others decode: sizes the prompt chunk\n"
         "                          that rides along (chunked prefill); a prompt gets at least as much of a\n"
         "                          step as the decode rows, so a big model still admits newcomers [300]\n"
         "  --batch-tokens N        token rows per forward step at most [512]\n"
         "  --max-queue N           requests waiting per model before 429 [16]\n"
         "  --max-connections N     open HTTP connections before new ones get 503 [512]\n"
         "  --max-body-bytes N      request body limit (413 above) [4194304]\n"
         "  --max-stored-responses N  /v1/responses kept for previous_response_id and GET, least recently\n"
         "                          used dropped first (also at most 256 MiB of them); 0 stores none [1000]\n"
         "  --instance NAME         price preset for the cost metrics [r8g.4xlarge] (GET /v1/instances)\n"
         "  --price-per-hour USD    override the instance price\n"
         "  --api-key KEY           require 'Authorization: Bearer KEY' on /v1/* and /metrics\n"
         "  --cors-origin ORIGIN    send Access-Control-Allow-Origin: ORIGIN (\"*\" for any)\n"
         "  --drain-timeout S       on SIGTERM/SIGINT: refuse new work (/health 503) and let running\n"
         "                          generations finish for up to S seconds, then exit 0; a second signal\n"
         "                          exits at once [30]\n"
         "  --instance-id ID        sent as X-Cpuchat-Instance on every response [host:port]\n"
         "  --help                  this text\n";
}

ServeOptions parse_serve_args(int argc, char** argv) {
  ServeOptions o;
  std::optional<std::string> instance;
  std::optional<double> price;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i], value;
    bool has_inline_value = false;
    if (flag.rfind("--", 0) == 0 && flag.find('=') != std::string::npos) {
      value = flag.substr(flag.find('=') + 1);
      flag = flag.substr(0, flag.find('='));
      has_inline_value = true;
    }
    auto next = [&]() -> std::string {
      if (has_inline_value) return value;
      if (i + 1 >= argc) throw UsageError(flag + " needs a value");
      return argv[++i];
    };
    if (flag == "--help" || flag == "-h") o.help = true;
    else if (flag == "--model") o.model_path = next();
    else if (flag == "--tokenizer") o.tokenizer_path = next();
    else if (flag == "--backend") {
      o.backends.clear();
      std::string list = next();
      size_t pos = 0;
      while (true) {
        size_t comma = list.find(',', pos);
        Backend b = parse_backend_label(list.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos));
        for (Backend seen : o.backends)
          if (seen == b) throw UsageError("--backend: '" + backend_label(b) + "' given twice");
        o.backends.push_back(b);
        if (comma == std::string::npos) break;
        pos = comma + 1;
      }
    } else if (flag == "--quant") {
      std::string q = next();
      if (q == "q4g32") o.quant = QuantScheme::Q4G32;
      else if (q == "q4c") o.quant = QuantScheme::Q4C;
      else if (q == "q4k") o.quant = QuantScheme::Q4K;
      else throw UsageError("--quant: unknown scheme '" + q + "' (expected q4g32, q4c or q4k)");
    } else if (flag == "--cache-packed") o.cache_packed = true;
    else if (flag == "--host") o.host = next();
    else if (flag == "--port") o.port = static_cast<int>(parse_int(flag, next(), 0, 65535));
    else if (flag == "--threads") o.threads = static_cast<int>(parse_int(flag, next(), 0, 4096));
    else if (flag == "--ctx") o.ctx = static_cast<int>(parse_int(flag, next(), 0, 1 << 20));
    else if (flag == "--parallel") o.parallel = static_cast<int>(parse_int(flag, next(), 1, 256));
    else if (flag == "--max-queue") o.max_queue = static_cast<int>(parse_int(flag, next(), 0, 100000));
    else if (flag == "--max-stored-responses") o.max_stored_responses = static_cast<int>(parse_int(flag, next(), 0, 10000000));
    else if (flag == "--max-connections") o.max_connections = static_cast<int>(parse_int(flag, next(), 1, 900));
    else if (flag == "--kv-type") {
      const std::string t = next();
      if (t == "fp32") o.kv_type = KVType::FP32;
      else if (t == "bf16") o.kv_type = KVType::BF16;
      else if (t == "int8") o.kv_type = KVType::INT8;
      else throw UsageError("--kv-type: unknown type '" + t + "' (expected fp32, bf16 or int8)");
    } else if (flag == "--step-budget-ms") o.step_budget_ms = parse_double(flag, next(), 1, 1e6);
    else if (flag == "--batch-tokens") o.batch_tokens = static_cast<int>(parse_int(flag, next(), 1, 1 << 16));
    else if (flag == "--max-body-bytes") o.max_body_bytes = static_cast<size_t>(parse_int(flag, next(), 1024, 1ll << 34));
    else if (flag == "--instance") instance = next();
    else if (flag == "--price-per-hour") price = parse_double(flag, next(), 0, 1e6);
    else if (flag == "--api-key") o.api_key = next();
    else if (flag == "--cors-origin") o.cors_origin = next();
    else if (flag == "--drain-timeout") o.drain_timeout_s = static_cast<int>(parse_int(flag, next(), 0, 86400));
    else if (flag == "--instance-id") {
      o.instance_id = next();
      if (o.instance_id.empty()) throw UsageError("--instance-id must not be empty");
      for (unsigned char c : o.instance_id)  // it goes into an HTTP header
        if (c < 0x21 || c > 0x7e) throw UsageError("--instance-id: only printable ASCII without spaces");
    }
    else throw UsageError("unknown flag '" + std::string(argv[i]) + "' (see cpuchat serve --help)");
  }
  if (o.help) return o;
  if (o.model_path.empty()) throw UsageError("--model PATH is required (see cpuchat serve --help)");
  try {
    o.pricing = resolve_pricing(instance, price, Pricing{});
  } catch (const std::invalid_argument&) {
    throw UsageError("--instance: unknown instance '" + *instance + "' (known: r8g/c8g/m8g/c7i/m7i/r7i/c7a .large..16xlarge)");
  }
  return o;
}

}  // namespace cpuchat::server
