// Request parsing/validation: each bad input maps to a 400 naming the field.
#include <gtest/gtest.h>

#include "server/request_parser.h"

using namespace cpuchat::server;
using nlohmann::json;

namespace {

json chat(json extra = json::object()) {
  json body = {{"messages", {{{"role", "user"}, {"content", "hi"}}}}};
  for (auto& [k, v] : extra.items()) body[k] = v;
  return body;
}

// Expects a 400 whose param is `param`.
void expect_bad(const json& body, const std::string& param, const std::string& code = "") {
  try {
    parse_chat_request(body);
    FAIL() << "accepted: " << body.dump();
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400) << body.dump();
    EXPECT_EQ(e.param, param) << body.dump() << " -> " << e.what();
    if (!code.empty()) EXPECT_EQ(e.code, code) << e.what();
    EXPECT_EQ(e.type, "invalid_request_error");
  }
}

}  // namespace

TEST(RequestParser, ParsesAFullChatRequest) {
  json body = chat({{"model", "m-int4"}, {"max_tokens", 12}, {"temperature", 0}, {"top_p", 0.5},
                    {"seed", 42}, {"stop", "\n"}, {"presence_penalty", 1}, {"frequency_penalty", -1},
                    {"stream", true}, {"stream_options", {{"include_usage", true}}},
                    {"logprobs", true}, {"top_logprobs", 3}, {"n", 1}, {"top_k", 5}, {"min_p", 0.1},
                    {"instance", "c8g.xlarge"}, {"price_per_hour", 1.5}, {"user", "ignored"},
                    {"unknown_field", {1, 2}}});
  ChatRequest r = parse_chat_request(body);
  ASSERT_EQ(r.messages.size(), 1u);
  EXPECT_EQ(r.messages[0].role, "user");
  EXPECT_EQ(r.messages[0].content, "hi");
  const CompletionParams& p = r.params;
  EXPECT_EQ(p.model, "m-int4");
  EXPECT_EQ(p.max_tokens, 12);
  EXPECT_EQ(p.sampling.temperature, 0.0f);
  EXPECT_FLOAT_EQ(p.sampling.top_p, 0.5f);
  EXPECT_EQ(p.sampling.seed, 42u);
  EXPECT_EQ(p.stop, std::vector<std::string>{"\n"});
  EXPECT_FLOAT_EQ(p.sampling.presence_penalty, 1);
  EXPECT_FLOAT_EQ(p.sampling.frequency_penalty, -1);
  EXPECT_TRUE(p.stream);
  EXPECT_TRUE(p.include_usage);
  EXPECT_EQ(p.top_logprobs, 3);
  EXPECT_EQ(p.sampling.top_k, 5);
  EXPECT_FLOAT_EQ(p.sampling.min_p, 0.1f);
  EXPECT_EQ(p.instance, "c8g.xlarge");
  EXPECT_EQ(p.price_per_hour, 1.5);
}

TEST(RequestParser, DefaultsWhenSilent) {
  ChatRequest r = parse_chat_request(chat());
  cpuchat::SamplingParams defaults;
  EXPECT_FALSE(r.params.max_tokens);
  EXPECT_EQ(r.params.sampling.temperature, defaults.temperature);
  EXPECT_EQ(r.params.top_logprobs, -1);
  EXPECT_FALSE(r.params.stream);
  // null means "not set" (clients send it)
  r = parse_chat_request(chat({{"temperature", nullptr}, {"max_tokens", nullptr}, {"stop", nullptr}}));
  EXPECT_FALSE(r.params.max_tokens);
}

TEST(RequestParser, ContentPartsRolesAndMaxCompletionTokens) {
  json body = {{"messages",
                {{{"role", "developer"}, {"content", "be brief"}},
                 {{"role", "user"}, {"content", {{{"type", "text"}, {"text", "a"}}, {{"type", "text"}, {"text", "b"}}}}},
                 {{"role", "assistant"}, {"content", nullptr}}}},
               {"max_tokens", 5},
               {"max_completion_tokens", 7}};
  ChatRequest r = parse_chat_request(body);
  EXPECT_EQ(r.messages[0].role, "system");
  EXPECT_EQ(r.messages[1].content, "ab");
  EXPECT_EQ(r.messages[2].content, "");
  EXPECT_EQ(r.params.max_tokens, 7);
}

