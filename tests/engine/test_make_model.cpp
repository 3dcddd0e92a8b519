// `cpuchat make-model` writes a loadable HF directory of the exact shape asked for.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/run_process.h"
#include "model/checkpoint.h"
#include "model/make_model.h"

using cpuchat::test::run_process;
namespace fs = std::filesystem;

TEST(MakeModel, TinyShapeLoadsAndGenerates) {
  const fs::path dir = fs::temp_directory_path() / ("cpuchat_make_" + std::to_string(getpid()));
  auto r = run_process({CPUCHAT_BINARY, "make-model", "--shape", "tiny", "--out", dir.string(), "--seed", "3"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto ck = cpuchat::load_checkpoint(dir.string());  // validates every shape against config.json
  const auto want = cpuchat::model_shape("tiny");
  EXPECT_EQ(ck.config.dim, want.dim);
  EXPECT_EQ(ck.config.n_layers, want.n_layers);
  EXPECT_EQ(ck.config.vocab_size, 128256);
  EXPECT_TRUE(ck.config.rope_scaling.enabled);
  // Random, not zero: values have the documented spread (std 0.02).
  const auto w = ck.get("model.layers.0.mlp.up_proj.weight").to(torch::kFloat32);
  EXPECT_NEAR(w.std().item<double>(), 0.02, 0.002);
  r = run_process({CPUCHAT_BINARY, "generate", "--model", dir.string(), "--ids", "128000,1,2", "--max-tokens", "4",
                   "--temperature", "0", "--ignore-eos", "--json", "--backend", "int4"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["ids"].size(), 4u);
  fs::remove_all(dir);
  r = run_process({CPUCHAT_BINARY, "make-model", "--shape", "llama5", "--out", dir.string()});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("unknown model shape"), std::string::npos);
}
