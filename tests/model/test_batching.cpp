// Batching on the real model: a request gives the same tokens whether it runs alone or
// shares every step with seven others, and the compact KV caches (bf16, int8) agree with
// the exact fp32 cache on the fixture sequences and on the trained stories260K story.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cpuchat/engine.h"

using namespace cpuchat;
using nlohmann::json;

namespace {

const std::string kShared = CPUCHAT_SHARED_DIR;

std::unique_ptr<Engine> load(const std::string& dir, Backend backend, KVType kv, int slots = 8) {
  LoadOptions o;
  o.model_path = kShared + "/models/" + dir;
  o.backend = backend;
  o.threads = 2;
  o.kv_type = kv;
  o.batch.slots = slots;
  o.require_tokenizer = false;
  return Engine::load(o);
}

GenerateRequest sampled(std::vector<int> prompt, uint64_t seed) {
  GenerateRequest r;
  r.prompt_ids = std::move(prompt);
  r.max_tokens = 40;
  r.sampling.temperature = 0.9f;
  r.sampling.seed = seed;
  r.ignore_eos = true;
  r.cache_prompt = false;
  return r;
}

// The same seeded request alone, then in a batch with 7 others (different prompts, lengths
// and seeds, submitted together so they share the steps).
std::pair<std::vector<int>, std::vector<int>> alone_and_batched(Engine& e) {
  const GenerateRequest probe = sampled({1, 403, 407, 261, 378}, 42);
  const std::vector<int> alone = e.submit(probe)->wait().ids;
  std::vector<std::shared_ptr<Generation>> gens;
  for (int i = 0; i < 7; ++i) {
    std::vector<int> p = {1};
    for (int k = 0; k <= 3 * i; ++k) p.push_back(260 + (37 * k + 11 * i) % 200);
    gens.push_back(e.submit(sampled(p, 100 + i)));
  }
  auto probe_gen = e.submit(probe);
  const GenerateResult batched = probe_gen->wait();
  for (auto& g : gens) g->wait();
  EXPECT_GT(batched.metrics.mean_batch_size, 4.0) << "the probe did not share its steps";
  return {alone, batched.ids};
}

TEST(Batching, Int4TokensAreIdenticalAloneOrBatchedWithSevenOthers) {
  for (KVType kv : {KVType::BF16, KVType::FP32}) {
    auto e = load("hf/stories260K", Backend::INT4, kv);
    auto [alone, batched] = alone_and_batched(*e);
    EXPECT_EQ(alone.size(), 40u);
    EXPECT_EQ(alone, batched) << "kv " << kv_type_name(kv);
  }
}

TEST(Batching, TorchBackendsReportHowOftenTheyAgree) {
  // libtorch picks other matmul kernels for 1 row than for 8, so bf16/fp32 weights are not
  // bit-exact across batch composition; this records how close they stay (not a contract).
  for (Backend b : {Backend::FP32, Backend::BF16}) {
    auto e = load("hf/stories260K", b, KVType::FP32);
    auto [alone, batched] = alone_and_batched(*e);
    size_t same = 0;
    while (same < alone.size() && same < batched.size() && alone[same] == batched[same]) ++same;
    std::printf("%s: first %zu of %zu sampled tokens identical alone vs batched\n", backend_name(b).c_str(), same, alone.size());
    EXPECT_GE(same, 1u);
  }
}

struct Agreement {
  double top1 = 0, max_abs_delta = 0;
};

Agreement compare(Engine& ref, Engine& other, const std::vector<int>& ids) {
  const auto a = ref.logits(ids), b = other.logits(ids);
  const int vocab = ref.info().vocab_size;
  Agreement g;
  int same = 0;
  for (size_t p = 0; p < ids.size(); ++p) {
    auto ra = a.begin() + long(p * vocab), rb = b.begin() + long(p * vocab);
    same += std::max_element(ra, ra + vocab) - ra == std::max_element(rb, rb + vocab) - rb;
    for (int v = 0; v < vocab; ++v) g.max_abs_delta = std::max(g.max_abs_delta, double(std::fabs(ra[v] - rb[v])));
  }
  g.top1 = double(same) / double(ids.size());
  return g;
}

std::vector<std::vector<int>> fixture_sequences(const std::string& file) {
  std::ifstream in(kShared + "/fixtures/" + file);
  const json fx = json::parse(in);
  std::vector<std::vector<int>> out;
  for (const json& s : fx["sequences"]) out.push_back(s["token_ids"].get<std::vector<int>>());
  return out;
}

TEST(KVCacheTypes, Bf16AndInt8AgreeWithFp32OnFixturesAndTheStory) {
  struct Model { const char* dir; const char* fixture; };
  for (const Model& m : {Model{"hf/stories260K", "logits_stories260K.json"},
                         Model{"hf/llama31-tiny-random", "logits_llama31-tiny-random.json"}}) {
    auto fp32 = load(m.dir, Backend::FP32, KVType::FP32, 1);
    std::vector<std::vector<int>> seqs = fixture_sequences(m.fixture);
    if (std::string(m.dir) == "hf/stories260K") {
      std::ifstream in(kShared + "/models/stories260K.expected.json");
      seqs.push_back(json::parse(in)["greedy_from_bos"]["token_ids"].get<std::vector<int>>());
    }
    for (KVType kv : {KVType::BF16, KVType::INT8}) {
      auto other = load(m.dir, Backend::FP32, kv, 1);
      int64_t agree_rows = 0, rows = 0;
      double worst = 0;
      for (const auto& ids : seqs) {
        Agreement g = compare(*fp32, *other, ids);
        agree_rows += std::llround(g.top1 * double(ids.size()));
        rows += int64_t(ids.size());
        worst = std::max(worst, g.max_abs_delta);
      }
      const double top1 = double(agree_rows) / double(rows);
      std::printf("%s kv %s: top-1 agreement with fp32 KV %.4f over %lld positions, max |dlogit| %.5f\n", m.dir,
                  kv_type_name(kv).c_str(), top1, (long long)rows, worst);
      EXPECT_GE(top1, 0.99) << m.dir << " " << kv_type_name(kv);
      EXPECT_GT(worst, 0.0) << "the cache type made no difference: is it really " << kv_type_name(kv) << "?";
    }
  }
}

}  // namespace
