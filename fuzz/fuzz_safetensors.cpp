// The safetensors header (parse_safetensors): every accepted range inside the file,
// matching its shape, aligned and disjoint.
#include <cstdint>
#include <stdexcept>

#include "model/safetensors_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const cpuchat::SafetensorsFile f = cpuchat::parse_safetensors(data, size, "fuzz.safetensors");
    for (const auto& t : f.tensors)
      if (t.begin > t.end || f.data_start + t.end > size) __builtin_trap();
  } catch (const std::runtime_error&) {
  }
  return 0;
}
