// Google Benchmark of the int4 matmul on the Llama 3.1 8B (and 3.2 1B: "1b_") linear-layer shapes.
//
//   m=1   (decode GEMV):   GB/s of packed weights read (counter "GB/s")
//   m=128 (prefill GEMM):  int8-equivalent GOPS, 2*M*N*K per call (counter "GOPS")
//
// per ISA level (forced with force_isa; the scalar level only on a small shape: it is slow),
// per scheme, with 1 and 2 threads. Timing includes the activation quantization (done once
// per call, split over the threads by rows) and the column split, like the engine will do it.
// Threads come from OpenMP (bench only; the library itself never creates threads).
//
// m=1 rotates over enough copies of the packed weights (>= 4x the 32 MiB L3) that every call
// reads them from DRAM, as decode of an 8B model does.
//
//   cmake -S kernels -B /work/build-kernels && cmake --build /work/build-kernels -j2
//   /work/build-kernels/bench_int4_matmul --benchmark_filter=... (see kernels/README.md)
#include <benchmark/benchmark.h>
#include <omp.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "cpuchat_kernels/int4_matmul.h"

namespace {
using namespace cpuchat::kernels;

constexpr int64_t kRotationBytes = int64_t{128} << 20;

struct WeightSet {
  std::vector<PackedWeights> copies;
};

// Packs N x K from a reused random 256-row fp32 chunk (streamed packing, as the engine does).
PackedWeights make_weights(int64_t n, int64_t k, Scheme scheme, LayoutId layout) {
  PackedWeights w = PackedWeights::allocate(n, k, scheme, layout);
  const int64_t chunk = 256;
  std::vector<float> rows(static_cast<size_t>(chunk * k));
  std::mt19937 rng(1234);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  for (float& v : rows) v = normal(rng);
  for (int64_t r = 0; r < n; r += chunk) w.pack_rows(rows.data(), k, r, std::min(n, r + chunk));
  return w;
}

const WeightSet& weights(int64_t n, int64_t k, Scheme scheme, LayoutId layout, bool rotate) {
  static std::map<std::tuple<int64_t, int64_t, int, int, bool>, std::unique_ptr<WeightSet>> cache;
  auto& slot = cache[{n, k, int(scheme), int(layout), rotate}];
  if (!slot) {
    slot = std::make_unique<WeightSet>();
    PackedWeights first = make_weights(n, k, scheme, layout);
    const int64_t copies = rotate ? std::max<int64_t>(1, (kRotationBytes + first.byte_size() - 1) / first.byte_size()) : 1;
    slot->copies.push_back(std::move(first));
    for (int64_t c = 1; c < copies; ++c) {
      PackedWeights copy = PackedWeights::allocate(n, k, scheme, layout);
      std::memcpy(const_cast<uint8_t*>(copy.data()), slot->copies[0].data(), copy.byte_size());
      slot->copies.push_back(std::move(copy));
    }
  }
  return *slot;
}

void run_matmul(benchmark::State& state, int64_t m, int64_t n, int64_t k, Scheme scheme, IsaLevel level,
                int threads) {
  if (force_isa(level) != level) {
    state.SkipWithError("ISA level not supported on this CPU");
    return;
  }
  const WeightSet& ws = weights(n, k, scheme, layout_for_isa(level), m <= 8);
  std::vector<float> x(static_cast<size_t>(m * k)), y(static_cast<size_t>(m * n));
  std::mt19937 rng(99);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& v : x) v = normal(rng);
  QuantizedActivations xq;
  xq.resize(m, k);
  size_t copy = 0;
  for (auto _ : state) {
    const PackedWeights& w = ws.copies[copy];
    copy = (copy + 1) % ws.copies.size();
#pragma omp parallel num_threads(threads)
    {
      const int t = omp_get_thread_num(), nt = omp_get_num_threads();
      xq.quantize_rows(x.data(), k, m * t / nt, m * (t + 1) / nt);
#pragma omp barrier
      const ColumnRange cols = split_columns(w, nt, t);
      if (!cols.empty()) matmul(xq, w, y.data(), n, cols.begin, cols.end);
    }
    benchmark::ClobberMemory();
  }
  const double calls = static_cast<double>(state.iterations());
  if (m <= 8) {  // decode (one or a batch of streams): bound by streaming the weights
    state.counters["GB/s"] = benchmark::Counter(calls * ws.copies[0].byte_size() / 1e9, benchmark::Counter::kIsRate);
  }
  state.counters["GOPS"] = benchmark::Counter(calls * 2.0 * m * n * k / 1e9, benchmark::Counter::kIsRate);
  state.SetLabel(selected_kernel_name(ws.copies[0], m));
  reset_isa();
}

