// The fp32 forward pass against the independent reference in shared/fixtures, for every
// model directory each fixture names, through the real CLI: `cpuchat logits` (one
// batched pass) and `cpuchat generate --temperature 0 --ignore-eos` (incremental decode).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/run_process.h"
#include "model/checkpoint.h"

using nlohmann::json;
using cpuchat::test::run_process;

namespace {

const std::string kShared = CPUCHAT_SHARED_DIR;

json read_json(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  return json::parse(in);
}

std::string id_list(const json& ids) {
  std::string s;
  for (const auto& id : ids) s += (s.empty() ? "" : ",") + std::to_string(id.get<int>());
  return s;
}

struct Case {
  std::string fixture;  // file in shared/fixtures
  std::string model;    // path under shared/models
};

std::ostream& operator<<(std::ostream& os, const Case& c) { return os << c.model; }

class LogitsFixture : public ::testing::TestWithParam<Case> {
 protected:
  json fixture() const { return read_json(kShared + "/fixtures/" + GetParam().fixture); }
  std::string model() const { return kShared + "/models/" + GetParam().model; }
  std::vector<std::string> base(const std::string& cmd) const {
    std::vector<std::string> argv = {CPUCHAT_BINARY, cmd, "--model", model(), "--backend", "fp32", "--threads", "2"};
    if (GetParam().model.find("llama2c/") == 0) {  // llama2.c checkpoints take the tokenizer separately
      argv.push_back("--tokenizer");
      argv.push_back(kShared + "/models/llama2c/tok512.bin");
    }
    return argv;
  }
};

bool close_enough(double yours, double ref, const json& tol) {
  return std::abs(yours - ref) <= tol.value("atol", 0.0) + tol.value("rtol", 0.0) * std::abs(ref);
}

TEST_P(LogitsFixture, EveryRecordedPositionMatches) {
  const json fx = fixture();
  const json& tol = fx["how_to_compare"]["tolerance"];
  for (const json& seq : fx["sequences"]) {
    auto argv = base("logits");
    argv.insert(argv.end(), {"--ids", id_list(seq["token_ids"]), "--top", "5"});
    auto r = run_process(argv);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const json out = json::parse(r.out);
    ASSERT_EQ(out["positions"].size(), seq["token_ids"].size());
    for (const json& want : seq["per_position"]) {
      const int pos = want["pos"];
      const json& got = out["positions"][pos];
      SCOPED_TRACE(seq["name"].get<std::string>() + " pos " + std::to_string(pos));
      EXPECT_EQ(got["argmax"], want["argmax"]);
      for (int i = 0; i < 5; ++i) {
        EXPECT_EQ(got["top"][i][0], want["top5"][i][0]) << "top5 id " << i;
        EXPECT_PRED3(close_enough, got["top"][i][1].get<double>(), want["top5"][i][1].get<double>(), tol["top5"])
            << "top5 logit " << i;
      }
      EXPECT_PRED3(close_enough, got["logsumexp"].get<double>(), want["logsumexp"].get<double>(), tol["logsumexp"]);
      EXPECT_PRED3(close_enough, got["l2_norm"].get<double>(), want["l2_norm"].get<double>(), tol["l2_norm"]);
    }
  }
}

TEST_P(LogitsFixture, GreedyDecodeWithKvCacheMatches) {
  const json fx = fixture();
  const json& greedy = fx["greedy"];
  auto argv = base("generate");
  argv.insert(argv.end(), {"--ids", id_list(greedy["prompt_ids"]), "--max-tokens", std::to_string(greedy["steps"].get<int>()),
                           "--temperature", "0", "--ignore-eos", "--json"});
  auto r = run_process(argv);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json out = json::parse(r.out);
  EXPECT_EQ(out["ids"], greedy["ids"]);
  EXPECT_EQ(out["finish_reason"], "length");
}

TEST_P(LogitsFixture, RopeFrequenciesMatch) {
  const json fx = fixture();
  const auto ck = cpuchat::load_checkpoint(model());
  const auto inv = cpuchat::rope_inv_freq(ck.config);
  ASSERT_EQ(inv.size(), fx["rope_inv_freq"].size());
  for (size_t i = 0; i < inv.size(); ++i) {
    const double want = fx["rope_inv_freq"][i];
    EXPECT_NEAR(inv[i], want, 1e-6 * std::abs(want)) << "pair " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures, LogitsFixture,
    ::testing::Values(Case{"logits_stories260K.json", "hf/stories260K"},
                      Case{"logits_stories260K.json", "llama2c/stories260K.bin"},
                      Case{"logits_stories260K.json", "gguf/stories260K.gguf"},
                      Case{"logits_llama3-tiny-random.json", "hf/llama3-tiny-random"},
                      Case{"logits_llama31-tiny-random.json", "hf/llama31-tiny-random"},
                      Case{"logits_llama31-tiny-random.json", "meta/llama31-tiny-random"}),
    [](const ::testing::TestParamInfo<Case>& info) {
      std::string name = info.param.model;
      for (char& c : name)
        if (!isalnum(static_cast<unsigned char>(c))) c = '_';
      return name;
    });

TEST(LogitsFixtureList, CoversEveryModelDirTheFixturesName) {
  // If a fixture gains a model directory, the list above must grow with it.
  std::set<std::string> covered = {"hf/stories260K", "llama2c/stories260K.bin", "gguf/stories260K.gguf",
                                   "hf/llama3-tiny-random", "hf/llama31-tiny-random", "meta/llama31-tiny-random"};
  for (const char* f : {"logits_stories260K.json", "logits_llama3-tiny-random.json", "logits_llama31-tiny-random.json"}) {
    // Named: a range-for over read_json(...)["model_dirs"] would walk a destroyed temporary
    // (found by the ASan build).
    const auto fixture = read_json(kShared + "/fixtures/" + f);
    for (const auto& dir : fixture["model_dirs"]) {
      const std::string d = dir.get<std::string>();
      const bool found = covered.count(d) || covered.count(d + ".bin") || covered.count(d + ".gguf");
      EXPECT_TRUE(found) << d;
    }
  }
}

}  // namespace
