// SentencePiece-style BPE without libsentencepiece: SentencePiece tokenizer.model files
// (through make_sentencepiece_bpe, see sentencepiece_tokenizer.cpp for the protobuf side)
// and vocabularies that come without a SentencePiece model: llama2.c tokenizer.bin, GGUF
// "llama" vocabularies, and HF tokenizer.json files converted from SentencePiece (Llama 2
// "legacy" layout).
//
// Encoding follows SentencePiece's BPE model:
//   1. normalize: add the dummy prefix "▁" (non-empty text only) and turn every ' ' into
//      "▁" (for a tokenizer.model, exactly as its NormalizerSpec says, see normalize());
//   2. start from one symbol per character (user-defined pieces are matched whole and
//      never merge);
//   3. repeatedly merge the adjacent pair whose concatenation is the best piece — highest
//      score for score vocabularies, lowest merge rank for HF merge lists — leftmost on ties;
//   4. characters that are not pieces fall back to <0xNN> byte pieces (or <unk>).
// Without a tokenizer.model (the .bin / .json / GGUF loaders) there is no NormalizerSpec,
// so no collapsing of whitespace runs: Llama 2's model does not collapse them, so its ids
// match sentencepiece exactly; tok512.model has remove_extra_whitespaces=true, so on text
// with leading, trailing or repeated spaces tok512.bin (like llama2.c's own encoder) keeps
// every space while sentencepiece (and tok512.model here) collapses them. No loader here
// does NFKC: models with a precompiled normalization rule are rejected.
#include <algorithm>
#include <cstring>
#include <optional>

#include "tokenizer_internal.h"

namespace cpuchat {
namespace tok {

namespace {

const char* const kSpaceMark = "\xE2\x96\x81";  // U+2581 '▁', SentencePiece's space

std::string replace_all(std::string_view text, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(text.size());
  size_t pos = 0;
  while (true) {
    const size_t hit = text.find(from, pos);
    if (hit == std::string_view::npos) break;
    out.append(text.substr(pos, hit - pos));
    out.append(to);
    pos = hit + from.size();
  }
  out.append(text.substr(pos));
  return out;
}

class ScoreBpeTokenizer final : public Tokenizer {
 public:
  // spm: the settings of a SentencePiece tokenizer.model, whose encoder is then reproduced
  // exactly (normalizer, fallback); nullopt for vocabularies without one.
  ScoreBpeTokenizer(const std::string& source, std::vector<std::string> pieces, std::vector<int> types,
                    bool add_dummy_prefix, std::optional<SentencePieceSettings> spm = std::nullopt)
      : pieces_(std::move(pieces)), types_(std::move(types)), add_dummy_prefix_(add_dummy_prefix), spm_(spm) {
    if (pieces_.empty()) fail(source, "empty vocabulary");
    std::fill(std::begin(byte_piece_), std::end(byte_piece_), -1);
    types_.resize(pieces_.size(), 0);
    for (size_t id = 0; id < pieces_.size(); ++id)
      if (types_[id] == 0) types_[id] = guess_piece_type(pieces_[id]);

    bytes_.resize(pieces_.size());
    for (int id = 0; id < static_cast<int>(pieces_.size()); ++id) {
      const std::string& piece = pieces_[id];
      switch (types_[id]) {
        case kControl:
        case kUnknown:
          bytes_[id] = piece;
          specials_.add(piece, id);
          reserved_id_of_piece_.try_emplace(piece, id);
          if (types_[id] == kUnknown && unk_id_ < 0) unk_id_ = id;
          break;
        case kByte:
          if (auto byte = parse_byte_piece(piece)) {
            bytes_[id] = std::string(1, static_cast<char>(*byte));
            byte_piece_[*byte] = id;
          }
          reserved_id_of_piece_.try_emplace(piece, id);
          break;
        case kUserDefined:
          user_defined_.add(piece, id);
          bytes_[id] = replace_all(piece, kSpaceMark, " ");
          break;
        default:  // normal, unused
          bytes_[id] = replace_all(piece, kSpaceMark, " ");
          if (types_[id] == kNormal) id_of_piece_.try_emplace(piece, id);
      }
    }
    if (id_of_piece_.empty()) fail(source, "vocabulary has no normal pieces");
    if (spm_ && unk_id_ < 0) fail(source, "SentencePiece model has no <unk> (UNKNOWN) piece");
    // sentencepiece's decoder drops the first piece's leading space for either setting.
    strip_leading_space_on_decode = add_dummy_prefix_ || (spm_ && spm_->remove_extra_whitespaces);
  }

