// The --cache-packed header and index (packed_cache_format.h), then each blob's kernels
// header as the loader checks it (PackedWeights::view).
#include <cstdint>
#include <cstring>
#include <stdexcept>

#include "cpuchat_kernels/int4_matmul.h"
#include "model/packed_cache_format.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const cpuchat::PackedCacheHeader h = cpuchat::parse_packed_cache_header(data, size, size);
    const auto index = cpuchat::parse_packed_cache_index(reinterpret_cast<const char*>(data) + h.index_offset,
                                                         h.index_bytes, h);
    alignas(64) static uint8_t blob[64];
    for (const auto& [name, b] : index.blobs) {
      if (b.offset + b.bytes > size) __builtin_trap();
      cpuchat::kernels::PackedHeader ph;
      std::memcpy(&ph, data + b.offset, sizeof ph);
      try {
        cpuchat::kernels::PackedWeights::view(ph, blob);
      } catch (const std::exception&) {
      }
    }
  } catch (const std::runtime_error&) {
  }
  return 0;
}
