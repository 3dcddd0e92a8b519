// Weight quantization error of every int4 scheme (issue 14's table): relative RMS error
// sqrt(sum (w - w^)^2 / sum w^2) over
//   - the trained stories260K matrices (a llama2.c .bin: fp32 after a 7 x int32 header), and
//   - 8B-shaped matrices (4096 x 4096) with realistic outliers: Gaussian with 0.1 % of the
//     entries x10, and Student-t (3 degrees of freedom, heavy tails).
// Schemes: q4g32 and q4c with the old max/min scale and with the searched scale, and q4k.
//
//   weight_error_int4 [path/to/stories260K.bin]
#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "cpuchat_kernels/reference.h"

using namespace cpuchat::kernels;

namespace {

struct Matrix {
  std::string name;
  int64_t n, k;
  std::vector<float> w;
};

// Squared error and squared norm of one matrix under one scheme.
struct Err {
  double err2 = 0, ref2 = 0;
  void add(const Err& o) { err2 += o.err2, ref2 += o.ref2; }
  double rel() const { return std::sqrt(err2 / ref2); }
};

Err error_of(const Matrix& m, const char* scheme) {
  Err e;
  const std::string s = scheme;
  std::vector<float> w_hat(m.w.size());
  if (s == "q4g32-absmax" || s == "q4c-absmax") {
    std::vector<int8_t> q(static_cast<size_t>(m.k));
    for (int64_t r = 0; r < m.n; ++r) {
      const float* row = m.w.data() + r * m.k;
      if (s == "q4c-absmax") {
        const float d = quantize_q4_absmax(row, m.k, false, q.data());
        for (int64_t c = 0; c < m.k; ++c) w_hat[r * m.k + c] = d * q[c];
      } else {
        for (int64_t g = 0; g * kGroupSize < m.k; ++g) {
          const int64_t b = g * kGroupSize, cnt = std::min<int64_t>(kGroupSize, m.k - b);
          const float d = quantize_q4_absmax(row + b, cnt, true, q.data() + b);
          for (int64_t c = b; c < b + cnt; ++c) w_hat[r * m.k + c] = d * q[c];
        }
      }
    }
  } else {
    const Scheme sch = s == "q4k" ? Scheme::Q4K : s == "q4c" ? Scheme::Q4C : Scheme::Q4G32;
    const ReferenceWeights ref = reference_quantize_weights(m.w.data(), m.n, m.k, m.k, sch);
    for (int64_t r = 0; r < m.n; ++r)
      for (int64_t c = 0; c < m.k; ++c) w_hat[r * m.k + c] = ref.dequantized(r, c);
  }
  for (size_t i = 0; i < m.w.size(); ++i) {
    e.err2 += std::pow(double{m.w[i]} - w_hat[i], 2);
    e.ref2 += double{m.w[i]} * m.w[i];
  }
  return e;
}

std::vector<Matrix> stories260k(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  int32_t h[7];
  if (!in.read(reinterpret_cast<char*>(h), sizeof h)) return {};
  const int64_t dim = h[0], hidden = h[1], layers = h[2], heads = h[3], kv_heads = h[4], vocab = std::abs(h[5]);
  const int64_t kv_dim = dim / heads * kv_heads;
  auto read = [&](const std::string& name, int64_t n, int64_t k) {
    Matrix m{name, n, k, std::vector<float>(static_cast<size_t>(n * k))};
    in.read(reinterpret_cast<char*>(m.w.data()), static_cast<std::streamsize>(m.w.size() * 4));
    return m;
  };
  auto skip = [&](int64_t floats) { in.seekg(floats * 4, std::ios::cur); };
  std::vector<Matrix> out;
  out.push_back(read("tok_embeddings", vocab, dim));
  skip(layers * dim);  // rms_att
  const struct { const char* name; int64_t n, k; } per_layer[] = {
      {"wq", dim, dim}, {"wk", kv_dim, dim}, {"wv", kv_dim, dim}, {"wo", dim, dim}};
  for (const auto& p : per_layer)
    for (int64_t l = 0; l < layers; ++l) out.push_back(read(std::string(p.name) + "." + std::to_string(l), p.n, p.k));
  skip(layers * dim);  // rms_ffn
  const struct { const char* name; int64_t n, k; } ffn[] = {{"w1", hidden, dim}, {"w2", dim, hidden}, {"w3", hidden, dim}};
  for (const auto& p : ffn)
    for (int64_t l = 0; l < layers; ++l) out.push_back(read(std::string(p.name) + "." + std::to_string(l), p.n, p.k));
  return in ? out : std::vector<Matrix>{};
}

Matrix synthetic(const std::string& name, bool student_t, uint32_t seed) {
  Matrix m{name, 4096, 4096, std::vector<float>(4096 * 4096)};
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::student_t_distribution<float> t3(3.0f);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  for (float& v : m.w) {
    v = student_t ? 0.012f * t3(rng) : normal(rng);
    if (!student_t && u(rng) < 0.001f) v *= 10.0f;
  }
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string path = argc > 1 ? argv[1] : "../shared/models/llama2c/stories260K.bin";
  const char* schemes[] = {"q4g32-absmax", "q4g32", "q4c-absmax", "q4c", "q4k"};
  std::printf("%-34s", "relative RMS weight error");
  for (const char* s : schemes) std::printf(" %13s", s);
  std::printf("\n");
  const std::vector<Matrix> trained = stories260k(path);
  if (trained.empty()) {
    std::fprintf(stderr, "%s: cannot read a llama2.c checkpoint\n", path.c_str());
    return 1;
  }
  std::printf("%-34s", ("stories260K (" + std::to_string(trained.size()) + " matrices)").c_str());
  for (const char* s : schemes) {
    Err total;
    for (const Matrix& m : trained) total.add(error_of(m, s));
    std::printf(" %13.5f", total.rel());
  }
  std::printf("\n");
  for (bool t : {false, true}) {
    const Matrix m = synthetic(t ? "4096x4096 Student-t(3)" : "4096x4096 Gaussian + 0.1% x10", t, 7);
    std::printf("%-34s", m.name.c_str());
    for (const char* s : schemes) std::printf(" %13.5f", error_of(m, s).rel());
    std::printf("\n");
  }
  return 0;
}
