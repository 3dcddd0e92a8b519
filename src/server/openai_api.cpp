#include "server/openai_api.h"

#include <atomic>
#include <cmath>
#include <chrono>
#include <cstdio>
#include <random>

#include "server/api_error.h"

namespace cpuchat::server {

using nlohmann::json;

namespace {

// Ids only need to be unique per server: random prefix + counter.
std::string next_id(const char* prefix, char separator = '-') {
  static const uint64_t salt = std::random_device{}();
  static std::atomic<uint64_t> counter{0};
  char buf[64];
  snprintf(buf, sizeof buf, "%s%c%08llx%08llx", prefix, separator, static_cast<unsigned long long>(salt & 0xffffffffu),
           static_cast<unsigned long long>(++counter));
  return buf;
}

const char* object_name(Endpoint e, bool chunk) {
  if (e == Endpoint::Chat) return chunk ? "chat.completion.chunk" : "chat.completion";
  return "text_completion";
}

json header_json(const AnswerHeader& h, bool chunk) {
  return {{"id", h.id}, {"object", object_name(h.endpoint, chunk)}, {"created", h.created},
          {"model", h.model}, {"system_fingerprint", "cpuchat"}};
}

json bytes_array(const std::string& s) {
  json a = json::array();
  for (unsigned char c : s) a.push_back(static_cast<int>(c));
  return a;
}

// One choice: chat choices carry `message`/`delta`, text completions `text`.
json choice_json(const AnswerHeader& h, const json& content_or_delta, const json& finish_reason,
                 const json& logprobs, bool chunk) {
  json c = {{"index", h.choice}};
  if (h.endpoint == Endpoint::Chat) {
    c[chunk ? "delta" : "message"] = content_or_delta;
  } else {
    c["text"] = content_or_delta;
  }
  c["logprobs"] = logprobs;
  c["finish_reason"] = finish_reason;
  return c;
}

double round_to(double x, double unit) { return std::round(x / unit) * unit; }

}  // namespace

AnswerHeader new_answer_header(Endpoint endpoint, const std::string& model) {
  AnswerHeader h;
  h.endpoint = endpoint;
  h.id = endpoint == Endpoint::Responses ? next_id("resp", '_')
                                          : next_id(endpoint == Endpoint::Chat ? "chatcmpl" : "cmpl");
  h.created = std::chrono::duration_cast<std::chrono::seconds>(
                  std::chrono::system_clock::now().time_since_epoch())
                  .count();
  h.model = model;
  return h;
}

std::string new_request_id() { return next_id("req", '_'); }

json metrics_json(const Metrics& m, const Pricing& pricing, const std::string& backend,
                  const std::string& model) {
  Cost cost = compute_shared_cost(pricing.price_per_hour_usd, m);
  // Costs are tiny numbers: keep full precision (no rounding) so clients can check the sums.
  return {{"ttft_s", m.ttft_s},
          {"prompt_tokens", m.prompt_tokens},
          {"prompt_tokens_processed", m.prompt_tokens_processed},
          {"prompt_tokens_per_s", round_to(m.prompt_tokens_per_s, 0.01)},
          {"completion_tokens", m.completion_tokens},
          {"decode_tokens_per_s", round_to(m.decode_tokens_per_s, 0.01)},
          {"total_time_s", m.total_time_s},
          {"instance", pricing.instance},
          {"price_per_hour_usd", pricing.price_per_hour_usd},
          {"cost_per_million_tokens_usd",
           cost.per_million_tokens_usd ? json(*cost.per_million_tokens_usd) : json()},
          {"total_cost_usd", cost.total_usd},
          {"billed_time_s", m.billed_time_s},
          {"billed_decode_time_s", m.billed_decode_time_s},
          {"queue_time_s", m.queue_time_s},
          {"mean_batch_size", round_to(m.mean_batch_size, 0.01)},
          {"instance_decode_tokens_per_s", round_to(m.instance_decode_tokens_per_s, 0.01)},
          {"backend", backend},
          {"model", model},
          {"interactive",
           {{"ttft_ok", m.ttft_s < 1.0}, {"decode_ok", m.decode_tokens_per_s >= 10.0}}}};
}

json usage_json(const Metrics& m) {
  return {{"prompt_tokens", m.prompt_tokens},
          {"completion_tokens", m.completion_tokens},
          {"total_tokens", m.prompt_tokens + m.completion_tokens},
          {"prompt_tokens_details",
           {{"cached_tokens", m.prompt_tokens - m.prompt_tokens_processed}}}};
}

json logprobs_json(Endpoint endpoint, const std::vector<TokenLogprob>& lps,
                   const TokenBytesFn& token_bytes, size_t offset) {
  if (endpoint == Endpoint::Chat) {
    json content = json::array();
    for (const TokenLogprob& lp : lps) {
      json top = json::array();
      for (const auto& [id, logprob] : lp.top) {
        std::string b = token_bytes(id);
        top.push_back({{"token", b}, {"logprob", logprob}, {"bytes", bytes_array(b)}});
      }
      content.push_back({{"token", lp.text}, {"logprob", lp.logprob},
                         {"bytes", bytes_array(lp.text)}, {"top_logprobs", top}});
    }
    return {{"content", content}};
  }
  json tokens = json::array(), token_logprobs = json::array(), top = json::array(),
       offsets = json::array();
  for (const TokenLogprob& lp : lps) {
    tokens.push_back(lp.text);
    token_logprobs.push_back(lp.logprob);
    json alternatives = json::object();
    for (const auto& [id, logprob] : lp.top) alternatives[token_bytes(id)] = logprob;
    top.push_back(alternatives);
    offsets.push_back(offset);
    offset += lp.text.size();
  }
  return {{"tokens", tokens}, {"token_logprobs", token_logprobs}, {"top_logprobs", top},
          {"text_offset", offsets}};
}

json completion_json(const AnswerHeader& h, const std::string& text,
                     const std::string& finish_reason, const json& logprobs, const json& usage,
                     const json& metrics) {
  json j = header_json(h, /*chunk=*/false);
  json content = h.endpoint == Endpoint::Chat
                     ? json{{"role", "assistant"}, {"content", text}, {"refusal", nullptr}}
                     : json(text);
  j["choices"] = json::array({choice_json(h, content, finish_reason, logprobs, false)});
  j["usage"] = usage;
  j["metrics"] = metrics;
  return j;
}

json role_chunk_json(const AnswerHeader& h) {
  json j = header_json(h, true);
  json delta = h.endpoint == Endpoint::Chat ? json{{"role", "assistant"}, {"content", ""}} : json("");
  j["choices"] = json::array({choice_json(h, delta, nullptr, nullptr, true)});
  return j;
}

json delta_chunk_json(const AnswerHeader& h, const std::string& text, const json& logprobs) {
  json j = header_json(h, true);
  json delta = h.endpoint == Endpoint::Chat ? json{{"content", text}} : json(text);
  j["choices"] = json::array({choice_json(h, delta, nullptr, logprobs, true)});
  return j;
}

json finish_chunk_json(const AnswerHeader& h, const std::string& finish_reason,
                       const json& metrics) {
  json j = header_json(h, true);
  json delta = h.endpoint == Endpoint::Chat ? json::object() : json("");
  j["choices"] = json::array({choice_json(h, delta, finish_reason, nullptr, true)});
  j["metrics"] = metrics;
  return j;
}

json usage_chunk_json(const AnswerHeader& h, const json& usage) {
  json j = header_json(h, true);
  j["choices"] = json::array();
  j["usage"] = usage;
  return j;
}

std::string sse_event(const json& j) { return "data: " + dump_json(j) + "\n\n"; }

}  // namespace cpuchat::server
