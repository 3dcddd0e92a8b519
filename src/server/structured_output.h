// Tools and structured outputs on the HTTP side (docs/API.md "Tool calling and structured
// outputs"): the prompt with tool definitions, the TokenConstraint a request needs, tool
// calls found in (or forced into) the answer, and the OpenAI shapes of both, blocking and
// streamed. server.cpp calls these at three points: preparing the request, formatting the
// final message, and formatting stream deltas.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cpuchat/constraint.h"
#include "cpuchat/engine.h"
#include "server/openai_api.h"
#include "server/request_parser.h"
#include "server/served_model.h"

namespace cpuchat::server {

// The chat prompt: the model's template with the request's tools (Llama 3.1's JSON tool prompt).
std::vector<int> chat_prompt(const ServedModel& model, const ChatRequest& r);

// The constraint for a request, or null when it needs none. Throws ApiError(400) for a bad
// schema or grammar (naming the keyword), an id outside the vocabulary in logit_bias, or a
// budget below the shortest valid answer.
std::shared_ptr<TokenConstraint> make_constraint(const ServedModel& model, const OutputOptions& o, int max_tokens);

// The id of an answer's index-th tool call ("call_..."), the same streamed and not.
std::string tool_call_id(const AnswerHeader& h, size_t index);

// One tool call of an answer, in OpenAI's shape.
struct ToolCall {
  std::string id;         // "call_..."
  std::string name;
  std::string arguments;  // JSON text
};

// The answer's message: tool calls (Llama 3.1's {"name", "parameters"} JSON or a
// <|python_tag|> call) when tools are enabled and the text is one, else plain content.
struct ChatAnswer {
  std::optional<std::string> content;  // null when the answer is tool calls
  std::vector<ToolCall> tool_calls;
  std::string finish_reason;
};
ChatAnswer shape_answer(const OutputOptions& o, const std::string& text, const std::string& finish_reason);

// The non-streaming chat.completion object for a shaped answer.
nlohmann::json chat_answer_json(const AnswerHeader& h, const ChatAnswer& a, const nlohmann::json& logprobs,
                                const nlohmann::json& usage, const nlohmann::json& metrics);

// Turns generated text into stream chunks. Plain answers stream as content deltas; a forced
// tool call streams as delta.tool_calls (index, id, type and name first, then argument
// fragments as they are generated); with tool_choice "auto" an answer that starts like a
// tool call is held back until it is known to be one.
class ChatStreamShaper {
 public:
  ChatStreamShaper(const AnswerHeader& h, const OutputOptions& o);
  std::vector<nlohmann::json> push(const std::string& text, const nlohmann::json& logprobs);
  // The last chunks before the finish chunk; sets the finish reason to report.
  std::vector<nlohmann::json> finish(const std::string& full_text, std::string& finish_reason);

 private:
  nlohmann::json tool_delta(const nlohmann::json& call) const;
  const AnswerHeader& h_;
  const OutputOptions& o_;
  enum class Mode { Content, Forced, Auto } mode_;
  std::string text_;         // everything generated so far
  bool holding_ = false;     // auto: held back while it may be a tool call
  size_t args_begin_ = std::string::npos;  // forced: where the arguments start in text_
  size_t args_sent_ = 0;     // forced: argument bytes sent
  std::string call_id_;
};

}  // namespace cpuchat::server
