// Chat templates. Each format lays a conversation out as a list of parts: text, or a
// special token. render_chat joins them as text; encode_chat encodes the text parts with
// special parsing off (so message content can never forge a special token) and puts the
// template's own specials in as single ids.
//
// Llama31 (Meta's Llama 3.1 template with its preamble and tools): see layout_llama31.
// Llama3  (Meta's and HF's Llama 3 template, without the 3.1 "Cutting Knowledge Date" preamble):
//   <|begin_of_text|>{ <|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|> }
//   then, with add_generation_prompt, <|start_header_id|>assistant<|end_header_id|>\n\n
// Llama2  (Meta's chat_completion): per exchange
//   <s>[INST] {user} [/INST] {assistant} </s>     and the open one: <s>[INST] {user} [/INST]
//   A system prompt goes in front of the first user message as "<<SYS>>\n{system}\n<</SYS>>\n\n".
//   Consecutive messages of the same side are joined with "\n". Llama 2 has no assistant
//   header, so add_generation_prompt changes nothing.
// Plain   (base models such as the TinyStories ones): BOS, then the contents of all
//   messages, system included, joined with single spaces, so the model simply continues
//   the text. No role labels: a story model continues "Once upon a time" far better than
//   "User: Once upon a time\nAssistant:". add_generation_prompt adds nothing.
// In all formats contents are trimmed of surrounding whitespace (Meta's and HF's templates
// do the same).
#include <algorithm>
#include <optional>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "tokenizer_internal.h"

namespace cpuchat {

namespace {

struct Part {
  enum Kind { kText, kBos, kEos, kSpecial } kind;
  std::string text;  // kText: the text; kSpecial: the token's name
};

class Layout {
 public:
  void text(const std::string& t) {
    if (t.empty()) return;
    if (!parts_.empty() && parts_.back().kind == Part::kText)
      parts_.back().text += t;
    else
      parts_.push_back({Part::kText, t});
  }
  void bos() { parts_.push_back({Part::kBos, ""}); }
  void eos() { parts_.push_back({Part::kEos, ""}); }
  void special(const std::string& name) { parts_.push_back({Part::kSpecial, name}); }
  const std::vector<Part>& parts() const { return parts_; }

