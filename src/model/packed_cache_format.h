// The --cache-packed file format, parsed without libtorch (so it can be fuzzed on its own).
//
// Layout (little-endian):
//   [0, 32)        header: "CPUCHATP", u32 format version, u32 0, u64 index offset, u64 index bytes
//   4096-aligned   one blob per linear layer: the packed tensor exactly as int4_pack made it
//                  (64-byte kernels header + packed weights)
//   index          JSON: {"fingerprint": "...", "tensors": {"NAME": [offset, bytes, xxh64], ...}}
// Every blob carries the XXH64 of its bytes, checked on load: random bytes in the packed
// weights (headers intact) are caught, not served as <unk> forever.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

namespace cpuchat {

struct PackedCacheHeader {
  static constexpr char kMagic[8] = {'C', 'P', 'U', 'C', 'H', 'A', 'T', 'P'};
  static constexpr uint32_t kVersion = 2;  // 2: checksums; the fingerprint samples file contents
  char magic[8];
  uint32_t version;
  uint32_t reserved;
  uint64_t index_offset;
  uint64_t index_bytes;
};
static_assert(sizeof(PackedCacheHeader) == 32, "written raw");

constexpr uint64_t kPackedBlobAlign = 4096;  // page-aligned blobs

struct PackedCacheBlob {
  uint64_t offset = 0, bytes = 0, checksum = 0;
};

struct PackedCacheIndex {
  std::string fingerprint;
  std::map<std::string, PackedCacheBlob> blobs;
};

// Checks the header of a cache file of `file_size` bytes. Throws std::runtime_error(why).
PackedCacheHeader parse_packed_cache_header(const void* bytes, size_t size, uint64_t file_size);

// Parses the index text: every blob aligned, past the header,
// before the index, at least a kernels header long, and no two overlapping (an index with
// every tensor at one offset is refused, so the cache is repacked). Throws std::runtime_error(why).
PackedCacheIndex parse_packed_cache_index(const char* text, size_t size, const PackedCacheHeader& header);

}  // namespace cpuchat
