// The tokenizer file readers: HF tokenizer.json, tiktoken text, SentencePiece model
// protobuf, llama2.c tokenizer.bin (the first byte picks the file name the loader sees).
// A loaded tokenizer must encode and decode text without crashing.
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cpuchat/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  static const char* kNames[] = {"tokenizer.json", "tokenizer.bin", "tokenizer.model", "tokenizer.model"};
  const std::string contents(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    auto tok = cpuchat::load_tokenizer_from_memory(kNames[data[0] % 4], contents, data[0] / 4);
    const std::vector<int> ids = tok->encode("Hello, world! <|eot_id|> caf\xc3\xa9 \xf0\x9f\x98\x80", true);
    for (int id : ids)
      if (id < 0 || id >= tok->vocab_size()) __builtin_trap();
    tok->decode(ids);
  } catch (const std::exception&) {
  }
  return 0;
}
