#include "server/request_parser.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>

namespace cpuchat::server {

using nlohmann::json;

namespace {

ApiError invalid(const std::string& param, const std::string& message,
                 const std::string& code = "invalid_value") {
  return ApiError(400, message, code, param);
}

const char* type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::string: return "a string";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "an object";
    case json::value_t::number_float: return "a non-integer number";
    default: return "a number";
  }
}

ApiError wrong_type(const std::string& param, const json& v, const std::string& expected) {
  return invalid(param, "'" + param + "' must be " + expected + ", got " + type_name(v),
                 "invalid_type");
}

// A present, non-null field (OpenAI clients send null for "not set").
const json* field(const json& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<double> number_in(const json& body, const char* name, double lo, double hi,
                                bool lo_inclusive = true) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_number()) throw wrong_type(name, *v, "a number");
  double x = v->get<double>();
  if (!std::isfinite(x) || x > hi || x < lo || (!lo_inclusive && x == lo)) {
    char range[96];
    snprintf(range, sizeof range, "%s%g, %g]", lo_inclusive ? "[" : "(", lo, hi);
    throw invalid(name, "'" + std::string(name) + "' must be in " + range + ", got " + v->dump());
  }
  return x;
}

std::optional<long long> integer_in(const json& body, const char* name, double lo, double hi) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_number_integer()) throw wrong_type(name, *v, "an integer");
  // Range-check as double so huge unsigned values cannot wrap.
  double x = v->is_number_unsigned() ? static_cast<double>(v->get<unsigned long long>())
                                     : static_cast<double>(v->get<long long>());
  if (x < lo || x > hi) {
    char range[96];
    snprintf(range, sizeof range, "[%.0f, %.0f]", lo, hi);
    throw invalid(name, "'" + std::string(name) + "' must be an integer in " + range + ", got " +
                            v->dump());
  }
  return static_cast<long long>(x);
}

std::optional<bool> boolean(const json& body, const char* name) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) throw wrong_type(name, *v, "a boolean");
  return v->get<bool>();
}

std::optional<std::string> string_field(const json& body, const char* name) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_string()) throw wrong_type(name, *v, "a string");
  return v->get<std::string>();
}

std::vector<std::string> parse_stop(const json& body) {
  const json* v = field(body, "stop");
  if (!v) return {};
  std::vector<std::string> out;
  auto add = [&](const json& s) {
    if (!s.is_string()) throw wrong_type("stop", s, "a string or an array of strings");
    if (!s.get_ref<const std::string&>().empty()) out.push_back(s.get<std::string>());
  };
  if (v->is_array()) {
    if (v->size() > kMaxStopStrings)
      throw invalid("stop", "'stop' accepts at most " + std::to_string(kMaxStopStrings) +
                                " strings, got " + std::to_string(v->size()));
    for (const json& s : *v) add(s);
  } else {
    add(*v);
  }
  return out;
}

// logit_bias: {"token id": bias}, bias in [-100, 100] as OpenAI documents. Ids are checked
// against the vocabulary when the request meets its model.
std::vector<std::pair<int, float>> parse_logit_bias(const json& body) {
  const json* v = field(body, "logit_bias");
  if (!v) return {};
  if (!v->is_object()) throw wrong_type("logit_bias", *v, "an object mapping token ids to biases");
  std::vector<std::pair<int, float>> out;
  for (auto it = v->begin(); it != v->end(); ++it) {
    const std::string& key = it.key();
    char* end = nullptr;
    const long id = std::strtol(key.c_str(), &end, 10);
    if (key.empty() || *end != '\0' || id < 0 || id > 100000000)
      throw invalid("logit_bias", "'logit_bias' keys must be token ids (non-negative integers), got '" + key + "'");
    if (!it->is_number()) throw wrong_type("logit_bias", *it, "a number");
    const double b = it->get<double>();
    if (!std::isfinite(b) || b < -100 || b > 100)
      throw invalid("logit_bias", "'logit_bias' values must be in [-100, 100], got " + it->dump() + " for token " + key);
    out.push_back({int(id), float(b)});
  }
  return out;
}

