#include "model/packed_cache_format.h"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <vector>

#include "common/checked_math.h"

namespace cpuchat {

PackedCacheHeader parse_packed_cache_header(const void* bytes, size_t size, uint64_t file_size) {
  PackedCacheHeader h{};
  if (size < sizeof h) throw std::runtime_error("truncated header");
  std::memcpy(&h, bytes, sizeof h);
  if (std::memcmp(h.magic, PackedCacheHeader::kMagic, sizeof h.magic) != 0) throw std::runtime_error("not a cpuchat packed cache");
  if (h.version != PackedCacheHeader::kVersion) throw std::runtime_error("format version " + std::to_string(h.version));
  if (h.index_offset < sizeof h || !range_inside(h.index_offset, h.index_bytes, file_size))
    throw std::runtime_error("index past the end");
  return h;
}

PackedCacheIndex parse_packed_cache_index(const char* text, size_t size, const PackedCacheHeader& header) {
  PackedCacheIndex out;
  nlohmann::json index;
  try {
    index = nlohmann::json::parse(text, text + size);
    out.fingerprint = index.at("fingerprint").get<std::string>();
    for (const auto& [name, where] : index.at("tensors").items()) {
      if (!where.is_array() || where.size() != 3) throw std::runtime_error("tensor " + name + ": not [offset, bytes, checksum]");
      PackedCacheBlob b{where.at(0).get<uint64_t>(), where.at(1).get<uint64_t>(), where.at(2).get<uint64_t>()};
      if (b.offset % kPackedBlobAlign != 0 || b.offset < kPackedBlobAlign || b.bytes <= 64 ||
          !range_inside(b.offset, b.bytes, header.index_offset))
        throw std::runtime_error("tensor " + name + " out of bounds");
      out.blobs[name] = b;
    }
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(std::string("bad index: ") + e.what());
  }
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const auto& [name, b] : out.blobs) ranges.emplace_back(b.offset, b.offset + b.bytes);
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i - 1].second > ranges[i].first) throw std::runtime_error("tensors overlap in the index");
  return out;
}

}  // namespace cpuchat
