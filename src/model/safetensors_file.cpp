#include "model/safetensors_file.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "common/checked_math.h"

namespace cpuchat {

using nlohmann::json;

size_t safetensors_dtype_bytes(const std::string& dtype) {
  if (dtype == "F32") return 4;
  if (dtype == "BF16" || dtype == "F16") return 2;
  return 0;
}

SafetensorsFile parse_safetensors(const uint8_t* data, size_t size, const std::string& file) {
  auto fail = [&](const std::string& what) { return std::runtime_error(file + ": " + what); };
  if (size < 8) throw fail("truncated safetensors file (" + std::to_string(size) + " bytes)");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | data[i];
  if (header_len > size - 8)
    throw fail("safetensors header length " + std::to_string(header_len) + " runs past the end of the file (" +
               std::to_string(size) + " bytes)");
  json header;
  try {
    header = json::parse(data + 8, data + 8 + header_len);
  } catch (const json::exception& e) {
    throw fail("malformed safetensors header (" + std::string(e.what()) + ")");
  }
  if (!header.is_object()) throw fail("safetensors header is not a JSON object");
  SafetensorsFile out;
  out.data_start = 8 + header_len;
  const uint64_t data_size = size - out.data_start;
  for (auto& [name, info] : header.items()) {
    if (name == "__metadata__") continue;
    SafetensorsTensor t;
    t.name = name;
    try {
      if (!info.is_object()) throw fail("tensor " + name + " is not a JSON object");
      t.dtype = info.at("dtype").get<std::string>();
      t.shape = info.at("shape").get<std::vector<int64_t>>();
      const auto offsets = info.at("data_offsets").get<std::vector<uint64_t>>();
      if (offsets.size() != 2) throw fail("tensor " + name + " has " + std::to_string(offsets.size()) + " data_offsets");
      t.begin = offsets[0];
      t.end = offsets[1];
    } catch (const json::exception& e) {
      throw fail("bad safetensors entry for " + name + " (" + e.what() + ")");
    }
    const size_t elem = safetensors_dtype_bytes(t.dtype);
    if (elem == 0)
      throw fail("tensor " + name + " has unsupported dtype " + t.dtype + " (supported: F32, BF16, F16)");
    if (t.begin > t.end || t.end > data_size)
      throw fail("tensor " + name + " lies past the end of the file (truncated?)");
    std::optional<uint64_t> bytes = elem;
    for (int64_t d : t.shape) {
      if (d < 0) throw fail("tensor " + name + " has a negative dimension");
      if (bytes) bytes = checked_mul(*bytes, uint64_t(d));
    }
    if (!bytes || *bytes != t.end - t.begin)
      throw fail("tensor " + name + " has " + std::to_string(t.end - t.begin) + " bytes but its shape needs " +
                 (bytes ? std::to_string(*bytes) : std::string("more than 2^64")));
    if ((out.data_start + t.begin) % elem != 0)
      throw fail("tensor " + name + " starts at byte " + std::to_string(out.data_start + t.begin) +
                 ", not aligned to its " + std::to_string(elem) + "-byte elements");
    out.tensors.push_back(std::move(t));
  }
  std::vector<const SafetensorsTensor*> by_offset;
  for (const auto& t : out.tensors)
    if (t.end > t.begin) by_offset.push_back(&t);  // an empty tensor overlaps nothing
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i)
    if (by_offset[i - 1]->end > by_offset[i]->begin)
      throw fail("tensors " + by_offset[i - 1]->name + " and " + by_offset[i]->name + " overlap");
  return out;
}

}  // namespace cpuchat
