#include "server/prometheus.h"

#include <cstdio>

namespace cpuchat::server {

namespace {

std::string number(double v) {
  char buf[64];
  snprintf(buf, sizeof buf, "%.15g", v);  // 15 digits: 0.025 prints as 0.025
  return buf;
}

// Label values are our own route/model names, but escape anyway (\\, \", \n).
std::string label(const std::string& key, const std::string& value) {
  std::string out = key + "=\"";
  for (char c : value) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') { out += "\\n"; continue; }
    out += c;
  }
  return out + "\"";
}

void header(std::string& out, const char* name, const char* type, const char* help) {
  out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

}  // namespace

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double v) {
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += v;
  ++count_;
}

void Histogram::render(std::string& out, const std::string& name, const std::string& labels) const {
  const std::string sep = labels.empty() ? "" : ",";
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    cumulative += counts_[i];
    std::string le = i < bounds_.size() ? number(bounds_[i]) : "+Inf";
    out += name + "_bucket{" + labels + sep + "le=\"" + le + "\"} " + std::to_string(cumulative) + "\n";
  }
  std::string braces = labels.empty() ? "" : "{" + labels + "}";
  out += name + "_sum" + braces + " " + number(sum_) + "\n";
  out += name + "_count" + braces + " " + std::to_string(count_) + "\n";
}

void ServerMetrics::count_request(const std::string& route, int status) {
  std::lock_guard<std::mutex> lock(mu_);
  ++requests_[{route, status}];
}

void ServerMetrics::observe_generation(const std::string& model, const Metrics& m,
                                       const std::string& finish_reason) {
  std::lock_guard<std::mutex> lock(mu_);
  PerModel& pm = models_[model];
  pm.prompt_tokens += m.prompt_tokens;
  pm.prompt_tokens_processed += m.prompt_tokens_processed;
  pm.completion_tokens += m.completion_tokens;
  ++pm.finished[finish_reason];
  if (m.completion_tokens > 0) pm.ttft.observe(m.ttft_s);
  if (m.decode_tokens_per_s > 0) pm.decode.observe(m.decode_tokens_per_s);
}

void ServerMetrics::stream_opened() { std::lock_guard<std::mutex> l(mu_); ++active_streams_; }
void ServerMetrics::stream_closed() { std::lock_guard<std::mutex> l(mu_); --active_streams_; }
int ServerMetrics::active_streams() const { std::lock_guard<std::mutex> l(mu_); return active_streams_; }

