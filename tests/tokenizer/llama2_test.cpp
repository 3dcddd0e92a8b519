// SentencePiece-family tokenizers: Llama 2 (32000) against tokenizer_llama2.json and tok512
// against stories260K.expected.json, through our tokenizer.model reader, llama2.c
// tokenizer.bin, HF tokenizer.json and a GGUF-shaped vocabulary; random text against
// libsentencepiece itself (see also sentencepiece_model_test.cpp).
#include <gtest/gtest.h>

#include <random>
#include <tuple>

#include "spm_reference.h"
#include "test_util.h"

using namespace tokenizer_test;
using nlohmann::json;

namespace {

const char* const kLlama2Loaders[] = {"llama2-spm", "llama2-bin", "llama2-bin-nohint", "llama2-json", "llama2-gguf"};
const char* const kTok512Loaders[] = {"tok512-spm", "tok512-bin", "tok512-json", "tok512-dir", "tok512-gguf"};

std::vector<int> llama2_case_indices() {
  std::vector<int> indices(llama2_fixture()["cases"].size());
  for (size_t i = 0; i < indices.size(); ++i) indices[i] = static_cast<int>(i);
  return indices;
}

class Llama2Case : public ::testing::TestWithParam<std::tuple<const char*, int>> {
 protected:
  const cpuchat::Tokenizer& tok() const { return tokenizer(std::get<0>(GetParam())); }
  const json& fixture_case() const { return llama2_fixture()["cases"][std::get<1>(GetParam())]; }
  std::string text() const { return fixture_case()["text"].get<std::string>(); }
  std::vector<int> ids() const { return fixture_case()["ids_without_bos"].get<std::vector<int>>(); }
};

TEST_P(Llama2Case, Ids) {
  EXPECT_EQ(tok().encode(text()), ids());
  // BOS is added by the caller: ids_with_bos is [bos] + ids.
  std::vector<int> with_bos = {tok().bos_id};
  const auto encoded = tok().encode(text());
  with_bos.insert(with_bos.end(), encoded.begin(), encoded.end());
  EXPECT_EQ(with_bos, fixture_case()["ids_with_bos"].get<std::vector<int>>());
}

TEST_P(Llama2Case, TokenBytesMatchPieces) {
  const auto pieces = fixture_case()["pieces"].get<std::vector<std::string>>();
  const auto expected_ids = ids();
  ASSERT_EQ(pieces.size(), expected_ids.size());
  for (size_t i = 0; i < pieces.size(); ++i)
    EXPECT_EQ(tok().token_bytes(expected_ids[i]), sentencepiece_piece_to_bytes(pieces[i])) << "piece " << i;
}

TEST_P(Llama2Case, DecodeRoundTrip) {
  const std::string decoded = fixture_case()["decoded"].get<std::string>();
  EXPECT_EQ(tok().decode(ids()), decoded);
  // BOS in front changes nothing once specials are skipped, and does not count as the
  // first piece whose leading space is dropped.
  std::vector<int> with_bos = fixture_case()["ids_with_bos"].get<std::vector<int>>();
  EXPECT_EQ(tok().decode(with_bos, /*skip_special=*/true), decoded);
}

TEST_P(Llama2Case, StreamingDecodeGivesValidChunks) {
  std::string joined;
  for (const std::string& chunk : stream_decode(tok(), ids())) {
    EXPECT_TRUE(valid_utf8(chunk)) << "chunk is not valid UTF-8";
    joined += chunk;
  }
  EXPECT_EQ(joined, fixture_case()["decoded"].get<std::string>());
}

INSTANTIATE_TEST_SUITE_P(Fixture, Llama2Case,
                         ::testing::Combine(::testing::ValuesIn(kLlama2Loaders),
                                            ::testing::ValuesIn(llama2_case_indices())),
                         [](const auto& info) {
                           const int i = std::get<1>(info.param);
                           return test_name(std::get<0>(info.param)) + "_" + std::to_string(i) + "_" +
                                  test_name(llama2_fixture()["cases"][i]["category"].get<std::string>());
                         });

class Llama2Loader : public ::testing::TestWithParam<const char*> {
 protected:
  const cpuchat::Tokenizer& tok() const { return tokenizer(GetParam()); }
};

TEST_P(Llama2Loader, Metadata) {
  EXPECT_EQ(tok().vocab_size(), 32000);
  EXPECT_EQ(tok().bos_id, 1);
  EXPECT_EQ(tok().eos_ids, std::vector<int>{2});
  EXPECT_EQ(tok().chat_format, cpuchat::ChatFormat::Llama2);
  EXPECT_TRUE(tok().strip_leading_space_on_decode);
  EXPECT_EQ(tok().special_id("<s>"), std::optional<int>(1));
  EXPECT_EQ(tok().special_id("</s>"), std::optional<int>(2));
  EXPECT_TRUE(tok().is_special(1));
  EXPECT_FALSE(tok().is_special(15043));
  EXPECT_EQ(tok().token_bytes(13), "\n");  // <0x0A>
}

TEST_P(Llama2Loader, SampleSentenceFromStoriesExpected) {
  const json& sample = stories_expected()["tokenize_llama2_32000"];
  EXPECT_EQ(tok().encode(sample["text"].get<std::string>()), sample["ids_without_bos"].get<std::vector<int>>());
}

TEST_P(Llama2Loader, ParseSpecialSplitsOnControlText) {
  // Without parse_special "<s>" is plain text (the fixture); with it, the control id, and
  // each text part is encoded on its own (with its dummy prefix), as Meta's code does.
  const auto ids = tok().encode("<s>[INST] Hi [/INST]</s>", /*parse_special=*/true);
  std::vector<int> expected = {1};
  const auto middle = tok().encode("[INST] Hi [/INST]");
  expected.insert(expected.end(), middle.begin(), middle.end());
  expected.push_back(2);
  EXPECT_EQ(ids, expected);
}

INSTANTIATE_TEST_SUITE_P(Loaders, Llama2Loader, ::testing::ValuesIn(kLlama2Loaders),
                         [](const auto& info) { return test_name(info.param); });

// Random text (whitespace runs included: Llama 2 does not collapse them): the score-BPE
// implementations must reproduce libsentencepiece exactly.
TEST(Llama2, ScoreBpeAgreesWithSentencePieceOnMixedText) {
  const std::vector<std::string> alphabet = {"a",    "Z",           "é",   "e\xCC\x81", "ß",      "'",
                                             "'s",   " ",           "  ",  "   ",       "\t",     "\n",
                                             "\r\n", "\xC2\xA0",    "0",   "12",        "!",      "?!",
                                             "...",  "#",           "(",   "\"",        "-",      "你",
                                             "好",   "한",          "Я",   "😀",         "🇺🇸",     "\x1b",
                                             "ﬁ",    "½",           "①",   "▁",         "<s>",    "</s>",
                                             "the",  " the",        "ing", "tion",      "[INST]", "\xE2\x80\x8A",
                                             "𝔘",    "\xEF\xBF\xBD"};
  std::vector<std::string> corpus;
  for (const json& c : llama2_fixture()["cases"]) corpus.push_back(c["text"].get<std::string>());
  std::mt19937 rng(99);
  for (int n = 0; n < 400; ++n) {
    std::string s;
    const int length = 1 + rng() % 30;
    for (int k = 0; k < length; ++k) s += alphabet[rng() % alphabet.size()];
    corpus.push_back(s);
  }
  corpus.push_back(std::string(2000, ' ') + "x");
  const auto& reference = spm_reference("models/llama2c/tokenizer.model");  // libsentencepiece
  for (const char* name : {"llama2-spm", "llama2-bin", "llama2-json", "llama2-gguf"}) {
    int mismatches = 0;
    for (const std::string& s : corpus) {
      const auto expected = spm_encode(reference, s);
      const auto got = tokenizer(name).encode(s);
      if (got != expected) {
        ++mismatches;
        ADD_FAILURE() << name << " differs on '" << s << "'";
      }
      EXPECT_EQ(tokenizer(name).decode(got), tokenizer("llama2-spm").decode(expected));
    }
    EXPECT_EQ(mismatches, 0) << name;
  }
}

// ---- tok512 (stories260K) ----

class Tok512Loader : public ::testing::TestWithParam<const char*> {
 protected:
  const cpuchat::Tokenizer& tok() const { return tokenizer(GetParam()); }
};

TEST_P(Tok512Loader, SampleSentence) {
  const json& sample = stories_expected()["tokenize_tok512"];
  EXPECT_EQ(tok().encode(sample["text"].get<std::string>()), sample["ids_without_bos"].get<std::vector<int>>());
}

TEST_P(Tok512Loader, GreedyStoryDecodes) {
  const json& greedy = stories_expected()["greedy_from_bos"];
  const auto ids = greedy["token_ids"].get<std::vector<int>>();  // starts with BOS
  const std::string text = greedy["text"].get<std::string>();
  EXPECT_EQ(tok().decode(ids, /*skip_special=*/true), text);
  std::vector<int> without_bos(ids.begin() + 1, ids.end());
  std::string joined;
  for (const std::string& chunk : stream_decode(tok(), without_bos)) joined += chunk;
  EXPECT_EQ(joined, text);
  // And it re-encodes to the same ids.
  EXPECT_EQ(tok().encode(text), without_bos);
}

TEST_P(Tok512Loader, Metadata) {
  EXPECT_EQ(tok().vocab_size(), 512);
  EXPECT_EQ(tok().bos_id, 1);
  EXPECT_EQ(tok().eos_ids, std::vector<int>{2});
  EXPECT_EQ(tok().chat_format, cpuchat::ChatFormat::Plain);
}

TEST_P(Tok512Loader, PlainChatIsBosPlusText) {
  const json& sample = stories_expected()["tokenize_tok512"];
  std::vector<int> expected = {1};
  const auto ids = sample["ids_without_bos"].get<std::vector<int>>();
  expected.insert(expected.end(), ids.begin(), ids.end());
  EXPECT_EQ(cpuchat::encode_chat(tok(), {{"user", sample["text"].get<std::string>()}}), expected);
}

INSTANTIATE_TEST_SUITE_P(Loaders, Tok512Loader, ::testing::ValuesIn(kTok512Loaders),
                         [](const auto& info) { return test_name(info.param); });

// tok512.model collapses whitespace runs (remove_extra_whitespaces), and so does our
// tokenizer.model reader; the .bin / .json / GGUF loaders keep them (like llama2.c). Text
// with single inner spaces must agree exactly.
TEST(Tok512, ScoreBpeAgreesWithSentencePieceOnSingleSpacedText) {
  const std::vector<std::string> words = {"Once",  "upon",    "a",    "time,", "Lily",      "loved", "the",
                                          "park.", "\"Hi!\"", "said", "Tom.",  "big",       "red",   "ball",
                                          "😀",     "café",    "123",  "don't", "sky\nblue", "x"};
  std::mt19937 rng(7);
  const auto& reference = spm_reference("models/llama2c/tok512.model");  // libsentencepiece
  int mismatches = 0;
  for (int n = 0; n < 300; ++n) {
    std::string s;
    const int length = 1 + rng() % 12;
    for (int k = 0; k < length; ++k) s += (k ? " " : "") + words[rng() % words.size()];
    for (const char* name : {"tok512-spm", "tok512-bin", "tok512-json", "tok512-gguf"}) {
      if (tokenizer(name).encode(s) != spm_encode(reference, s)) {
        ++mismatches;
        ADD_FAILURE() << name << " differs on '" << s << "'";
      }
    }
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(Tok512, RunsOfSpacesAreTheDocumentedDifference) {
  const std::string text = "a  b";
  // sentencepiece (and our tokenizer.model reader) collapses "  " to one space; the
  // tokenizer.bin score BPE keeps both.
  EXPECT_EQ(spm_encode(spm_reference("models/llama2c/tok512.model"), text), tokenizer("tok512-spm").encode("a b"));
  EXPECT_EQ(tokenizer("tok512-spm").encode(text), tokenizer("tok512-spm").encode("a b"));
  EXPECT_NE(tokenizer("tok512-bin").encode(text), tokenizer("tok512-bin").encode("a b"));
  EXPECT_EQ(tokenizer("tok512-bin").decode(tokenizer("tok512-bin").encode(text)), text);
}

}  // namespace