  // Score vocabularies: any split of a normal piece into two normal pieces is a merge
  // whose priority is the piece's score (higher first).
  void add_score_merges(const std::vector<float>& scores) {
    for (int id = 0; id < static_cast<int>(pieces_.size()); ++id) {
      if (types_[id] != kNormal) continue;
      const std::string& piece = pieces_[id];
      const float score = id < static_cast<int>(scores.size()) ? scores[id] : 0.0f;
      for (size_t split = 1; split < piece.size(); ++split) {
        if ((static_cast<unsigned char>(piece[split]) & 0xC0) == 0x80) continue;  // mid-character
        const int left = piece_id(piece.substr(0, split)), right = piece_id(piece.substr(split));
        if (left >= 0 && right >= 0) pairs_.add(left, right, -score, id);
      }
    }
  }

  // HF merge lists: the merge's position is its priority.
  void add_rank_merges(const std::string& source, const std::vector<std::pair<std::string, std::string>>& merges) {
    for (size_t rank = 0; rank < merges.size(); ++rank) {
      const auto& [a, b] = merges[rank];
      const int left = piece_id(a), right = piece_id(b), result = piece_id(a + b);
      if (left < 0 || right < 0 || result < 0)
        fail(source,
             "merge " + std::to_string(rank) + " ('" + a + " " + b + "') uses a token that is not in the vocabulary");
      pairs_.add(left, right, static_cast<float>(rank), result);
    }
  }

  std::vector<int> encode(std::string_view text, bool parse_special) const override {
    std::vector<int> ids;
    encode_with_specials(text, parse_special, specials_, ids,
                         [this](std::string_view part, std::vector<int>& out) { encode_text(part, out); });
    return ids;
  }

  std::string token_bytes(int id) const override {
    if (id < 0 || id >= vocab_size()) throw std::out_of_range("token id " + std::to_string(id) + " out of range");
    return bytes_[id];
  }
  int vocab_size() const override { return static_cast<int>(pieces_.size()); }
  std::optional<int> special_id(std::string_view text) const override { return specials_.id_of(text); }
  bool is_special(int id) const override {
    return id >= 0 && id < vocab_size() && (types_[id] == kControl || types_[id] == kUnknown);
  }

 private:
  int piece_id(const std::string& piece) const {
    auto it = id_of_piece_.find(piece);
    return it == id_of_piece_.end() ? -1 : it->second;
  }

  // SentencePiece's normalizer for an identity rule (no precompiled charsmap):
  //  - the text is read in units: a user-defined piece whole, else one UTF-8 character;
  //    (tokenizer.model only) a malformed byte becomes U+FFFD, one byte at a time;
  //  - remove_extra_whitespaces: leading ' ' units are dropped, a unit's leading spaces are
  //    dropped when the previous kept unit ended with ' ', and trailing space marks are
  //    stripped at the end (only ' ' counts: tabs and newlines are kept);
  //  - add_dummy_prefix puts one space mark in front of non-empty text;
  //  - escape_whitespaces turns each ' ' into "▁".
  // Without a tokenizer.model: dummy prefix and escaping only, bytes kept as they are.
  std::string normalize(std::string_view text) const {
    if (!spm_) {
      if (text.empty()) return {};
      return (add_dummy_prefix_ ? kSpaceMark : "") + replace_all(text, " ", kSpaceMark);
    }
    const bool remove_extra = spm_->remove_extra_whitespaces;
    const std::string_view space = spm_->escape_whitespaces ? std::string_view(kSpaceMark) : std::string_view(" ");
    static const char kReplacement[] = "\xEF\xBF\xBD";
    // The unit at text[pos]: sets *unit and returns how many input bytes it stands for.
    auto next_unit = [&](size_t pos, std::string_view* unit) -> size_t {
      size_t len;
      int id;
      if (user_defined_.match_at(text, pos, &len, &id)) {
        *unit = text.substr(pos, len);
        return len;
      }
      const Utf8Step step = next_utf8_char(text, pos);
      if (!step.valid) {
        *unit = kReplacement;
        return 1;
      }
      *unit = text.substr(pos, step.length);
      return step.length;
    };

    size_t pos = 0;
    std::string_view unit;
    if (remove_extra) {
      while (pos < text.size()) {
        const size_t consumed = next_unit(pos, &unit);
        if (unit != " ") break;
        pos += consumed;
      }
    }
    if (pos == text.size()) return {};

    std::string out;
    out.reserve(3 * (text.size() - pos) + space.size());
    if (add_dummy_prefix_) out += space;
    bool previous_was_space = remove_extra;
    while (pos < text.size()) {
      const size_t consumed = next_unit(pos, &unit);
      if (previous_was_space)
        while (!unit.empty() && unit[0] == ' ') unit.remove_prefix(1);
      if (!unit.empty()) {
        for (char c : unit) {
          if (c == ' ')
            out += space;
          else
            out += c;
        }
        previous_was_space = unit.back() == ' ';
      }
      pos += consumed;
      if (!remove_extra) previous_was_space = false;
    }
    if (remove_extra) {
      while (out.size() >= space.size() && out.compare(out.size() - space.size(), space.size(), space) == 0)
        out.resize(out.size() - space.size());
    }
    return out;
  }

