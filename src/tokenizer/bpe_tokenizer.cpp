// Llama 3 byte-level BPE: the Llama 3 regex pre-tokenizer, then rank-ordered merges over
// the bytes of each pre-token. Three sources build the same tokenizer:
//   - HF tokenizer.json (vocab in the GPT-2 byte-to-unicode alphabet + merge list),
//   - Meta's tiktoken tokenizer.model (base64 bytes + rank; specials numbered by Meta's code),
//   - GGUF "gpt2" vocabularies (make_byte_bpe_tokenizer).
// HF merges rank pairs by their position in the merge list; tiktoken ranks a pair by the
// rank of the concatenated token. Both become a PairTable, so one merge loop serves both.
#include <algorithm>
#include <mutex>
#include <nlohmann/json.hpp>

#include "tokenizer_internal.h"

namespace cpuchat {
namespace tok {

namespace {

// GPT-2's reversible byte <-> printable-character map used in byte-level vocabularies:
// printable Latin-1 bytes stand for themselves, the rest map to U+0100 upwards.
struct ByteUnicodeMap {
  uint32_t char_of_byte[256];
  std::unordered_map<uint32_t, unsigned char> byte_of_char;
  ByteUnicodeMap() {
    uint32_t next_extra = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      char_of_byte[b] = printable ? b : next_extra++;
      byte_of_char[char_of_byte[b]] = static_cast<unsigned char>(b);
    }
  }
};

const ByteUnicodeMap& byte_unicode_map() {
  static const ByteUnicodeMap map;
  return map;
}

// "Ġhello" -> " hello". Returns false if a character is outside the byte alphabet.
bool byte_level_to_bytes(std::string_view token, std::string* bytes) {
  const ByteUnicodeMap& map = byte_unicode_map();
  bytes->clear();
  for (size_t pos = 0; pos < token.size();) {
    const Utf8Step step = next_utf8_char(token, pos);
    auto it = map.byte_of_char.find(step.code_point);
    if (!step.valid || it == map.byte_of_char.end()) return false;
    bytes->push_back(static_cast<char>(it->second));
    pos += step.length;
  }
  return true;
}

const char* const kLlama3Regex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

class ByteBpeTokenizer final : public Tokenizer {
 public:
  // token_bytes: the raw bytes of every token by id ("" for unused ids); specials: their
  // text. ignore_merges: a pre-token that is itself a token is emitted whole (Llama 3).
  ByteBpeTokenizer(const std::string& source, std::vector<std::string> token_bytes, std::vector<bool> special,
                   bool ignore_merges)
      : tokens_(std::move(token_bytes)), special_(std::move(special)), ignore_merges_(ignore_merges) {
    special_.resize(tokens_.size(), false);
    for (int id = 0; id < static_cast<int>(tokens_.size()); ++id) {
      if (special_[id])
        specials_.add(tokens_[id], id);
      else if (!tokens_[id].empty())
        id_of_bytes_.try_emplace(tokens_[id], id);
    }
    if (id_of_bytes_.empty()) fail(source, "empty vocabulary");
    for (int b = 0; b < 256; ++b) {
      auto it = id_of_bytes_.find(std::string(1, static_cast<char>(b)));
      if (it == id_of_bytes_.end()) fail(source, "vocabulary lacks a token for byte " + std::to_string(b));
      id_of_byte_[b] = it->second;
    }
  }

  // HF merges: "left right" in byte-level spelling, in rank order.
  void add_merges(const std::string& source, const std::vector<std::pair<std::string, std::string>>& merges) {
    pairs_.reserve(merges.size());
    std::string left, right;
    for (size_t rank = 0; rank < merges.size(); ++rank) {
      if (!byte_level_to_bytes(merges[rank].first, &left) || !byte_level_to_bytes(merges[rank].second, &right))
        fail(source, "merge " + std::to_string(rank) + " has a character outside the byte alphabet");
      const int l = id_of(left), r = id_of(right), result = id_of(left + right);
      if (l < 0 || r < 0 || result < 0)
        fail(source, "merge " + std::to_string(rank) + " ('" + merges[rank].first + " " + merges[rank].second +
                         "') uses a token that is not in the vocabulary");
      pairs_.add(l, r, static_cast<float>(rank), result);
    }
  }

