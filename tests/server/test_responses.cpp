// The Responses API's pieces without a server: the LRU store's bounds, the translation of a
// request into the chat request it runs as, and the typed stream events.
#include <gtest/gtest.h>

#include "server/request_parser.h"
#include "server/responses_api.h"

using namespace cpuchat::server;
using nlohmann::json;
using nlohmann::ordered_json;

namespace {

StoredResponse stored(const std::string& root, size_t payload) {
  StoredResponse s;
  s.root_id = root;
  s.response = {{"text", std::string(payload, 'x')}};
  s.conversation = ordered_json::array();
  return s;
}

}  // namespace

TEST(ResponseStore, EvictsLeastRecentlyUsedByCount) {
  ResponseStore store(2, 1 << 20);
  store.put("a", stored("a", 1));
  store.put("b", stored("a", 1));
  ASSERT_TRUE(store.get("a"));  // a is now the most recent
  store.put("c", stored("a", 1));
  EXPECT_TRUE(store.get("a"));
  EXPECT_FALSE(store.get("b"));
  EXPECT_TRUE(store.get("c"));
  EXPECT_EQ(store.size(), 2u);
  EXPECT_TRUE(store.erase("a"));
  EXPECT_FALSE(store.erase("a"));
  EXPECT_EQ(store.size(), 1u);
}

TEST(ResponseStore, EvictsByBytesAndStoresNothingAtZero) {
  ResponseStore store(100, 3000);
  for (int i = 0; i < 5; ++i) store.put("r" + std::to_string(i), stored("r0", 1000));
  EXPECT_LE(store.size(), 2u);  // ~1 KB each, 3 KB in all
  EXPECT_TRUE(store.get("r4"));
  EXPECT_FALSE(store.get("r0"));
  store.put("big", stored("big", 5000));  // larger than the whole budget: not kept
  EXPECT_FALSE(store.get("big"));
  ResponseStore none(0, 1 << 20);
  none.put("a", stored("a", 1));
  EXPECT_FALSE(none.get("a"));
}

TEST(ResponsesRequest, TranslatesToTheChatRequest) {
  ResponseStore store(10, 1 << 20);
  const std::string body = R"({"model": "m", "instructions": "Be brief.", "max_output_tokens": 7, "temperature": 0.5,
    "input": [{"role": "developer", "content": "Rules."},
              {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi "}, {"type": "input_text", "text": "there"}]},
              {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{\"x\":1}"},
              {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{}"},
              {"type": "function_call_output", "call_id": "c1", "output": "one"},
              {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "two"}]}],
    "tools": [{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}],
    "tool_choice": {"type": "function", "name": "f"},
    "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}}}})";
  const ResponsesTurn t = parse_responses_request(body, store);
  const ordered_json& m = t.chat_body["messages"];
  ASSERT_EQ(m.size(), 6u);
  EXPECT_EQ(m[0], (ordered_json{{"role", "system"}, {"content", "Be brief."}}));
  EXPECT_EQ(m[1]["role"], "system");
  EXPECT_EQ(m[2]["content"], "Hi there");
  EXPECT_EQ(m[3]["tool_calls"].size(), 2u);  // consecutive calls are one assistant turn
  EXPECT_EQ(m[4]["tool_call_id"], "c1");
  EXPECT_EQ(m[5]["content"], "two");
  EXPECT_EQ(t.instruction_messages, 1u);
  EXPECT_EQ(t.chat_body["max_completion_tokens"], 7);
  EXPECT_EQ(t.chat_body["tools"][0]["function"]["name"], "f");
  EXPECT_EQ(t.chat_body["tool_choice"]["function"]["name"], "f");
  EXPECT_EQ(t.chat_body["response_format"]["json_schema"]["name"], "s");
  // ...which the chat parser accepts as is.
  const std::string chat_text = t.chat_body.dump();
  const ChatRequest r = parse_chat_request(json::parse(chat_text), chat_text);
  EXPECT_EQ(r.messages.size(), 6u);
  EXPECT_EQ(r.params.output.tool_choice, ToolChoice::Function);
  EXPECT_EQ(r.params.output.response_format, ResponseFormat::JsonSchema);
  EXPECT_EQ(*r.params.max_tokens, 7);
}

TEST(ResponsesRequest, ContinuesAStoredConversation) {
  ResponseStore store(10, 1 << 20);
  StoredResponse prev = stored("resp_root", 1);
  prev.conversation = ordered_json::array({{{"role", "user"}, {"content", "a"}}, {{"role", "assistant"}, {"content", "b"}}});
  store.put("resp_2", prev);
  const ResponsesTurn t = parse_responses_request(R"({"input": "c", "previous_response_id": "resp_2", "instructions": "I"})", store);
  EXPECT_EQ(t.root_id, "resp_root");
  ASSERT_EQ(t.chat_body["messages"].size(), 4u);
  EXPECT_EQ(t.chat_body["messages"][0]["content"], "I");
  EXPECT_EQ(t.chat_body["messages"][3]["content"], "c");
  try {
    parse_responses_request(R"({"input": "c", "previous_response_id": "resp_gone"})", store);
    FAIL();
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 404);
    EXPECT_EQ(e.param, "previous_response_id");
  }
}

