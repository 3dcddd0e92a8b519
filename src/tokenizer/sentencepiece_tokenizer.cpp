// SentencePiece models (Llama 2 tokenizer.model, tok512.model) without libsentencepiece.
//
// libsentencepiece.so bundles its own protobuf-lite and exports google::protobuf symbols
// that clash with the libprotobuf libtorch loads (the binary crashes in static
// initialization), so we read the ModelProto ourselves: a small protobuf wire-format reader
// for the fields of sentencepiece_model.proto that matter, and the score BPE of
// score_bpe_tokenizer.cpp, which reproduces libsentencepiece's BPE encoder (normalizer
// included). The tokenizer tests compare it with libsentencepiece (they may link it: they
// do not link libtorch).
//
// Supported: model_type BPE with an identity normalization rule (no precompiled charsmap),
// i.e. what Llama 2 and llama2.c's trained vocabularies use. Anything else (unigram, NFKC
// rules, treat_whitespace_as_suffix, UNUSED pieces) is rejected with a one-line error, as
// is everything libsentencepiece itself refuses to load (no or two <unk>, duplicate or
// empty pieces, BYTE pieces without byte_fallback).
//
// Known differences from libsentencepiece (none shows on real BPE models' encodings):
//  - self_test_data is not run (libsentencepiece refuses a model whose samples fail);
//  - a USER_DEFINED piece is never the result of a merge, and a character that is not a
//    piece never merges (libsentencepiece could, in corner cases a trained BPE vocabulary
//    does not produce);
//  - decoding is Tokenizer::decode's: <unk> decodes to "<unk>" (not " ⁇ "), malformed
//    bytes become U+FFFD per maximal subpart (not per byte), control pieces decode to their
//    text unless skipped, and only the first piece loses its leading space (with
//    remove_extra_whitespaces libsentencepiece strips every leading "▁" piece).
//
// Field numbers (sentencepiece_model.proto, proto2):
//   ModelProto       1 pieces (repeated SentencePiece)  2 trainer_spec  3 normalizer_spec
//                    4 self_test_data, 5 denormalizer_spec (ignored: they do not change encoding)
//   SentencePiece    1 piece (string)  2 score (float)  3 type (enum, default NORMAL)
//   TrainerSpec      3 model_type (UNIGRAM=1 default, BPE=2, WORD=3, CHAR=4)
//                    24 treat_whitespace_as_suffix  35 byte_fallback
//                    40 unk_id  41 bos_id  42 eos_id  43 pad_id
//                    45 unk_piece  46 bos_piece  47 eos_piece  48 pad_piece
//   NormalizerSpec   1 name  2 precompiled_charsmap (bytes)  3 add_dummy_prefix (true)
//                    4 remove_extra_whitespaces (true)  5 escape_whitespaces (true)
// As protobuf does, a repeated occurrence of a scalar field overrides the earlier one and a
// repeated occurrence of trainer_spec / normalizer_spec merges into it; unknown fields are
// skipped.
#include <cstring>

#include "tokenizer_internal.h"

namespace cpuchat {
namespace tok {

// Which chat template a SentencePiece vocabulary implies. The tokenizer alone cannot tell
// a chat model from a base model, so the rule is simple: Llama 2's own 32000-piece
// vocabulary (<s> = 1, </s> = 2) gets Meta's [INST] format; anything else (tok512's 512
// pieces for the TinyStories models, ...) is Plain. Base models that reuse Llama 2's
// vocabulary (stories15M/42M/110M) should have chat_format overridden by the model loader.
ChatFormat sentencepiece_chat_format(int vocab_size, int bos_id, int eos_id) {
  return vocab_size == 32000 && bos_id == 1 && eos_id == 2 ? ChatFormat::Llama2 : ChatFormat::Plain;
}

namespace {

// ---- protobuf wire format ----

enum WireType { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

struct Field {
  uint64_t number = 0;
  int wire_type = 0;
  uint64_t value = 0;      // kVarint, kFixed32, kFixed64
  std::string_view bytes;  // kLengthDelimited
  size_t offset = 0;       // where the field's tag starts in the file
};

// Reads the fields of one message. Every problem (truncation, a bad tag or varint, a
// length past the end, groups) throws through fail() with the byte offset in the file.
class WireReader {
 public:
  WireReader(const std::string& path, std::string_view data, size_t base_offset)
      : path_(path), data_(data), base_(base_offset) {}

