#include "server/responses_api.h"

namespace cpuchat::server {

using nlohmann::json;
using nlohmann::ordered_json;

namespace {

ApiError invalid(const std::string& param, const std::string& message, const std::string& code = "invalid_value") {
  return ApiError(400, message, code, param);
}
ApiError unsupported(const std::string& param, const std::string& message) {
  return ApiError(400, message, "unsupported_value", param);
}

const ordered_json* field(const ordered_json& o, const char* name) {
  auto it = o.find(name);
  return it == o.end() || it->is_null() ? nullptr : &*it;
}

std::string string_at(const ordered_json& o, const char* name, const std::string& param, bool required) {
  const ordered_json* v = field(o, name);
  if (!v) {
    if (required) throw invalid(param, "'" + param + "' is required", "missing_required_parameter");
    return "";
  }
  if (!v->is_string()) throw invalid(param, "'" + param + "' must be a string", "invalid_type");
  return v->get<std::string>();
}

// The part after "resp_": the suffix the message and call item ids share.
std::string id_suffix(const AnswerHeader& h) {
  const size_t sep = h.id.find('_');
  return sep == std::string::npos ? h.id : h.id.substr(sep + 1);
}
std::string message_item_id(const AnswerHeader& h) { return "msg_" + id_suffix(h); }
std::string call_item_id(const AnswerHeader& h, size_t index) { return "fc_" + id_suffix(h) + "_" + std::to_string(index); }

// Text of a message's `content`: a string, or parts of type input_text / output_text (refusal
// parts count as their text). Images, files and audio are refused: the models read text only.
std::string content_text(const ordered_json& content, const std::string& param) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) throw invalid(param, "'" + param + "' must be a string or an array of content parts", "invalid_type");
  std::string text;
  for (size_t j = 0; j < content.size(); ++j) {
    const ordered_json& part = content[j];
    const std::string pp = param + "[" + std::to_string(j) + "]";
    if (!part.is_object()) throw invalid(pp, "'" + pp + "' must be an object", "invalid_type");
    const std::string type = string_at(part, "type", pp + ".type", true);
    if (type == "input_text" || type == "output_text" || type == "text") {
      text += string_at(part, "text", pp + ".text", true);
    } else if (type == "refusal") {
      text += string_at(part, "refusal", pp + ".refusal", true);
    } else if (type == "input_image" || type == "input_file" || type == "input_audio") {
      throw unsupported(pp + ".type", "content parts of type '" + type + "' are not supported: cpuchat serves text-only models");
    } else {
      throw unsupported(pp + ".type", "unknown content part type '" + type + "' (expected input_text or output_text)");
    }
  }
  return text;
}

