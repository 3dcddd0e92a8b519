// The streaming UTF-8 decoder: for a vocabulary of arbitrary byte strings and an arbitrary
// id sequence, every chunk it emits must be valid UTF-8, and the chunks must add up to
// what decode() gives for the whole sequence.
#include <cstdint>
#include <string>
#include <vector>

#include "cpuchat/tokenizer.h"

namespace {

bool valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = s[i];
    int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    uint32_t cp = n == 1 ? c : c & (0x7f >> n);
    for (int k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 2) return false;
      cp = (cp << 6) | (s[i + k] & 0x3f);
    }
    if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
      return false;
    i += n;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Input: 16 pieces of 0-3 bytes each, then the ids (one byte each, mod 16).
  std::vector<std::string> pieces;
  size_t pos = 0;
  for (int i = 0; i < 16; ++i) {
    if (pos >= size) return 0;
    const size_t n = data[pos++] % 4;
    if (pos + n > size) return 0;
    pieces.emplace_back(reinterpret_cast<const char*>(data + pos), n);
    pieces.back() = "p" + std::to_string(i) + pieces.back();  // distinct pieces
    pos += n;
  }
  // Byte tokens <0xNN> make the score BPE decode raw bytes: use a few of them.
  for (int b : {0xc3, 0xa9, 0xf0, 0x9f, 0x98, 0x80, 0xe2, 0x82, 0xac, 0xff}) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    pieces.push_back(name);
  }
  const int vocab = int(pieces.size());
  auto tok = cpuchat::make_score_bpe_tokenizer(pieces, std::vector<float>(pieces.size(), 0.0f), {}, -1, -1);
  std::vector<int> ids;
  for (; pos < size; ++pos) ids.push_back(data[pos] % vocab);
  cpuchat::StreamingDecoder decoder(*tok);
  std::string streamed;
  for (int id : ids) {
    const std::string chunk = decoder.push(id);
    if (!valid_utf8(chunk)) __builtin_trap();
    streamed += chunk;
  }
  const std::string rest = decoder.flush();
  if (!valid_utf8(rest)) __builtin_trap();
  streamed += rest;
  if (streamed != tok->decode(ids)) __builtin_trap();
  return 0;
}
