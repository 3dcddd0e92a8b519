#include "server/request_parser.h"

#include <cmath>

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

// Fields common to both endpoints. `logprobs_is_count`: /v1/completions takes an integer.
CompletionParams parse_common(const json& body, bool logprobs_is_count) {
  CompletionParams p;
  if (auto m = string_field(body, "model")) p.model = *m;

  if (auto n = integer_in(body, "n", -1e18, 1e18); n && *n != 1)
    throw invalid("n", "only n=1 is supported (got " + std::to_string(*n) + ")",
                  "unsupported_value");

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
    if (role != "system" && role != "user" && role != "assistant")
      throw invalid(param + ".role",
                    "unsupported role '" + role_it->get<std::string>() +
                        "' (expected system, user or assistant)",
                    "invalid_value");
    out.push_back({role, parse_content(m, role, i)});
  }
  return out;
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

ChatRequest parse_chat_request(const json& body) {
  ChatRequest r;
  r.messages = parse_messages(body);
  r.params = parse_common(body, /*logprobs_is_count=*/false);
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
  return r;
}

}  // namespace cpuchat::server