// Input items -> chat messages appended to `messages`.
void append_input(const ordered_json& input, ordered_json& messages) {
  if (input.is_string()) {
    messages.push_back({{"role", "user"}, {"content", input}});
    return;
  }
  if (!input.is_array()) throw invalid("input", "'input' must be a string or an array of items", "invalid_type");
  if (input.empty()) throw invalid("input", "'input' must not be empty");
  for (size_t i = 0; i < input.size(); ++i) {
    const ordered_json& item = input[i];
    const std::string p = "input[" + std::to_string(i) + "]";
    if (!item.is_object()) throw invalid(p, "'" + p + "' must be an object", "invalid_type");
    std::string type = string_at(item, "type", p + ".type", false);
    if (type.empty() && item.contains("role")) type = "message";
    if (type == "message") {
      std::string role = string_at(item, "role", p + ".role", true);
      if (role == "developer") role = "system";
      if (role != "user" && role != "assistant" && role != "system")
        throw invalid(p + ".role", "'" + p + ".role' must be user, assistant, system or developer, got '" + role + "'");
      const ordered_json* content = field(item, "content");
      if (!content) throw invalid(p + ".content", "'" + p + ".content' is required", "missing_required_parameter");
      messages.push_back({{"role", role}, {"content", content_text(*content, p + ".content")}});
    } else if (type == "function_call") {
      const std::string call_id = string_at(item, "call_id", p + ".call_id", true);
      const std::string name = string_at(item, "name", p + ".name", true);
      std::string arguments = string_at(item, "arguments", p + ".arguments", false);
      if (arguments.empty()) arguments = "{}";
      ordered_json call = {{"id", call_id}, {"type", "function"}, {"function", {{"name", name}, {"arguments", arguments}}}};
      // Consecutive calls are one assistant turn (Llama 3.1 writes them one per line).
      if (!messages.empty() && messages.back()["role"] == "assistant" && messages.back().contains("tool_calls"))
        messages.back()["tool_calls"].push_back(call);
      else
        messages.push_back({{"role", "assistant"}, {"content", nullptr}, {"tool_calls", ordered_json::array({call})}});
    } else if (type == "function_call_output") {
      const std::string call_id = string_at(item, "call_id", p + ".call_id", true);
      const ordered_json* output = field(item, "output");
      if (!output) throw invalid(p + ".output", "'" + p + ".output' is required", "missing_required_parameter");
      messages.push_back({{"role", "tool"}, {"tool_call_id", call_id}, {"content", content_text(*output, p + ".output")}});
    } else if (type == "reasoning") {
      continue;  // a reasoning model's summary from another server: nothing to render for Llama
    } else if (type == "item_reference") {
      throw unsupported(p + ".type", "'item_reference' items are not supported: send the items themselves, or continue with 'previous_response_id'");
    } else {
      throw unsupported(p + ".type", "input items of type '" + type + "' are not supported (expected message, function_call or function_call_output)");
    }
  }
}

// Responses tools ({type: "function", name, parameters, ...}) -> chat tools.
ordered_json chat_tools(const ordered_json& tools) {
  if (!tools.is_array()) throw invalid("tools", "'tools' must be an array", "invalid_type");
  ordered_json out = ordered_json::array();
  for (size_t i = 0; i < tools.size(); ++i) {
    const ordered_json& t = tools[i];
    const std::string p = "tools[" + std::to_string(i) + "]";
    if (!t.is_object()) throw invalid(p, "'" + p + "' must be an object", "invalid_type");
    const std::string type = string_at(t, "type", p + ".type", true);
    if (type != "function")
      throw unsupported(p + ".type", "tools of type '" + type + "' (OpenAI's built-in tools) are not supported: only 'function' tools");
    ordered_json f = {{"name", t.value("name", ordered_json())}};
    for (const char* k : {"description", "parameters", "strict"})
      if (const ordered_json* v = field(t, k)) f[k] = *v;
    out.push_back({{"type", "function"}, {"function", f}});
  }
  return out;
}

ordered_json chat_tool_choice(const ordered_json& tc) {
  if (tc.is_string()) return tc;
  if (tc.is_object() && tc.value("type", "") == "function")
    return {{"type", "function"}, {"function", {{"name", tc.value("name", ordered_json())}}}};
  if (tc.is_object())
    throw unsupported("tool_choice", "'tool_choice' of type '" + tc.value("type", std::string("?")) + "' is not supported (use \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"name\": ...})");
  throw invalid("tool_choice", "'tool_choice' must be a string or an object", "invalid_type");
}

// text.format -> response_format.
ordered_json chat_response_format(const ordered_json& text) {
  if (!text.is_object()) throw invalid("text", "'text' must be an object", "invalid_type");
  const ordered_json* format = field(text, "format");
  if (!format) return nullptr;
  if (!format->is_object()) throw invalid("text.format", "'text.format' must be an object", "invalid_type");
  const std::string type = string_at(*format, "type", "text.format.type", true);
  if (type == "text" || type == "json_object") return {{"type", type}};
  if (type != "json_schema")
    throw invalid("text.format.type", "'text.format.type' must be \"text\", \"json_object\" or \"json_schema\"");
  ordered_json js = {{"name", string_at(*format, "name", "text.format.name", true)}};
  if (const ordered_json* schema = field(*format, "schema")) js["schema"] = *schema;
  else throw invalid("text.format.schema", "'text.format.schema' is required", "missing_required_parameter");
  if (const ordered_json* strict = field(*format, "strict")) js["strict"] = *strict;
  return {{"type", "json_schema"}, {"json_schema", js}};
}

