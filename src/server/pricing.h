// Instance price presets and the cost figures of docs/API.md's `metrics` object.
#pragma once
#include "cpuchat/engine.h"
#include <optional>
#include <string>
#include <vector>

namespace cpuchat::server {

struct InstancePreset {
  std::string name;            // "r8g.4xlarge"
  double price_per_hour_usd;   // approximate us-east-1 on-demand, Linux
  int vcpus;
  std::string arch;            // "arm64" / "x86_64"
  std::string cpu;             // "Graviton4", ...
};

const std::vector<InstancePreset>& instance_presets();
const InstancePreset* find_instance(const std::string& name);
inline constexpr const char* kDefaultInstance = "r8g.4xlarge";

// The price used to cost answers: a preset, or "custom" when only a price is given.
struct Pricing {
  std::string instance = kDefaultInstance;
  double price_per_hour_usd = 0.9424;
};

// Resolves --instance/--price-per-hour (or a request's instance/price_per_hour over a
// default). Throws std::invalid_argument naming the unknown instance.
Pricing resolve_pricing(const std::optional<std::string>& instance,
                        const std::optional<double>& price_per_hour, const Pricing& fallback);

struct Cost {
  std::optional<double> per_million_tokens_usd;  // none when decode speed is unknown (< 2 tokens)
  double total_usd = 0;
};
// per 1M = price / (decode tok/s * 3600) * 1e6; total = price * total_time / 3600.
Cost compute_cost(double price_per_hour_usd, double decode_tokens_per_s, double total_time_s);
// One answer's cost when the instance's time is shared by batched sequences: it is billed
// its share of every forward step it took part in (step time / sequences in the step).
//   per 1M = price × billed_decode_time_s / 3600 / (completion_tokens − 1) × 1e6
//   total  = price × billed_time_s / 3600
// Alone in every step this equals compute_cost (billed time = wall time).
Cost compute_shared_cost(double price_per_hour_usd, const Metrics& m);

}  // namespace cpuchat::server
