// The chat template renderer: arbitrary messages (roles and contents) through every chat
// format, as text and encoded. Unknown roles must be refused, never rendered.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpuchat/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const cpuchat::ChatFormat format = static_cast<cpuchat::ChatFormat>(data[0] % 3);
  const bool generation_prompt = data[1] & 1;
  // Messages separated by 0xff; the first byte of each picks the role.
  std::vector<cpuchat::ChatMessage> messages;
  static const char* kRoles[] = {"system", "user", "assistant", "tool"};
  std::string current;
  for (size_t i = 2; i <= size; ++i) {
    if (i == size || data[i] == 0xff) {
      if (!current.empty()) messages.push_back({kRoles[uint8_t(current[0]) % 4], current.substr(1)});
      current.clear();
    } else {
      current += char(data[i]);
    }
  }
  bool has_unknown_role = false;
  for (const auto& m : messages) has_unknown_role |= m.role == "tool";
  try {
    cpuchat::render_chat(format, messages, generation_prompt);
    if (has_unknown_role) __builtin_trap();  // must have been refused
  } catch (const std::invalid_argument&) {
    if (!has_unknown_role) __builtin_trap();
  }
  return 0;
}
