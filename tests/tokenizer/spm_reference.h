// libsentencepiece as the independent reference for our tokenizer.model reader, and a
// tiny protobuf writer/reader to make variants of a ModelProto for the tests.
// Only the tokenizer tests link libsentencepiece (the cpuchat binary cannot: its bundled
// protobuf-lite clashes with libtorch's libprotobuf).
#pragma once
#include <sentencepiece_processor.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "test_util.h"

namespace tokenizer_test {

// libsentencepiece loaded from serialized model bytes; nullptr if it rejects them.
inline std::unique_ptr<sentencepiece::SentencePieceProcessor> spm_reference_from_bytes(const std::string& bytes) {
  auto processor = std::make_unique<sentencepiece::SentencePieceProcessor>();
  if (!processor->LoadFromSerializedProto(bytes).ok()) return nullptr;
  return processor;
}

// libsentencepiece for a shared/ model file, loaded once.
inline const sentencepiece::SentencePieceProcessor& spm_reference(const std::string& relative_path) {
  static std::map<std::string, std::unique_ptr<sentencepiece::SentencePieceProcessor>> cache;
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(relative_path);
  if (it == cache.end()) {
    auto processor = spm_reference_from_bytes(read_file(shared_path(relative_path)));
    if (!processor) throw std::runtime_error("libsentencepiece cannot load " + relative_path);
    it = cache.emplace(relative_path, std::move(processor)).first;
  }
  return *it->second;
}

inline std::vector<int> spm_encode(const sentencepiece::SentencePieceProcessor& processor, const std::string& text) {
  std::vector<int> ids;
  const auto status = processor.Encode(text, &ids);
  if (!status.ok()) throw std::runtime_error("libsentencepiece Encode failed: " + status.ToString());
  return ids;
}

// ---- protobuf wire format, written independently of src/tokenizer ----

namespace pb {

inline std::string varint(uint64_t v) {
  std::string out;
  do {
    unsigned char byte = v & 0x7F;
    v >>= 7;
    if (v) byte |= 0x80;
    out += static_cast<char>(byte);
  } while (v);
  return out;
}
inline std::string tag(int field, int wire_type) { return varint(static_cast<uint64_t>(field) << 3 | wire_type); }
inline std::string int_field(int field, int64_t v) { return tag(field, 0) + varint(static_cast<uint64_t>(v)); }
inline std::string bytes_field(int field, std::string_view b) {
  return tag(field, 2) + varint(b.size()) + std::string(b);
}
inline std::string float_field(int field, float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  std::string out = tag(field, 5);
  for (int i = 0; i < 4; ++i) out += static_cast<char>((bits >> (8 * i)) & 0xFF);
  return out;
}

// One top-level field of a message, kept as its raw bytes (tag included).
struct RawField {
  int number;
  int wire_type;
  std::string raw;      // the whole field as it appears in the message
  std::string payload;  // length-delimited contents (wire type 2 only)
};

// Splits a well-formed message into its fields (throws on anything unexpected).
inline std::vector<RawField> split(const std::string& message) {
  std::vector<RawField> fields;
  size_t pos = 0;
  auto read_varint = [&]() {
    uint64_t v = 0;
    for (int shift = 0;; shift += 7) {
      if (pos >= message.size() || shift > 63) throw std::runtime_error("bad varint in test model");
      const auto byte = static_cast<unsigned char>(message[pos++]);
      v |= static_cast<uint64_t>(byte & 0x7F) << shift;
      if (!(byte & 0x80)) return v;
    }
  };
  while (pos < message.size()) {
    const size_t start = pos;
    const uint64_t t = read_varint();
    RawField f{static_cast<int>(t >> 3), static_cast<int>(t & 7), "", ""};
    if (f.wire_type == 0)
      read_varint();
    else if (f.wire_type == 5)
      pos += 4;
    else if (f.wire_type == 1)
      pos += 8;
    else if (f.wire_type == 2) {
      const uint64_t n = read_varint();
      f.payload = message.substr(pos, n);
      pos += n;
    } else
      throw std::runtime_error("unexpected wire type in test model");
    if (pos > message.size()) throw std::runtime_error("truncated test model");
    f.raw = message.substr(start, pos - start);
    fields.push_back(std::move(f));
  }
  return fields;
}

// A SentencePiece message.
inline std::string piece(const std::string& text, float score, int type) {
  return bytes_field(1, text) + float_field(2, score) + int_field(3, type);
}

// Rebuilds a ModelProto, letting edit() rewrite each piece (text, score, type).
template <typename Edit>
std::string edit_pieces(const std::string& model, Edit edit) {
  std::string out;
  int id = 0;
  for (const RawField& f : split(model)) {
    if (f.number != 1) {
      out += f.raw;
      continue;
    }
    std::string text;
    float score = 0;
    int type = 1;
    for (const RawField& g : split(f.payload)) {
      if (g.number == 1) text = g.payload;
      if (g.number == 2) std::memcpy(&score, g.raw.data() + g.raw.size() - 4, 4);
      if (g.number == 3) type = static_cast<unsigned char>(g.raw.back());  // types are < 128
    }
    edit(id++, text, score, type);
    out += bytes_field(1, piece(text, score, type));
  }
  return out;
}

// Protobuf merges a repeated embedded message into the earlier one: appending
// trainer_spec / normalizer_spec fields overrides single settings.
inline std::string with_trainer(const std::string& model, const std::string& fields) {
  return model + bytes_field(2, fields);
}
inline std::string with_normalizer(const std::string& model, const std::string& fields) {
  return model + bytes_field(3, fields);
}

}  // namespace pb

}  // namespace tokenizer_test
