// Causal grouped-query attention over the fp32 KV cache, in plain loops on libtorch's
// thread pool. Why not torch::matmul: on Debian, libtorch's fp32 matmul goes to the
// reference BLAS, and attention grows with the context: a 1B model decoding after a
// 1024-token prompt fell from 67 to 20 tokens/s with it.
#include "model/attention.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace cpuchat {
namespace {

// One (kv head, query) unit: the `group` query heads that share kv head h, for query row t
// at position pos. K and V rows are each read once for the whole group.
//   q, out: [group, hd]    k, v: [pos + 1, hd] rows of this kv head
#if defined(__x86_64__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void attend_group(const float* q, const float* k, const float* v, int64_t n_keys, int group, int hd, float scale,
                  float* scores /* [group, n_keys] */, float* out) {
  for (int64_t s = 0; s < n_keys; ++s) {
    const float* kr = k + s * hd;
    for (int g = 0; g < group; ++g) {
      const float* qg = q + g * hd;
      float dot = 0;
#pragma omp simd reduction(+ : dot)  // vector partial sums (no -ffast-math here)
      for (int i = 0; i < hd; ++i) dot += qg[i] * kr[i];
      scores[g * n_keys + s] = dot * scale;
    }
  }
  for (int g = 0; g < group; ++g) {
    float* sc = scores + g * n_keys;
    const float max = *std::max_element(sc, sc + n_keys);
    float sum = 0;
    for (int64_t s = 0; s < n_keys; ++s) sum += (sc[s] = std::exp(sc[s] - max));
    const float inv = 1.0f / sum;
    for (int64_t s = 0; s < n_keys; ++s) sc[s] *= inv;
    std::fill(out + g * hd, out + (g + 1) * hd, 0.0f);
  }
  for (int64_t s = 0; s < n_keys; ++s) {
    const float* vr = v + s * hd;
    for (int g = 0; g < group; ++g) {
      const float p = scores[g * n_keys + s];
      float* o = out + g * hd;
      for (int i = 0; i < hd; ++i) o[i] += p * vr[i];
    }
  }
}

}  // namespace

torch::Tensor causal_attention(const torch::Tensor& q_in, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
                               int start_pos) {
  const torch::Tensor q = q_in.to(torch::kFloat32).contiguous();
  TORCH_CHECK(q.dim() == 3 && k_cache.dim() == 3 && k_cache.is_contiguous() && v_cache.is_contiguous() &&
                  k_cache.scalar_type() == torch::kFloat32 && v_cache.scalar_type() == torch::kFloat32,
              "causal_attention: expects q [T, heads, hd] and contiguous fp32 caches [kv_heads, ctx, hd]");
  const int64_t T = q.size(0), n_heads = q.size(1), hd = q.size(2);
  const int64_t n_kv = k_cache.size(0), ctx = k_cache.size(1);
  TORCH_CHECK(n_heads % n_kv == 0 && k_cache.size(2) == hd && start_pos + T <= ctx, "causal_attention: bad shapes");
  const int group = int(n_heads / n_kv);
  const float scale = 1.0f / std::sqrt(float(hd));
  torch::Tensor out = torch::empty({T, n_heads * hd}, torch::kFloat32);
  const float *qp = q.data_ptr<float>(), *kp = k_cache.data_ptr<float>(), *vp = v_cache.data_ptr<float>();
  float* op = out.data_ptr<float>();
  // Units are (kv head, query row); query t sees keys 0..start_pos+t.
  at::parallel_for(0, n_kv * T, 1, [&](int64_t u0, int64_t u1) {
    std::vector<float> scores;
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t h = u / T, t = u % T, n_keys = start_pos + t + 1;
      scores.resize(size_t(group * n_keys));
      attend_group(qp + (t * n_heads + h * group) * hd, kp + h * ctx * hd, vp + h * ctx * hd, n_keys, group, int(hd),
                   scale, scores.data(), op + (t * n_heads + h * group) * hd);
    }
  });
  return out;
}

}  // namespace cpuchat
