// The INT4 backend through libtorch: the custom operator against fp32 torch::linear within
// a bound derived from the quantization steps, and end to end on the trained stories260K.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "cpuchat/engine.h"
#include "model/model.h"

using namespace cpuchat;

namespace {

const std::string kShared = CPUCHAT_SHARED_DIR;

// Worst-case |y_int4 - y_fp32| per output: each weight moves by at most one int4 step of
// its group (amax/7), each activation by at most half an int8 step of its block (amax/127/2).
torch::Tensor error_bound(const torch::Tensor& x, const torch::Tensor& w, int64_t group) {
  const int64_t K = w.size(1), G = (K + group - 1) / group;
  auto pad = [&](const torch::Tensor& t) { return torch::constant_pad_nd(t, {0, G * group - K}); };
  auto wg = pad(w).view({w.size(0), G, group}), xg = pad(x).view({x.size(0), G, group});
  auto w_step = std::get<0>(wg.abs().max(-1)) / 7.0;            // [N, G]
  auto x_step = std::get<0>(xg.abs().max(-1)) / 127.0 / 2.0;    // [M, G]
  auto w_err = torch::matmul(xg.abs().sum(-1), w_step.t());      // Σ |x| · step_w      [M, N]
  auto x_err = torch::matmul(x_step, (wg.abs().sum(-1) + w_step * group).t());  // Σ |ŵ| · step_x
  return w_err + x_err + 1e-4;
}

TEST(Int4Op, MatchesFp32LinearWithinTheQuantizationBound) {
  torch::manual_seed(3);
  for (auto [M, N, K] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{1, 64, 64}, {1, 172, 64}, {7, 64, 172}, {33, 513, 100}, {128, 96, 4096}}) {
    SCOPED_TRACE("M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K));
    auto w = torch::randn({N, K}) * 0.05, x = torch::randn({M, K});
    auto want = torch::linear(x, w);
    auto got = make_int4_linear(int4_pack(w, QuantScheme::Q4G32))->forward(x);
    ASSERT_EQ(got.sizes(), want.sizes());
    auto excess = ((got - want).abs() - error_bound(x, w, 32)).max().item<float>();
    EXPECT_LE(excess, 0.0f);
    // Per-channel scales: the group is the whole row.
    auto got_c = make_int4_linear(int4_pack(w, QuantScheme::Q4C))->forward(x);
    excess = ((got_c - want).abs() - error_bound(x, w, K)).max().item<float>();
    EXPECT_LE(excess, 0.0f);
    // And typical, not just worst-case: for Gaussian weights a group's int4 step is about
    // 2σ/7 and the rounding error's std is step/√12 ≈ 0.08σ, so ~8–10 % relative error.
    EXPECT_LT(((got - want).norm() / want.norm()).item<float>(), 0.15f);
  }
}

TEST(Int4Op, BadShapesAreErrorsNotCrashes) {
  auto lin = make_int4_linear(int4_pack(torch::randn({16, 32}), QuantScheme::Q4G32));
  EXPECT_THROW(lin->forward(torch::randn({1, 31})), c10::Error);
  EXPECT_THROW(make_int4_linear(int4_pack(torch::randn({16}), QuantScheme::Q4G32)), c10::Error);
}

double top1_agreement(Engine& a, Engine& b, const std::vector<int>& ids) {
  const int vocab = a.info().vocab_size;
  auto la = a.logits(ids), lb = b.logits(ids);
  int agree = 0;
  for (size_t p = 0; p < ids.size(); ++p) {
    auto ra = la.begin() + p * vocab, rb = lb.begin() + p * vocab;
    agree += std::max_element(ra, ra + vocab) - ra == std::max_element(rb, rb + vocab) - rb;
  }
  return double(agree) / ids.size();
}

TEST(Int4Engine, AgreesWithFp32OnTheFixtureSequencesAndTellsAStory) {
  LoadOptions o;
  o.model_path = kShared + "/models/hf/stories260K";
  o.threads = 2;
  o.backend = Backend::FP32;
  auto fp32 = Engine::load(o);
  o.backend = Backend::INT4;
  // q4g32: 4.5 bits for every weight of this K=64 model (the default q4k pads K to 256, 4x here).
  o.quant = QuantScheme::Q4G32;
  auto int4 = Engine::load(o);
  EXPECT_EQ(int4->info().backend, "int4");
  EXPECT_FALSE(int4->info().isa.empty());
  // Packed weights are ~4.5 bits a weight: far fewer bytes per token than fp32.
  EXPECT_LT(int4->info().weight_bytes_per_token * 5, fp32->info().weight_bytes_per_token);

  std::ifstream in(kShared + "/fixtures/logits_stories260K.json");
  const auto fx = nlohmann::json::parse(in);
  for (const auto& seq : fx["sequences"]) {
    const double agreement = top1_agreement(*fp32, *int4, seq["token_ids"].get<std::vector<int>>());
    RecordProperty("top1_agreement_" + seq["name"].get<std::string>(), std::to_string(agreement));
    std::cout << "int4 vs fp32 top-1 agreement on '" << seq["name"].get<std::string>() << "': " << agreement << "\n";
    EXPECT_GE(agreement, 0.8);
  }
  GenerateRequest req;
  req.prompt_ids = {1};
  req.max_tokens = 60;
  req.sampling.temperature = 0;
  auto story = int4->new_session()->generate(req).text;
  std::cout << "int4 story: " << story << "\n";
  // Fluent English: mostly words from the vocabulary of the fp32 story, properly spaced.
  EXPECT_EQ(story.rfind("Once upon a time", 0), 0u) << story;
  EXPECT_NE(story.find(". "), std::string::npos) << story;
}

}  // namespace