 private:
  std::vector<Part> parts_;
};

std::string trim(const std::string& s) {
  const char* space = " \t\n\r\f\v";
  const size_t first = s.find_first_not_of(space);
  if (first == std::string::npos) return "";
  return s.substr(first, s.find_last_not_of(space) - first + 1);
}

// The header of a Llama 3 turn: <|start_header_id|>{role}<|end_header_id|>\n\n
void llama3_header(Layout& out, const std::string& role) {
  out.special("<|start_header_id|>");
  out.text(role);
  out.special("<|end_header_id|>");
  out.text("\n\n");
}

void check_roles(const std::vector<ChatMessage>& messages) {
  for (const ChatMessage& m : messages)
    if (m.role != "system" && m.role != "user" && m.role != "assistant" && m.role != "tool")
      throw std::invalid_argument("unknown chat role '" + m.role + "' (expected system, user, assistant or tool)");
}

using ordered_json = nlohmann::ordered_json;

// Python's json.dumps(v, ensure_ascii=False) with its default separators ", " and ": "
// (what the template's tojson writes without indent).
std::string python_json(const ordered_json& v) {
  if (v.is_object()) {
    std::string out = "{";
    for (auto it = v.begin(); it != v.end(); ++it)
      out += (it == v.begin() ? "" : ", ") + ordered_json(it.key()).dump() + ": " + python_json(it.value());
    return out + "}";
  }
  if (v.is_array()) {
    std::string out = "[";
    for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + python_json(v[i]);
    return out + "]";
  }
  return v.dump();
}

ordered_json call_arguments(const ChatToolCall& call) {
  ordered_json args = ordered_json::parse(call.arguments.empty() ? "{}" : call.arguments, nullptr, false);
  if (args.is_discarded() || !args.is_object())
    throw std::invalid_argument("the arguments of tool call '" + call.name + "' are not a JSON object");
  return args;
}

ordered_json tool_definitions(const ChatTools& tools) {
  if (tools.definitions_json.empty()) return ordered_json();
  ordered_json defs = ordered_json::parse(tools.definitions_json, nullptr, false);
  if (defs.is_discarded() || !defs.is_array()) throw std::invalid_argument("tool definitions must be a JSON array");
  return defs;
}

const char* kToolsInUserPrompt =
    "Given the following functions, please respond with a JSON for a function call with its proper arguments "
    "that best answers the given prompt.\n\n"
    "Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}."
    "Do not use variables.\n\n";
const char* kToolsInSystemPrompt =
    "You have access to the following functions. To call a function, please respond with JSON for a function call."
    "Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}."
    "Do not use variables.\n\n";

std::string tool_list(const ordered_json& defs) {
  std::string out;
  for (const auto& t : defs) out += t.dump(4) + "\n\n";
  return out;
}

bool is_builtin(const ChatTools& tools, const std::string& name) {
  return std::find(tools.builtin.begin(), tools.builtin.end(), name) != tools.builtin.end();
}

// A built-in tool call: <|python_tag|>brave_search.call(query="...")
std::string builtin_call_text(const ChatToolCall& call) {
  std::string out = call.name + ".call(";
  const ordered_json args = call_arguments(call);
  for (auto it = args.begin(); it != args.end(); ++it)
    out += (it == args.begin() ? "" : ", ") + it.key() + "=\"" +
           (it.value().is_string() ? it.value().get<std::string>() : it.value().dump()) + "\"";
  return out + ")";
}

// Meta's Llama 3.1 template (../shared/fixtures/llama31_chat_template.jinja), line by line.
void layout_llama31(Layout& out, std::vector<ChatMessage> messages, bool add_generation_prompt, const ChatTools& tools) {
  const ordered_json defs = tool_definitions(tools);
  const bool have_tools = !defs.is_null();
  const bool have_builtin = !tools.builtin.empty();
  out.bos();
  std::string system_message;
  if (!messages.empty() && messages[0].role == "system") {
    system_message = trim(messages[0].content);
    messages.erase(messages.begin());
  }
  llama3_header(out, "system");
  std::string sys;
  if (have_builtin || have_tools) sys += "Environment: ipython\n";
  if (have_builtin) {
    std::string names;
    for (const std::string& b : tools.builtin)
      if (b != "code_interpreter") names += (names.empty() ? "" : ", ") + b;
    sys += "Tools: " + names + "\n\n";
  }
  sys += "Cutting Knowledge Date: December 2023\nToday Date: " + tools.date + "\n\n";
  if (have_tools && !tools.in_user_message) sys += kToolsInSystemPrompt + tool_list(defs);
  out.text(sys + system_message);
  out.special("<|eot_id|>");
  if (have_tools && tools.in_user_message) {
    if (messages.empty()) throw std::invalid_argument("tools go in the first user message, but there is none");
    const std::string first_user = trim(messages[0].content);
    messages.erase(messages.begin());
    llama3_header(out, "user");
    out.text(kToolsInUserPrompt + tool_list(defs) + first_user);
    out.special("<|eot_id|>");
  }
  for (const ChatMessage& m : messages) {
    if (!m.tool_calls.empty()) {
      llama3_header(out, "assistant");
      // Llama 3.1 makes one call per turn; several (parallel calls in history) go one per line.
      for (size_t i = 0; i < m.tool_calls.size(); ++i) {
        const ChatToolCall& call = m.tool_calls[i];
        if (i) out.text("\n");
        if (is_builtin(tools, call.name)) {
          out.special("<|python_tag|>");
          out.text(builtin_call_text(call));
        } else {
          out.text(llama31_tool_call_text(call));
        }
      }
      out.special(have_builtin ? "<|eom_id|>" : "<|eot_id|>");
    } else if (m.role == "tool") {
      llama3_header(out, "ipython");
      // A string result is itself JSON-encoded; invalid UTF-8 (a CLI's stdin) becomes U+FFFD.
      out.text(ordered_json(m.content).dump(-1, ' ', false, ordered_json::error_handler_t::replace));
      out.special("<|eot_id|>");
    } else {
      llama3_header(out, m.role);
      out.text(trim(m.content));
      out.special("<|eot_id|>");
    }
  }
  if (add_generation_prompt) llama3_header(out, "assistant");
}

// Formats without tool syntax: tools, calls and results as plain turns. Base models (Plain)
// get no tool instructions: they cannot follow them, and a story model's context is short.
std::vector<ChatMessage> lower_tools(const std::vector<ChatMessage>& messages, const ChatTools& tools, bool instructions) {
  std::vector<ChatMessage> out;
  const ordered_json defs = tool_definitions(tools);
  bool tools_placed = defs.is_null() || !instructions;
  for (const ChatMessage& m : messages) {
    ChatMessage plain{m.role == "tool" ? "user" : m.role, m.content, {}, ""};
    if (!m.tool_calls.empty()) {
      plain.content.clear();
      for (size_t i = 0; i < m.tool_calls.size(); ++i)
        plain.content += (i ? "\n" : "") + llama31_tool_call_text(m.tool_calls[i]);
    }
    if (!tools_placed && m.role == "user") {
      plain.content = kToolsInUserPrompt + tool_list(defs) + trim(plain.content);
      tools_placed = true;
    }
    out.push_back(plain);
  }
  if (!tools_placed) throw std::invalid_argument("tools go in the first user message, but there is none");
  return out;
}

void layout_llama3(Layout& out, const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
  out.bos();
  for (const ChatMessage& m : messages) {
    llama3_header(out, m.role);
    out.text(trim(m.content));
    out.special("<|eot_id|>");
  }
  if (add_generation_prompt) llama3_header(out, "assistant");
}

void layout_llama2(Layout& out, const std::vector<ChatMessage>& messages) {
  struct Exchange {
    std::string user;
    std::optional<std::string> answer;
  };
  std::string system;
  std::vector<Exchange> exchanges;
  auto join = [](std::string& to, const std::string& more) { to = to.empty() ? more : to + "\n" + more; };
  for (const ChatMessage& m : messages) {
    const std::string content = trim(m.content);
    if (m.role == "system") {
      join(system, content);
    } else if (m.role == "user") {
      if (exchanges.empty() || exchanges.back().answer)
        exchanges.push_back({content, std::nullopt});
      else
        join(exchanges.back().user, content);
    } else {  // assistant
      if (exchanges.empty()) exchanges.push_back({"", std::nullopt});
      if (exchanges.back().answer)
        join(*exchanges.back().answer, content);
      else
        exchanges.back().answer = content;
    }
  }
  if (!system.empty()) {
    if (exchanges.empty()) exchanges.push_back({"", std::nullopt});
    exchanges.front().user = "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + exchanges.front().user;
  }
  for (const Exchange& e : exchanges) {
    out.bos();
    out.text("[INST] " + e.user + " [/INST]");
    if (e.answer) {
      out.text(" " + *e.answer + " ");
      out.eos();
    }
  }
}

void layout_plain(Layout& out, const std::vector<ChatMessage>& messages) {
  out.bos();
  std::string text;
  for (const ChatMessage& m : messages) {
    const std::string content = trim(m.content);
    if (content.empty()) continue;
    if (!text.empty()) text += ' ';
    text += content;
  }
  out.text(text);
}

Layout layout_chat(ChatFormat format, const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                   const ChatTools& tools) {
  check_roles(messages);
  Layout out;
  if (format == ChatFormat::Llama31) {
    layout_llama31(out, messages, add_generation_prompt, tools);
    return out;
  }
  bool tool_turns = tools.any();
  for (const ChatMessage& m : messages) tool_turns = tool_turns || m.role == "tool" || !m.tool_calls.empty();
  const std::vector<ChatMessage> plain = tool_turns ? lower_tools(messages, tools, format != ChatFormat::Plain) : messages;
  switch (format) {
    case ChatFormat::Llama31:
    case ChatFormat::Llama3: layout_llama3(out, plain, add_generation_prompt); break;
    case ChatFormat::Llama2: layout_llama2(out, plain); break;
    case ChatFormat::Plain: layout_plain(out, plain); break;
  }
  return out;
}

}  // namespace

std::string llama31_tool_call_text(const ChatToolCall& call) {
  return "{\"name\": \"" + call.name + "\", \"parameters\": " + python_json(call_arguments(call)) + "}";
}

std::string render_chat(ChatFormat format, const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                        const ChatTools& tools) {
  const Layout layout = layout_chat(format, messages, add_generation_prompt, tools);
  std::string text;
  for (const Part& p : layout.parts()) {
    switch (p.kind) {
      case Part::kText:
      case Part::kSpecial: text += p.text; break;
      case Part::kBos:
        text += (format == ChatFormat::Llama3 || format == ChatFormat::Llama31) ? "<|begin_of_text|>"
                : format == ChatFormat::Llama2                                 ? "<s>"
                                                                               : "";
        break;
      case Part::kEos: text += (format == ChatFormat::Llama3 || format == ChatFormat::Llama31) ? "<|end_of_text|>" : "</s>"; break;
    }
  }
  return text;
}

std::vector<int> encode_chat(const Tokenizer& tok, const std::vector<ChatMessage>& messages,
                             bool add_generation_prompt, const ChatTools& tools) {
  const Layout layout = layout_chat(tok.chat_format, messages, add_generation_prompt, tools);
  std::vector<int> ids;
  for (const Part& p : layout.parts()) {
    switch (p.kind) {
      case Part::kText: {
        const std::vector<int> text_ids = tok.encode(p.text, /*parse_special=*/false);
        ids.insert(ids.end(), text_ids.begin(), text_ids.end());
        break;
      }
      case Part::kBos:
        if (tok.bos_id >= 0) ids.push_back(tok.bos_id);
        break;
      case Part::kEos: {
        const std::optional<int> eos = tok.special_id("</s>");
        if (eos)
          ids.push_back(*eos);
        else if (!tok.eos_ids.empty())
          ids.push_back(tok.eos_ids.front());
        break;
      }
      case Part::kSpecial: {
        const std::optional<int> id = tok.special_id(p.text);
        if (!id)
          throw std::runtime_error("chat template needs special token " + p.text + ", which the tokenizer lacks");
        ids.push_back(*id);
        break;
      }
    }
  }
  return ids;
}

}  // namespace cpuchat