// Extensions and sampling fields that mean the same on both endpoints.
constexpr const char* kPassThrough[] = {"model", "temperature", "top_p", "stream", "parallel_tool_calls", "seed",
                                        "top_k", "min_p", "repetition_penalty", "presence_penalty",
                                        "frequency_penalty", "ignore_eos", "instance", "price_per_hour",
                                        "logit_bias", "grammar"};

}  // namespace

// ---- Store -------------------------------------------------------------------------------

void ResponseStore::put(const std::string& id, StoredResponse r) {
  if (max_count_ == 0) return;
  r.bytes = id.size() + r.root_id.size() + r.response.dump().size() + r.conversation.dump().size();
  std::lock_guard<std::mutex> lock(mu_);
  if (auto it = index_.find(id); it != index_.end()) {
    bytes_ -= it->second->second.bytes;
    lru_.erase(it->second);
    index_.erase(it);
  }
  bytes_ += r.bytes;
  lru_.emplace_front(id, std::move(r));
  index_[id] = lru_.begin();
  while (!lru_.empty() && (lru_.size() > max_count_ || bytes_ > max_bytes_)) {
    bytes_ -= lru_.back().second.bytes;
    index_.erase(lru_.back().first);
    lru_.pop_back();
  }
}

std::optional<StoredResponse> ResponseStore::get(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = index_.find(id);
  if (it == index_.end()) return std::nullopt;
  lru_.splice(lru_.begin(), lru_, it->second);
  return it->second->second;
}

bool ResponseStore::erase(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = index_.find(id);
  if (it == index_.end()) return false;
  bytes_ -= it->second->second.bytes;
  lru_.erase(it->second);
  index_.erase(it);
  return true;
}

size_t ResponseStore::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return lru_.size();
}

// ---- Request -----------------------------------------------------------------------------

