// Pieces shared by the tokenizer implementations (not part of the public API):
// UTF-8 and Unicode class helpers, the Llama 3 pre-tokenizer, special-token matching,
// the merge engine common to every BPE flavour here, and the per-format loaders.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "cpuchat/tokenizer.h"

namespace cpuchat::tok {

// ---- UTF-8 (utf8.cpp) ----

// One step of UTF-8 decoding. An ill-formed sequence yields U+FFFD with length equal to
// its "maximal subpart" (the bytes that could still have started a valid character), so
// replacing each such step by U+FFFD follows the Unicode recommendation (and Python's).
struct Utf8Step {
  uint32_t code_point;
  int length;      // bytes consumed, >= 1
  bool valid;      // a well-formed character
  bool truncated;  // ill-formed only because the text ended mid-character
};
Utf8Step next_utf8_char(std::string_view text, size_t pos);
void append_utf8(std::string& out, uint32_t code_point);
// Replaces every ill-formed sequence with U+FFFD.
std::string sanitize_utf8(std::string_view bytes);
bool is_valid_utf8(std::string_view bytes);

// Unicode classes as the Llama 3 regex sees them: \p{L}, \p{N}, \s (White_Space).
bool is_letter(uint32_t cp);
bool is_number(uint32_t cp);
bool is_whitespace(uint32_t cp);

// Splits text into the pre-tokens of the Llama 3 regex
//   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
//    ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
// The pieces are views into text and cover it exactly.
void pretokenize_llama3(std::string_view text, const std::function<void(std::string_view)>& emit);

// ---- special tokens ----

// Finds special-token text in a string: leftmost match, longest at that position
// (the same rule as HF's added-vocabulary matcher).
class SpecialTokenMatcher {
 public:
  void add(const std::string& text, int id);
  bool empty() const { return by_text_.empty(); }
  std::optional<int> id_of(std::string_view text) const;
  // Searches text[from..]; on success sets *pos, *len, *id.
  bool find(std::string_view text, size_t from, size_t* pos, size_t* len, int* id) const;
  // The longest special token starting exactly at text[pos].
  bool match_at(std::string_view text, size_t pos, size_t* len, int* id) const;

 private:
  std::unordered_map<std::string, int> by_text_;
  // Candidates per first byte, longest first.
  std::vector<std::pair<std::string, int>> by_first_byte_[256];
};

// Calls encode_text on the text between special tokens and appends special ids
// (only when parse_special; otherwise the whole text goes to encode_text).
void encode_with_specials(std::string_view text, bool parse_special, const SpecialTokenMatcher& specials,
                          std::vector<int>& out,
                          const std::function<void(std::string_view, std::vector<int>&)>& encode_text);

// ---- the merge engine ----

// A BPE merge rule for one adjacent pair of symbol ids: lower priority merges first.
// Byte-level BPE uses the merge rank (or tiktoken rank); SentencePiece BPE uses -score.
struct MergeRule {
  float priority;
  int result;
};

class PairTable {
 public:
  // Keeps the better (lower priority) rule if the pair is added twice.
  void add(int left, int right, float priority, int result);
  const MergeRule* find(int left, int right) const {
    if (left < 0 || right < 0) return nullptr;
    auto it = rules_.find(key(left, right));
    return it == rules_.end() ? nullptr : &it->second;
  }
  size_t size() const { return rules_.size(); }
  void reserve(size_t n) { rules_.reserve(n); }

 private:
  static uint64_t key(int left, int right) { return (uint64_t(uint32_t(left)) << 32) | uint32_t(right); }
  std::unordered_map<uint64_t, MergeRule> rules_;
};

// Repeatedly merges the adjacent pair with the lowest priority (leftmost on ties) until no
// rule applies. Symbols with id < 0 never merge. O(n log n) with a heap, so long runs
// (e.g. 10k spaces) stay fast.
void apply_merges(std::vector<int>& symbols, const PairTable& pairs);

// ---- errors and loaders ----

// "tokenizer file '<path>': <problem>" on one line.
[[noreturn]] void fail(const std::string& path, const std::string& problem);

std::unique_ptr<Tokenizer> load_hf_json(const std::string& path, const std::string& contents);
std::unique_ptr<Tokenizer> load_tiktoken(const std::string& path, const std::string& contents);
std::unique_ptr<Tokenizer> load_sentencepiece_model(const std::string& path, const std::string& contents);
std::unique_ptr<Tokenizer> load_llama2c_bin(const std::string& path, const std::string& contents, int vocab_size_hint);
// A SentencePiece-style BPE from an HF tokenizer.json (Llama 2 / TinyLlama "legacy" layout:
// Prepend+Replace normalizer, byte_fallback, merge ranks).
std::unique_ptr<Tokenizer> make_hf_sentencepiece_bpe(const std::string& path, std::vector<std::string> pieces,
                                                     const std::vector<std::pair<std::string, std::string>>& merges,
                                                     std::vector<int> token_types, bool add_dummy_prefix);

// GGUF token types (also used internally for every SentencePiece-style vocabulary).
// The same numbers as sentencepiece_model.proto's SentencePiece.Type.
enum TokenType { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

// The parts of a SentencePiece ModelProto (NormalizerSpec, TrainerSpec) that change how
// a BPE model with an identity normalization rule encodes. Defaults are the proto's.
struct SentencePieceSettings {
  bool add_dummy_prefix = true;          // NormalizerSpec.add_dummy_prefix
  bool remove_extra_whitespaces = true;  // NormalizerSpec.remove_extra_whitespaces
  bool escape_whitespaces = true;        // NormalizerSpec.escape_whitespaces (' ' -> U+2581)
  bool byte_fallback = false;            // TrainerSpec.byte_fallback
};
// A score BPE that reproduces libsentencepiece's BPE encoder for a tokenizer.model:
// its normalizer (whitespace handling, malformed UTF-8 -> U+FFFD one byte at a time,
// user-defined pieces kept whole), score-ordered merges, per-byte fallback (<unk> for a
// missing byte piece) and, without byte fallback, one <unk> per run of unknown characters.
// types are SentencePiece types (UNUSED pieces are not supported); the caller has checked
// the vocabulary (one <unk>, no duplicate or empty pieces).
std::unique_ptr<Tokenizer> make_sentencepiece_bpe(const std::string& path, std::vector<std::string> pieces,
                                                  const std::vector<float>& scores, std::vector<int> types,
                                                  const SentencePieceSettings& settings, int bos_id, int eos_id);

// Guesses a token type from a SentencePiece piece string ("<unk>", "<s>", "<0x0A>", ...).
int guess_piece_type(const std::string& piece);
// If piece is "<0xNN>", the byte it stands for.
std::optional<unsigned char> parse_byte_piece(std::string_view piece);

// The chat format for a SentencePiece vocabulary (see sentencepiece_tokenizer.cpp).
ChatFormat sentencepiece_chat_format(int vocab_size, int bos_id, int eos_id);

}  // namespace cpuchat::tok