TEST(RequestParser, RejectsBadMessages) {
  expect_bad({{"model", "x"}}, "messages", "missing_required_parameter");
  expect_bad({{"messages", "hi"}}, "messages", "invalid_type");
  expect_bad({{"messages", json::array()}}, "messages");
  expect_bad({{"messages", {42}}}, "messages[0]", "invalid_type");
  expect_bad({{"messages", {{{"role", "wizard"}, {"content", "x"}}}}}, "messages[0].role");
  expect_bad({{"messages", {{{"role", "tool"}, {"content", "x"}}}}}, "messages[0].tool_call_id", "missing_required_parameter");
  expect_bad({{"messages", {{{"content", "x"}}}}}, "messages[0].role");
  expect_bad({{"messages", {{{"role", "user"}, {"content", 5}}}}}, "messages[0].content", "invalid_type");
  expect_bad({{"messages", {{{"role", "user"}}}}}, "messages[0].content");
  expect_bad({{"messages", {{{"role", "user"}, {"content", {{{"type", "image_url"}}}}}}}},
             "messages[0].content[0].type");
}

TEST(RequestParser, RejectsBadValues) {
  expect_bad(chat({{"temperature", "hot"}}), "temperature", "invalid_type");
  expect_bad(chat({{"temperature", 2.5}}), "temperature", "invalid_value");
  expect_bad(chat({{"temperature", -0.1}}), "temperature");
  expect_bad(chat({{"top_p", 0}}), "top_p");
  expect_bad(chat({{"top_p", 1.01}}), "top_p");
  expect_bad(chat({{"max_tokens", -1}}), "max_tokens");
  expect_bad(chat({{"max_tokens", 0}}), "max_tokens");
  expect_bad(chat({{"max_tokens", 2.5}}), "max_tokens", "invalid_type");
  expect_bad(chat({{"max_tokens", 1000001}}), "max_tokens");
  expect_bad(chat({{"max_tokens", 18446744073709551615ull}}), "max_tokens");
  expect_bad(chat({{"max_tokens", "10"}}), "max_tokens", "invalid_type");
  expect_bad(chat({{"max_completion_tokens", 0}}), "max_completion_tokens");
  expect_bad(chat({{"n", 0}}), "n");
  expect_bad(chat({{"n", 129}}), "n");
  expect_bad(chat({{"n", 1.5}}), "n", "invalid_type");
  expect_bad(chat({{"stop", {"a", "b", "c", "d", "e"}}}), "stop");
  expect_bad(chat({{"stop", 3}}), "stop", "invalid_type");
  expect_bad(chat({{"presence_penalty", 3}}), "presence_penalty");
  expect_bad(chat({{"frequency_penalty", -2.5}}), "frequency_penalty");
  expect_bad(chat({{"stream", "yes"}}), "stream", "invalid_type");
  expect_bad(chat({{"seed", 1.5}}), "seed", "invalid_type");
  expect_bad(chat({{"top_logprobs", 2}}), "top_logprobs");  // needs logprobs: true
  expect_bad(chat({{"logprobs", true}, {"top_logprobs", 21}}), "top_logprobs");
  expect_bad(chat({{"model", 7}}), "model", "invalid_type");
  expect_bad(chat({{"min_p", 1.5}}), "min_p");
  expect_bad(chat({{"top_k", -3}}), "top_k");
  expect_bad(chat({{"price_per_hour", -1}}), "price_per_hour");
}

TEST(RequestParser, NChoicesFromOneTo128) {
  EXPECT_EQ(parse_chat_request(chat({})).params.n, 1);
  EXPECT_EQ(parse_chat_request(chat({{"n", 3}})).params.n, 3);
  EXPECT_EQ(parse_chat_request(chat({{"n", 128}})).params.n, 128);
  EXPECT_EQ(parse_completion_request({{"prompt", "x"}, {"n", 2}}).params.n, 2);
}

TEST(RequestParser, JsonBody) {
  EXPECT_NO_THROW(parse_json_object("{\"a\": 1}"));
  for (const char* bad : {"", "{", "[1,2]", "\"x\"", "{\"a\": }", "{\"a\": 1} trailing", "\xff"}) {
    try {
      parse_json_object(bad);
      FAIL() << bad;
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status, 400);
      EXPECT_EQ(e.code, "invalid_json");
    }
  }
  // Issue 12: a NUL byte ended nlohmann's input, so trailing bytes after it were accepted.
  for (const std::string bad : {std::string("{\"a\": 1}\0garbage", 16), std::string("{\"a\": 1}\0", 9),
                                std::string("{\"a\": \"x\0y\"}", 12)}) {
    try {
      parse_json_object(bad);
      FAIL() << "accepted a body with a NUL byte";
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status, 400);
      EXPECT_EQ(e.code, "invalid_json");
    }
  }
}

