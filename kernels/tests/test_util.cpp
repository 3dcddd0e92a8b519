#include "test_util.h"

#include <thread>

namespace cpuchat::kernels::test {

std::vector<float> random_matrix(int64_t rows, int64_t cols, uint32_t seed, float outlier_fraction,
                                 float outlier_scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  std::vector<float> m(static_cast<size_t>(rows * cols));
  for (float& v : m) {
    v = normal(rng);
    if (uniform(rng) < outlier_fraction) v *= outlier_scale;
  }
  return m;
}

void for_each_isa(const std::function<void(IsaLevel)>& fn) {
  IsaGuard guard;
  for (IsaLevel level : supported_isas()) {
    force_isa(level);
    fn(level);
  }
}

PackedWeights pack_for(IsaLevel level, const std::vector<float>& w, int64_t n, int64_t k, Scheme scheme) {
  PackedWeights p = PackedWeights::allocate(n, k, scheme, layout_for_isa(level));
  p.pack(w.data(), k);
  return p;
}

void threaded_matmul(const QuantizedActivations& x, const PackedWeights& w, float* y, int64_t ldy, int threads) {
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    const ColumnRange r = split_columns(w, threads, t);
    if (r.empty()) continue;
    pool.emplace_back([&, r] { matmul(x, w, y, ldy, r.begin, r.end); });
  }
  for (std::thread& th : pool) th.join();
}

}  // namespace cpuchat::kernels::test
