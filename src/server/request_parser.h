// Parses and validates request bodies of the OpenAI endpoints (docs/API.md) into plain
// structs. Every problem throws ApiError(400) naming the field, so handlers never see
// a half-valid request.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cpuchat/engine.h"
#include "cpuchat/tokenizer.h"
#include "server/api_error.h"

namespace cpuchat::server {

inline constexpr int kMaxTokensLimit = 1000000;  // above this a max_tokens value is a mistake
inline constexpr int kMaxStopStrings = 4;
inline constexpr int kMaxTopLogprobs = 20;

// Fields shared by /v1/chat/completions and /v1/completions.
struct CompletionParams {
  std::string model;                  // "" selects the first backend
  std::optional<int> max_tokens;      // none: up to the end of the context
  SamplingParams sampling;            // engine defaults where the request is silent
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;         // stream_options.include_usage
  int top_logprobs = -1;              // -1: no logprobs
  bool ignore_eos = false;            // extension (as llama.cpp): generate up to max_tokens
  std::optional<std::string> instance;      // extension: cost this answer at a preset's price
  std::optional<double> price_per_hour;     // extension: ... or at this price
};

struct ChatRequest {
  CompletionParams params;
  std::vector<ChatMessage> messages;
};

struct TextCompletionRequest {
  CompletionParams params;
  std::string prompt;
};

// Body text -> JSON object (400 "invalid_json" otherwise).
nlohmann::json parse_json_object(const std::string& body);
ChatRequest parse_chat_request(const nlohmann::json& body);
TextCompletionRequest parse_completion_request(const nlohmann::json& body);

}  // namespace cpuchat::server
