// OpenAI wire format: response objects, stream chunks and SSE framing for
// /v1/chat/completions and /v1/completions, plus the `metrics` extension (docs/API.md).
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cpuchat/engine.h"
#include "server/pricing.h"

namespace cpuchat::server {

// Responses (/v1/responses) runs as a chat completion; only its wire format differs (responses_api.h).
enum class Endpoint { Chat, TextCompletion, Responses };

// Identity of one answer, repeated in every chunk of a stream.
struct AnswerHeader {
  Endpoint endpoint = Endpoint::Chat;
  std::string id;        // "chatcmpl-..." / "cmpl-..." / "resp_..."
  int64_t created = 0;   // unix seconds
  std::string model;     // the served model id, e.g. "stories260K-int4"
  int choice = 0;        // the choice's index (n > 1 answers share one id)
};
AnswerHeader new_answer_header(Endpoint endpoint, const std::string& model);
// "req_..." for the X-Request-Id of a request that brought none.
std::string new_request_id();

using TokenBytesFn = std::function<std::string(int id)>;

// The `metrics` extension object.
nlohmann::json metrics_json(const Metrics& m, const Pricing& pricing, const std::string& backend,
                            const std::string& model);
nlohmann::json usage_json(const Metrics& m);
// Logprobs of some tokens in the endpoint's shape (chat: {"content": [...]}, completions:
// {"tokens", "token_logprobs", "top_logprobs", "text_offset"}). text_offset starts at `offset`.
nlohmann::json logprobs_json(Endpoint endpoint, const std::vector<TokenLogprob>& lps,
                             const TokenBytesFn& token_bytes, size_t offset = 0);

// Non-streaming answer. `logprobs` is null when not requested.
nlohmann::json completion_json(const AnswerHeader& h, const std::string& text,
                               const std::string& finish_reason, const nlohmann::json& logprobs,
                               const nlohmann::json& usage, const nlohmann::json& metrics);

// Stream chunks. The first chat chunk carries the role; text completions have none.
nlohmann::json role_chunk_json(const AnswerHeader& h);
nlohmann::json delta_chunk_json(const AnswerHeader& h, const std::string& text,
                                const nlohmann::json& logprobs);
nlohmann::json finish_chunk_json(const AnswerHeader& h, const std::string& finish_reason,
                                 const nlohmann::json& metrics);
nlohmann::json usage_chunk_json(const AnswerHeader& h, const nlohmann::json& usage);

// SSE framing: one `data:` event per JSON object; the stream ends with [DONE].
std::string sse_event(const nlohmann::json& j);
inline constexpr const char* kSseDone = "data: [DONE]\n\n";

}  // namespace cpuchat::server