// Fields common to both endpoints. `logprobs_is_count`: /v1/completions takes an integer.
CompletionParams parse_common(const json& body, bool logprobs_is_count) {
  CompletionParams p;
  if (auto m = string_field(body, "model")) p.model = *m;

  // n answers to one prompt: the prompt is processed once (the engine copies its rows).
  if (auto n = integer_in(body, "n", 1, kMaxChoices)) p.n = static_cast<int>(*n);

  // max_completion_tokens is the newer name; it wins when both are given.
  auto max_tokens = integer_in(body, "max_tokens", 1, kMaxTokensLimit);
  if (auto mct = integer_in(body, "max_completion_tokens", 1, kMaxTokensLimit)) max_tokens = mct;
  if (max_tokens) p.max_tokens = static_cast<int>(*max_tokens);

  SamplingParams& s = p.sampling;
  if (auto t = number_in(body, "temperature", 0, 2)) s.temperature = static_cast<float>(*t);
  if (auto t = number_in(body, "top_p", 0, 1, /*lo_inclusive=*/false)) s.top_p = static_cast<float>(*t);
  if (auto k = integer_in(body, "top_k", 0, 1e9)) s.top_k = static_cast<int>(*k);
  if (auto m = number_in(body, "min_p", 0, 1)) s.min_p = static_cast<float>(*m);
  if (auto r = number_in(body, "repetition_penalty", 0, 10, false)) s.repetition_penalty = static_cast<float>(*r);
  if (auto pp = number_in(body, "presence_penalty", -2, 2)) s.presence_penalty = static_cast<float>(*pp);
  if (auto fp = number_in(body, "frequency_penalty", -2, 2)) s.frequency_penalty = static_cast<float>(*fp);
  if (const json* seed = field(body, "seed")) {
    if (!seed->is_number_integer()) throw wrong_type("seed", *seed, "an integer");
    s.seed = seed->is_number_unsigned() ? seed->get<uint64_t>()
                                        : static_cast<uint64_t>(seed->get<int64_t>());
  }

  p.stop = parse_stop(body);
  p.stream = boolean(body, "stream").value_or(false);
  if (const json* so = field(body, "stream_options")) {
    if (!so->is_object()) throw wrong_type("stream_options", *so, "an object");
    p.include_usage = boolean(*so, "include_usage").value_or(false);
  }

  if (logprobs_is_count) {
    if (auto n = integer_in(body, "logprobs", 0, kMaxTopLogprobs)) p.top_logprobs = static_cast<int>(*n);
  } else {
    bool want = boolean(body, "logprobs").value_or(false);
    auto top = integer_in(body, "top_logprobs", 0, kMaxTopLogprobs);
    if (top && !want)
      throw invalid("top_logprobs", "'top_logprobs' requires 'logprobs': true");
    if (want) p.top_logprobs = static_cast<int>(top.value_or(0));
  }

  p.ignore_eos = boolean(body, "ignore_eos").value_or(false);
  p.output.logit_bias = parse_logit_bias(body);
  if (auto g = string_field(body, "grammar")) {
    if (g->empty()) throw invalid("grammar", "'grammar' must not be empty");
    p.output.grammar = *g;
  }
  p.instance = string_field(body, "instance");
  p.price_per_hour = number_in(body, "price_per_hour", 0, 1e6);
  return p;
}

// `content`: a string, or an array of {"type": "text", "text": ...} parts (concatenated).
std::string parse_content(const json& msg, const std::string& role, size_t index) {
  const std::string param = "messages[" + std::to_string(index) + "].content";
  auto it = msg.find("content");
  if (it == msg.end() || it->is_null()) {
    if (role == "assistant") return "";  // e.g. an assistant turn that only had tool calls
    throw invalid(param, "'" + param + "' is required", "missing_required_parameter");
  }
  if (it->is_string()) return it->get<std::string>();
  if (!it->is_array()) throw wrong_type(param, *it, "a string or an array of text parts");
  std::string text;
  for (size_t i = 0; i < it->size(); ++i) {
    const json& part = (*it)[i];
    const std::string part_param = param + "[" + std::to_string(i) + "]";
    if (!part.is_object()) throw wrong_type(part_param, part, "an object");
    auto type = part.find("type");
    if (type == part.end() || !type->is_string() || *type != "text")
      throw invalid(part_param + ".type", "only content parts of type 'text' are supported",
                    "unsupported_value");
    auto t = part.find("text");
    if (t == part.end() || !t->is_string())
      throw invalid(part_param + ".text", "'" + part_param + ".text' must be a string",
                    "invalid_type");
    text += t->get<std::string>();
  }
  return text;
}