TEST(RequestParser, TextCompletion) {
  TextCompletionRequest r = parse_completion_request({{"prompt", "Once"}, {"logprobs", 2}, {"max_tokens", 3}});
  EXPECT_EQ(r.prompt, "Once");
  EXPECT_EQ(r.params.top_logprobs, 2);
  r = parse_completion_request({{"prompt", {"One"}}});
  EXPECT_EQ(r.prompt, "One");
  EXPECT_THROW(parse_completion_request(json::object()), ApiError);
  EXPECT_THROW(parse_completion_request({{"prompt", 5}}), ApiError);
  EXPECT_THROW(parse_completion_request({{"prompt", {"a", "b"}}}), ApiError);
}

// Legacy completion features the server lacks are refused with a 400 naming them, not ignored.
TEST(RequestParser, TextCompletionRefusesBestOfEchoAndSuffix) {
  auto refused_param = [](const json& body) -> std::string {
    try {
      parse_completion_request(body);
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status, 400);
      EXPECT_EQ(e.code, "unsupported_value") << e.what();
      return e.param;
    }
    return "accepted";
  };
  EXPECT_EQ(refused_param({{"prompt", "x"}, {"best_of", 3}}), "best_of");
  EXPECT_EQ(refused_param({{"prompt", "x"}, {"n", 2}, {"best_of", 4}}), "best_of");
  EXPECT_EQ(refused_param({{"prompt", "x"}, {"echo", true}}), "echo");
  EXPECT_EQ(refused_param({{"prompt", "x"}, {"suffix", "the end"}}), "suffix");
  // What means the same as no such feature is accepted.
  EXPECT_EQ(parse_completion_request({{"prompt", "x"}, {"n", 2}, {"best_of", 2}}).params.n, 2);
  EXPECT_EQ(parse_completion_request({{"prompt", "x"}, {"echo", false}, {"suffix", ""}}).prompt, "x");
}

TEST(ApiErrorShape, HasAllFourFields) {
  json j = ApiError(400, "bad", "invalid_value", "temperature").to_json();
  EXPECT_EQ(j["error"]["message"], "bad");
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
  EXPECT_EQ(j["error"]["param"], "temperature");
  EXPECT_EQ(j["error"]["code"], "invalid_value");
  j = ApiError(404, "nope").to_json();
  EXPECT_TRUE(j["error"]["param"].is_null());
  EXPECT_TRUE(j["error"]["code"].is_null());
  EXPECT_TRUE(j["error"].contains("param"));
}

// ---- tools, tool_choice, response_format, grammar, logit_bias ----

namespace {
json weather_tool() {
  return json::parse(R"({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
      "properties": {"city": {"type": "string"}}, "required": ["city"]}}})");
}
}  // namespace

TEST(RequestParser, ToolsAndToolChoice) {
  json body = chat({{"tools", {weather_tool()}}, {"tool_choice", {{"type", "function"}, {"function", {{"name", "get_weather"}}}}},
                    {"parallel_tool_calls", false}});
  // The raw text keeps the key order ("type" before "function"), which the prompt shows.
  const std::string raw = R"({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {"name": "get_weather",
      "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
      "tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "parallel_tool_calls": false})";
  ChatRequest r = parse_chat_request(body, raw);
  const OutputOptions& o = r.params.output;
  ASSERT_EQ(o.tools.size(), 1u);
  EXPECT_EQ(o.tools[0].name, "get_weather");
  EXPECT_EQ(o.tools[0].parameters.begin().key(), "type");
  EXPECT_EQ(o.tools_json.substr(0, 17), R"([{"type":"functio)");
  EXPECT_EQ(o.tool_choice, ToolChoice::Function);
  EXPECT_TRUE(o.forces_tool_call());
  EXPECT_FALSE(o.parallel_tool_calls);

  expect_bad(chat({{"tools", {weather_tool()}}, {"tool_choice", {{"type", "function"}, {"function", {{"name", "other"}}}}}}), "tool_choice");
  expect_bad(chat({{"tool_choice", "required"}}), "tool_choice");
  expect_bad(chat({{"tools", {weather_tool()}}, {"tool_choice", "sometimes"}}), "tool_choice");
  expect_bad(chat({{"tools", {weather_tool(), weather_tool()}}}), "tools[1].function.name");
  expect_bad(chat({{"tools", {{{"type", "retrieval"}}}}}), "tools[0].type", "unsupported_value");
  expect_bad(chat({{"tools", {{{"type", "function"}, {"function", {{"name", "has space"}}}}}}}), "tools[0].function.name");
  EXPECT_EQ(parse_chat_request(chat({{"tools", {weather_tool()}}, {"n", 2}})).params.n, 2);
}

