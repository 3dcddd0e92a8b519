// `cpuchat perplexity` on the trained stories260K: a story in its own style scores low, the
// same words shuffled score far higher, and the int4 backend stays close to fp32 (the
// accuracy report of the INT4 issue). Bad input is a one-line error.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "common/run_process.h"

using cpuchat::test::run_process;
namespace fs = std::filesystem;

namespace {

const std::string kModel = std::string(CPUCHAT_SHARED_DIR) + "/models/hf/stories260K";
const std::string kStory = std::string(CPUCHAT_SOURCE_DIR) + "/tests/data/tinystory.txt";

nlohmann::json perplexity(const std::string& text_file, const std::vector<std::string>& extra) {
  std::vector<std::string> argv = {CPUCHAT_BINARY, "perplexity", "--model", kModel, "--text", text_file, "--json", "--threads", "2"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  const auto r = run_process(argv);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return r.exit_code == 0 ? nlohmann::json::parse(r.out) : nlohmann::json{{"perplexity", -1.0}};
}

TEST(Perplexity, StoryScoresLowShuffledWordsHighInt4StaysClose) {
  const auto fp32 = perplexity(kStory, {"--backend", "fp32"});
  const double ppl_fp32 = fp32["perplexity"];
  std::cout << "fp32 perplexity " << ppl_fp32 << " over " << fp32["tokens"] << " tokens\n";
  EXPECT_GT(fp32["tokens"].get<int>(), 500);
  EXPECT_GT(ppl_fp32, 1.0);
  EXPECT_LT(ppl_fp32, 8.0);  // a 260K-parameter TinyStories model on TinyStories-style text

  // Same words, random order: the model must find it far less likely.
  std::ifstream in(kStory);
  std::vector<std::string> words;
  for (std::string w; in >> w;) words.push_back(w);
  std::shuffle(words.begin(), words.end(), std::mt19937(42));
  const fs::path shuffled = fs::temp_directory_path() / ("cpuchat_shuffled_" + std::to_string(getpid()) + ".txt");
  {
    std::ofstream out(shuffled);
    for (const auto& w : words) out << w << ' ';
  }
  const double ppl_shuffled = perplexity(shuffled.string(), {"--backend", "fp32"})["perplexity"];
  fs::remove(shuffled);
  EXPECT_GT(ppl_shuffled, 10 * ppl_fp32);

  for (const char* quant : {"q4g32", "q4c", "q4k"}) {
    const auto int4 = perplexity(kStory, {"--backend", "int4", "--quant", quant});
    const double ppl = int4["perplexity"];
    std::cout << "int4 " << quant << " perplexity " << ppl << " (" << 100 * (ppl / ppl_fp32 - 1) << " % over fp32)\n";
    EXPECT_EQ(int4["quant"], quant);
    EXPECT_GT(ppl, ppl_fp32 * 0.97);  // quantization does not make a model better by chance...
    EXPECT_LT(ppl, ppl_fp32 * 1.2);   // ...and costs it little
  }
  const double ppl_bf16 = perplexity(kStory, {"--backend", "bf16"})["perplexity"];
  EXPECT_NEAR(ppl_bf16, ppl_fp32, 0.01 * ppl_fp32);
}

// `cpuchat quant-eval`: fp32 against itself is exact, and the K-quant-class q4k moves the
// next-token distributions less than the symmetric q4g32 at the same 4.5 bits/weight.
TEST(QuantEval, FormatsAreRankedByTheirDistanceFromFp32) {
  const auto r = run_process({CPUCHAT_BINARY, "quant-eval", "--model", kModel, "--text", kStory, "--json", "--threads", "2",
                              "--formats", "fp32,bf16,q4g32,q4k"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::map<std::string, nlohmann::json> by;
  const nlohmann::json out = nlohmann::json::parse(r.out);
  for (const auto& row : out["results"]) by[row["format"].get<std::string>()] = row;
  ASSERT_EQ(by.size(), 4u);
  EXPECT_EQ(by["fp32"]["kl_divergence"].get<double>(), 0.0);
  EXPECT_EQ(by["fp32"]["top1_agreement"].get<double>(), 1.0);
  EXPECT_LT(by["bf16"]["kl_divergence"].get<double>(), 0.01);
  const double kl_g32 = by["q4g32"]["kl_divergence"], kl_k = by["q4k"]["kl_divergence"];
  std::cout << "KL vs fp32: q4g32 " << kl_g32 << ", q4k " << kl_k << "\n";
  EXPECT_GT(kl_k, 0.0);
  EXPECT_LT(kl_k, kl_g32);
  EXPECT_GT(by["q4k"]["top1_agreement"].get<double>(), 0.8);
  const auto bad = run_process({CPUCHAT_BINARY, "quant-eval", "--model", kModel, "--text", kStory, "--formats", "q5x"});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("q5x"), std::string::npos) << bad.err;
}

TEST(Perplexity, BadInputIsAOneLineError) {
  auto r = run_process({CPUCHAT_BINARY, "perplexity", "--model", kModel, "--text", "/nonexistent/text.txt"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("/nonexistent/text.txt: cannot open"), std::string::npos) << r.err;
  const fs::path empty = fs::temp_directory_path() / ("cpuchat_empty_" + std::to_string(getpid()) + ".txt");
  std::ofstream(empty).close();
  r = run_process({CPUCHAT_BINARY, "perplexity", "--model", kModel, "--text", empty.string()});
  fs::remove(empty);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("too little text"), std::string::npos) << r.err;
}

}  // namespace
