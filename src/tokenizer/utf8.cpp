// UTF-8 decoding/encoding and the Unicode classes used by the Llama 3 pre-tokenizer.
#include <algorithm>

#include "tokenizer_internal.h"

namespace cpuchat::tok {

namespace {

struct CodePointRange {
  uint32_t first, last;
};

#include "unicode_tables.inc"

template <size_t N>
bool in_ranges(const CodePointRange (&ranges)[N], uint32_t cp) {
  // The last range whose first <= cp decides.
  auto it = std::upper_bound(std::begin(ranges), std::end(ranges), cp,
                             [](uint32_t value, const CodePointRange& r) { return value < r.first; });
  if (it == std::begin(ranges)) return false;
  --it;
  return cp <= it->last;
}

}  // namespace

bool is_letter(uint32_t cp) {
  if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
  return in_ranges(kLetterRanges, cp);
}

bool is_number(uint32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  return in_ranges(kNumberRanges, cp);
}

bool is_whitespace(uint32_t cp) {
  if (cp < 0x80) return cp == ' ' || (cp >= 0x09 && cp <= 0x0D);
  return in_ranges(kWhitespaceRanges, cp);
}

Utf8Step next_utf8_char(std::string_view text, size_t pos) {
  const auto lead = static_cast<unsigned char>(text[pos]);
  if (lead < 0x80) return {lead, 1, true, false};

  // Expected continuation count and the allowed range of the first continuation byte,
  // which rules out overlong forms, surrogates and code points above U+10FFFF.
  int continuation_bytes;
  uint32_t cp;
  unsigned char lo = 0x80, hi = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) {
    continuation_bytes = 1;
    cp = lead & 0x1F;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    continuation_bytes = 2;
    cp = lead & 0x0F;
    if (lead == 0xE0) lo = 0xA0;
    if (lead == 0xED) hi = 0x9F;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    continuation_bytes = 3;
    cp = lead & 0x07;
    if (lead == 0xF0) lo = 0x90;
    if (lead == 0xF4) hi = 0x8F;
  } else {
    return {0xFFFD, 1, false, false};
  }
  for (int i = 1; i <= continuation_bytes; ++i) {
    if (pos + i >= text.size()) return {0xFFFD, i, false, true};
    const auto byte = static_cast<unsigned char>(text[pos + i]);
    if (byte < lo || byte > hi) return {0xFFFD, i, false, false};
    lo = 0x80;
    hi = 0xBF;
    cp = (cp << 6) | (byte & 0x3F);
  }
  return {cp, continuation_bytes + 1, true, false};
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

std::string sanitize_utf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t pos = 0;
  while (pos < bytes.size()) {
    const Utf8Step step = next_utf8_char(bytes, pos);
    if (step.valid) {
      out.append(bytes.data() + pos, step.length);
    } else {
      append_utf8(out, 0xFFFD);
    }
    pos += step.length;
  }
  return out;
}

bool is_valid_utf8(std::string_view bytes) {
  size_t pos = 0;
  while (pos < bytes.size()) {
    const Utf8Step step = next_utf8_char(bytes, pos);
    if (!step.valid) return false;
    pos += step.length;
  }
  return true;
}

}  // namespace cpuchat::tok