  bool next(Field* field) {
    if (pos_ >= data_.size()) return false;
    field->offset = base_ + pos_;
    const uint64_t tag = varint("field tag");
    field->number = tag >> 3;
    field->wire_type = static_cast<int>(tag & 7);
    if (field->number == 0 || field->number > 536870911) corrupt(field->offset, "bad field number");
    switch (field->wire_type) {
      case kVarint:
        field->value = varint("varint");
        break;
      case kFixed64:
        field->value = fixed(8);
        break;
      case kFixed32:
        field->value = fixed(4);
        break;
      case kLengthDelimited: {
        const size_t at = base_ + pos_;
        const uint64_t length = varint("length");
        if (length > data_.size() - pos_)
          corrupt(at, "length " + std::to_string(length) + " runs past the end of its message (truncated file?)");
        field->bytes = data_.substr(pos_, static_cast<size_t>(length));
        pos_ += static_cast<size_t>(length);
        break;
      }
      default:
        corrupt(field->offset, "unsupported wire type " + std::to_string(field->wire_type));
    }
    return true;
  }

  // The offset in the file of a length-delimited field's contents (for nested readers).
  size_t offset_of(std::string_view bytes) const { return base_ + static_cast<size_t>(bytes.data() - data_.data()); }

  [[noreturn]] void corrupt(size_t at, const std::string& problem) const {
    fail(path_, "not a valid SentencePiece model: " + problem + " at byte " + std::to_string(at));
  }

 private:
  uint64_t varint(const char* what) {
    const size_t start = pos_;
    uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= data_.size()) corrupt(base_ + start, std::string("truncated ") + what);
      const auto byte = static_cast<unsigned char>(data_[pos_++]);
      value |= static_cast<uint64_t>(byte & 0x7F) << shift;
      if (!(byte & 0x80)) return value;
    }
    corrupt(base_ + start, std::string("over-long ") + what);
  }

  uint64_t fixed(size_t bytes) {
    if (data_.size() - pos_ < bytes) corrupt(base_ + pos_, "truncated fixed-width value");
    uint64_t value = 0;
    for (size_t i = 0; i < bytes; ++i) value |= static_cast<uint64_t>(static_cast<unsigned char>(data_[pos_ + i])) << (8 * i);
    pos_ += bytes;
    return value;
  }

  const std::string& path_;
  std::string_view data_;
  size_t base_;
  size_t pos_ = 0;
};

// ---- sentencepiece_model.proto, the fields we use ----

struct PieceProto {
  std::string piece;
  float score = 0.0f;
  int type = kNormal;
};

struct ModelProto {
  std::vector<PieceProto> pieces;
  // TrainerSpec
  int model_type = 1;  // UNIGRAM
  bool treat_whitespace_as_suffix = false;
  int unk_id = 0, bos_id = 1, eos_id = 2, pad_id = -1;  // informational: sentencepiece looks the pieces up
  std::string unk_piece = "<unk>", bos_piece = "<s>", eos_piece = "</s>", pad_piece = "<pad>";
  // NormalizerSpec
  std::string normalizer_name;
  std::string precompiled_charsmap;
  SentencePieceSettings settings;  // NormalizerSpec's add_dummy_prefix, remove_extra_whitespaces,
                                   // escape_whitespaces; TrainerSpec's byte_fallback
};

class ModelProtoParser {
 public:
  ModelProtoParser(const std::string& path, const std::string& contents) : path_(path), contents_(contents) {}

  ModelProto parse() {
    WireReader reader(path_, contents_, 0);
    Field field;
    while (reader.next(&field)) {
      switch (field.number) {
        case 1:
          expect(reader, field, kLengthDelimited, "ModelProto.pieces");
          model_.pieces.push_back(parse_piece(reader, field));
          break;
        case 2:
          expect(reader, field, kLengthDelimited, "ModelProto.trainer_spec");
          parse_trainer_spec(reader, field);
          break;
        case 3:
          expect(reader, field, kLengthDelimited, "ModelProto.normalizer_spec");
          parse_normalizer_spec(reader, field);
          break;
        default:
          break;  // self_test_data, denormalizer_spec, extensions, unknown fields
      }
    }
    return std::move(model_);
  }

