// Server metrics in the Prometheus text exposition format (GET /metrics).
#pragma once
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "cpuchat/engine.h"

namespace cpuchat::server {

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void observe(double v);
  // Appends the _bucket/_sum/_count lines of `name` with the given label set ("" or `a="b"`).
  void render(std::string& out, const std::string& name, const std::string& labels) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket (not cumulative); last is +Inf
  double sum_ = 0;
  uint64_t count_ = 0;
};

// Point-in-time values read when /metrics is scraped.
struct ModelGauges {
  std::string model;
  int slots = 0, active = 0, queued = 0;
  SchedulerStats engine;  // the scheduler's counters (steps, batch sizes, KV memory)
};

class ServerMetrics {
 public:
  // Every HTTP answer, by route ("chat_completions", ..., "other") and status code.
  void count_request(const std::string& route, int status);
  // A finished generation.
  void observe_generation(const std::string& model, const Metrics& m, const std::string& finish_reason);
  void stream_opened();
  void stream_closed();
  int active_streams() const;

  std::string render(const std::vector<ModelGauges>& gauges, bool ready) const;

 private:
  struct PerModel {
    uint64_t prompt_tokens = 0, prompt_tokens_processed = 0, completion_tokens = 0;
    std::map<std::string, uint64_t> finished;  // by finish_reason
    Histogram ttft{{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}};
    Histogram decode{{1, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000}};
  };
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  std::map<std::string, PerModel> models_;
  int active_streams_ = 0;
};

}  // namespace cpuchat::server