  void encode_text(std::string_view text, std::vector<int>& out) const {
    const std::string normalized = normalize(text);
    if (normalized.empty()) return;

    // Initial symbols. Characters that are not pieces get negative ids -(1 + k), k indexing
    // unknown_chars, so they never merge and can fall back to bytes afterwards.
    std::vector<int> symbols;
    std::vector<std::string_view> unknown_chars;
    std::string_view rest(normalized);
    size_t pos = 0;
    while (pos < rest.size()) {
      size_t match_len;
      int match_id;
      if (user_defined_.match_at(rest, pos, &match_len, &match_id)) {
        symbols.push_back(match_id);  // not in any merge rule, so it stays whole
        pos += match_len;
        continue;
      }
      const int length = next_utf8_char(rest, pos).length;
      const int id = piece_id(std::string(rest.substr(pos, length)));
      if (id >= 0) {
        symbols.push_back(id);
      } else {
        unknown_chars.push_back(rest.substr(pos, length));
        symbols.push_back(-static_cast<int>(unknown_chars.size()));
      }
      pos += length;
    }

    apply_merges(symbols, pairs_);

    if (spm_) {
      emit_sentencepiece(symbols, unknown_chars, out);
      return;
    }
    for (int id : symbols) {
      if (id >= 0) {
        out.push_back(id);
        continue;
      }
      const std::string_view chars = unknown_chars[-id - 1];
      bool all_bytes_known = true;
      for (unsigned char byte : chars) all_bytes_known = all_bytes_known && byte_piece_[byte] >= 0;
      if (all_bytes_known) {
        for (unsigned char byte : chars) out.push_back(byte_piece_[byte]);
      } else if (unk_id_ >= 0) {
        out.push_back(unk_id_);
      }
    }
  }

  // libsentencepiece's output step: a character that is no piece is looked up among the
  // reserved (control/unknown/byte) pieces, else it is unknown; an unknown character
  // becomes its bytes' <0xNN> pieces with byte fallback (<unk> for a missing one), else
  // <unk>, a run of unknown characters giving a single <unk>.
  void emit_sentencepiece(const std::vector<int>& symbols, const std::vector<std::string_view>& unknown_chars,
                          std::vector<int>& out) const {
    bool previous_unknown = false;
    for (int id : symbols) {
      std::string_view chars;
      if (id < 0) {
        chars = unknown_chars[-id - 1];
        auto it = reserved_id_of_piece_.find(std::string(chars));
        id = it == reserved_id_of_piece_.end() ? unk_id_ : it->second;
      }
      const bool unknown = id == unk_id_;
      if (!unknown) {
        out.push_back(id);
      } else if (spm_->byte_fallback) {
        for (unsigned char byte : chars) out.push_back(byte_piece_[byte] >= 0 ? byte_piece_[byte] : unk_id_);
      } else if (!previous_unknown) {
        out.push_back(unk_id_);
      }
      previous_unknown = unknown;
    }
  }

