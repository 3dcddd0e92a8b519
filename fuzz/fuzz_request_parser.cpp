// The OpenAI request bodies: /v1/chat/completions and /v1/completions (the first byte picks
// which). Anything malformed must be an ApiError with a 4xx status, never another exception.
#include <cstdint>
#include <string>

#include "server/request_parser.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const std::string body(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    const nlohmann::json j = cpuchat::server::parse_json_object(body);
    if (data[0] & 1)
      cpuchat::server::parse_chat_request(j);
    else
      cpuchat::server::parse_completion_request(j);
  } catch (const cpuchat::server::ApiError& e) {
    if (e.status < 400 || e.status >= 500) __builtin_trap();
  }
  return 0;
}
