#include "server/structured_output.h"

#include <algorithm>

#include "engine/json_schema.h"
#include "engine/token_constraint.h"
#include "server/api_error.h"

namespace cpuchat::server {

using nlohmann::json;
using nlohmann::ordered_json;

namespace {

constexpr const char* kPythonTag = "<|python_tag|>";

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

std::string ltrim(const std::string& s) {
  size_t i = 0;
  while (i < s.size() && is_space(s[i])) ++i;
  return s.substr(i);
}

std::string trim(const std::string& s) {
  std::string t = ltrim(s);
  while (!t.empty() && is_space(t.back())) t.pop_back();
  return t;
}

bool known_tool(const OutputOptions& o, const std::string& name) {
  return std::any_of(o.tools.begin(), o.tools.end(), [&](const ToolDefinition& t) { return t.name == name; });
}

// The forced call's layout is fixed by its grammar: {"name": "<name>", "parameters": <args>}
// with bounded whitespace between. Tool names have no characters that need escaping, so the
// 3rd and 4th quotes delimit the name, and the arguments start after the colon that follows
// the 6th quote. Returns npos while that point has not been generated yet.
size_t forced_args_begin(const std::string& text, std::string* name) {
  size_t quotes[6], found = 0;
  for (size_t i = 0; i < text.size() && found < 6; ++i)
    if (text[i] == '"') quotes[found++] = i;
  if (found < 6) return std::string::npos;
  if (name) *name = text.substr(quotes[2] + 1, quotes[3] - quotes[2] - 1);
  size_t i = text.find(':', quotes[5]);
  if (i == std::string::npos) return std::string::npos;
  ++i;
  while (i < text.size() && is_space(text[i])) ++i;
  return i < text.size() ? i : std::string::npos;
}

// The complete arguments of a forced call: up to the wrapper's closing brace.
std::string forced_args(const std::string& text, size_t begin) {
  const size_t close = text.find_last_of('}');
  if (begin == std::string::npos || close == std::string::npos || close < begin) return "{}";
  return trim(text.substr(begin, close - begin));
}

// A <|python_tag|> built-in call: name.call(key="value", ...).
std::optional<ToolCall> parse_builtin_call(const std::string& s) {
  const size_t dot = s.find(".call(");
  if (dot == std::string::npos || s.back() != ')') return std::nullopt;
  ToolCall c;
  c.name = s.substr(0, dot);
  if (c.name.empty() || !std::all_of(c.name.begin(), c.name.end(), [](char ch) { return std::isalnum(static_cast<unsigned char>(ch)) || ch == '_'; }))
    return std::nullopt;
  ordered_json args = ordered_json::object();
  size_t i = dot + 6;
  const size_t end = s.size() - 1;
  while (i < end) {
    while (i < end && (is_space(s[i]) || s[i] == ',')) ++i;
    const size_t eq = s.find('=', i);
    if (eq == std::string::npos || eq >= end) break;
    const std::string key = trim(s.substr(i, eq - i));
    i = eq + 1;
    while (i < end && is_space(s[i])) ++i;
    if (i >= end || (s[i] != '"' && s[i] != '\'')) return std::nullopt;
    const char q = s[i++];
    const size_t close = s.find(q, i);
    if (close == std::string::npos || close > end) return std::nullopt;
    args[key] = s.substr(i, close - i);
    i = close + 1;
  }
  c.arguments = args.dump();
  return c;
}

// A JSON call: {"name": ..., "parameters": {...}} (Llama 3.1) or with "arguments".
std::optional<ToolCall> parse_json_call(const std::string& s, const OutputOptions& o) {
  ordered_json j = ordered_json::parse(s, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return std::nullopt;
  auto name = j.find("name");
  if (name == j.end() || !name->is_string() || !known_tool(o, name->get<std::string>())) return std::nullopt;
  auto params = j.find("parameters");
  if (params == j.end()) params = j.find("arguments");
  if (params != j.end() && !params->is_object()) return std::nullopt;
  ToolCall c;
  c.name = name->get<std::string>();
  c.arguments = params == j.end() ? "{}" : params->dump();
  return c;
}

// Tool calls in a free (tool_choice "auto") answer: one JSON call, several on separate lines
// (or separated by ';'), or a <|python_tag|> call. Anything else is content.
std::vector<ToolCall> detect_calls(const OutputOptions& o, const std::string& text) {
  std::string t = trim(text);
  if (t.rfind(kPythonTag, 0) == 0) {
    t = trim(t.substr(std::string(kPythonTag).size()));
    if (auto c = parse_json_call(t, o)) return {*c};
    if (auto c = parse_builtin_call(t)) return {*c};
    return {};
  }
  if (t.empty() || t[0] != '{') return {};
  if (auto c = parse_json_call(t, o)) return {*c};
  std::vector<ToolCall> calls;
  size_t start = 0;
  for (size_t i = 0; i <= t.size(); ++i) {
    if (i < t.size() && t[i] != '\n' && t[i] != ';') continue;
    const std::string part = trim(t.substr(start, i - start));
    start = i + 1;
    if (part.empty()) continue;
    auto c = parse_json_call(part, o);
    if (!c) return {};
    calls.push_back(*c);
  }
  if (!o.parallel_tool_calls && calls.size() > 1) calls.resize(1);
  return calls;
}

std::string tool_finish(const std::string& finish_reason) { return finish_reason == "stop" ? "tool_calls" : finish_reason; }

}  // namespace

std::string tool_call_id(const AnswerHeader& h, size_t index) {
  const size_t sep = h.id.find_first_of("-_");
  const std::string base = "call_" + (sep == std::string::npos ? h.id : h.id.substr(sep + 1));
  return base + (h.choice > 0 ? "_c" + std::to_string(h.choice) : "") + "_" + std::to_string(index);
}

std::vector<int> chat_prompt(const ServedModel& model, const ChatRequest& r) {
  const OutputOptions& o = r.params.output;
  ChatTools tools;
  if (o.tools_enabled()) tools.definitions_json = o.tools_json;
  const bool tool_turns = std::any_of(r.messages.begin(), r.messages.end(),
                                      [](const ChatMessage& m) { return m.role == "tool" || !m.tool_calls.empty(); });
  const Tokenizer* tok = model.tokenizer();
  try {
    if ((!tools.any() && !tool_turns) || !tok) return model.encode_chat(r.messages);
    return encode_chat(*tok, r.messages, /*add_generation_prompt=*/true, tools);
  } catch (const std::invalid_argument& e) {
    throw ApiError(400, e.what(), "invalid_value", "messages");
  }
}

std::shared_ptr<TokenConstraint> make_constraint(const ServedModel& model, const OutputOptions& o, int max_tokens) {
  std::vector<std::shared_ptr<TokenConstraint>> parts;
  const int vocab = model.info().vocab_size;
  for (auto [id, bias] : o.logit_bias)
    if (id >= vocab)
      throw ApiError(400, "'logit_bias' names token " + std::to_string(id) + ", outside this model's vocabulary of " +
                              std::to_string(vocab), "invalid_value", "logit_bias");
  if (!o.logit_bias.empty()) parts.push_back(std::make_shared<LogitBias>(o.logit_bias));

  std::string gbnf, param;
  try {
    for (size_t i = 0; i < o.tools.size(); ++i) {  // every tool's schema must compile, called now or not
      param = "tools[" + std::to_string(i) + "].function.parameters";
      if (!o.tools[i].parameters.is_null()) grammar::json_schema_to_gbnf(o.tools[i].parameters);
    }
    if (o.forces_tool_call()) {
      param = "tools";
      std::vector<grammar::ToolGrammarSpec> specs;
      for (const ToolDefinition& t : o.tools)
        if (o.tool_choice == ToolChoice::Required || t.name == o.tool_choice_name) specs.push_back({t.name, t.parameters});
      gbnf = grammar::tool_call_gbnf(specs);
    } else if (o.response_format == ResponseFormat::JsonObject) {
      param = "response_format";
      gbnf = grammar::json_object_gbnf();
    } else if (o.response_format == ResponseFormat::JsonSchema) {
      param = "response_format.json_schema.schema";
      gbnf = grammar::json_schema_to_gbnf(o.json_schema);
    } else if (!o.grammar.empty()) {
      param = "grammar";
      gbnf = o.grammar;
    }
  } catch (const grammar::SchemaError& e) {
    throw ApiError(400, "'" + param + "': " + e.what(), "unsupported_schema", param);
  }
  if (!gbnf.empty()) {
    const Tokenizer* tok = model.tokenizer();
    if (!tok) throw ApiError(400, "this model has no tokenizer, so its answers cannot be constrained", "unsupported_value", param);
    std::shared_ptr<GrammarConstraint> c;
    try {
      auto g = std::make_shared<const grammar::Grammar>(grammar::parse_gbnf(gbnf));
      c = std::make_shared<GrammarConstraint>(g, TokenTrie::of(*tok));
    } catch (const grammar::GrammarError& e) {
      throw ApiError(400, "'" + param + "': " + e.what(), "invalid_grammar", param);
    }
    if (c->min_tokens() > uint32_t(max_tokens))
      throw ApiError(400, "the budget of " + std::to_string(max_tokens) + " tokens is below the shortest valid answer (" +
                              std::to_string(c->min_tokens()) + " tokens): raise max_tokens",
                     "invalid_value", "max_tokens");
    parts.push_back(c);
  }
  if (parts.empty()) return nullptr;
  if (parts.size() == 1) return parts.front();
  return std::make_shared<ConstraintChain>(parts);
}

ChatAnswer shape_answer(const OutputOptions& o, const std::string& text, const std::string& finish_reason) {
  ChatAnswer a;
  a.finish_reason = finish_reason;
  if (o.forces_tool_call()) {
    ToolCall c;
    const size_t begin = forced_args_begin(text, &c.name);
    c.arguments = forced_args(text, begin);
    a.tool_calls.push_back(c);
  } else if (o.tools_enabled()) {
    a.tool_calls = detect_calls(o, text);
  }
  if (a.tool_calls.empty()) {
    a.content = text;
  } else {
    a.finish_reason = tool_finish(finish_reason);
  }
  return a;
}

json chat_answer_json(const AnswerHeader& h, const ChatAnswer& a, const json& logprobs, const json& usage, const json& metrics) {
  json j = completion_json(h, a.content.value_or(""), a.finish_reason, logprobs, usage, metrics);
  if (!a.tool_calls.empty()) {
    json& message = j["choices"][0]["message"];
    message["content"] = nullptr;
    json calls = json::array();
    for (size_t i = 0; i < a.tool_calls.size(); ++i)
      calls.push_back({{"id", tool_call_id(h, i)}, {"type", "function"},
                       {"function", {{"name", a.tool_calls[i].name}, {"arguments", a.tool_calls[i].arguments}}}});
    message["tool_calls"] = calls;
  }
  return j;
}

ChatStreamShaper::ChatStreamShaper(const AnswerHeader& h, const OutputOptions& o) : h_(h), o_(o) {
  mode_ = o.forces_tool_call() ? Mode::Forced : o.tools_enabled() ? Mode::Auto : Mode::Content;
  call_id_ = tool_call_id(h, 0);
}

json ChatStreamShaper::tool_delta(const json& call) const {
  json chunk = delta_chunk_json(h_, "", nullptr);
  json& delta = chunk["choices"][0]["delta"];
  delta.erase("content");
  delta["tool_calls"] = json::array({call});
  return chunk;
}

std::vector<json> ChatStreamShaper::push(const std::string& text, const json& logprobs) {
  std::vector<json> out;
  if (mode_ == Mode::Content) {
    if (!text.empty() || !logprobs.is_null()) out.push_back(delta_chunk_json(h_, text, logprobs));
    return out;
  }
  text_ += text;
  if (mode_ == Mode::Auto) {
    if (holding_) return out;
    const std::string t = ltrim(text_);
    if (t.empty()) return out;  // only whitespace so far: undecided
    const std::string tag = kPythonTag;
    const bool may_be_call = t[0] == '{' || t.rfind(tag, 0) == 0 || tag.rfind(t, 0) == 0;
    if (may_be_call) {
      holding_ = true;
      return out;
    }
    mode_ = Mode::Content;  // plain content: send what was held and stream the rest
    out.push_back(delta_chunk_json(h_, text_, logprobs));
    return out;
  }
  // Forced: name first, then argument fragments. A trailing run of '}' and whitespace is held
  // back: it may be the wrapper's own closing brace.
  if (args_begin_ == std::string::npos) {
    std::string name;
    args_begin_ = forced_args_begin(text_, &name);
    if (args_begin_ == std::string::npos) return out;
    out.push_back(tool_delta({{"index", 0}, {"id", call_id_}, {"type", "function"}, {"function", {{"name", name}, {"arguments", ""}}}}));
  }
  size_t end = text_.size();
  while (end > args_begin_ && (is_space(text_[end - 1]) || text_[end - 1] == '}')) --end;
  if (end > args_begin_ + args_sent_) {
    out.push_back(tool_delta({{"index", 0}, {"function", {{"arguments", text_.substr(args_begin_ + args_sent_, end - args_begin_ - args_sent_)}}}}));
    args_sent_ = end - args_begin_;
  }
  return out;
}

std::vector<json> ChatStreamShaper::finish(const std::string& full_text, std::string& finish_reason) {
  std::vector<json> out;
  if (mode_ == Mode::Content) return out;
  if (mode_ == Mode::Forced) {
    ChatAnswer a = shape_answer(o_, full_text, finish_reason);
    const ToolCall& c = a.tool_calls.front();
    if (args_begin_ == std::string::npos) {
      out.push_back(tool_delta({{"index", 0}, {"id", call_id_}, {"type", "function"}, {"function", {{"name", c.name}, {"arguments", ""}}}}));
      args_sent_ = 0;
    }
    if (c.arguments.size() > args_sent_)
      out.push_back(tool_delta({{"index", 0}, {"function", {{"arguments", c.arguments.substr(args_sent_)}}}}));
    finish_reason = a.finish_reason;
    return out;
  }
  // Auto, held back (or only whitespace): now it is known.
  ChatAnswer a = shape_answer(o_, full_text, finish_reason);
  if (a.tool_calls.empty()) {
    if (!full_text.empty()) out.push_back(delta_chunk_json(h_, full_text, nullptr));
  } else {
    for (size_t i = 0; i < a.tool_calls.size(); ++i)
      out.push_back(tool_delta({{"index", i}, {"id", tool_call_id(h_, i)}, {"type", "function"},
                                {"function", {{"name", a.tool_calls[i].name}, {"arguments", a.tool_calls[i].arguments}}}}));
  }
  finish_reason = a.finish_reason;
  return out;
}

}  // namespace cpuchat::server
