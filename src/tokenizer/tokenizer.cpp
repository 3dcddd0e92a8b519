// Format detection (load_tokenizer), decoding, the streaming decoder, special-token
// matching and the small helpers every tokenizer implementation shares.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/regular_file.h"
#include "tokenizer_internal.h"

namespace cpuchat {

namespace tok {

namespace {

// Thrown by fail(); load_tokenizer lets it through unchanged and wraps anything else.
struct LoadError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace

void fail(const std::string& path, const std::string& problem) {
  std::string message = "tokenizer file '" + path + "': " + problem;
  std::replace(message.begin(), message.end(), '\n', ' ');
  std::replace(message.begin(), message.end(), '\r', ' ');
  throw LoadError(message);
}

// ---- special tokens ----

void SpecialTokenMatcher::add(const std::string& text, int id) {
  if (text.empty()) return;
  auto [it, inserted] = by_text_.try_emplace(text, id);
  if (!inserted) return;  // first id wins, as in a vocabulary listed by id
  auto& bucket = by_first_byte_[static_cast<unsigned char>(text[0])];
  bucket.emplace_back(text, id);
  std::stable_sort(bucket.begin(), bucket.end(),
                   [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
}

std::optional<int> SpecialTokenMatcher::id_of(std::string_view text) const {
  auto it = by_text_.find(std::string(text));
  if (it == by_text_.end()) return std::nullopt;
  return it->second;
}

bool SpecialTokenMatcher::match_at(std::string_view text, size_t pos, size_t* len, int* id) const {
  if (pos >= text.size()) return false;
  for (const auto& [special, special_id] : by_first_byte_[static_cast<unsigned char>(text[pos])]) {
    if (text.compare(pos, special.size(), special) == 0) {  // longest first
      *len = special.size();
      *id = special_id;
      return true;
    }
  }
  return false;
}

bool SpecialTokenMatcher::find(std::string_view text, size_t from, size_t* pos, size_t* len, int* id) const {
  if (by_text_.empty()) return false;
  for (size_t i = from; i < text.size(); ++i) {
    if (match_at(text, i, len, id)) {
      *pos = i;
      return true;
    }
  }
  return false;
}

void encode_with_specials(std::string_view text, bool parse_special, const SpecialTokenMatcher& specials,
                          std::vector<int>& out,
                          const std::function<void(std::string_view, std::vector<int>&)>& encode_text) {
  if (!parse_special) {
    encode_text(text, out);
    return;
  }
  size_t from = 0, pos, len;
  int id;
  while (specials.find(text, from, &pos, &len, &id)) {
    if (pos > from) encode_text(text.substr(from, pos - from), out);
    out.push_back(id);
    from = pos + len;
  }
  if (from < text.size()) encode_text(text.substr(from), out);
}

// ---- SentencePiece piece helpers ----

std::optional<unsigned char> parse_byte_piece(std::string_view piece) {
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return std::nullopt;
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  const int hi = hex(piece[3]), lo = hex(piece[4]);
  if (hi < 0 || lo < 0) return std::nullopt;
  return static_cast<unsigned char>(hi * 16 + lo);
}

int guess_piece_type(const std::string& piece) {
  if (piece == "<unk>") return kUnknown;
  if (piece == "<s>" || piece == "</s>" || piece == "<pad>") return kControl;
  if (parse_byte_piece(piece)) return kByte;
  return kNormal;
}

}  // namespace tok

// ---- decoding ----

std::string Tokenizer::decode(const std::vector<int>& ids, bool skip_special) const {
  std::string bytes;
  bool first_text_piece = true;
  for (int id : ids) {
    const bool special = is_special(id);
    if (special && skip_special) continue;
    std::string piece = token_bytes(id);
    // SentencePiece drops the dummy-prefix space of the first text piece; control tokens
    // (BOS) in front of it do not count.
    if (!special) {
      if (first_text_piece && strip_leading_space_on_decode && !piece.empty() && piece[0] == ' ') piece.erase(0, 1);
      first_text_piece = false;
    }
    bytes += piece;
  }
  return tok::sanitize_utf8(bytes);
}

std::string StreamingDecoder::piece(int id) const {
  std::string bytes = tok_.token_bytes(id);
  if (!tok_.is_special(id) && first_ && tok_.strip_leading_space_on_decode && !bytes.empty() && bytes[0] == ' ')
    bytes.erase(0, 1);
  return bytes;
}

std::string StreamingDecoder::push(int id) {
  pending_ += piece(id);
  if (!tok_.is_special(id)) first_ = false;

  // Emit every complete character; hold back a tail that is a valid start of one.
  // Bytes that can never become valid are replaced now so each chunk is valid UTF-8.
  std::string ready;
  size_t pos = 0;
  while (pos < pending_.size()) {
    const tok::Utf8Step step = tok::next_utf8_char(pending_, pos);
    if (step.truncated) break;
    if (step.valid)
      ready.append(pending_, pos, step.length);
    else
      tok::append_utf8(ready, 0xFFFD);
    pos += step.length;
  }
  pending_.erase(0, pos);
  return ready;
}

std::string StreamingDecoder::flush() {
  std::string rest = tok::sanitize_utf8(pending_);
  pending_.clear();
  return rest;
}

// ---- loading ----

namespace {

std::string lowercase_extension(const std::filesystem::path& path) {
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext;
}

// Meta's tiktoken files are lines of "base64 rank"; SentencePiece models are protobuf.
bool looks_like_tiktoken(const std::string& contents) {
  const size_t line_end = std::min(contents.find('\n'), contents.size());
  const size_t space = contents.find(' ');
  if (space == std::string::npos || space == 0 || space >= line_end) return false;
  for (size_t i = 0; i < space; ++i) {
    const char c = contents[i];
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '+' || c == '/' || c == '=')) return false;
  }
  size_t digits_end = space + 1;
  while (digits_end < line_end && std::isdigit(static_cast<unsigned char>(contents[digits_end]))) ++digits_end;
  return digits_end > space + 1 && (digits_end == line_end || contents[digits_end] == '\r');
}

std::unique_ptr<Tokenizer> load_by_contents(const std::string& path, const std::string& contents, int vocab_size_hint) {
  if (contents.empty()) tok::fail(path, "file is empty");
  const std::string ext = lowercase_extension(path);
  if (ext == ".json") return tok::load_hf_json(path, contents);
  if (ext == ".bin") return tok::load_llama2c_bin(path, contents, vocab_size_hint);
  // tokenizer.model (or an unknown name): decide by content.
  if (looks_like_tiktoken(contents)) return tok::load_tiktoken(path, contents);
  if (contents[0] == '{') return tok::load_hf_json(path, contents);
  // A SentencePiece ModelProto starts with field 1 (pieces), length-delimited: byte 0x0A.
  if (contents[0] == '\x0A') return tok::load_sentencepiece_model(path, contents);
  tok::fail(path,
            "unrecognized format (expected HF tokenizer.json, tiktoken text, "
            "SentencePiece model or llama2.c tokenizer.bin)");
}

}  // namespace

// Llama 3's tokenizer.json is 9 MB; anything past this is not a tokenizer.
constexpr size_t kMaxTokenizerFileBytes = size_t(1) << 30;

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path, int vocab_size_hint) {
  namespace fs = std::filesystem;
  std::string file = path;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    // HF directories have both; tokenizer.json carries the specials and merges HF uses.
    if (fs::exists(fs::path(path) / "tokenizer.json", ec))
      file = (fs::path(path) / "tokenizer.json").string();
    else if (fs::exists(fs::path(path) / "tokenizer.model", ec))
      file = (fs::path(path) / "tokenizer.model").string();
    else
      tok::fail(path, "directory has neither tokenizer.json nor tokenizer.model");
  }
  std::string contents;
  try {
    contents = read_regular_file(file, kMaxTokenizerFileBytes);  // a FIFO or /dev/zero is refused, not read forever
  } catch (const std::runtime_error& e) {
    std::string why = e.what();
    if (why.rfind(file + ": ", 0) == 0) why = why.substr(file.size() + 2);
    tok::fail(file, why);
  }
  return load_tokenizer_from_memory(file, contents, vocab_size_hint);
}

std::unique_ptr<Tokenizer> load_tokenizer_from_memory(const std::string& name, const std::string& contents,
                                                      int vocab_size_hint) {
  try {
    return load_by_contents(name, contents, vocab_size_hint);
  } catch (const tok::LoadError&) {
    throw;
  } catch (const std::exception& e) {
    tok::fail(name, e.what());
  }
}

}  // namespace cpuchat
