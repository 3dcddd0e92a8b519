// The Llama 3 pre-tokenizer: a hand-written scanner equivalent to the regex
//
//   A (?i:'s|'t|'re|'ve|'m|'ll|'d)
//   B [^\r\n\p{L}\p{N}]?\p{L}+
//   C \p{N}{1,3}
//   D  ?[^\s\p{L}\p{N}]+[\r\n]*
//   E \s*[\r\n]+
//   F \s+(?!\S)
//   G \s+
//
// A backtracking regex takes the FIRST alternative that matches at a position (not the
// longest), and each alternative's greedy quantifiers are resolved as noted below.
// std::regex cannot express \p{L}, hence the scanner.
#include "tokenizer_internal.h"

namespace cpuchat::tok {

namespace {

enum CharClass : uint8_t { kLetter, kNumber, kSpace, kOther };

struct Char {
  uint32_t cp;
  uint32_t offset;  // byte offset in the text
  CharClass cls;
};

bool is_cr_or_lf(uint32_t cp) { return cp == '\r' || cp == '\n'; }

// Lower-cases the letters that can follow an apostrophe in a contraction. Besides ASCII,
// U+017F (long s) case-folds to 's' under (?i).
uint32_t fold_contraction_letter(uint32_t cp) {
  if (cp < 0x80) return cp | 0x20;
  if (cp == 0x17F) return 's';
  return cp;
}

}  // namespace

void pretokenize_llama3(std::string_view text, const std::function<void(std::string_view)>& emit) {
  // Decode once; ill-formed bytes become one "other" character per maximal subpart, so
  // they still reach the byte-level BPE unchanged.
  std::vector<Char> chars;
  chars.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    const Utf8Step step = next_utf8_char(text, pos);
    const uint32_t cp = step.code_point;
    CharClass cls = kOther;
    if (step.valid) {
      if (is_letter(cp))
        cls = kLetter;
      else if (is_number(cp))
        cls = kNumber;
      else if (is_whitespace(cp))
        cls = kSpace;
    }
    chars.push_back({step.valid ? cp : 0xFFFD, static_cast<uint32_t>(pos), cls});
    pos += step.length;
  }
  const size_t n = chars.size();
  auto cls_at = [&](size_t i) { return chars[i].cls; };
  auto run_end = [&](size_t i, CharClass cls) {
    while (i < n && chars[i].cls == cls) ++i;
    return i;
  };
  auto byte_offset = [&](size_t i) { return i < n ? chars[i].offset : text.size(); };

  size_t i = 0;
  while (i < n) {
    const uint32_t cp = chars[i].cp;
    const CharClass cls = cls_at(i);
    size_t end = 0;  // exclusive char index of the match; 0 = no match yet

    // A: contractions.
    if (cp == '\'' && i + 1 < n) {
      const uint32_t c1 = fold_contraction_letter(chars[i + 1].cp);
      const uint32_t c2 = i + 2 < n ? fold_contraction_letter(chars[i + 2].cp) : 0;
      if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd')
        end = i + 2;
      else if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l'))
        end = i + 3;
    }
    // B: an optional non-letter/number/newline prefix, then letters.
    if (!end) {
      if (cls == kLetter) {
        end = run_end(i, kLetter);
      } else if (cls != kNumber && !is_cr_or_lf(cp) && i + 1 < n && cls_at(i + 1) == kLetter) {
        end = run_end(i + 1, kLetter);
      }
    }
    // C: up to three numbers.
    if (!end && cls == kNumber) {
      end = i + 1;
      while (end < n && end < i + 3 && cls_at(end) == kNumber) ++end;
    }
    // D: an optional literal space, then "other" characters, then any CR/LF.
    if (!end) {
      size_t start = i;
      if (cp == ' ' && i + 1 < n && cls_at(i + 1) == kOther) start = i + 1;
      if (cls_at(start) == kOther) {
        end = run_end(start, kOther);
        while (end < n && is_cr_or_lf(chars[end].cp)) ++end;
      }
    }
    // E, F, G: whitespace runs.
    if (!end && cls == kSpace) {
      const size_t run = run_end(i, kSpace);
      // E: \s* backtracks to the last CR/LF of the run, then [\r\n]+ takes it.
      size_t last_newline = n;
      for (size_t k = i; k < run; ++k)
        if (is_cr_or_lf(chars[k].cp)) last_newline = k;
      if (last_newline != n) {
        end = last_newline + 1;
      } else if (run == n) {
        end = run;  // F at the end of the text: the whole run
      } else if (run - i >= 2) {
        end = run - 1;  // F: leave the last space to prefix the next word
      } else {
        end = run;  // G
      }
    }
    if (!end) end = i + 1;  // unreachable: every class is covered above; be safe anyway

    emit(text.substr(byte_offset(i), byte_offset(end) - byte_offset(i)));
    i = end;
  }
}

}  // namespace cpuchat::tok
