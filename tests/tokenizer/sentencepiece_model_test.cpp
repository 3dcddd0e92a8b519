// Our tokenizer.model reader (protobuf + score BPE + SentencePiece normalizer, no
// libsentencepiece) against libsentencepiece itself: Llama 2's tokenizer.model and
// tok512.model, plus variants of them with other NormalizerSpec / TrainerSpec settings,
// on the fixture strings and on random strings (whitespace runs, leading/trailing spaces,
// tabs, newlines, emoji, unknown characters, malformed UTF-8). Ids must match exactly.
// Also: malformed / unsupported models fail with one line naming the file, never crash.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <random>

#include "spm_reference.h"
#include "test_util.h"

using namespace tokenizer_test;
using nlohmann::json;

namespace {

const char* const kModelPaths[] = {"models/llama2c/tokenizer.model", "models/llama2c/tok512.model"};

std::string model_label(const std::string& path) {
  return path.find("tok512") != std::string::npos ? "tok512" : "llama2";
}

// Writes model bytes to a temporary tokenizer.model (removed when the object goes away).
class TempModel {
 public:
  explicit TempModel(const std::string& bytes, const std::string& name = "tokenizer.model") {
    static int counter = 0;
    dir_ = std::filesystem::temp_directory_path() /
           ("cpuchat_spm_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::create_directories(dir_);
    path_ = (dir_ / name).string();
    std::ofstream(path_, std::ios::binary) << bytes;
  }
  ~TempModel() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::filesystem::path dir_;
  std::string path_;
};

std::unique_ptr<cpuchat::Tokenizer> load_ours(const std::string& bytes) {
  TempModel file(bytes);
  return cpuchat::load_tokenizer(file.path());
}

// Every fixture text we have, for any SentencePiece vocabulary.
std::vector<std::string> fixture_texts() {
  std::vector<std::string> texts;
  for (const json& c : llama2_fixture()["cases"]) texts.push_back(c["text"].get<std::string>());
  texts.push_back(stories_expected()["tokenize_tok512"]["text"].get<std::string>());
  texts.push_back(stories_expected()["tokenize_llama2_32000"]["text"].get<std::string>());
  texts.push_back(stories_expected()["greedy_from_bos"]["text"].get<std::string>());
  return texts;
}

// Random strings from fragments chosen to stress the normalizer and the fallback paths.
std::vector<std::string> random_texts(unsigned seed, int count) {
  static const std::vector<std::string> fragments = {
      // words and punctuation
      "Once", "upon", "a", "time", "Lily", "the", "park", "ing", "tion", "don't", "'s", "café", ",", ".", "!", "?!",
      "\"", "(", "-", "...", "#", "0", "12", "345", "[INST]", "<<SYS>>",
      // whitespace: runs, tabs, newlines, other Unicode spaces (not collapsed by sentencepiece)
      " ", " ", " ", "  ", "   ", "     ", "\t", "\t\t", "\n", "\n\n", "\r\n", " \n ", " \t ", "\xC2\xA0",
      "\xE3\x80\x80", "\xE2\x80\x8A", "\x0B", "\x0C",
      // letters the small vocabulary lacks, emoji, CJK, combining marks
      "é", "e\xCC\x81", "ß", "Я", "你", "好", "한", "ᚠ", "𝔘", "😀", "🇺🇸", "👩‍💻", "ﬁ", "½", "①",
      // pieces' own spelling, control-piece lookalikes, replacement character, NUL / controls
      "▁", "▁▁", "<s>", "</s>", "<unk>", "<0x0A>", "\xEF\xBF\xBD", "\xEF\xBF\xBF", "\xEE\x80\x80", std::string(1, '\0'),
      "\x01", "\x1b", "\x7f",
      // malformed UTF-8: stray continuation, truncated, overlong, surrogate, > U+10FFFF, 0xFF
      "\x80", "\xC3", "\xE2\x96", "\xC0\xAF", "\xED\xA0\x80", "\xF4\x90\x80\x80", "\xFF", "\xF0\x9F\x98"};
  std::mt19937 rng(seed);
  std::vector<std::string> texts;
  for (int n = 0; n < count; ++n) {
    std::string s;
    if (rng() % 4 == 0) s += std::string(1 + rng() % 4, ' ');  // leading spaces
    const int length = 1 + rng() % 24;
    for (int k = 0; k < length; ++k) s += fragments[rng() % fragments.size()];
    if (rng() % 4 == 0) s += std::string(1 + rng() % 4, ' ');  // trailing spaces
    texts.push_back(s);
  }
  // Edge cases.
  for (const char* s : {"", " ", "  ", "\t", "\n", " a", "a ", " a ", "  a  b  ", "a\t b", "a \tb", "\n a", "a\n ",
                        " \n", "\n ", "▁", " ▁ ", "\xFF", " \xFF ", "\xC3\xA9\xC3", "😀 😀  😀"})
    texts.push_back(s);
  texts.push_back(std::string(2000, ' ') + "x" + std::string(1000, ' ') + "y" + std::string(500, ' '));
  texts.push_back(std::string(300, '\n'));
  std::string long_text;
  for (int k = 0; k < 3000; ++k) long_text += fragments[rng() % fragments.size()];
  texts.push_back(long_text);
  return texts;
}

std::string printable(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f || c >= 0x80) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02X", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out.size() > 300 ? out.substr(0, 300) + "..." : out;
}

// Compares our encoder with libsentencepiece on texts; reports the first few differences.
void expect_same_ids(const std::string& label, const cpuchat::Tokenizer& ours,
                     const sentencepiece::SentencePieceProcessor& reference, const std::vector<std::string>& texts) {
  int mismatches = 0;
  for (const std::string& text : texts) {
    const std::vector<int> expected = spm_encode(reference, text);
    const std::vector<int> got = ours.encode(text);
    if (got != expected && ++mismatches <= 5) {
      std::string e, g;
      for (int id : expected) e += " " + std::to_string(id);
      for (int id : got) g += " " + std::to_string(id);
      ADD_FAILURE() << label << ": differs on \"" << printable(text) << "\"\n  libsentencepiece:" << e
                    << "\n  ours:            " << g;
    }
  }
  EXPECT_EQ(mismatches, 0) << label << ": " << mismatches << " of " << texts.size() << " texts differ";
}

// ---- the shared models as they are ----

class SentencePieceModel : public ::testing::TestWithParam<const char*> {
 protected:
  std::string path() const { return GetParam(); }
  const sentencepiece::SentencePieceProcessor& reference() const { return spm_reference(path()); }
  const cpuchat::Tokenizer& ours() const {
    return tokenizer(model_label(path()) == "tok512" ? "tok512-spm" : "llama2-spm");
  }
};

TEST_P(SentencePieceModel, VocabularyMatchesReference) {
  ASSERT_EQ(ours().vocab_size(), reference().GetPieceSize());
  EXPECT_EQ(ours().bos_id, reference().bos_id());
  EXPECT_EQ(ours().eos_ids, std::vector<int>{reference().eos_id()});
  for (int id = 0; id < reference().GetPieceSize(); ++id) {
    const std::string piece = reference().IdToPiece(id);
    EXPECT_EQ(ours().is_special(id), reference().IsControl(id) || reference().IsUnknown(id)) << id;
    if (reference().IsControl(id) || reference().IsUnknown(id)) {
      EXPECT_EQ(ours().token_bytes(id), piece) << id;
      EXPECT_EQ(ours().special_id(piece), std::optional<int>(id)) << id;
    } else {
      EXPECT_EQ(ours().token_bytes(id), sentencepiece_piece_to_bytes(piece)) << id;
    }
  }
}

TEST_P(SentencePieceModel, FixtureTextsMatchReference) {
  expect_same_ids(path(), ours(), reference(), fixture_texts());
}

TEST_P(SentencePieceModel, RandomTextsMatchReference) {
  expect_same_ids(path(), ours(), reference(), random_texts(1234, 3000));
}

// Decoding is ours (Tokenizer::decode), but on text without <unk> it gives what
// libsentencepiece's decoder gives. Known difference, left out here: with
// remove_extra_whitespaces (tok512) libsentencepiece drops the leading "▁" of every piece
// until the text is non-empty, we only that of the first piece; normalized text never
// starts with two space marks unless the input itself has a literal U+2581.
TEST_P(SentencePieceModel, DecodeMatchesReferenceOnValidText) {
  int compared = 0;
  for (const std::string& text : random_texts(77, 500)) {
    if (text.find("\xE2\x96\x81") != std::string::npos) continue;
    const std::vector<int> ids = spm_encode(reference(), text);
    bool has_unk = false;
    for (int id : ids) has_unk = has_unk || reference().IsUnknown(id);
    if (has_unk) continue;
    std::string expected;
    ASSERT_TRUE(reference().Decode(ids, &expected).ok());
    EXPECT_EQ(ours().decode(ids, /*skip_special=*/true), expected) << printable(text);
    ++compared;
  }
  EXPECT_GT(compared, 300);
}

INSTANTIATE_TEST_SUITE_P(Shared, SentencePieceModel, ::testing::ValuesIn(kModelPaths),
                         [](const auto& info) { return model_label(info.param); });

// ---- variants: the same vocabularies with other settings ----

struct Variant {
  const char* name;
  std::function<std::string(const std::string&)> make;
};

const Variant kVariants[] = {
    {"no_dummy_prefix", [](const std::string& m) { return pb::with_normalizer(m, pb::int_field(3, 0)); }},
    {"remove_extra_whitespaces", [](const std::string& m) { return pb::with_normalizer(m, pb::int_field(4, 1)); }},
    {"keep_extra_whitespaces", [](const std::string& m) { return pb::with_normalizer(m, pb::int_field(4, 0)); }},
    {"no_dummy_prefix_remove_extra",
     [](const std::string& m) { return pb::with_normalizer(m, pb::int_field(3, 0) + pb::int_field(4, 1)); }},
    {"no_escape_whitespaces", [](const std::string& m) { return pb::with_normalizer(m, pb::int_field(5, 0)); }},
    // Normalizer defaults (add_dummy_prefix, remove_extra_whitespaces, escape_whitespaces all
    // true): the spec's fields are absent from the file.
    {"default_normalizer",
     [](const std::string& m) {
       std::string out;
       for (const auto& f : pb::split(m))
         out += f.number == 3 ? pb::bytes_field(3, pb::bytes_field(1, "identity")) : f.raw;
       return out;
     }},
    // No byte fallback: the byte pieces become control pieces (libsentencepiece refuses
    // BYTE pieces then); unknown characters give <unk>, one per run.
    {"no_byte_fallback",
     [](const std::string& m) {
       return pb::with_trainer(pb::edit_pieces(m,
                                               [](int, std::string&, float&, int& type) {
                                                 if (type == 6) type = 3;
                                               }),
                               pb::int_field(35, 0));
     }},
    // User-defined pieces are matched whole and never merged.
    {"user_defined",
     [](const std::string& m) {
       return pb::edit_pieces(m, [](int, std::string& text, float&, int& type) {
         if (text == "ing" || text == "\xE2\x96\x81the" || text == "ed" || text == "." || text == "\xE2\x96\x81" ||
             text == "ly")
           type = 4;
       });
     }},
    // Other merge priorities (reversed scores): the merge order must follow the scores.
    {"scores_reversed",
     [](const std::string& m) { return pb::edit_pieces(m, [](int, std::string&, float& score, int&) { score = -score; }); }},
};

class SentencePieceVariant : public ::testing::TestWithParam<std::tuple<const char*, int>> {};

TEST_P(SentencePieceVariant, MatchesReference) {
  const std::string path = std::get<0>(GetParam());
  const Variant& variant = kVariants[std::get<1>(GetParam())];
  const std::string bytes = variant.make(read_file(shared_path(path)));
  auto reference = spm_reference_from_bytes(bytes);
  ASSERT_NE(reference, nullptr) << "libsentencepiece rejects the " << variant.name << " variant";
  const auto ours = load_ours(bytes);
  ASSERT_EQ(ours->vocab_size(), reference->GetPieceSize());
  EXPECT_EQ(ours->bos_id, reference->bos_id());
  std::vector<std::string> texts = fixture_texts();
  for (std::string& t : random_texts(std::get<1>(GetParam()) + 5, 800)) texts.push_back(std::move(t));
  expect_same_ids(path + " " + variant.name, *ours, *reference, texts);
}

INSTANTIATE_TEST_SUITE_P(Variants, SentencePieceVariant,
                         ::testing::Combine(::testing::ValuesIn(kModelPaths),
                                            ::testing::Range(0, static_cast<int>(std::size(kVariants)))),
                         [](const auto& info) {
                           return model_label(std::get<0>(info.param)) + "_" + kVariants[std::get<1>(info.param)].name;
                         });

// ---- the normalizer, spelled out (tok512 has remove_extra_whitespaces, Llama 2 not) ----

TEST(SentencePieceModelNormalizer, Tok512CollapsesAndStripsSpacesOnly) {
  const auto& tok = tokenizer("tok512-spm");
  EXPECT_EQ(tok.encode("  Once   upon  a time  "), tok.encode("Once upon a time"));
  EXPECT_EQ(tok.encode("   "), std::vector<int>{});
  EXPECT_NE(tok.encode("a\tb"), tok.encode("a b"));      // tabs are not spaces here
  EXPECT_NE(tok.encode("a\n\nb"), tok.encode("a\nb"));   // nor are newlines
  EXPECT_NE(tok.encode("a \n b"), tok.encode("a\nb"));   // spaces around a newline stay
  EXPECT_EQ(tok.encode("a \n  b"), tok.encode("a \n b"));
}

TEST(SentencePieceModelNormalizer, Llama2KeepsEverySpace) {
  const auto& tok = tokenizer("llama2-spm");
  EXPECT_NE(tok.encode("a  b"), tok.encode("a b"));
  EXPECT_NE(tok.encode(" a"), tok.encode("a"));
  EXPECT_EQ(tok.decode(tok.encode("  a  b  ")), "  a  b  ");
}

TEST(SentencePieceModelNormalizer, MalformedUtf8BecomesReplacementCharacterPerByte) {
  const auto& tok = tokenizer("llama2-spm");
  // "\xE2\x96" is one maximal subpart but two malformed bytes for sentencepiece.
  EXPECT_EQ(tok.encode("a\xE2\x96"), tok.encode("a\xEF\xBF\xBD\xEF\xBF\xBD"));
  EXPECT_EQ(tok.encode("\xFF"), tok.encode("\xEF\xBF\xBD"));
}

// ---- errors: one line naming the file, never a crash ----

class SentencePieceModelErrors : public ::testing::Test {
 protected:
  static std::string model(const char* which = "models/llama2c/tok512.model") {
    return read_file(shared_path(which));
  }

