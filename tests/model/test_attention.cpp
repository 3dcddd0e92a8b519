// causal_attention against a plain double-precision softmax(QK^T)V, at the head sizes real
// Llama models use (64, 128: the fixture models have 8, which takes other code paths), for
// fp32, bf16 and int8 caches, a prompt chunk with partial key blocks and a decode row after it.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "model/attention.h"

namespace cpuchat {
namespace {

struct Shape {
  int64_t hd, n_heads, n_kv;
};

// out[t][h][i] for queries at positions start..start+T-1 over keys 0..start+t (double).
std::vector<double> reference(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                              int64_t T, int start, const Shape& s) {
  const int64_t group = s.n_heads / s.n_kv;
  std::vector<double> out(static_cast<size_t>(T * s.n_heads * s.hd), 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < s.n_heads; ++h) {
      const int64_t kvh = h / group, keys = start + t + 1;
      std::vector<double> w(static_cast<size_t>(keys));
      double top = -1e300, sum = 0;
      for (int64_t p = 0; p < keys; ++p) {
        double d = 0;
        for (int64_t i = 0; i < s.hd; ++i) d += double(q[(t * s.n_heads + h) * s.hd + i]) * k[(kvh * 1024 + p) * s.hd + i];
        w[size_t(p)] = d / std::sqrt(double(s.hd));
        top = std::max(top, w[size_t(p)]);
      }
      for (double& x : w) sum += (x = std::exp(x - top));
      for (int64_t p = 0; p < keys; ++p)
        for (int64_t i = 0; i < s.hd; ++i)
          out[size_t((t * s.n_heads + h) * s.hd + i)] += w[size_t(p)] / sum * v[(kvh * 1024 + p) * s.hd + i];
    }
  return out;
}

TEST(Attention, MatchesAPlainSoftmaxAtLlamaHeadSizes) {
  constexpr int kCtx = 1024;
  for (const Shape s : {Shape{128, 8, 2}, Shape{64, 4, 4}})
    for (const KVType type : {KVType::FP32, KVType::BF16, KVType::INT8}) {
      std::mt19937 rng(7);
      std::normal_distribution<float> normal(0.0f, 1.0f);
      const int64_t prompt = 150;  // 2 full key blocks and a partial one, 19 query tiles
      auto random = [&](int64_t n) {
        std::vector<float> x(static_cast<size_t>(n));
        for (float& e : x) e = normal(rng);
        return x;
      };
      std::vector<float> q = random((prompt + 1) * s.n_heads * s.hd);
      std::vector<float> kr = random((prompt + 1) * s.n_kv * s.hd), vr = random((prompt + 1) * s.n_kv * s.hd);
      // Unwritten positions hold NaN (int8: their scales): attention must never read them.
      KVCache cache = make_kv_cache(1, s.n_kv, kCtx, s.hd, type);
      const float nan = std::numeric_limits<float>::quiet_NaN();
      if (type == KVType::INT8) {
        cache.k_scale.fill_(nan);
        cache.v_scale.fill_(nan);
      } else {
        cache.k.fill_(nan);
        cache.v.fill_(nan);
      }
      kv_store(cache, 0, 0, kr.data(), vr.data(), prompt + 1, s.n_kv, s.hd);
      // What the cache holds (rounded to its type), as [n_kv, ctx, hd] fp32 for the reference.
      const torch::Tensor k32 = key_rows_fp32(cache, 0), v32 = value_rows_fp32(cache, 0);
      if (type != KVType::INT8) {  // keys and values read back in order, as stored (rounded)
        const auto dtype = type == KVType::FP32 ? torch::kFloat32 : torch::kBFloat16;
        auto rounded = [&](std::vector<float>& x) {
          return torch::from_blob(x.data(), {prompt + 1, s.n_kv, s.hd}).to(dtype).to(torch::kFloat32).permute({1, 0, 2});
        };
        ASSERT_TRUE(torch::equal(k32.narrow(1, 0, prompt + 1), rounded(kr)));
        ASSERT_TRUE(torch::equal(v32.narrow(1, 0, prompt + 1), rounded(vr)));
      }
      const std::vector<float> kc(k32.data_ptr<float>(), k32.data_ptr<float>() + k32.numel());
      const std::vector<float> vc(v32.data_ptr<float>(), v32.data_ptr<float>() + v32.numel());

      std::vector<float> out_prompt(static_cast<size_t>(prompt * s.n_heads * s.hd)), out_decode(static_cast<size_t>(s.n_heads * s.hd));
      AttentionJob chunk{q.data(), out_prompt.data(), prompt, 0, kv_layer(cache, 0)};
      AttentionJob decode{q.data() + prompt * s.n_heads * s.hd, out_decode.data(), 1, int(prompt), kv_layer(cache, 0)};
      causal_attention({chunk, decode}, s.n_heads, s.n_kv, s.hd);

      const std::vector<double> want_prompt = reference(q, kc, vc, prompt, 0, s);
      const std::vector<float> q_last(q.begin() + prompt * s.n_heads * s.hd, q.end());
      const std::vector<double> want_decode = reference(q_last, kc, vc, 1, int(prompt), s);
      double worst = 0;
      for (size_t i = 0; i < want_prompt.size(); ++i) worst = std::max(worst, std::fabs(out_prompt[i] - want_prompt[i]));
      for (size_t i = 0; i < want_decode.size(); ++i) worst = std::max(worst, std::fabs(out_decode[i] - want_decode[i]));
      EXPECT_LT(worst, 2e-5) << "hd " << s.hd << " kv type " << int(type);
    }
}

}  // namespace
}  // namespace cpuchat
