// GGUF header, key/values, tensor infos and the embedded tokenizer (parse_gguf, gguf_tokenizer).
#include <cstdint>
#include <stdexcept>

#include "model/gguf_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const cpuchat::GgufFile g = cpuchat::parse_gguf(data, size, "fuzz.gguf");
    for (const auto& t : g.tensors)  // the parser promises every range lies inside the file
      if (g.data_start + t.offset + t.bytes > size) __builtin_trap();
    auto tok = cpuchat::gguf_tokenizer(g, "fuzz.gguf", 1, 2);
    if (tok) tok->decode(tok->encode("Once upon a time, <s> caf\xc3\xa9"));
  } catch (const std::runtime_error&) {
  }
  return 0;
}
