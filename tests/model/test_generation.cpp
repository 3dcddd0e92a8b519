// Generation through the engine API on the trained stories260K: greedy decoding
// reproduces the reference story, sampling is reproducible by seed, and stop strings,
// limits, cancellation and KV-cache prefix reuse behave as the server relies on.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "cpuchat/engine.h"

using namespace cpuchat;
using nlohmann::json;

namespace {

const std::string kShared = CPUCHAT_SHARED_DIR;

std::unique_ptr<Engine> load(Backend backend, int ctx = 0, KVType kv = KVType::FP32, int slots = 4) {
  LoadOptions o;
  o.model_path = kShared + "/models/hf/stories260K";
  o.backend = backend;
  o.ctx = ctx;
  o.threads = 2;
  o.kv_type = kv;  // the exact fp32 path unless a test asks for another
  o.batch.slots = slots;
  return Engine::load(o);
}

json expected() {
  std::ifstream in(kShared + "/models/stories260K.expected.json");
  return json::parse(in);
}

GenerateRequest greedy(std::vector<int> prompt, int max_tokens) {
  GenerateRequest r;
  r.prompt_ids = std::move(prompt);
  r.max_tokens = max_tokens;
  r.sampling.temperature = 0;
  r.ignore_eos = true;
  return r;
}

bool valid_utf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = s[i];
    const int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (int k = 1; k < n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 2) return false;
    i += n;
  }
  return true;
}

TEST(Generation, GreedyStoryFromBosMatchesTheReference) {
  auto engine = load(Backend::FP32);
  const json want = expected()["greedy_from_bos"];
  const auto ids = want["token_ids"].get<std::vector<int>>();  // BOS + 60 generated
  auto r = engine->new_session()->generate(greedy({ids[0]}, int(ids.size()) - 1));
  EXPECT_EQ(r.ids, std::vector<int>(ids.begin() + 1, ids.end()));
  EXPECT_EQ(r.text, want["text"].get<std::string>());
  EXPECT_EQ(r.finish_reason, "length");
}

TEST(Generation, StreamedTextAddsUpAndIsAlwaysValidUtf8) {
  auto engine = load(Backend::FP32);
  std::string streamed;
  int events = 0;
  auto r = engine->new_session()->generate(greedy({1}, 40), [&](const TokenEvent& ev) {
    EXPECT_TRUE(valid_utf8(ev.text));
    streamed += ev.text;
    ++events;
    return true;
  });
  EXPECT_EQ(streamed, r.text);
  EXPECT_GE(events, 40);
}

TEST(Generation, SameSeedSameOutputOtherSeedOtherOutput) {
  auto engine = load(Backend::FP32);
  auto run = [&](uint64_t seed) {
    GenerateRequest req = greedy({1}, 48);
    req.sampling.temperature = 1.0f;
    req.sampling.top_k = 0;
    req.sampling.top_p = 1.0f;
    req.sampling.min_p = 0.0f;
    req.sampling.seed = seed;
    return engine->new_session()->generate(req).ids;
  };
  EXPECT_EQ(run(7), run(7));
  EXPECT_NE(run(7), run(8));
}

TEST(Generation, StopStringEndsTheAnswerBeforeIt) {
  auto engine = load(Backend::FP32);
  const std::string story = expected()["greedy_from_bos"]["text"];
  GenerateRequest req = greedy({1}, 60);
  req.stop = {"Lily"};
  auto r = engine->new_session()->generate(req);
  EXPECT_EQ(r.finish_reason, "stop");
  EXPECT_EQ(r.text, story.substr(0, story.find("Lily")));
}

TEST(Generation, MaxTokensAndContextEndFinishWithLength) {
  auto engine = load(Backend::FP32, /*ctx=*/16);
  auto r = engine->new_session()->generate(greedy({1, 403, 407}, 5));
  EXPECT_EQ(r.ids.size(), 5u);
  EXPECT_EQ(r.finish_reason, "length");
  r = engine->new_session()->generate(greedy({1, 403, 407}, 1000));
  EXPECT_EQ(r.finish_reason, "length");
  EXPECT_EQ(r.ids.size(), 14u);  // positions 3..15 hold 13 fed tokens, plus the last one sampled
}

TEST(Generation, PromptThatFillsTheContextIsRejected) {
  auto engine = load(Backend::FP32, /*ctx=*/8);
  try {
    engine->new_session()->generate(greedy(std::vector<int>(8, 300), 4));
    FAIL() << "no ContextOverflow";
  } catch (const ContextOverflow& e) {
    EXPECT_EQ(e.prompt_tokens, 8);
    EXPECT_EQ(e.ctx, 8);
    EXPECT_NE(std::string(e.what()).find("8 tokens"), std::string::npos);
  }
}

TEST(Generation, CancelStopsWithinOneToken) {
  auto engine = load(Backend::FP32);
  int seen = 0;
  auto r = engine->new_session()->generate(greedy({1}, 50), [&](const TokenEvent&) { return ++seen < 3; });
  EXPECT_EQ(r.finish_reason, "cancelled");
  EXPECT_EQ(r.ids.size(), 3u);
}

TEST(Generation, FollowUpReusesTheCachedPrefixAndGivesTheSameAnswer) {
  auto engine = load(Backend::FP32);
  auto session = engine->new_session();
  auto first = session->generate(greedy({1, 403, 407, 261}, 20));
  EXPECT_EQ(first.metrics.prompt_tokens_processed, 4);
  // The next turn: everything so far plus a few new tokens.
  std::vector<int> next = {1, 403, 407, 261};
  next.insert(next.end(), first.ids.begin(), first.ids.end());
  next.insert(next.end(), {378, 432});
  auto second = session->generate(greedy(next, 20));
  EXPECT_EQ(second.metrics.prompt_tokens, int(next.size()));
  EXPECT_LE(second.metrics.prompt_tokens_processed, 3);  // the last answer token + 2 new ones
  GenerateRequest fresh_req = greedy(next, 20);
  fresh_req.cache_prompt = false;  // run the whole prompt, as a new conversation would
  auto fresh = engine->new_session()->generate(fresh_req);
  EXPECT_EQ(fresh.metrics.prompt_tokens_processed, int(next.size()));
  EXPECT_EQ(second.ids, fresh.ids);
}

TEST(Generation, Bf16AgreesWithFp32OnMostGreedyTokens) {
  auto fp32 = load(Backend::FP32), bf16 = load(Backend::BF16);
  const json seq = expected()["greedy_from_bos"];
  const auto ids = seq["token_ids"].get<std::vector<int>>();
  // Teacher-forced: compare the argmax at every position of the reference story.
  auto a = fp32->logits(ids), b = bf16->logits(ids);
  const int vocab = fp32->info().vocab_size;
  int agree = 0;
  for (size_t p = 0; p < ids.size(); ++p) {
    auto row_a = a.begin() + p * vocab, row_b = b.begin() + p * vocab;
    agree += std::max_element(row_a, row_a + vocab) - row_a == std::max_element(row_b, row_b + vocab) - row_b;
  }
  EXPECT_GE(agree, int(ids.size() * 9 / 10)) << agree << " of " << ids.size();
}

TEST(Generation, OutOfVocabularyPromptIsRejected) {
  auto engine = load(Backend::FP32);
  EXPECT_THROW(engine->new_session()->generate(greedy({1, 512}, 2)), std::invalid_argument);
  EXPECT_THROW(engine->new_session()->generate(greedy({}, 2)), std::invalid_argument);
  EXPECT_THROW(engine->logits({-1}), std::invalid_argument);
}

}  // namespace