  // tiktoken: any two tokens whose concatenation is a token merge, at that token's rank.
  void add_rank_merges() {
    for (int id = 0; id < static_cast<int>(tokens_.size()); ++id) {
      const std::string& token = tokens_[id];
      if (special_[id] || token.size() < 2) continue;
      for (size_t split = 1; split < token.size(); ++split) {
        const int l = id_of(token.substr(0, split)), r = id_of(token.substr(split));
        if (l >= 0 && r >= 0) pairs_.add(l, r, static_cast<float>(id), id);
      }
    }
  }

  std::vector<int> encode(std::string_view text, bool parse_special) const override {
    std::vector<int> ids;
    ids.reserve(text.size() / 3 + 1);
    encode_with_specials(text, parse_special, specials_, ids, [this](std::string_view part, std::vector<int>& out) {
      pretokenize_llama3(part, [&](std::string_view word) { encode_word(word, out); });
    });
    return ids;
  }

  std::string token_bytes(int id) const override {
    if (id < 0 || id >= vocab_size()) throw std::out_of_range("token id " + std::to_string(id) + " out of range");
    return tokens_[id];
  }
  int vocab_size() const override { return static_cast<int>(tokens_.size()); }
  std::optional<int> special_id(std::string_view text) const override { return specials_.id_of(text); }
  bool is_special(int id) const override { return id >= 0 && id < vocab_size() && special_[id]; }

  // BOS/EOS and the chat format for vocabularies with Llama 3's specials.
  void configure_llama3_specials() {
    if (auto bos = special_id("<|begin_of_text|>")) bos_id = *bos;
    for (const char* name : {"<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"})
      if (auto id = special_id(name)) eos_ids.push_back(*id);
    // Llama 3.0-named files call 128008 <|reserved_special_token_4|>; it is <|eom_id|> in 3.1.
    if (bos_id == 128000)
      for (int id : {128001, 128008, 128009})
        if (is_special(id)) eos_ids.push_back(id);
    std::sort(eos_ids.begin(), eos_ids.end());
    eos_ids.erase(std::unique(eos_ids.begin(), eos_ids.end()), eos_ids.end());
    const bool has_llama3_headers =
        special_id("<|start_header_id|>") && special_id("<|end_header_id|>") && special_id("<|eot_id|>");
    // Llama 3.1 names <|python_tag|> (tool calls); its template adds a dated system preamble.
    chat_format = !has_llama3_headers ? ChatFormat::Plain
                  : special_id("<|python_tag|>") ? ChatFormat::Llama31
                                                 : ChatFormat::Llama3;
  }

 private:
  int id_of(const std::string& bytes) const {
    auto it = id_of_bytes_.find(bytes);
    return it == id_of_bytes_.end() ? -1 : it->second;
  }

