// Helpers shared by the kernel tests.
#pragma once

#include <cstdint>
#include <functional>
#include <random>
#include <vector>

#include "cpuchat_kernels/int4_matmul.h"

namespace cpuchat::kernels {
inline constexpr Scheme kAllSchemes[] = {Scheme::Q4G32, Scheme::Q4C, Scheme::Q4K};
}

namespace cpuchat::kernels::test {

// Gaussian values with a few large "outlier" entries, like LLM weights/activations.
std::vector<float> random_matrix(int64_t rows, int64_t cols, uint32_t seed, float outlier_fraction = 0.01f,
                                 float outlier_scale = 20.0f);

// Restores the ISA level chosen before the test when it goes out of scope.
class IsaGuard {
 public:
  IsaGuard() : saved_(active_isa()) {}
  ~IsaGuard() { force_isa(saved_); }

 private:
  IsaLevel saved_;
};

// Runs fn(level) for every level this CPU supports, with that level forced.
void for_each_isa(const std::function<void(IsaLevel)>& fn);

// Packs w (n x k, row-major) for the layout of `level`.
PackedWeights pack_for(IsaLevel level, const std::vector<float>& w, int64_t n, int64_t k, Scheme scheme);

// Y = matmul over column ranges split across `threads` std::threads (like the engine will).
void threaded_matmul(const QuantizedActivations& x, const PackedWeights& w, float* y, int64_t ldy, int threads);

}  // namespace cpuchat::kernels::test