// An assistant turn's tool_calls: [{id, type: "function", function: {name, arguments}}].
std::vector<ChatToolCall> parse_tool_calls(const json& msg, const std::string& param) {
  std::vector<ChatToolCall> out;
  const json* v = field(msg, "tool_calls");
  if (!v) return out;
  const std::string p = param + ".tool_calls";
  if (!v->is_array()) throw wrong_type(p, *v, "an array");
  for (size_t i = 0; i < v->size(); ++i) {
    const json& c = (*v)[i];
    const std::string cp = p + "[" + std::to_string(i) + "]";
    if (!c.is_object()) throw wrong_type(cp, c, "an object");
    ChatToolCall call;
    if (auto id = string_field(c, "id")) call.id = *id;
    if (auto type = string_field(c, "type"); type && *type != "function")
      throw invalid(cp + ".type", "only tool calls of type 'function' are supported", "unsupported_value");
    const json* f = field(c, "function");
    if (!f || !f->is_object()) throw invalid(cp + ".function", "'" + cp + ".function' must be an object", "invalid_type");
    auto name = string_field(*f, "name");
    if (!name || name->empty()) throw invalid(cp + ".function.name", "'" + cp + ".function.name' must be a non-empty string", "invalid_type");
    call.name = *name;
    const json* args = field(*f, "arguments");
    const std::string ap = cp + ".function.arguments";
    if (!args) {
      call.arguments = "{}";
    } else if (args->is_string()) {  // OpenAI: a JSON object encoded as a string
      json parsed = json::parse(args->get<std::string>(), nullptr, false);
      if (parsed.is_discarded() || !parsed.is_object())
        throw invalid(ap, "'" + ap + "' must be a JSON object encoded as a string, got " + args->dump());
      call.arguments = args->get<std::string>();
    } else if (args->is_object()) {
      call.arguments = args->dump();
    } else {
      throw wrong_type(ap, *args, "a string (a JSON object)");
    }
    out.push_back(call);
  }
  return out;
}

std::vector<ChatMessage> parse_messages(const json& body) {
  const json* v = field(body, "messages");
  if (!v) throw invalid("messages", "'messages' is required", "missing_required_parameter");
  if (!v->is_array()) throw wrong_type("messages", *v, "an array");
  if (v->empty()) throw invalid("messages", "'messages' must not be empty");
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < v->size(); ++i) {
    const json& m = (*v)[i];
    const std::string param = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) throw wrong_type(param, m, "an object");
    auto role_it = m.find("role");
    if (role_it == m.end() || !role_it->is_string())
      throw invalid(param + ".role", "'" + param + ".role' must be a string", "invalid_type");
    std::string role = role_it->get<std::string>();
    if (role == "developer") role = "system";  // OpenAI's newer name for the system role
    if (role == "ipython") role = "tool";       // Llama 3.1's name for tool results
    if (role != "system" && role != "user" && role != "assistant" && role != "tool")
      throw invalid(param + ".role",
                    "unsupported role '" + role_it->get<std::string>() +
                        "' (expected system, user, assistant or tool)",
                    "invalid_value");
    ChatMessage msg;
    msg.role = role;
    if (role == "assistant") msg.tool_calls = parse_tool_calls(m, param);
    else if (field(m, "tool_calls")) throw invalid(param + ".tool_calls", "only assistant messages carry 'tool_calls'");
    msg.content = parse_content(m, role, i);
    if (role == "tool") {
      // A result answers a call of the assistant turn just before (or of the same run of results).
      auto id = string_field(m, "tool_call_id");
      if (!id) throw invalid(param + ".tool_call_id", "'" + param + ".tool_call_id' is required for a tool message", "missing_required_parameter");
      msg.tool_call_id = *id;
      const ChatMessage* calls = nullptr;
      for (size_t k = out.size(); k-- > 0;) {
        if (out[k].role == "tool") continue;
        if (out[k].role == "assistant" && !out[k].tool_calls.empty()) calls = &out[k];
        break;
      }
      if (!calls)
        throw invalid(param, "'" + param + "' is a tool result, but the message before it is not an assistant turn with 'tool_calls'");
      bool known = false;
      for (const ChatToolCall& c : calls->tool_calls) known = known || c.id == msg.tool_call_id;
      if (!known)
        throw invalid(param + ".tool_call_id", "'" + param + ".tool_call_id' '" + msg.tool_call_id +
                                                   "' does not match any tool call of the assistant turn before it");
    }
    out.push_back(std::move(msg));
  }
  return out;
}