// Reference point: how fast one/two threads can stream memory on this machine.
void run_memory_read(benchmark::State& state, int threads) {
  const size_t bytes = size_t{512} << 20;
  static std::vector<uint64_t> buf(bytes / 8, 1);
  uint64_t total = 0;
  for (auto _ : state) {
#pragma omp parallel num_threads(threads) reduction(+ : total)
    {
      const int t = omp_get_thread_num(), nt = omp_get_num_threads();
      const size_t begin = buf.size() * t / nt, end = buf.size() * (t + 1) / nt;
      uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (size_t i = begin; i < end; i += 4) {
        s0 += buf[i];
        s1 += buf[i + 1];
        s2 += buf[i + 2];
        s3 += buf[i + 3];
      }
      total += s0 + s1 + s2 + s3;
    }
    benchmark::DoNotOptimize(total);
  }
  state.counters["GB/s"] = benchmark::Counter(static_cast<double>(state.iterations()) * bytes / 1e9,
                                              benchmark::Counter::kIsRate);
}

// Load-time cost: quantize + pack an N x K fp32 (or bf16) matrix on one thread.
void run_pack(benchmark::State& state, Scheme scheme, bool bf16) {
  const int64_t n = 4096, k = 4096;
  std::vector<float> rows(static_cast<size_t>(n * k));
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  for (float& v : rows) v = normal(rng);
  std::vector<uint16_t> rows_bf16(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) rows_bf16[i] = float_to_bf16(rows[i]);
  PackedWeights w = PackedWeights::allocate(n, k, scheme);
  for (auto _ : state) {
    if (bf16) {
      w.pack_rows_bf16(rows_bf16.data(), k, 0, n);
    } else {
      w.pack_rows(rows.data(), k, 0, n);
    }
    benchmark::ClobberMemory();
  }
  state.counters["Mweights/s"] = benchmark::Counter(static_cast<double>(state.iterations()) * n * k / 1e6,
                                                    benchmark::Counter::kIsRate);
}

struct Shape {
  const char* name;
  int64_t n, k;
};

}  // namespace

int main(int argc, char** argv) {
  const Shape shapes[] = {
      {"qo_4096x4096", 4096, 4096},     {"kv_1024x4096", 1024, 4096},   {"gate_up_14336x4096", 14336, 4096},
      {"down_4096x14336", 4096, 14336}, {"head_128256x4096", 128256, 4096},
      // Llama 3.2 1B, whose decode steps are the batching benchmark's other shape.
      {"1b_qo_2048x2048", 2048, 2048},  {"1b_kv_512x2048", 512, 2048},   {"1b_gate_up_8192x2048", 8192, 2048},
      {"1b_down_2048x8192", 2048, 8192}, {"1b_head_128256x2048", 128256, 2048},
  };
  std::vector<IsaLevel> levels;
#if defined(__x86_64__)
  levels = {IsaLevel::Avx512Vnni, IsaLevel::Avx2};
  if (detected_isa() == IsaLevel::AmxInt8) levels.insert(levels.begin(), IsaLevel::AmxInt8);
#elif defined(__aarch64__)
  levels = {IsaLevel::I8mm, IsaLevel::Dotprod};
#endif
  for (int threads : {1, 2}) {
    benchmark::RegisterBenchmark(("memory_read/threads:" + std::to_string(threads)).c_str(),
                                 [threads](benchmark::State& s) { run_memory_read(s, threads); })
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }
  for (Scheme scheme : {Scheme::Q4G32, Scheme::Q4C, Scheme::Q4K}) {
    for (bool bf16 : {false, true}) {
      benchmark::RegisterBenchmark((std::string("pack/") + scheme_name(scheme) + "/4096x4096/" + (bf16 ? "bf16" : "fp32")).c_str(),
                                   [=](benchmark::State& s) { run_pack(s, scheme, bf16); })
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
    }
  }
  // m = 1: one stream's decode; m = 2, 4, 8: a batched decode step of that many streams; m = 128: a prompt chunk.
  auto family = [](int64_t m) { return m == 1 ? std::string("gemv_m1/") : "gemm_m" + std::to_string(m) + "/"; };
  for (int64_t m : {1, 2, 4, 8, 128}) {
    for (Scheme scheme : {Scheme::Q4G32, Scheme::Q4C, Scheme::Q4K}) {
      for (const Shape& sh : shapes) {
        for (IsaLevel level : levels) {
          for (int threads : {1, 2}) {
            const std::string name = family(m) + scheme_name(scheme) + "/" +
                                     sh.name + "/" + isa_name(level) + "/threads:" + std::to_string(threads);
            benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& s) {
              run_matmul(s, m, sh.n, sh.k, scheme, level, threads);
            })->Unit(benchmark::kMicrosecond)->UseRealTime();
          }
        }
      }
      // The scalar level is slow: one small shape only.
      for (int threads : {1, 2}) {
        const std::string name = family(m) + scheme_name(scheme) +
                                 "/small_1024x1024/scalar(slow)/threads:" + std::to_string(threads);
        benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& s) {
          run_matmul(s, m, 1024, 1024, scheme, IsaLevel::Scalar, threads);
        })->Unit(benchmark::kMicrosecond)->UseRealTime();
      }
    }
  }
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