  // Loading must throw std::runtime_error: one line, naming the file, containing problem.
  static void expect_error(const std::string& bytes, const std::string& problem) {
    TempModel file(bytes);
    try {
      cpuchat::load_tokenizer(file.path());
      ADD_FAILURE() << "no error (expected '" << problem << "')";
    } catch (const std::runtime_error& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find(file.path()), std::string::npos) << message;
      EXPECT_NE(message.find(problem), std::string::npos) << message;
      EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    }
  }
};

TEST_F(SentencePieceModelErrors, UnigramModel) {
  const std::string unigram = pb::with_trainer(model(), pb::int_field(3, 1));
  ASSERT_NE(spm_reference_from_bytes(unigram), nullptr);  // a valid model, just not BPE
  expect_error(unigram, "unigram SentencePiece models are not supported");
}

TEST_F(SentencePieceModelErrors, ModelTypeMissingMeansUnigram) {
  std::string no_trainer;
  for (const auto& f : pb::split(model()))
    if (f.number != 2) no_trainer += f.raw;
  expect_error(no_trainer, "unigram SentencePiece models are not supported");
}

TEST_F(SentencePieceModelErrors, WordAndCharModels) {
  expect_error(pb::with_trainer(model(), pb::int_field(3, 3)), "word SentencePiece models are not supported");
  expect_error(pb::with_trainer(model(), pb::int_field(3, 4)), "char SentencePiece models are not supported");
  expect_error(pb::with_trainer(model(), pb::int_field(3, 9)), "model_type 9 is not supported");
}

