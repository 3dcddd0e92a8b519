// `cpuchat bench --synthetic tiny`: the JSON, Markdown and SVG a benchmark run writes have
// the documented structure, and their numbers are consistent with each other.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/run_process.h"

using nlohmann::json;
using cpuchat::test::run_process;
namespace fs = std::filesystem;

namespace {

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(BenchCli, TinySyntheticRunWritesAllThreeOutputs) {
  const fs::path dir = fs::temp_directory_path() / ("cpuchat_bench_" + std::to_string(getpid()));
  fs::create_directories(dir);
  auto r = run_process({CPUCHAT_BINARY, "bench", "--synthetic", "tiny", "--backends", "bf16,int4", "--threads", "1,2",
                        "--prompt-tokens", "16", "--gen-tokens", "8", "--repeat", "2", "--json", (dir / "b.json").string(),
                        "--svg", (dir / "b.svg").string(), "--markdown", (dir / "b.md").string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json report = json::parse(slurp(dir / "b.json"));
  const json& m = report["machine"];
  for (const char* key : {"cpu", "isa", "cores", "read_bandwidth_gbs"}) EXPECT_TRUE(m.contains(key)) << key;
  EXPECT_GT(m["read_bandwidth_gbs"]["1"].get<double>(), 0.1);
  EXPECT_GT(m["read_bandwidth_gbs"]["2"].get<double>(), 0.1);
  ASSERT_EQ(report["results"].size(), 4u);  // 2 backends x 2 thread counts
  for (const json& row : report["results"]) {
    for (const char* key : {"model", "backend", "threads", "prompt_tokens", "gen_tokens", "ttft_s", "prompt_tokens_per_s",
                            "decode_tokens_per_s", "weight_bytes_per_token", "roofline_fraction", "peak_rss_bytes",
                            "cost_per_million_tokens_usd"})
      EXPECT_TRUE(row.contains(key)) << key;
    EXPECT_EQ(row["model"], "tiny");
    EXPECT_EQ(row["prompt_tokens"], 16);
    EXPECT_GT(row["decode_tokens_per_s"].get<double>(), 0);
    EXPECT_GT(row["ttft_s"].get<double>(), 0);
    // The roofline fraction is decode speed over bandwidth / bytes per token, as documented.
    const double bw = m["read_bandwidth_gbs"][std::to_string(row["threads"].get<int>())];
    const double roofline = bw * 1e9 / row["weight_bytes_per_token"].get<double>();
    EXPECT_NEAR(row["roofline_fraction"].get<double>(), row["decode_tokens_per_s"].get<double>() / roofline, 1e-6);
    // Cost per 1M tokens = price / (tokens/s * 3600) * 1e6.
    EXPECT_NEAR(row["cost_per_million_tokens_usd"].get<double>(),
                row["price_per_hour_usd"].get<double>() / (row["decode_tokens_per_s"].get<double>() * 3600) * 1e6, 1e-9);
  }
  // int4 reads far fewer weight bytes per token than bf16, and its row carries the uplift.
  const json& bf16 = report["results"][0];
  const json& int4 = report["results"][2];
  EXPECT_EQ(bf16["backend"], "bf16");
  EXPECT_EQ(int4["backend"], "int4");
  EXPECT_LT(int4["weight_bytes_per_token"].get<double>() * 3, bf16["weight_bytes_per_token"].get<double>());
  EXPECT_NEAR(int4["decode_uplift"].get<double>(),
              int4["decode_tokens_per_s"].get<double>() / bf16["decode_tokens_per_s"].get<double>(), 1e-9);
  const std::string md = slurp(dir / "b.md"), svg = slurp(dir / "b.svg");
  EXPECT_NE(md.find("| model | backend | threads |"), std::string::npos) << md;
  EXPECT_EQ(std::count(md.begin(), md.end(), '\n'), 2 + 2 + 4) << md;  // machine line, blank, header, rule, 4 rows
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  EXPECT_EQ(std::count(svg.begin(), svg.end(), '\n') > 10, true);
  // Merging the run with itself keeps every row.
  r = run_process({CPUCHAT_BINARY, "bench", "--merge", (dir / "b.json").string() + "," + (dir / "b.json").string(), "--json",
                   (dir / "m.json").string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(slurp(dir / "m.json"))["results"].size(), 8u);
  fs::remove_all(dir);
}

TEST(BenchCli, SingleThreadCountWithoutOneThreadStillWritesMarkdown) {
  const fs::path md = fs::temp_directory_path() / ("cpuchat_bench_2t_" + std::to_string(getpid()) + ".md");
  auto r = run_process({CPUCHAT_BINARY, "bench", "--synthetic", "tiny", "--backends", "int4", "--threads", "2",
                        "--prompt-tokens", "8", "--gen-tokens", "4", "--repeat", "1", "--markdown", md.string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string text = slurp(md);
  EXPECT_NE(text.find("GB/s (2 threads)"), std::string::npos) << text;
  EXPECT_EQ(text.find("GB/s (1 thread)"), std::string::npos) << text;
  fs::remove(md);
}

TEST(BenchCli, BadArgumentsAreOneLineErrors) {
  auto r = run_process({CPUCHAT_BINARY, "bench", "--synthetic", "llama9-huge"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("unknown model shape"), std::string::npos) << r.err;
  r = run_process({CPUCHAT_BINARY, "bench", "--synthetic", "tiny", "--threads", "0"});
  EXPECT_EQ(r.exit_code, 2);
  r = run_process({CPUCHAT_BINARY, "bench", "--synthetic", "tiny", "--backends", "int8"});
  EXPECT_EQ(r.exit_code, 2);
  r = run_process({CPUCHAT_BINARY, "bench", "--merge", "/nonexistent.json"});
  EXPECT_EQ(r.exit_code, 1);
}

}  // namespace