ResponsesTurn parse_responses_request(const std::string& raw_body, ResponseStore& store) {
  const ordered_json body = ordered_json::parse(raw_body);  // the caller has checked it is a JSON object
  ResponsesTurn t;
  ordered_json& chat = t.chat_body;
  chat = ordered_json::object();
  for (const char* k : kPassThrough)
    if (const ordered_json* v = field(body, k)) chat[k] = *v;

  for (const char* refused : {"background", "conversation", "prompt"})
    if (const ordered_json* v = field(body, refused); v && !(v->is_boolean() && !v->get<bool>()))
      throw unsupported(refused, std::string("'") + refused + "' is not supported" +
                                     (std::string(refused) == "conversation" ? ": continue with 'previous_response_id'" : ""));

  // Logprobs and the other `include` extras are known but not produced here: refused, not ignored.
  if (const ordered_json* v = field(body, "top_logprobs"); v && !(v->is_number_integer() && v->get<int64_t>() == 0))
    throw unsupported("top_logprobs", "'top_logprobs' is not supported on /v1/responses: use /v1/chat/completions with 'logprobs'");
  if (const ordered_json* v = field(body, "include")) {
    if (!v->is_array()) throw invalid("include", "'include' must be an array of strings", "invalid_type");
    for (const auto& item : *v)
      throw unsupported("include", "'include' value " + item.dump() + " is not supported (cpuchat includes nothing extra)");
  }
  if (const ordered_json* v = field(body, "store")) {
    if (!v->is_boolean()) throw invalid("store", "'store' must be a boolean", "invalid_type");
    t.store = v->get<bool>();
  }
  if (const ordered_json* v = field(body, "truncation")) {
    if (*v != "auto" && *v != "disabled") throw invalid("truncation", "'truncation' must be \"auto\" or \"disabled\"");
    t.truncation_auto = *v == "auto";
  }
  if (const ordered_json* v = field(body, "metadata")) {
    if (!v->is_object() || v->size() > 16)
      throw invalid("metadata", "'metadata' must be an object of at most 16 string values", "invalid_type");
    for (const auto& [k, val] : v->items())
      if (!val.is_string() || k.size() > 64 || val.get<std::string>().size() > 512)
        throw invalid("metadata", "'metadata' values must be strings (keys up to 64, values up to 512 characters)", "invalid_type");
  }
  if (const ordered_json* v = field(body, "max_output_tokens")) {
    if (!v->is_number_integer() || v->get<long long>() < 1)
      throw invalid("max_output_tokens", "'max_output_tokens' must be a positive integer", "invalid_type");
    chat["max_completion_tokens"] = *v;
  }

  ordered_json messages = ordered_json::array();
  const std::string instructions = string_at(body, "instructions", "instructions", false);
  if (!instructions.empty()) {
    messages.push_back({{"role", "system"}, {"content", instructions}});
    t.instruction_messages = 1;
  }
  const std::string previous = string_at(body, "previous_response_id", "previous_response_id", false);
  if (!previous.empty()) {
    std::optional<StoredResponse> prev = store.get(previous);
    if (!prev)
      throw ApiError(404, "Previous response with id '" + previous + "' not found (never stored, deleted, or evicted from the store)",
                     "previous_response_not_found", "previous_response_id");
    t.root_id = prev->root_id;
    for (const ordered_json& m : prev->conversation) messages.push_back(m);
  }
  const ordered_json* input = field(body, "input");
  if (!input) throw invalid("input", "'input' is required", "missing_required_parameter");
  append_input(*input, messages);
  chat["messages"] = messages;

  ordered_json tools = ordered_json::array();
  if (const ordered_json* v = field(body, "tools")) {
    chat["tools"] = chat_tools(*v);
    tools = *v;
  }
  if (const ordered_json* v = field(body, "tool_choice")) chat["tool_choice"] = chat_tool_choice(*v);
  ordered_json text = {{"format", {{"type", "text"}}}};
  if (const ordered_json* v = field(body, "text")) {
    if (ordered_json rf = chat_response_format(*v); !rf.is_null()) {
      chat["response_format"] = rf;
      text = *v;
    }
  }

  auto echo = [&](const char* k, ordered_json fallback) {
    const ordered_json* v = field(body, k);
    t.echo[k] = v ? *v : fallback;
  };
  t.echo = ordered_json::object();
  echo("instructions", nullptr);
  echo("max_output_tokens", nullptr);
  echo("metadata", ordered_json::object());
  echo("parallel_tool_calls", true);
  echo("previous_response_id", nullptr);
  t.echo["store"] = t.store;
  echo("temperature", 1.0);
  t.echo["text"] = text;
  echo("tool_choice", "auto");
  t.echo["tools"] = tools;
  echo("top_p", 1.0);
  t.echo["truncation"] = t.truncation_auto ? "auto" : "disabled";
  echo("user", nullptr);
  return t;
}

// ---- Response objects --------------------------------------------------------------------

json responses_usage_json(const Metrics& m) {
  return {{"input_tokens", m.prompt_tokens},
          {"input_tokens_details", {{"cached_tokens", m.prompt_tokens - m.prompt_tokens_processed}}},
          {"output_tokens", m.completion_tokens},
          {"output_tokens_details", {{"reasoning_tokens", 0}}},
          {"total_tokens", m.prompt_tokens + m.completion_tokens}};
}

std::string response_status(const std::string& finish_reason) {
  return finish_reason == "length" ? "incomplete" : "completed";
}

json response_object(const ResponsesTurn& t, const AnswerHeader& h, const std::string& status, const json& output,
                     const json& usage, const json& metrics, const json& error) {
  std::string output_text;
  for (const json& item : output)
    if (item["type"] == "message")
      for (const json& part : item["content"])
        if (part["type"] == "output_text") output_text += part["text"].get<std::string>();
  json r = {{"id", h.id}, {"object", "response"}, {"created_at", h.created}, {"status", status},
            {"background", false}, {"error", error},
            {"incomplete_details", status == "incomplete" ? json{{"reason", "max_output_tokens"}} : json()},
            {"model", h.model}, {"output", output}, {"output_text", output_text},
            {"reasoning", {{"effort", nullptr}, {"summary", nullptr}}}, {"usage", usage}};
  for (const auto& [k, v] : t.echo.items()) r[k] = json::parse(v.dump());  // key order is the wire's concern, not ours
  if (!metrics.is_null()) r["metrics"] = metrics;
  return r;
}