TEST_F(SentencePieceModelErrors, PrecompiledNormalizationRule) {
  expect_error(pb::with_normalizer(model(), pb::bytes_field(1, "nmt_nfkc") + pb::bytes_field(2, "\x08\0\0\0abcdefgh")),
               "normalization rule 'nmt_nfkc' is not supported");
}

TEST_F(SentencePieceModelErrors, WhitespaceAsSuffix) {
  expect_error(pb::with_trainer(model(), pb::int_field(24, 1)), "treat_whitespace_as_suffix");
}

TEST_F(SentencePieceModelErrors, UnusedPiece) {
  expect_error(pb::edit_pieces(model(), [](int id, std::string&, float&, int& type) { if (id == 300) type = 5; }),
               "UNUSED");
}

TEST_F(SentencePieceModelErrors, UnknownPieceType) {
  expect_error(pb::edit_pieces(model(), [](int id, std::string&, float&, int& type) { if (id == 300) type = 9; }),
               "unknown type 9");
}

TEST_F(SentencePieceModelErrors, ByteFallbackOffWithBytePieces) {
  const std::string bad = pb::with_trainer(model(), pb::int_field(35, 0));
  EXPECT_EQ(spm_reference_from_bytes(bad), nullptr);
  expect_error(bad, "byte_fallback is false");
}

