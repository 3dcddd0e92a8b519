// Approximate AWS us-east-1 on-demand Linux prices (USD/hour), for costing answers.
// They drift; every one can be overridden with --price-per-hour.
#include "server/pricing.h"

#include <stdexcept>

namespace cpuchat::server {

namespace {

struct Size { const char* suffix; int vcpus; double multiple; };  // multiple of the .large price
// c7a has one physical core per vCPU, others two vCPUs per core; the vCPU counts are per size.
const Size kSizes[] = {{"large", 2, 1},    {"xlarge", 4, 2},     {"2xlarge", 8, 4},
                       {"4xlarge", 16, 8}, {"8xlarge", 32, 16},  {"12xlarge", 48, 24},
                       {"16xlarge", 64, 32}};

struct Family { const char* name; double large_price; const char* arch; const char* cpu; };
const Family kFamilies[] = {
    {"r8g", 0.1178, "arm64", "Graviton4"},
    {"c8g", 0.07976, "arm64", "Graviton4"},
    {"m8g", 0.08976, "arm64", "Graviton4"},
    {"c7i", 0.08925, "x86_64", "Xeon Sapphire Rapids"},
    {"m7i", 0.1008, "x86_64", "Xeon Sapphire Rapids"},
    {"r7i", 0.1323, "x86_64", "Xeon Sapphire Rapids"},
    {"c7a", 0.10264, "x86_64", "EPYC Genoa"},
};

std::vector<InstancePreset> build_presets() {
  std::vector<InstancePreset> out;
  for (const Family& f : kFamilies)
    for (const Size& s : kSizes) {
      // Prices are linear in size within a family; round to 0.1 cent like the price list.
      double price = f.large_price * s.multiple;
      price = static_cast<double>(static_cast<long long>(price * 10000 + 0.5)) / 10000;
      out.push_back({std::string(f.name) + "." + s.suffix, price, s.vcpus, f.arch, f.cpu});
    }
  return out;
}

}  // namespace

const std::vector<InstancePreset>& instance_presets() {
  static const std::vector<InstancePreset> presets = build_presets();
  return presets;
}

const InstancePreset* find_instance(const std::string& name) {
  for (const InstancePreset& p : instance_presets())
    if (p.name == name) return &p;
  return nullptr;
}

Pricing resolve_pricing(const std::optional<std::string>& instance,
                        const std::optional<double>& price_per_hour, const Pricing& fallback) {
  Pricing p = fallback;
  if (instance) {
    const InstancePreset* preset = find_instance(*instance);
    if (!preset)
      throw std::invalid_argument("unknown instance '" + *instance + "' (see GET /v1/instances)");
    p.instance = preset->name;
    p.price_per_hour_usd = preset->price_per_hour_usd;
  } else if (price_per_hour) {
    p.instance = "custom";
  }
  if (price_per_hour) p.price_per_hour_usd = *price_per_hour;
  return p;
}

Cost compute_cost(double price_per_hour_usd, double decode_tokens_per_s, double total_time_s) {
  Cost c;
  if (decode_tokens_per_s > 0)
    c.per_million_tokens_usd = price_per_hour_usd / (decode_tokens_per_s * 3600.0) * 1e6;
  c.total_usd = price_per_hour_usd * total_time_s / 3600.0;
  return c;
}

Cost compute_shared_cost(double price_per_hour_usd, const Metrics& m) {
  if (m.billed_time_s <= 0) return compute_cost(price_per_hour_usd, m.decode_tokens_per_s, m.total_time_s);
  Cost c;
  if (m.completion_tokens > 1 && m.billed_decode_time_s > 0)
    c.per_million_tokens_usd = price_per_hour_usd * m.billed_decode_time_s / 3600.0 / (m.completion_tokens - 1) * 1e6;
  c.total_usd = price_per_hour_usd * m.billed_time_s / 3600.0;
  return c;
}

}  // namespace cpuchat::server