// tools, tool_choice, parallel_tool_calls, response_format: from the key-ordered body.
void parse_output_options(const nlohmann::ordered_json& body, OutputOptions& o) {
  using ojson = nlohmann::ordered_json;
  auto get = [&](const char* name) -> const ojson* {
    auto it = body.find(name);
    return it == body.end() || it->is_null() ? nullptr : &*it;
  };
  auto wrong = [&](const std::string& param, const ojson& v, const std::string& expected) {
    return wrong_type(param, json::parse(v.dump()), expected);
  };
  if (const ojson* tools = get("tools")) {
    if (!tools->is_array()) throw wrong("tools", *tools, "an array");
    for (size_t i = 0; i < tools->size(); ++i) {
      const ojson& t = (*tools)[i];
      const std::string p = "tools[" + std::to_string(i) + "]";
      if (!t.is_object()) throw wrong(p, t, "an object");
      auto type = t.find("type");
      if (type == t.end() || !type->is_string() || *type != "function")
        throw invalid(p + ".type", "only tools of type 'function' are supported", "unsupported_value");
      auto f = t.find("function");
      if (f == t.end() || !f->is_object()) throw invalid(p + ".function", "'" + p + ".function' must be an object", "invalid_type");
      auto name = f->find("name");
      if (name == f->end() || !name->is_string()) throw invalid(p + ".function.name", "'" + p + ".function.name' must be a string", "invalid_type");
      const std::string n = name->get<std::string>();
      const bool name_ok = !n.empty() && n.size() <= 64 &&
                           std::all_of(n.begin(), n.end(), [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-'; });
      if (!name_ok)
        throw invalid(p + ".function.name", "tool names must be 1-64 characters of a-z, A-Z, 0-9, _ and -, got " + name->dump());
      for (const ToolDefinition& d : o.tools)
        if (d.name == n) throw invalid(p + ".function.name", "tool '" + n + "' is defined twice");
      ToolDefinition def;
      def.name = n;
      if (auto params = f->find("parameters"); params != f->end() && !params->is_null()) {
        if (!params->is_object()) throw wrong(p + ".function.parameters", *params, "an object (a JSON Schema)");
        def.parameters = *params;
      }
      o.tools.push_back(std::move(def));
    }
    if (!o.tools.empty()) o.tools_json = tools->dump();
  }
  if (const ojson* tc = get("tool_choice")) {
    if (tc->is_string()) {
      const std::string c = tc->get<std::string>();
      if (c == "auto") o.tool_choice = ToolChoice::Auto;
      else if (c == "none") o.tool_choice = ToolChoice::None;
      else if (c == "required") o.tool_choice = ToolChoice::Required;
      else throw invalid("tool_choice", "'tool_choice' must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", ...}, got " + tc->dump());
    } else if (tc->is_object()) {
      auto f = tc->find("function");
      const ojson* name = nullptr;
      if (f != tc->end() && f->is_object())
        if (auto n = f->find("name"); n != f->end() && n->is_string()) name = &*n;
      if (tc->value("type", "") != "function" || !name)
        throw invalid("tool_choice", "'tool_choice' as an object must be {\"type\": \"function\", \"function\": {\"name\": ...}}");
      o.tool_choice = ToolChoice::Function;
      o.tool_choice_name = name->get<std::string>();
      bool known = false;
      for (const ToolDefinition& d : o.tools) known = known || d.name == o.tool_choice_name;
      if (!known)
        throw invalid("tool_choice", "'tool_choice' names the function '" + o.tool_choice_name + "', which is not in 'tools'");
    } else {
      throw wrong("tool_choice", *tc, "a string or an object");
    }
    if (o.tools.empty() && (o.tool_choice == ToolChoice::Required || o.tool_choice == ToolChoice::Function))
      throw invalid("tool_choice", "'tool_choice' requires 'tools'");
  }
  if (const ojson* ptc = get("parallel_tool_calls")) {
    if (!ptc->is_boolean()) throw wrong("parallel_tool_calls", *ptc, "a boolean");
    o.parallel_tool_calls = ptc->get<bool>();
  }
  if (const ojson* rf = get("response_format")) {
    if (!rf->is_object()) throw wrong("response_format", *rf, "an object");
    auto type = rf->find("type");
    const std::string t = type != rf->end() && type->is_string() ? type->get<std::string>() : "";
    if (t == "text") {
      o.response_format = ResponseFormat::Text;
    } else if (t == "json_object") {
      o.response_format = ResponseFormat::JsonObject;
    } else if (t == "json_schema") {
      auto js = rf->find("json_schema");
      if (js == rf->end() || !js->is_object())
        throw invalid("response_format.json_schema", "'response_format.json_schema' must be an object", "invalid_type");
      auto name = js->find("name");
      if (name == js->end() || !name->is_string() || name->get<std::string>().empty())
        throw invalid("response_format.json_schema.name", "'response_format.json_schema.name' is required", "missing_required_parameter");
      auto schema = js->find("schema");
      if (schema == js->end() || !(schema->is_object() || schema->is_boolean()))
        throw invalid("response_format.json_schema.schema", "'response_format.json_schema.schema' must be a JSON Schema object", "invalid_type");
      if (auto strict = js->find("strict"); strict != js->end() && !strict->is_null() && !strict->is_boolean())
        throw wrong("response_format.json_schema.strict", *strict, "a boolean");
      o.response_format = ResponseFormat::JsonSchema;
      o.json_schema = *schema;
    } else {
      throw invalid("response_format.type", "'response_format.type' must be \"text\", \"json_object\" or \"json_schema\"");
    }
  }
  if (!o.grammar.empty() && o.response_format != ResponseFormat::Text)
    throw invalid("grammar", "'grammar' and a JSON 'response_format' cannot be combined: give one");
}

}  // namespace

json parse_json_object(const std::string& body) {
  // nlohmann's lexer takes a NUL byte for the end of input, so "{...}\0garbage" would pass.
  // JSON text never holds a raw NUL (strings must escape it): such a body is invalid.
  if (body.find('\0') != std::string::npos)
    throw ApiError(400, "request body is not valid JSON (it contains a NUL byte)", "invalid_json");
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded())
    throw ApiError(400, "request body is not valid JSON", "invalid_json");
  if (!j.is_object()) throw ApiError(400, "request body must be a JSON object", "invalid_json");
  return j;
}

