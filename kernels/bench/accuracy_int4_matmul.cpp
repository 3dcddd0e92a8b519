// Accuracy measurements behind the design choices (numbers quoted in kernels/README.md):
//   1. weight schemes q4g32 vs q4c: relative RMS error of the packed kernel vs fp32;
//   2. activation quantization: symmetric per block of 32 (ours) vs asymmetric per row,
//      with LLM-like activations (a few outlier channels), weights kept in fp32 to isolate it;
//   3. q4g32 group scale stored as bf16 (ours) vs fp32.
//
//   /work/build-kernels/accuracy_int4_matmul
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "cpuchat_kernels/int4_matmul.h"
#include "cpuchat_kernels/reference.h"

namespace {
using namespace cpuchat::kernels;

constexpr int64_t kM = 16, kN = 512, kK = 4096;

// Weights: N(0, 0.02), optionally with 0.1% entries x10. Activations: N(0,1) with 6 outlier channels
// (the same channels in every row, as in LLMs) scaled by `outlier_scale`.
std::vector<float> make_weights(bool outliers) {
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<float> w(static_cast<size_t>(kN * kK));
  for (float& v : w) v = normal(rng) * (outliers && u(rng) < 0.001f ? 10.0f : 1.0f);
  return w;
}
std::vector<float> make_activations(float outlier_scale) {
  std::mt19937 rng(2);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(kM * kK));
  for (float& v : x) v = normal(rng);
  for (int64_t r = 0; r < kM; ++r)
    for (int64_t c : {17, 333, 1024, 2049, 3000, 4000}) x[r * kK + c] *= outlier_scale;
  return x;
}

double rel_rms(const std::vector<float>& y, const std::vector<float>& ref) {
  double e = 0, r = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    e += (double{y[i]} - ref[i]) * (double{y[i]} - ref[i]);
    r += double{ref[i]} * ref[i];
  }
  return std::sqrt(e / r);
}

// Dequantized activations for the two activation schemes.
std::vector<float> dequant_block32_symmetric(const std::vector<float>& x) {
  QuantizedActivations xq;
  xq.quantize(x.data(), kM, kK, kK);
  std::vector<float> d(x.size());
  for (int64_t r = 0; r < kM; ++r)
    for (int64_t c = 0; c < kK; ++c) d[r * kK + c] = xq.scales(r)[c / kGroupSize] * xq.row(r)[c];
  return d;
}
std::vector<float> dequant_row_asymmetric(const std::vector<float>& x) {
  std::vector<float> d(x.size());
  for (int64_t r = 0; r < kM; ++r) {
    const float* row = x.data() + r * kK;
    const float lo = std::min(0.0f, *std::min_element(row, row + kK)), hi = std::max(0.0f, *std::max_element(row, row + kK));
    const float scale = (hi - lo) / 255.0f;
    const float zero = std::nearbyint(-128.0f - lo / scale);  // q = x/scale + zero in [-128, 127]
    for (int64_t c = 0; c < kK; ++c) {
      const float q = std::min(127.0f, std::max(-128.0f, std::nearbyint(row[c] / scale + zero)));
      d[r * kK + c] = (q - zero) * scale;
    }
  }
  return d;
}

}  // namespace

int main() {
  const std::vector<float> w = make_weights(true);
  std::vector<float> y(static_cast<size_t>(kM * kN)), ref(y.size());

  std::printf("M=%lld N=%lld K=%lld, relative RMS error of Y vs fp32\n\n", (long long)kM, (long long)kN, (long long)kK);
  std::printf("1. weight scheme (kernel output, activations with 20x outlier channels)\n");
  for (bool weight_outliers : {false, true}) {
    const std::vector<float> wi = make_weights(weight_outliers), x = make_activations(20.0f);
    reference_matmul_f32(x.data(), kM, kK, kK, wi.data(), kN, kK, ref.data(), kN);
    for (Scheme s : {Scheme::Q4G32, Scheme::Q4C}) {
      PackedWeights p = PackedWeights::allocate(kN, kK, s);
      p.pack(wi.data(), kK);
      matmul_f32(x.data(), kM, kK, p, y.data(), kN);
      std::printf("   %-6s %s  %.4f   (%.3f bits/weight)\n", scheme_name(s),
                  weight_outliers ? "gaussian + 0.1% x10 weights" : "gaussian weights           ", rel_rms(y, ref),
                  8.0 * p.byte_size() / (kN * kK));
    }
  }

  std::printf("\n2. activation quantization alone (fp32 weights)\n");
  for (float outliers : {1.0f, 20.0f, 100.0f}) {
    const std::vector<float> x = make_activations(outliers);
    reference_matmul_f32(x.data(), kM, kK, kK, w.data(), kN, kK, ref.data(), kN);
    const std::vector<float> xb = dequant_block32_symmetric(x), xr = dequant_row_asymmetric(x);
    reference_matmul_f32(xb.data(), kM, kK, kK, w.data(), kN, kK, y.data(), kN);
    const double e_block = rel_rms(y, ref);
    reference_matmul_f32(xr.data(), kM, kK, kK, w.data(), kN, kK, y.data(), kN);
    std::printf("   outlier channels x%-5.0f  symmetric/block32 %.5f   asymmetric/row %.5f\n", outliers, e_block,
                rel_rms(y, ref));
  }

  std::printf("\n3. q4g32 scale storage (weights alone, relative RMS error of dequantized W)\n");
  for (bool bf16 : {false, true}) {
    double e = 0, r = 0;
    std::vector<int8_t> q(kGroupSize);
    for (int64_t i = 0; i < kN * kK; i += kGroupSize) {
      const float d = quantize_q4(w.data() + i, kGroupSize, bf16, q.data());
      for (int j = 0; j < kGroupSize; ++j) {
        e += (double{w[i + j]} - d * q[j]) * (double{w[i + j]} - d * q[j]);
        r += double{w[i + j]} * w[i + j];
      }
    }
    std::printf("   %s scale: %.5f   (%.1f bits/weight)\n", bf16 ? "bf16" : "fp32", std::sqrt(e / r), bf16 ? 4.5 : 5.0);
  }
  return 0;
}