TEST_F(SentencePieceModelErrors, DuplicatePiece) {
  const std::string bad = model() + pb::bytes_field(1, pb::piece("\xE2\x96\x81" "the", -1.0f, 1));
  const std::string good = model() + pb::bytes_field(1, pb::piece("<s>", -1.0f, 1));  // normal vs control: allowed
  EXPECT_EQ(spm_reference_from_bytes(bad), nullptr);
  expect_error(bad, "defined twice");
  EXPECT_EQ(load_ours(good)->vocab_size(), 513);
}

TEST_F(SentencePieceModelErrors, NoUnknownPiece) {
  const std::string bad = pb::edit_pieces(model(), [](int, std::string&, float&, int& type) { if (type == 2) type = 1; });
  EXPECT_EQ(spm_reference_from_bytes(bad), nullptr);
  expect_error(bad, "no UNKNOWN piece");
}

TEST_F(SentencePieceModelErrors, EmptyPiece) {
  const std::string bad = model() + pb::bytes_field(1, pb::piece("", 0.0f, 1));
  EXPECT_EQ(spm_reference_from_bytes(bad), nullptr);
  expect_error(bad, "is empty");
}

TEST_F(SentencePieceModelErrors, WrongWireType) {
  // pieces (field 1) as a varint
  expect_error(std::string("\x0A\x00", 2) + pb::int_field(1, 5), "wire type");
  // score as a varint inside a piece
  expect_error(pb::bytes_field(1, pb::bytes_field(1, "a") + pb::int_field(2, 1)), "SentencePiece.score");
}