  std::vector<std::string> pieces_;  // SentencePiece spelling ("▁the")
  std::vector<int> types_;           // GGUF token types
  std::vector<std::string> bytes_;   // what each id decodes to
  bool add_dummy_prefix_;
  std::optional<SentencePieceSettings> spm_;          // set for a SentencePiece tokenizer.model
  std::unordered_map<std::string, int> id_of_piece_;  // normal pieces only: merge inputs/results
  int byte_piece_[256];                               // id of each <0xNN> piece, -1 if missing
  int unk_id_ = -1;
  PairTable pairs_;
  SpecialTokenMatcher specials_;      // control + unknown pieces ("<s>", "</s>", "<unk>")
  SpecialTokenMatcher user_defined_;  // always matched whole, as SentencePiece does
  std::unordered_map<std::string, int> reserved_id_of_piece_;  // control, unknown and byte pieces
};

void set_bos_eos(Tokenizer& tok, int bos, int eos) {
  tok.bos_id = bos;
  tok.eos_ids.clear();
  if (eos >= 0) tok.eos_ids.push_back(eos);
  tok.chat_format = sentencepiece_chat_format(tok.vocab_size(), bos, eos);
}

}  // namespace

std::unique_ptr<Tokenizer> make_sentencepiece_bpe(const std::string& path, std::vector<std::string> pieces,
                                                  const std::vector<float>& scores, std::vector<int> types,
                                                  const SentencePieceSettings& settings, int bos_id, int eos_id) {
  auto tok = std::make_unique<ScoreBpeTokenizer>(path, std::move(pieces), std::move(types), settings.add_dummy_prefix,
                                                 settings);
  tok->add_score_merges(scores);
  set_bos_eos(*tok, bos_id, eos_id);
  return tok;
}

std::unique_ptr<Tokenizer> make_hf_sentencepiece_bpe(const std::string& path, std::vector<std::string> pieces,
                                                     const std::vector<std::pair<std::string, std::string>>& merges,
                                                     std::vector<int> token_types, bool add_dummy_prefix) {
  auto tok = std::make_unique<ScoreBpeTokenizer>(path, std::move(pieces), std::move(token_types), add_dummy_prefix);
  tok->add_rank_merges(path, merges);
  set_bos_eos(*tok, tok->special_id("<s>").value_or(-1), tok->special_id("</s>").value_or(-1));
  return tok;
}

// llama2.c tokenizer.bin: int32 max_token_length, then per token f32 score, i32 length,
// bytes. Its exporter wrote ' ' for '▁' and "\n<s>\n" / "\n</s>\n" for BOS/EOS; undo both.
std::unique_ptr<Tokenizer> load_llama2c_bin(const std::string& path, const std::string& contents, int vocab_size_hint) {
  auto read_i32 = [&](size_t at) {
    int32_t v;
    std::memcpy(&v, contents.data() + at, 4);
    return v;
  };
  if (contents.size() < 4) fail(path, "truncated (no header)");
  const int32_t max_token_length = read_i32(0);
  if (max_token_length <= 0 || max_token_length > 4096)
    fail(path, "bad max_token_length " + std::to_string(max_token_length) + " (not a llama2.c tokenizer.bin?)");

  std::vector<std::string> pieces;
  std::vector<float> scores;
  size_t pos = 4;
  while (vocab_size_hint > 0 ? static_cast<int>(pieces.size()) < vocab_size_hint : pos < contents.size()) {
    const std::string where = "token " + std::to_string(pieces.size());
    if (pos + 8 > contents.size())
      fail(path,
           "truncated at " + where + (vocab_size_hint > 0 ? " of " + std::to_string(vocab_size_hint) : std::string()));
    float score;
    std::memcpy(&score, contents.data() + pos, 4);
    const int32_t length = read_i32(pos + 4);
    pos += 8;
    if (length < 0 || length > max_token_length)
      fail(path, where + " has bad length " + std::to_string(length) + " (max_token_length " +
                     std::to_string(max_token_length) + ")");
    if (pos + length > contents.size()) fail(path, "truncated inside " + where);
    std::string piece = contents.substr(pos, length);
    pos += length;
    if (piece == "\n<s>\n")
      piece = "<s>";
    else if (piece == "\n</s>\n")
      piece = "</s>";
    else
      piece = replace_all(piece, " ", kSpaceMark);
    pieces.push_back(std::move(piece));
    scores.push_back(score);
  }
  if (pieces.empty()) fail(path, "empty vocabulary");

  std::vector<int> types(pieces.size());
  for (size_t id = 0; id < pieces.size(); ++id) types[id] = guess_piece_type(pieces[id]);
  auto tok = std::make_unique<ScoreBpeTokenizer>(path, std::move(pieces), std::move(types), /*add_dummy_prefix=*/true);
  tok->add_score_merges(scores);
  set_bos_eos(*tok, tok->special_id("<s>").value_or(1), tok->special_id("</s>").value_or(2));
  return tok;
}

}  // namespace tok

std::unique_ptr<Tokenizer> make_score_bpe_tokenizer(std::vector<std::string> pieces, std::vector<float> scores,
                                                    std::vector<int> token_types, int bos_id, int eos_id) {
  using namespace tok;
  auto tok = std::make_unique<ScoreBpeTokenizer>("<gguf vocabulary>", std::move(pieces), std::move(token_types),
                                                 /*add_dummy_prefix=*/true);
  tok->add_score_merges(scores);
  set_bos_eos(*tok, bos_id, eos_id);
  return tok;
}

}  // namespace cpuchat
