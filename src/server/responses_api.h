// The OpenAI Responses API (POST/GET/DELETE /v1/responses, docs/API.md "Responses API") on top of
// the chat path: a request is translated into a chat completion body (so messages, tools,
// text.format and every sampling field go through parse_chat_request, chat_prompt and
// make_constraint unchanged), the answer is shaped by shape_answer / ChatStreamShaper, and
// this file only turns those into the Responses wire format. Conversations of stored responses
// live in a bounded LRU store so previous_response_id can continue them.
#pragma once
#include <cstddef>
#include <list>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "server/api_error.h"
#include "server/openai_api.h"
#include "server/structured_output.h"

namespace cpuchat::server {

// One stored response: its object (for GET) and the conversation up to and including its
// answer, as chat messages without the instructions (they are not carried over, as OpenAI).
struct StoredResponse {
  std::string root_id;                    // the conversation's first response: its slot affinity
  nlohmann::json response;
  nlohmann::ordered_json conversation;    // chat messages
  size_t bytes = 0;                       // what it costs the store (set by put)
};

// Thread-safe LRU of stored responses, bounded by count and by bytes.
class ResponseStore {
 public:
  ResponseStore(size_t max_count, size_t max_bytes) : max_count_(max_count), max_bytes_(max_bytes) {}
  void put(const std::string& id, StoredResponse r);
  std::optional<StoredResponse> get(const std::string& id);  // marks it recently used
  bool erase(const std::string& id);
  size_t size() const;

 private:
  using Entry = std::pair<std::string, StoredResponse>;
  const size_t max_count_, max_bytes_;
  mutable std::mutex mu_;
  std::list<Entry> lru_;  // most recently used first
  std::unordered_map<std::string, std::list<Entry>::iterator> index_;
  size_t bytes_ = 0;
};

// What a Responses request adds to its chat translation.
struct ResponsesTurn {
  std::string id;                       // "resp_..."
  std::string root_id;                  // the conversation's first response (this one for a new one)
  bool store = true;
  bool truncation_auto = false;         // truncation: "auto" drops the oldest turns to fit the context
  nlohmann::ordered_json echo;          // request fields the response object repeats
  nlohmann::ordered_json chat_body;     // the chat completion request it runs as
  size_t instruction_messages = 0;      // leading system message(s) from `instructions` (not stored)
};

// Validates a POST /v1/responses body (400s name the field: input[2].content[0].type, ...) and
// translates it; a previous_response_id the store does not hold is a 404.
ResponsesTurn parse_responses_request(const std::string& raw_body, ResponseStore& store);

nlohmann::json responses_usage_json(const Metrics& m);

// The response object. status: "in_progress", "completed", "incomplete", "failed".
nlohmann::json response_object(const ResponsesTurn& t, const AnswerHeader& h, const std::string& status,
                               const nlohmann::json& output, const nlohmann::json& usage,
                               const nlohmann::json& metrics, const nlohmann::json& error = nullptr);
// The output items of an answer: a message with output_text, or function_call items.
nlohmann::json output_items(const AnswerHeader& h, const ChatAnswer& a);
// "completed" or "incomplete" (budget ran out) for an answer's finish reason.
std::string response_status(const std::string& finish_reason);
// The finished conversation, to store: the request's messages (less the instructions) and the answer.
StoredResponse stored_response(const ResponsesTurn& t, const AnswerHeader& h, const ChatAnswer& a,
                               const nlohmann::json& response);

// Typed server-sent events of a streamed response, each with its sequence_number. It reads the
// chat chunks ChatStreamShaper makes (content and tool-call deltas) and emits the matching
// output item, content part, delta and done events.
class ResponsesStream {
 public:
  ResponsesStream(const ResponsesTurn& t, const AnswerHeader& h) : t_(t), h_(h) {}
  std::string start();                                // response.created, response.in_progress
  std::string push(const nlohmann::json& chat_chunk);
  // The done events and response.completed / response.incomplete; `response` gets the final object.
  std::string finish(const std::string& finish_reason, const nlohmann::json& usage, const nlohmann::json& metrics,
                     ChatAnswer* answer, nlohmann::json* response);
  std::string failed(const ApiError& e);              // error and response.failed

 private:
  std::string event(const char* type, nlohmann::json data);
  std::string close_open_item();
  const ResponsesTurn& t_;
  const AnswerHeader& h_;
  int sequence_ = 0;
  nlohmann::json done_items_ = nlohmann::json::array();
  ChatAnswer answer_;
  enum class Open { None, Message, Call } open_ = Open::None;
  std::string text_;       // the open message's text so far
  std::string call_args_;  // the open call's arguments so far
};

}  // namespace cpuchat::server
