// Chat templates. Each format lays a conversation out as a list of parts: text, or a
// special token. render_chat joins them as text; encode_chat encodes the text parts with
// special parsing off (so message content can never forge a special token) and puts the
// template's own specials in as single ids.
//
// Llama3  (Meta's and HF's template, without the 3.1 "Cutting Knowledge Date" preamble):
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
#include <optional>
#include <stdexcept>

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

void check_roles(const std::vector<ChatMessage>& messages) {
  for (const ChatMessage& m : messages)
    if (m.role != "system" && m.role != "user" && m.role != "assistant")
      throw std::invalid_argument("unknown chat role '" + m.role + "' (expected system, user or assistant)");
}

void layout_llama3(Layout& out, const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
  out.bos();
  for (const ChatMessage& m : messages) {
    out.special("<|start_header_id|>");
    out.text(m.role);
    out.special("<|end_header_id|>");
    out.text("\n\n" + trim(m.content));
    out.special("<|eot_id|>");
  }
  if (add_generation_prompt) {
    out.special("<|start_header_id|>");
    out.text("assistant");
    out.special("<|end_header_id|>");
    out.text("\n\n");
  }
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

Layout layout_chat(ChatFormat format, const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
  check_roles(messages);
  Layout out;
  switch (format) {
    case ChatFormat::Llama3: layout_llama3(out, messages, add_generation_prompt); break;
    case ChatFormat::Llama2: layout_llama2(out, messages); break;
    case ChatFormat::Plain: layout_plain(out, messages); break;
  }
  return out;
}

}  // namespace

std::string render_chat(ChatFormat format, const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
  const Layout layout = layout_chat(format, messages, add_generation_prompt);
  std::string text;
  for (const Part& p : layout.parts()) {
    switch (p.kind) {
      case Part::kText:
      case Part::kSpecial: text += p.text; break;
      case Part::kBos:
        text += format == ChatFormat::Llama3 ? "<|begin_of_text|>" : format == ChatFormat::Llama2 ? "<s>" : "";
        break;
      case Part::kEos: text += format == ChatFormat::Llama3 ? "<|end_of_text|>" : "</s>"; break;
    }
  }
  return text;
}

std::vector<int> encode_chat(const Tokenizer& tok, const std::vector<ChatMessage>& messages,
                             bool add_generation_prompt) {
  const Layout layout = layout_chat(tok.chat_format, messages, add_generation_prompt);
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