 private:
  void expect(const WireReader& reader, const Field& field, int wire_type, const char* name) const {
    if (field.wire_type != wire_type)
      reader.corrupt(field.offset, std::string(name) + " (field " + std::to_string(field.number) + ") has wire type " +
                                       std::to_string(field.wire_type) + ", expected " + std::to_string(wire_type));
  }

  static int32_t as_int32(const Field& field) { return static_cast<int32_t>(static_cast<uint32_t>(field.value)); }

  PieceProto parse_piece(const WireReader& outer, const Field& message) {
    PieceProto piece;
    WireReader reader(path_, message.bytes, outer.offset_of(message.bytes));
    Field field;
    while (reader.next(&field)) {
      switch (field.number) {
        case 1:
          expect(reader, field, kLengthDelimited, "SentencePiece.piece");
          piece.piece = std::string(field.bytes);
          break;
        case 2: {
          expect(reader, field, kFixed32, "SentencePiece.score");
          const auto bits = static_cast<uint32_t>(field.value);
          std::memcpy(&piece.score, &bits, sizeof bits);
          break;
        }
        case 3:
          expect(reader, field, kVarint, "SentencePiece.type");
          piece.type = as_int32(field);
          break;
        default:
          break;
      }
    }
    return piece;
  }

  void parse_trainer_spec(const WireReader& outer, const Field& message) {
    WireReader reader(path_, message.bytes, outer.offset_of(message.bytes));
    Field field;
    while (reader.next(&field)) {
      int* int_field = nullptr;
      bool* bool_field = nullptr;
      std::string* string_field = nullptr;
      switch (field.number) {
        case 3: int_field = &model_.model_type; break;
        case 24: bool_field = &model_.treat_whitespace_as_suffix; break;
        case 35: bool_field = &model_.settings.byte_fallback; break;
        case 40: int_field = &model_.unk_id; break;
        case 41: int_field = &model_.bos_id; break;
        case 42: int_field = &model_.eos_id; break;
        case 43: int_field = &model_.pad_id; break;
        case 45: string_field = &model_.unk_piece; break;
        case 46: string_field = &model_.bos_piece; break;
        case 47: string_field = &model_.eos_piece; break;
        case 48: string_field = &model_.pad_piece; break;
        default: continue;
      }
      const std::string name = "TrainerSpec field " + std::to_string(field.number);
      if (string_field) {
        expect(reader, field, kLengthDelimited, name.c_str());
        // sentencepiece uses the default piece when the field is set but empty.
        if (!field.bytes.empty()) *string_field = std::string(field.bytes);
      } else {
        expect(reader, field, kVarint, name.c_str());
        if (int_field) *int_field = as_int32(field);
        if (bool_field) *bool_field = field.value != 0;
      }
    }
  }

  void parse_normalizer_spec(const WireReader& outer, const Field& message) {
    WireReader reader(path_, message.bytes, outer.offset_of(message.bytes));
    Field field;
    while (reader.next(&field)) {
      switch (field.number) {
        case 1:
          expect(reader, field, kLengthDelimited, "NormalizerSpec.name");
          model_.normalizer_name = std::string(field.bytes);
          break;
        case 2:
          expect(reader, field, kLengthDelimited, "NormalizerSpec.precompiled_charsmap");
          model_.precompiled_charsmap = std::string(field.bytes);
          break;
        case 3:
          expect(reader, field, kVarint, "NormalizerSpec.add_dummy_prefix");
          model_.settings.add_dummy_prefix = field.value != 0;
          break;
        case 4:
          expect(reader, field, kVarint, "NormalizerSpec.remove_extra_whitespaces");
          model_.settings.remove_extra_whitespaces = field.value != 0;
          break;
        case 5:
          expect(reader, field, kVarint, "NormalizerSpec.escape_whitespaces");
          model_.settings.escape_whitespaces = field.value != 0;
          break;
        default:
          break;
      }
    }
  }

