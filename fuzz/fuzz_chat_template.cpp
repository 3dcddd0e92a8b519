// The chat template renderer: arbitrary messages (roles and contents) through every chat
// format (with and without tool definitions), as text and encoded. Unknown roles must be
// refused, never rendered.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpuchat/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const cpuchat::ChatFormat format = static_cast<cpuchat::ChatFormat>(data[0] % 4);
  const bool generation_prompt = data[1] & 1;
  cpuchat::ChatTools tools;
  if (data[1] & 2) tools.definitions_json = R"([{"type":"function","function":{"name":"f","parameters":{}}}])";
  tools.in_user_message = data[1] & 4;
  if (data[1] & 8) tools.builtin = {"brave_search"};
  // Messages separated by 0xff; the first byte of each picks the role.
  std::vector<cpuchat::ChatMessage> messages;
  static const char* kRoles[] = {"system", "user", "assistant", "tool", "narrator"};
  std::string current;
  for (size_t i = 2; i <= size; ++i) {
    if (i == size || data[i] == 0xff) {
      if (!current.empty()) messages.push_back({kRoles[uint8_t(current[0]) % 5], current.substr(1)});
      current.clear();
    } else {
      current += char(data[i]);
    }
  }
  bool has_unknown_role = false;
  bool has_user = false;
  for (const auto& m : messages) {
    has_unknown_role |= m.role == "narrator";
    has_user |= m.role == "user";
  }
  // Tool definitions go into the first user message: Llama 3.1 (by default) takes the first
  // message after the system one, as Meta's template does; Llama 3 and Llama 2 the first
  // "user" one. Without it, that is an error. Base models (Plain) get no definitions.
  const size_t turns = messages.size() - (!messages.empty() && messages[0].role == "system");
  bool tools_need_user = false;
  if (!tools.definitions_json.empty()) {
    if (format == cpuchat::ChatFormat::Llama31) tools_need_user = tools.in_user_message && turns == 0;
    else if (format != cpuchat::ChatFormat::Plain) tools_need_user = !has_user;
  }
  const bool must_refuse = has_unknown_role || tools_need_user;
  try {
    cpuchat::render_chat(format, messages, generation_prompt, tools);
    if (must_refuse) __builtin_trap();
  } catch (const std::invalid_argument&) {
    if (!must_refuse) __builtin_trap();
  }
  return 0;
}