std::string ServerMetrics::render(const std::vector<ModelGauges>& gauges, bool ready) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out;
  header(out, "cpuchat_ready", "gauge", "1 when the models are loaded and requests are served.");
  out += std::string("cpuchat_ready ") + (ready ? "1" : "0") + "\n";

  header(out, "cpuchat_http_requests_total", "counter", "HTTP requests answered, by route and status code.");
  for (const auto& [key, n] : requests_)
    out += "cpuchat_http_requests_total{" + label("route", key.first) + "," +
           label("status", std::to_string(key.second)) + "} " + std::to_string(n) + "\n";

  header(out, "cpuchat_prompt_tokens_total", "counter", "Prompt tokens of finished generations.");
  for (const auto& [model, pm] : models_)
    out += "cpuchat_prompt_tokens_total{" + label("model", model) + "} " + std::to_string(pm.prompt_tokens) + "\n";
  header(out, "cpuchat_prompt_tokens_processed_total", "counter",
         "Prompt tokens actually run (the rest came from a slot's KV cache).");
  for (const auto& [model, pm] : models_)
    out += "cpuchat_prompt_tokens_processed_total{" + label("model", model) + "} " +
           std::to_string(pm.prompt_tokens_processed) + "\n";
  header(out, "cpuchat_generated_tokens_total", "counter", "Tokens generated.");
  for (const auto& [model, pm] : models_)
    out += "cpuchat_generated_tokens_total{" + label("model", model) + "} " + std::to_string(pm.completion_tokens) + "\n";
  header(out, "cpuchat_generations_total", "counter", "Finished generations, by finish reason.");
  for (const auto& [model, pm] : models_)
    for (const auto& [reason, n] : pm.finished)
      out += "cpuchat_generations_total{" + label("model", model) + "," + label("finish_reason", reason) +
             "} " + std::to_string(n) + "\n";

  header(out, "cpuchat_ttft_seconds", "histogram", "Time from generation start to the first token.");
  for (const auto& [model, pm] : models_) pm.ttft.render(out, "cpuchat_ttft_seconds", label("model", model));
  header(out, "cpuchat_decode_tokens_per_second", "histogram",
         "Decode speed per request (tokens after the first over the time after the first).");
  for (const auto& [model, pm] : models_)
    pm.decode.render(out, "cpuchat_decode_tokens_per_second", label("model", model));

  header(out, "cpuchat_slots", "gauge", "Slots (KV caches, sequences batched together) per model (--parallel).");
  for (const ModelGauges& g : gauges) out += "cpuchat_slots{" + label("model", g.model) + "} " + std::to_string(g.slots) + "\n";
  header(out, "cpuchat_active_requests", "gauge", "Requests generating now (slots in use).");
  for (const ModelGauges& g : gauges) out += "cpuchat_active_requests{" + label("model", g.model) + "} " + std::to_string(g.active) + "\n";
  header(out, "cpuchat_queue_depth", "gauge", "Requests waiting for a slot.");
  for (const ModelGauges& g : gauges) out += "cpuchat_queue_depth{" + label("model", g.model) + "} " + std::to_string(g.queued) + "\n";
  header(out, "cpuchat_kv_cache_bytes", "gauge", "KV cache bytes holding cached positions, all slots.");
  for (const ModelGauges& g : gauges)
    out += "cpuchat_kv_cache_bytes{" + label("model", g.model) + "} " + std::to_string(g.engine.kv_bytes_in_use) + "\n";
  header(out, "cpuchat_kv_cache_capacity_bytes", "gauge", "KV cache bytes of all slots at full context.");
  for (const ModelGauges& g : gauges)
    out += "cpuchat_kv_cache_capacity_bytes{" + label("model", g.model) + "} " + std::to_string(g.engine.kv_bytes_capacity) + "\n";
  header(out, "cpuchat_forward_step_rows_total", "counter", "Token rows run through the model, all steps.");
  for (const ModelGauges& g : gauges)
    out += "cpuchat_forward_step_rows_total{" + label("model", g.model) + "} " + std::to_string(g.engine.step_rows) + "\n";
  // Sequences per forward step: the evidence that concurrent requests share steps.
  header(out, "cpuchat_step_sequences", "histogram", "Sequences carried by each forward step.");
  for (const ModelGauges& g : gauges) {
    const auto& by_size = g.engine.steps_by_batch_size;
    int64_t cumulative = 0, sum = 0;
    for (size_t n = 1; n < by_size.size(); ++n) {
      cumulative += by_size[n];
      sum += int64_t(n) * by_size[n];
      out += "cpuchat_step_sequences_bucket{" + label("model", g.model) + "," + label("le", std::to_string(n)) + "} " +
             std::to_string(cumulative) + "\n";
    }
    out += "cpuchat_step_sequences_bucket{" + label("model", g.model) + ",le=\"+Inf\"} " + std::to_string(cumulative) + "\n";
    out += "cpuchat_step_sequences_sum{" + label("model", g.model) + "} " + std::to_string(sum) + "\n";
    out += "cpuchat_step_sequences_count{" + label("model", g.model) + "} " + std::to_string(g.engine.steps) + "\n";
  }
  header(out, "cpuchat_active_streams", "gauge", "Open streaming (SSE) responses.");
  out += "cpuchat_active_streams " + std::to_string(active_streams_) + "\n";
  return out;
}

}  // namespace cpuchat::server