  const std::string& path_;
  const std::string& contents_;
  ModelProto model_;
};

const char* type_name(int type) {
  switch (type) {
    case kNormal: return "NORMAL";
    case kUnknown: return "UNKNOWN";
    case kControl: return "CONTROL";
    case kUserDefined: return "USER_DEFINED";
    case kUnused: return "UNUSED";
    case kByte: return "BYTE";
    default: return "?";
  }
}

// The "<0xNN>" spelling sentencepiece requires of byte pieces (upper-case hex).
bool is_canonical_byte_piece(const std::string& piece) {
  if (!parse_byte_piece(piece)) return false;
  for (size_t i = 3; i < 5; ++i)
    if (piece[i] >= 'a' && piece[i] <= 'f') return false;
  return true;
}

// The checks libsentencepiece makes when it loads a model, plus what we do not support.
void check_supported(const std::string& path, const ModelProto& model) {
  switch (model.model_type) {
    case 2: break;  // BPE
    case 1: fail(path, "unigram SentencePiece models are not supported (only BPE)");
    case 3: fail(path, "word SentencePiece models are not supported (only BPE)");
    case 4: fail(path, "char SentencePiece models are not supported (only BPE)");
    default: fail(path, "SentencePiece model_type " + std::to_string(model.model_type) + " is not supported (only BPE)");
  }
  if (!model.precompiled_charsmap.empty())
    fail(path, "SentencePiece normalization rule '" + model.normalizer_name +
                   "' is not supported (only 'identity', without a precompiled_charsmap)");
  if (model.treat_whitespace_as_suffix)
    fail(path, "SentencePiece models with treat_whitespace_as_suffix are not supported");
  if (model.pieces.empty()) fail(path, "SentencePiece model has no pieces (empty vocabulary)");

  auto where = [](size_t id, const PieceProto& p) { return "piece " + std::to_string(id) + " ('" + p.piece + "')"; };
  std::unordered_map<std::string_view, size_t> normal_ids, reserved_ids;  // as sentencepiece keeps them
  int unk_count = 0;
  for (size_t id = 0; id < model.pieces.size(); ++id) {
    const PieceProto& p = model.pieces[id];
    if (p.type < kNormal || p.type > kByte)
      fail(path, "SentencePiece " + where(id, p) + " has unknown type " + std::to_string(p.type));
    if (p.type == kUnused)
      fail(path, "SentencePiece " + where(id, p) + " has type UNUSED, which is not supported");
    if (p.piece.empty()) fail(path, "SentencePiece piece " + std::to_string(id) + " is empty");
    if (p.piece.find('\0') != std::string::npos)
      fail(path, "SentencePiece piece " + std::to_string(id) + " contains a NUL character");
    const bool normal = p.type == kNormal || p.type == kUserDefined;
    auto& ids = normal ? normal_ids : reserved_ids;
    if (!ids.emplace(p.piece, id).second)
      fail(path, "SentencePiece " + where(id, p) + " is defined twice (also piece " +
                     std::to_string(ids[p.piece]) + ")");
    if (p.type == kUnknown) ++unk_count;
    if (p.type == kByte) {
      if (!model.settings.byte_fallback)
        fail(path, "SentencePiece " + where(id, p) + " is a BYTE piece although byte_fallback is false");
      if (!is_canonical_byte_piece(p.piece))
        fail(path, "SentencePiece " + where(id, p) + " is a BYTE piece but not of the form <0xNN>");
    }
  }
  if (unk_count == 0) fail(path, "SentencePiece model has no UNKNOWN piece (<unk>)");
  if (unk_count > 1) fail(path, "SentencePiece model has more than one UNKNOWN piece");
}

// sentencepiece's bos_id() and friends: the id of the named piece if it is a control piece.
int control_id(const ModelProto& model, const std::string& piece) {
  for (size_t id = 0; id < model.pieces.size(); ++id)
    if (model.pieces[id].piece == piece && model.pieces[id].type == kControl) return static_cast<int>(id);
  return -1;
}

}  // namespace

std::unique_ptr<Tokenizer> load_sentencepiece_model(const std::string& path, const std::string& contents) {
  ModelProto model = ModelProtoParser(path, contents).parse();
  check_supported(path, model);
  const int bos = control_id(model, model.bos_piece), eos = control_id(model, model.eos_piece);

  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::vector<int> types;
  pieces.reserve(model.pieces.size());
  scores.reserve(model.pieces.size());
  types.reserve(model.pieces.size());
  for (PieceProto& p : model.pieces) {
    pieces.push_back(std::move(p.piece));
    scores.push_back(p.score);
    types.push_back(p.type);
  }
  return make_sentencepiece_bpe(path, std::move(pieces), scores, std::move(types), model.settings, bos, eos);
}

}  // namespace tok
}  // namespace cpuchat