TEST_F(SentencePieceModelErrors, MalformedProtobuf) {
  expect_error(std::string("\x0A\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\x01", 12), "over-long");
  expect_error(std::string("\x0A\x85", 2), "truncated");
  expect_error(std::string("\x0A\x05\x0A\x10", 4), "runs past the end");
  expect_error(std::string("\x0A\x00\x0B", 3), "wire type 3");
  expect_error(std::string("\x0A\x00\x00", 3), "bad field number");
}

// Every truncation of tok512.model either fails cleanly or (cut exactly between fields
// of the normalizer spec) loads and then agrees with libsentencepiece.
TEST_F(SentencePieceModelErrors, EveryTruncationFailsCleanly) {
  const std::string full = model();
  const std::vector<std::string> texts = random_texts(5, 20);
  int loaded = 0;
  for (size_t length = 1; length < full.size(); ++length) {
    const std::string cut = full.substr(0, length);
    TempModel file(cut);
    std::unique_ptr<cpuchat::Tokenizer> ours;
    try {
      ours = cpuchat::load_tokenizer(file.path());
    } catch (const std::runtime_error& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find(file.path()), std::string::npos) << message;
      EXPECT_EQ(message.find('\n'), std::string::npos) << message;
      continue;
    }
    ++loaded;
    auto reference = spm_reference_from_bytes(cut);
    ASSERT_NE(reference, nullptr) << "we load a truncation libsentencepiece rejects, length " << length;
    expect_same_ids("truncated to " + std::to_string(length), *ours, *reference, texts);
  }
  EXPECT_LT(loaded, 40);
}

// Random byte corruption: never a crash; when both load, both encode alike.
TEST_F(SentencePieceModelErrors, CorruptedBytesNeverCrash) {
  const std::string full = model();
  const std::vector<std::string> texts = random_texts(6, 10);
  std::mt19937 rng(2024);
  int loaded = 0, rejected = 0;
  for (int n = 0; n < 400; ++n) {
    std::string bad = full;
    const int flips = 1 + rng() % 3;
    for (int k = 0; k < flips; ++k) bad[rng() % bad.size()] = static_cast<char>(rng() % 256);
    TempModel file(bad);
    std::unique_ptr<cpuchat::Tokenizer> ours;
    try {
      ours = cpuchat::load_tokenizer(file.path());
    } catch (const std::runtime_error& e) {
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
      ++rejected;
      continue;
    }
    ++loaded;
    if (auto reference = spm_reference_from_bytes(bad))
      expect_same_ids("corruption " + std::to_string(n), *ours, *reference, texts);
  }
  EXPECT_GT(loaded, 0);
  EXPECT_GT(rejected, 0);
}

}  // namespace