TEST(ResponsesRequest, RefusesWhatItCannotServe) {
  ResponseStore store(10, 1 << 20);
  const std::pair<const char*, const char*> cases[] = {
      {R"({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]})", "input[0].content[0].type"},
      {R"({"input": "x", "tools": [{"type": "file_search"}]})", "tools[0].type"},
      {R"({"input": "x", "tool_choice": {"type": "web_search_preview"}})", "tool_choice"},
      {R"({"input": [{"type": "computer_call"}]})", "input[0].type"},
      {R"({"input": [{"role": "robot", "content": "x"}]})", "input[0].role"},
      {R"({"input": []})", "input"},
      {R"({"input": "x", "max_output_tokens": 0})", "max_output_tokens"},
      {R"({"input": "x", "metadata": {"k": 1}})", "metadata"},
      {R"({"input": "x", "store": "yes"})", "store"},
      {R"({"input": "x", "conversation": "conv_1"})", "conversation"},
      {R"({"input": "x", "top_logprobs": 3})", "top_logprobs"},
      {R"({"input": "x", "include": ["message.output_text.logprobs"]})", "include"},
      {R"({"input": "x", "include": "reasoning.encrypted_content"})", "include"},
  };
  for (const auto& [body, param] : cases) {
    try {
      parse_responses_request(body, store);
      ADD_FAILURE() << body;
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status, 400) << body;
      EXPECT_EQ(e.param, param) << body;
    }
  }
}

TEST(ResponsesStream, EventsInOrderWithSequenceNumbers) {
  ResponseStore store(10, 1 << 20);
  ResponsesTurn t = parse_responses_request(R"({"input": "x"})", store);
  AnswerHeader h = new_answer_header(Endpoint::Responses, "m-int4");
  t.id = h.id;
  ResponsesStream s(t, h);
  std::string wire = s.start();
  wire += s.push({{"choices", json::array({{{"delta", {{"content", "Hel"}}}}})}});
  wire += s.push({{"choices", json::array({{{"delta", {{"content", "lo"}}}}})}});
  ChatAnswer a;
  json response;
  wire += s.finish("stop", json::object(), nullptr, &a, &response);
  std::vector<std::string> types;
  int expected_seq = 0;
  for (size_t pos = 0; (pos = wire.find("event: ", pos)) != std::string::npos;) {
    const size_t nl = wire.find('\n', pos);
    types.push_back(wire.substr(pos + 7, nl - pos - 7));
    const size_t end = wire.find("\n\n", nl);
    const json data = json::parse(wire.substr(nl + 7, end - nl - 7));
    EXPECT_EQ(data["type"], types.back());
    EXPECT_EQ(data["sequence_number"], expected_seq++);
    pos = end;
  }
  EXPECT_EQ(types, (std::vector<std::string>{"response.created", "response.in_progress", "response.output_item.added",
                                             "response.content_part.added", "response.output_text.delta",
                                             "response.output_text.delta", "response.output_text.done",
                                             "response.content_part.done", "response.output_item.done",
                                             "response.completed"}));
  EXPECT_EQ(response["output_text"], "Hello");
  EXPECT_EQ(*a.content, "Hello");
  EXPECT_EQ(response["status"], "completed");
  EXPECT_EQ(response_status("length"), "incomplete");
}