json output_items(const AnswerHeader& h, const ChatAnswer& a) {
  json items = json::array();
  if (a.content)
    items.push_back({{"id", message_item_id(h)}, {"type", "message"}, {"status", "completed"}, {"role", "assistant"},
                     {"content", json::array({{{"type", "output_text"}, {"text", *a.content}, {"annotations", json::array()}}})}});
  for (size_t i = 0; i < a.tool_calls.size(); ++i)
    items.push_back({{"id", call_item_id(h, i)}, {"type", "function_call"}, {"status", "completed"},
                     {"call_id", tool_call_id(h, i)}, {"name", a.tool_calls[i].name},
                     {"arguments", a.tool_calls[i].arguments}});
  return items;
}

StoredResponse stored_response(const ResponsesTurn& t, const AnswerHeader& h, const ChatAnswer& a, const json& response) {
  StoredResponse s;
  s.root_id = t.root_id.empty() ? t.id : t.root_id;
  s.response = response;
  s.conversation = ordered_json::array();
  const ordered_json& messages = t.chat_body["messages"];
  for (size_t i = t.instruction_messages; i < messages.size(); ++i) s.conversation.push_back(messages[i]);
  if (a.tool_calls.empty()) {
    s.conversation.push_back({{"role", "assistant"}, {"content", a.content.value_or("")}});
  } else {
    ordered_json calls = ordered_json::array();
    for (size_t i = 0; i < a.tool_calls.size(); ++i)
      calls.push_back({{"id", tool_call_id(h, i)}, {"type", "function"},
                       {"function", {{"name", a.tool_calls[i].name}, {"arguments", a.tool_calls[i].arguments}}}});
    s.conversation.push_back({{"role", "assistant"}, {"content", nullptr}, {"tool_calls", calls}});
  }
  return s;
}

// ---- Streaming ---------------------------------------------------------------------------

std::string ResponsesStream::event(const char* type, json data) {
  data["type"] = type;
  data["sequence_number"] = sequence_++;
  return std::string("event: ") + type + "\ndata: " + dump_json(data) + "\n\n";
}

std::string ResponsesStream::start() {
  const json r = response_object(t_, h_, "in_progress", json::array(), nullptr, nullptr);
  std::string out = event("response.created", {{"response", r}});  // two statements: numbered in order
  return out + event("response.in_progress", {{"response", r}});
}

std::string ResponsesStream::push(const json& chat_chunk) {
  std::string out;
  const json& choices = chat_chunk["choices"];
  if (!choices.is_array() || choices.empty()) return out;
  const json& delta = choices[0]["delta"];
  if (auto c = delta.find("content"); c != delta.end() && c->is_string() && !c->get_ref<const std::string&>().empty()) {
    if (open_ != Open::Message) {
      out += close_open_item();
      open_ = Open::Message;
      text_.clear();
      out += event("response.output_item.added",
                   {{"output_index", done_items_.size()},
                    {"item", {{"id", message_item_id(h_)}, {"type", "message"}, {"status", "in_progress"},
                              {"role", "assistant"}, {"content", json::array()}}}});
      out += event("response.content_part.added",
                   {{"item_id", message_item_id(h_)}, {"output_index", done_items_.size()}, {"content_index", 0},
                    {"part", {{"type", "output_text"}, {"text", ""}, {"annotations", json::array()}}}});
    }
    text_ += c->get<std::string>();
    out += event("response.output_text.delta", {{"item_id", message_item_id(h_)}, {"output_index", done_items_.size()},
                                                {"content_index", 0}, {"delta", *c}, {"logprobs", json::array()}});
  }
  if (auto calls = delta.find("tool_calls"); calls != delta.end() && calls->is_array()) {
    for (const json& call : *calls) {
      const json& f = call.contains("function") ? call["function"] : json::object();
      if (call.contains("id")) {  // a new call: its name first
        out += close_open_item();
        open_ = Open::Call;
        call_args_.clear();
        ToolCall c;
        c.id = call["id"].get<std::string>();
        c.name = f.value("name", "");
        answer_.tool_calls.push_back(c);
        out += event("response.output_item.added",
                     {{"output_index", done_items_.size()},
                      {"item", {{"id", call_item_id(h_, answer_.tool_calls.size() - 1)}, {"type", "function_call"},
                                {"status", "in_progress"}, {"call_id", c.id}, {"name", c.name}, {"arguments", ""}}}});
      }
      const std::string fragment = f.value("arguments", "");
      if (open_ != Open::Call || fragment.empty()) continue;
      call_args_ += fragment;
      out += event("response.function_call_arguments.delta",
                   {{"item_id", call_item_id(h_, answer_.tool_calls.size() - 1)}, {"output_index", done_items_.size()},
                    {"delta", fragment}});
    }
  }
  return out;
}