  void encode_word(std::string_view word, std::vector<int>& out) const {
    const std::string key(word);
    if (ignore_merges_) {
      if (int id = id_of(key); id >= 0) {
        out.push_back(id);
        return;
      }
    }
    {
      std::lock_guard<std::mutex> lock(cache_mutex_);
      auto it = cache_.find(key);
      if (it != cache_.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<int> symbols(word.size());
    for (size_t i = 0; i < word.size(); ++i) symbols[i] = id_of_byte_[static_cast<unsigned char>(word[i])];
    apply_merges(symbols, pairs_);
    out.insert(out.end(), symbols.begin(), symbols.end());
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() >= kMaxCachedWords) cache_.clear();  // crude bound; words repeat a lot
    cache_.emplace(key, std::move(symbols));
  }

  static constexpr size_t kMaxCachedWords = 1 << 16;

  std::vector<std::string> tokens_;  // raw bytes by id; specials hold their text
  std::vector<bool> special_;
  bool ignore_merges_;
  std::unordered_map<std::string, int> id_of_bytes_;  // regular tokens only
  int id_of_byte_[256];
  PairTable pairs_;
  SpecialTokenMatcher specials_;
  // Merged pre-tokens: encode() is const and may run on several threads.
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int>> cache_;
};

// ---- HF tokenizer.json ----

using json = nlohmann::json;

std::vector<std::pair<std::string, std::string>> read_merges(const std::string& path, const json& merges) {
  if (!merges.is_array()) fail(path, "model.merges is not a list");
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(merges.size());
  for (const json& merge : merges) {
    if (merge.is_string()) {  // "left right"
      const std::string& text = merge.get_ref<const std::string&>();
      const size_t space = text.find(' ', 1);
      if (space == std::string::npos) fail(path, "merge '" + text + "' is not 'left right'");
      out.emplace_back(text.substr(0, space), text.substr(space + 1));
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string()) {
      out.emplace_back(merge[0].get<std::string>(), merge[1].get<std::string>());  // newer ["left", "right"]
    } else {
      fail(path, "malformed entry in model.merges");
    }
  }
  return out;
}

bool mentions(const json& node, const std::string& needle) {
  return !node.is_null() && node.dump().find(needle) != std::string::npos;
}

}  // namespace

std::unique_ptr<Tokenizer> load_hf_json(const std::string& path, const std::string& contents) {
  json root = json::parse(contents, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) fail(path, "malformed JSON");
  if (!root.is_object() || !root.contains("model") || !root["model"].is_object())
    fail(path, "not an HF tokenizer.json (no \"model\" object)");
  const json& model = root["model"];
  const std::string type = model.value("type", std::string("BPE"));
  if (type != "BPE") fail(path, "model type '" + type + "' is not supported (only BPE)");
  if (!model.contains("vocab") || !model["vocab"].is_object() || model["vocab"].empty())
    fail(path, "empty or missing model.vocab");

  // Tokens by id, from the vocab plus added_tokens (the specials).
  std::vector<std::string> tokens;
  std::vector<bool> added;
  auto place = [&](int id, const std::string& text, bool is_added) {
    if (id < 0 || id > 10'000'000) fail(path, "token id " + std::to_string(id) + " out of range");
    if (id >= static_cast<int>(tokens.size())) {
      tokens.resize(id + 1);
      added.resize(id + 1, false);
    }
    tokens[id] = text;
    added[id] = added[id] || is_added;
  };
  for (const auto& [text, id] : model["vocab"].items()) {
    if (!id.is_number_integer()) fail(path, "vocab entry '" + text + "' has no integer id");
    place(id.get<int>(), text, false);
  }
  std::vector<bool> special_flag;
  if (root.contains("added_tokens") && root["added_tokens"].is_array()) {
    for (const json& t : root["added_tokens"]) {
      if (!t.is_object() || !t.contains("id") || !t["id"].is_number_integer() || !t.contains("content") ||
          !t["content"].is_string())
        fail(path, "malformed entry in added_tokens");
      place(t["id"].get<int>(), t["content"].get<std::string>(), true);
    }
  }
  const auto merges = read_merges(path, model.contains("merges") ? model["merges"] : json::array());

  const bool byte_level = mentions(root["pre_tokenizer"], "ByteLevel") || mentions(root["decoder"], "ByteLevel");
  if (!byte_level) {
    // SentencePiece converted to HF (Llama 2, TinyLlama, stories): ▁ for spaces, byte fallback.
    const bool sentencepiece_style = model.value("byte_fallback", false) || mentions(root["normalizer"], "\u2581") ||
                                     mentions(root["pre_tokenizer"], "Metaspace");
    if (!sentencepiece_style)
      fail(path, "unsupported tokenizer.json layout (neither byte-level nor SentencePiece-style BPE)");
    std::vector<int> types(tokens.size(), kNormal);
    const std::string unk = model.value("unk_token", std::string("<unk>"));
    for (size_t id = 0; id < tokens.size(); ++id) {
      if (tokens[id] == unk)
        types[id] = kUnknown;
      else if (added[id])
        types[id] = kControl;
      else
        types[id] = guess_piece_type(tokens[id]);
    }
    const bool dummy_prefix =
        mentions(root["normalizer"], "Prepend") || (mentions(root["pre_tokenizer"], "Metaspace") &&
                                                    !mentions(root["pre_tokenizer"], "\"prepend_scheme\":\"never\""));
    return make_hf_sentencepiece_bpe(path, std::move(tokens), merges, std::move(types), dummy_prefix);
  }

  // Byte-level: only the Llama 3 split regex is implemented; refuse others rather than
  // produce different ids silently.
  const std::string pre = root["pre_tokenizer"].is_null() ? "" : root["pre_tokenizer"].dump();
  if (pre.find("\"Regex\"") != std::string::npos && pre.find(json(kLlama3Regex).dump()) == std::string::npos)
    fail(path, "unsupported pre-tokenizer regex (only Llama 3's is implemented)");

  std::vector<std::string> bytes_by_id(tokens.size());
  for (size_t id = 0; id < tokens.size(); ++id) {
    if (added[id])
      bytes_by_id[id] = tokens[id];
    else if (!tokens[id].empty() && !byte_level_to_bytes(tokens[id], &bytes_by_id[id]))
      fail(path, "token " + std::to_string(id) + " is not in the byte-level alphabet");
  }
  auto tok =
      std::make_unique<ByteBpeTokenizer>(path, std::move(bytes_by_id), added, model.value("ignore_merges", false));
  tok->add_merges(path, merges);
  tok->configure_llama3_specials();
  return tok;
}

// ---- Meta tiktoken tokenizer.model ----

namespace {

bool decode_base64(std::string_view text, std::string* out) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  out->clear();
  if (text.empty() || text.size() % 4 != 0) return false;
  size_t padding = 0;
  while (padding < 2 && text[text.size() - 1 - padding] == '=') ++padding;
  uint32_t buffer = 0;
  int bits = 0;
  for (size_t i = 0; i < text.size() - padding; ++i) {
    const int v = value(text[i]);
    if (v < 0) return false;
    buffer = (buffer << 6) | v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out->push_back(static_cast<char>((buffer >> bits) & 0xFF));
    }
  }
  return !out->empty();
}

// Meta's Llama 3.1 special tokens, numbered from the first id after the ranks.
std::vector<std::string> llama3_special_names() {
  std::vector<std::string> names = {"<|begin_of_text|>",
                                    "<|end_of_text|>",
                                    "<|reserved_special_token_0|>",
                                    "<|reserved_special_token_1|>",
                                    "<|finetune_right_pad_id|>",
                                    "<|reserved_special_token_2|>",
                                    "<|start_header_id|>",
                                    "<|end_header_id|>",
                                    "<|eom_id|>",
                                    "<|eot_id|>",
                                    "<|python_tag|>"};
  for (int i = 3; names.size() < 256; ++i) names.push_back("<|reserved_special_token_" + std::to_string(i) + "|>");
  return names;
}

}  // namespace

