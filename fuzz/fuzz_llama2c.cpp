// The llama2.c header (parse_llama2c_header) and the config checks every loader applies.
#include <cstdint>
#include <stdexcept>

#include "model/llama2c_header.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const cpuchat::Llama2cHeader h = cpuchat::parse_llama2c_header(data, size, "fuzz.bin");
    if (cpuchat::Llama2cHeader::kBytes + h.weight_floats * 4 > size) __builtin_trap();
    cpuchat::validate_config(h.config, "fuzz.bin");
  } catch (const std::runtime_error&) {
  }
  return 0;
}
