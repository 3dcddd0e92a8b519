// SentencePiece models (Llama 2 tokenizer.model, tok512.model) through libsentencepiece,
// so normalization (e.g. tok512's whitespace collapsing) is exactly the reference's.
#include <sentencepiece_processor.h>

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

class SentencePieceTokenizer final : public Tokenizer {
 public:
  SentencePieceTokenizer(const std::string& path, const std::string& contents) {
    const auto status = processor_.LoadFromSerializedProto(contents);
    if (!status.ok()) fail(path, "not a valid SentencePiece model (" + status.ToString() + ")");
    const int size = processor_.GetPieceSize();
    if (size <= 0) fail(path, "empty vocabulary");
    bytes_.resize(size);
    special_.resize(size, false);
    for (int id = 0; id < size; ++id) {
      const std::string piece = processor_.IdToPiece(id);
      if (processor_.IsControl(id) || processor_.IsUnknown(id)) {
        bytes_[id] = piece;
        special_[id] = true;
        specials_.add(piece, id);
      } else if (processor_.IsByte(id)) {
        if (auto byte = parse_byte_piece(piece)) bytes_[id] = std::string(1, static_cast<char>(*byte));
      } else {
        bytes_[id] = replace_space_marks(piece);
      }
    }
    bos_id = processor_.bos_id();
    const int eos = processor_.eos_id();
    if (eos >= 0) eos_ids.push_back(eos);
    chat_format = sentencepiece_chat_format(size, bos_id, eos);
    strip_leading_space_on_decode = true;  // the dummy prefix
  }

  // SentencePiece itself never turns "<s>" text into BOS. With parse_special we split on
  // control-piece text first and encode each part separately (each gets the dummy prefix,
  // as when Meta's code encodes the parts of a Llama 2 prompt one by one).
  std::vector<int> encode(std::string_view text, bool parse_special) const override {
    std::vector<int> ids;
    encode_with_specials(text, parse_special, specials_, ids, [this](std::string_view part, std::vector<int>& out) {
      std::vector<int> part_ids;
      processor_.Encode(part, &part_ids);
      out.insert(out.end(), part_ids.begin(), part_ids.end());
    });
    return ids;
  }

  std::string token_bytes(int id) const override {
    if (id < 0 || id >= vocab_size()) throw std::out_of_range("token id " + std::to_string(id) + " out of range");
    return bytes_[id];
  }
  int vocab_size() const override { return static_cast<int>(bytes_.size()); }
  std::optional<int> special_id(std::string_view text) const override { return specials_.id_of(text); }
  bool is_special(int id) const override { return id >= 0 && id < vocab_size() && special_[id]; }

 private:
  static std::string replace_space_marks(const std::string& piece) {
    std::string out;
    for (size_t pos = 0; pos < piece.size(); ++pos) {
      if (piece.compare(pos, 3, "\xE2\x96\x81") == 0) {
        out += ' ';
        pos += 2;
      } else {
        out += piece[pos];
      }
    }
    return out;
  }

  sentencepiece::SentencePieceProcessor processor_;
  std::vector<std::string> bytes_;
  std::vector<bool> special_;
  SpecialTokenMatcher specials_;
};

}  // namespace

std::unique_ptr<Tokenizer> load_sentencepiece_model(const std::string& path, const std::string& contents) {
  return std::make_unique<SentencePieceTokenizer>(path, contents);
}

}  // namespace tok
}  // namespace cpuchat