std::unique_ptr<Tokenizer> load_tiktoken(const std::string& path, const std::string& contents) {
  // Ranks are 0..N-1, one per line: a rank beyond the file's line count is refused before it
  // sizes the vocabulary (a 9-digit rank in a 1 KB file asked for gigabytes).
  const long lines = long(std::count(contents.begin(), contents.end(), '\n')) + 1;
  std::vector<std::string> tokens;
  std::string bytes;
  size_t line_start = 0;
  int line_number = 0;
  while (line_start < contents.size()) {
    size_t line_end = contents.find('\n', line_start);
    if (line_end == std::string::npos) line_end = contents.size();
    std::string_view line(contents.data() + line_start, line_end - line_start);
    line_start = line_end + 1;
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    const size_t space = line.find(' ');
    if (space == std::string_view::npos) fail(path, "line " + std::to_string(line_number) + " is not 'base64 rank'");
    if (!decode_base64(line.substr(0, space), &bytes)) fail(path, "bad base64 on line " + std::to_string(line_number));
    const std::string_view rank_text = line.substr(space + 1);
    long rank = 0;
    if (rank_text.empty() || rank_text.size() > 9) fail(path, "bad rank on line " + std::to_string(line_number));
    for (char c : rank_text) {
      if (c < '0' || c > '9') fail(path, "bad rank on line " + std::to_string(line_number));
      rank = rank * 10 + (c - '0');
    }
    if (rank >= lines)
      fail(path, "rank " + std::to_string(rank) + " on line " + std::to_string(line_number) + " is beyond the file's " +
                     std::to_string(lines) + " lines (ranks are 0..N-1)");
    if (rank >= static_cast<long>(tokens.size())) tokens.resize(rank + 1);
    if (!tokens[rank].empty()) fail(path, "rank " + std::to_string(rank) + " appears twice");
    tokens[rank] = bytes;
  }
  if (tokens.empty()) fail(path, "empty vocabulary");

  std::vector<bool> special(tokens.size(), false);
  for (const std::string& name : llama3_special_names()) {
    tokens.push_back(name);
    special.push_back(true);
  }
  auto tok = std::make_unique<ByteBpeTokenizer>(path, std::move(tokens), std::move(special),
                                                /*ignore_merges=*/true);  // tiktoken looks whole pieces up first
  tok->add_rank_merges();
  tok->configure_llama3_specials();
  return tok;
}

}  // namespace tok