TEST(RequestParser, ToolMessages) {
  json call = {{"id", "c1"}, {"type", "function"}, {"function", {{"name", "get_weather"}, {"arguments", R"({"city": "Oslo"})"}}}};
  json body = {{"messages", {{{"role", "user"}, {"content", "hi"}},
                             {{"role", "assistant"}, {"content", nullptr}, {"tool_calls", {call}}},
                             {{"role", "tool"}, {"tool_call_id", "c1"}, {"content", "3C"}}}}};
  ChatRequest r = parse_chat_request(body);
  ASSERT_EQ(r.messages.size(), 3u);
  ASSERT_EQ(r.messages[1].tool_calls.size(), 1u);
  EXPECT_EQ(r.messages[1].tool_calls[0].name, "get_weather");
  EXPECT_EQ(r.messages[1].tool_calls[0].arguments, R"({"city": "Oslo"})");
  EXPECT_EQ(r.messages[2].role, "tool");
  EXPECT_EQ(r.messages[2].tool_call_id, "c1");

  json wrong_id = body;
  wrong_id["messages"][2]["tool_call_id"] = "c2";
  expect_bad(wrong_id, "messages[2].tool_call_id");
  json orphan = {{"messages", {{{"role", "user"}, {"content", "hi"}}, {{"role", "tool"}, {"tool_call_id", "c1"}, {"content", "x"}}}}};
  expect_bad(orphan, "messages[1]");
  json bad_args = body;
  bad_args["messages"][1]["tool_calls"][0]["function"]["arguments"] = "[1]";
  expect_bad(bad_args, "messages[1].tool_calls[0].function.arguments");
  json user_calls = body;
  user_calls["messages"][0]["tool_calls"] = {call};
  expect_bad(user_calls, "messages[0].tool_calls");
}

TEST(RequestParser, ResponseFormatGrammarAndLogitBias) {
  json extra = json::parse(R"({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
                               "logit_bias": {"15": -100, "7": 2.5}})");
  ChatRequest r = parse_chat_request(chat(extra));
  EXPECT_EQ(r.params.output.response_format, ResponseFormat::JsonSchema);
  EXPECT_EQ(r.params.output.json_schema["type"], "object");
  EXPECT_TRUE(r.params.output.constrained());
  ASSERT_EQ(r.params.output.logit_bias.size(), 2u);
  r = parse_chat_request(chat({{"grammar", "root ::= \"a\""}}));
  EXPECT_EQ(r.params.output.grammar, "root ::= \"a\"");

  expect_bad(chat({{"response_format", {{"type", "yaml"}}}}), "response_format.type");
  expect_bad(chat({{"response_format", {{"type", "json_schema"}}}}), "response_format.json_schema", "invalid_type");
  expect_bad(chat({{"response_format", {{"type", "json_schema"}, {"json_schema", {{"schema", json::object()}}}}}}), "response_format.json_schema.name");
  expect_bad(chat({{"response_format", {{"type", "json_object"}}}, {"grammar", "root ::= \"a\""}}), "grammar");
  expect_bad(chat({{"response_format", {{"type", "json_object"}}}, {"stop", "x"}}), "stop", "unsupported_value");
  expect_bad(chat({{"grammar", "root ::= \"a\""}, {"ignore_eos", true}}), "ignore_eos", "unsupported_value");
  expect_bad(chat({{"logit_bias", {{"5", 100.5}}}}), "logit_bias");
  expect_bad(chat({{"logit_bias", {{"-3", 1}}}}), "logit_bias");
  expect_bad(chat({{"logit_bias", {{"abc", 1}}}}), "logit_bias");
  expect_bad(chat({{"logit_bias", {{"5", "high"}}}}), "logit_bias", "invalid_type");
  expect_bad(chat({{"logit_bias", json::array()}}), "logit_bias", "invalid_type");
}
