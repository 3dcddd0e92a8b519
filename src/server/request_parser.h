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
inline constexpr int kMaxChoices = 128;          // n, as OpenAI's limit
inline constexpr int kMaxStopStrings = 4;
inline constexpr int kMaxTopLogprobs = 20;

// One entry of `tools` (type "function").
struct ToolDefinition {
  std::string name;
  nlohmann::ordered_json parameters;  // JSON Schema of the arguments; null when not given
};

enum class ToolChoice { Auto, None, Required, Function };
enum class ResponseFormat { Text, JsonObject, JsonSchema };

// What shapes the answer: tools, response_format, the `grammar` extension, logit_bias.
struct OutputOptions {
  std::vector<ToolDefinition> tools;
  std::string tools_json;                    // `tools` as sent (key order kept), for the prompt
  ToolChoice tool_choice = ToolChoice::Auto;
  std::string tool_choice_name;              // ToolChoice::Function
  bool parallel_tool_calls = true;
  ResponseFormat response_format = ResponseFormat::Text;
  nlohmann::ordered_json json_schema;        // response_format json_schema.schema
  std::string grammar;                       // extension (as llama.cpp): GBNF the answer must match
  std::vector<std::pair<int, float>> logit_bias;  // token id -> bias in [-100, 100]
  // Tools the model may call in this answer (none with tool_choice "none").
  bool tools_enabled() const { return !tools.empty() && tool_choice != ToolChoice::None; }
  bool forces_tool_call() const { return !tools.empty() && (tool_choice == ToolChoice::Required || tool_choice == ToolChoice::Function); }
  bool constrained() const { return forces_tool_call() || response_format != ResponseFormat::Text || !grammar.empty(); }
};

// Fields shared by /v1/chat/completions and /v1/completions.
struct CompletionParams {
  std::string model;                  // "" selects the first backend
  int n = 1;                          // answers to sample from the one prompt (choices)
  std::optional<int> max_tokens;      // none: up to the end of the context
  SamplingParams sampling;            // engine defaults where the request is silent
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;         // stream_options.include_usage
  int top_logprobs = -1;              // -1: no logprobs
  bool ignore_eos = false;            // extension (as llama.cpp): generate up to max_tokens
  std::optional<std::string> instance;      // extension: cost this answer at a preset's price
  std::optional<double> price_per_hour;     // extension: ... or at this price
  OutputOptions output;
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
// raw_body (the request text) keeps the key order of `tools` and of a response schema, which
// nlohmann::json's sorted objects lose: property order is the order the answer is written in.
ChatRequest parse_chat_request(const nlohmann::json& body, const std::string& raw_body = "");
TextCompletionRequest parse_completion_request(const nlohmann::json& body);

}  // namespace cpuchat::server