ChatRequest parse_chat_request(const json& body, const std::string& raw_body) {
  ChatRequest r;
  r.messages = parse_messages(body);
  r.params = parse_common(body, /*logprobs_is_count=*/false);
  const bool ordered = !raw_body.empty() && (body.contains("tools") || body.contains("response_format"));
  parse_output_options(ordered ? nlohmann::ordered_json::parse(raw_body) : nlohmann::ordered_json(body), r.params.output);
  const OutputOptions& o = r.params.output;
  if (o.constrained() && !r.params.stop.empty())
    throw invalid("stop", "'stop' cannot be combined with a constrained answer (tools, response_format, grammar): "
                          "a stop string could cut the document short", "unsupported_value");
  if (o.constrained() && r.params.ignore_eos)
    throw invalid("ignore_eos", "'ignore_eos' cannot be combined with a constrained answer (tools, response_format, grammar)",
                  "unsupported_value");
  return r;
}

TextCompletionRequest parse_completion_request(const json& body) {
  TextCompletionRequest r;
  const json* v = field(body, "prompt");
  if (!v) throw invalid("prompt", "'prompt' is required", "missing_required_parameter");
  // A single prompt, as a string or a one-element array (batches would need n>1 answers).
  if (v->is_array() && v->size() == 1 && (*v)[0].is_string()) {
    r.prompt = (*v)[0].get<std::string>();
  } else if (v->is_string()) {
    r.prompt = v->get<std::string>();
  } else if (v->is_array() && v->size() > 1) {
    throw invalid("prompt", "only a single prompt per request is supported", "unsupported_value");
  } else {
    throw wrong_type("prompt", *v, "a string");
  }
  r.params = parse_common(body, /*logprobs_is_count=*/true);
  for (const char* chat_only : {"tools", "tool_choice", "response_format"})
    if (field(body, chat_only))
      throw invalid(chat_only, std::string("'") + chat_only + "' is only supported on /v1/chat/completions", "unsupported_value");
  // Legacy completion features the server does not have: refused, not ignored.
  if (auto best_of = integer_in(body, "best_of", 1, kMaxChoices); best_of && *best_of != r.params.n)
    throw invalid("best_of", "'best_of' (ranking more samples than are returned) is not supported; use 'n'",
                  "unsupported_value");
  if (boolean(body, "echo").value_or(false))
    throw invalid("echo", "'echo' is not supported: the answer does not repeat the prompt", "unsupported_value");
  if (auto suffix = string_field(body, "suffix"); suffix && !suffix->empty())
    throw invalid("suffix", "'suffix' (text insertion) is not supported", "unsupported_value");
  if (!r.params.output.grammar.empty() && !r.params.stop.empty())
    throw invalid("stop", "'stop' cannot be combined with 'grammar': a stop string could cut the text short", "unsupported_value");
  if (!r.params.output.grammar.empty() && r.params.ignore_eos)
    throw invalid("ignore_eos", "'ignore_eos' cannot be combined with 'grammar'", "unsupported_value");
  return r;
}

}  // namespace cpuchat::server