// ---- GGUF "gpt2" vocabularies ----

std::unique_ptr<Tokenizer> make_byte_bpe_tokenizer(std::vector<std::string> tokens, std::vector<std::string> merges,
                                                   std::vector<int> token_types) {
  using namespace tok;
  const std::string source = "<gguf vocabulary>";
  std::vector<std::string> bytes_by_id(tokens.size());
  std::vector<bool> special(tokens.size(), false);
  for (size_t id = 0; id < tokens.size(); ++id) {
    const std::string& t = tokens[id];
    // Control and user-defined entries are specials; without types, "<|...|>" names are.
    const bool is_special_token = id < token_types.size()
                                      ? (token_types[id] == kControl || token_types[id] == kUserDefined)
                                      : (t.size() > 4 && t.rfind("<|", 0) == 0 && t.substr(t.size() - 2) == "|>");
    if (is_special_token) {
      bytes_by_id[id] = t;
      special[id] = true;
    } else if (!byte_level_to_bytes(t, &bytes_by_id[id])) {
      fail(source, "token " + std::to_string(id) + " is not in the byte-level alphabet");
    }
  }
  std::vector<std::pair<std::string, std::string>> merge_pairs;
  merge_pairs.reserve(merges.size());
  for (const std::string& m : merges) {
    const size_t space = m.find(' ', 1);
    if (space == std::string::npos) fail(source, "merge '" + m + "' is not 'left right'");
    merge_pairs.emplace_back(m.substr(0, space), m.substr(space + 1));
  }
  auto tok = std::make_unique<ByteBpeTokenizer>(source, std::move(bytes_by_id), std::move(special),
                                                /*ignore_merges=*/true);  // llama.cpp's llama-bpe does too
  tok->add_merges(source, merge_pairs);
  tok->configure_llama3_specials();
  return tok;
}

}  // namespace cpuchat