std::string ResponsesStream::close_open_item() {
  std::string out;
  const size_t output_index = done_items_.size();
  if (open_ == Open::Message) {
    const std::string id = message_item_id(h_);
    const json part = {{"type", "output_text"}, {"text", text_}, {"annotations", json::array()}};
    out += event("response.output_text.done",
                 {{"item_id", id}, {"output_index", output_index}, {"content_index", 0}, {"text", text_}, {"logprobs", json::array()}});
    out += event("response.content_part.done", {{"item_id", id}, {"output_index", output_index}, {"content_index", 0}, {"part", part}});
    const json item = {{"id", id}, {"type", "message"}, {"status", "completed"}, {"role", "assistant"}, {"content", json::array({part})}};
    out += event("response.output_item.done", {{"output_index", output_index}, {"item", item}});
    done_items_.push_back(item);
    answer_.content = answer_.content.value_or("") + text_;
  } else if (open_ == Open::Call) {
    const size_t index = answer_.tool_calls.size() - 1;
    ToolCall& c = answer_.tool_calls.back();
    c.arguments = call_args_;
    const std::string id = call_item_id(h_, index);
    out += event("response.function_call_arguments.done", {{"item_id", id}, {"output_index", output_index}, {"arguments", call_args_}});
    const json item = {{"id", id}, {"type", "function_call"}, {"status", "completed"}, {"call_id", c.id},
                       {"name", c.name}, {"arguments", call_args_}};
    out += event("response.output_item.done", {{"output_index", output_index}, {"item", item}});
    done_items_.push_back(item);
  }
  open_ = Open::None;
  return out;
}

std::string ResponsesStream::finish(const std::string& finish_reason, const json& usage, const json& metrics,
                                    ChatAnswer* answer, json* response) {
  std::string out;
  if (open_ == Open::None && done_items_.empty()) {  // an empty answer is still a message, as unstreamed
    open_ = Open::Message;
    text_.clear();
    out += event("response.output_item.added",
                 {{"output_index", 0},
                  {"item", {{"id", message_item_id(h_)}, {"type", "message"}, {"status", "in_progress"},
                            {"role", "assistant"}, {"content", json::array()}}}});
    out += event("response.content_part.added",
                 {{"item_id", message_item_id(h_)}, {"output_index", 0}, {"content_index", 0},
                  {"part", {{"type", "output_text"}, {"text", ""}, {"annotations", json::array()}}}});
  }
  out += close_open_item();
  answer_.finish_reason = finish_reason;
  const std::string status = response_status(finish_reason);
  *response = response_object(t_, h_, status, done_items_, usage, metrics);
  if (answer) *answer = answer_;
  return out + event(status == "completed" ? "response.completed" : "response.incomplete", {{"response", *response}});
}

std::string ResponsesStream::failed(const ApiError& e) {
  auto null_if_empty = [](const std::string& s) { return s.empty() ? json() : json(s); };
  const std::string code = e.code.empty() ? "server_error" : e.code;
  std::string out = event("error", {{"code", code}, {"message", e.what()}, {"param", null_if_empty(e.param)}});
  const json r = response_object(t_, h_, "failed", done_items_, nullptr, nullptr, {{"code", code}, {"message", e.what()}});
  return out + event("response.failed", {{"response", r}});
}

}  // namespace cpuchat::server
