// OpenAI shapes, SSE framing, the metrics/cost extension, pricing, Prometheus text,
// the embedded page table and the serve flags.
#include <gtest/gtest.h>

#include "server/openai_api.h"
#include "server/prometheus.h"
#include "server/serve_options.h"
#include "server/static_files.h"

using namespace cpuchat::server;
using nlohmann::json;

TEST(Pricing, DefaultIsR8g4xlarge) {
  Pricing p;
  EXPECT_EQ(p.instance, "r8g.4xlarge");
  const InstancePreset* r8g = find_instance("r8g.4xlarge");
  ASSERT_TRUE(r8g);
  EXPECT_NEAR(r8g->price_per_hour_usd, 0.9424, 1e-4);
  EXPECT_DOUBLE_EQ(p.price_per_hour_usd, r8g->price_per_hour_usd);
  EXPECT_EQ(r8g->vcpus, 16);
  EXPECT_EQ(r8g->arch, "arm64");
}

TEST(Pricing, PresetsCoverFamiliesAndSizes) {
  for (const char* family : {"r8g", "c8g", "m8g", "c7i", "m7i", "r7i", "c7a"})
    for (const char* size : {"large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge"})
      EXPECT_TRUE(find_instance(std::string(family) + "." + size)) << family << "." << size;
  // Prices grow with size within a family.
  EXPECT_LT(find_instance("c8g.large")->price_per_hour_usd, find_instance("c8g.16xlarge")->price_per_hour_usd);
  EXPECT_FALSE(find_instance("r8g.huge"));
}

TEST(Pricing, ResolveOverrides) {
  Pricing base;
  EXPECT_EQ(resolve_pricing(std::nullopt, std::nullopt, base).instance, "r8g.4xlarge");
  Pricing c = resolve_pricing(std::string("c7i.2xlarge"), std::nullopt, base);
  EXPECT_EQ(c.instance, "c7i.2xlarge");
  EXPECT_NEAR(c.price_per_hour_usd, 0.357, 1e-3);
  Pricing o = resolve_pricing(std::string("c7i.2xlarge"), 2.0, base);
  EXPECT_EQ(o.instance, "c7i.2xlarge");
  EXPECT_EQ(o.price_per_hour_usd, 2.0);
  Pricing custom = resolve_pricing(std::nullopt, 3.0, base);
  EXPECT_EQ(custom.instance, "custom");
  EXPECT_EQ(custom.price_per_hour_usd, 3.0);
  EXPECT_THROW(resolve_pricing(std::string("nope.large"), std::nullopt, base), std::invalid_argument);
}

TEST(Pricing, CostFormulas) {
  Cost c = compute_cost(0.9424, 100.0, 2.0);
  ASSERT_TRUE(c.per_million_tokens_usd);
  EXPECT_NEAR(*c.per_million_tokens_usd, 0.9424 / (100.0 * 3600) * 1e6, 1e-12);
  EXPECT_NEAR(c.total_usd, 0.9424 * 2.0 / 3600, 1e-15);
  EXPECT_FALSE(compute_cost(1, 0, 1).per_million_tokens_usd);
}

TEST(OpenAiFormat, MetricsObjectHasEveryDocumentedField) {
  cpuchat::Metrics m;
  m.prompt_tokens = 31; m.prompt_tokens_processed = 5; m.completion_tokens = 64;
  m.ttft_s = 0.012; m.prompt_tokens_per_s = 2500; m.decode_tokens_per_s = 850.2; m.total_time_s = 0.09;
  json j = metrics_json(m, Pricing{}, "int4", "stories260K-int4");
  for (const char* k : {"ttft_s", "prompt_tokens", "prompt_tokens_processed", "prompt_tokens_per_s",
                        "completion_tokens", "decode_tokens_per_s", "total_time_s", "instance",
                        "price_per_hour_usd", "cost_per_million_tokens_usd", "total_cost_usd", "backend",
                        "model", "interactive"})
    EXPECT_TRUE(j.contains(k)) << k;
  EXPECT_EQ(j["instance"], "r8g.4xlarge");
  EXPECT_NEAR(j["cost_per_million_tokens_usd"].get<double>(), 0.9424 / (850.2 * 3600) * 1e6, 1e-9);
  EXPECT_NEAR(j["total_cost_usd"].get<double>(), 0.9424 * 0.09 / 3600, 1e-15);
  EXPECT_EQ(j["interactive"]["ttft_ok"], true);
  EXPECT_EQ(j["interactive"]["decode_ok"], true);
  m.ttft_s = 1.5; m.decode_tokens_per_s = 9;
  j = metrics_json(m, Pricing{}, "int4", "x");
  EXPECT_EQ(j["interactive"]["ttft_ok"], false);
  EXPECT_EQ(j["interactive"]["decode_ok"], false);
  json u = usage_json(m);
  EXPECT_EQ(u["total_tokens"], 95);
  EXPECT_EQ(u["prompt_tokens_details"]["cached_tokens"], 26);
}

TEST(OpenAiFormat, ChatChunksAndSse) {
  AnswerHeader h = new_answer_header(Endpoint::Chat, "m-fp32");
  EXPECT_EQ(h.id.rfind("chatcmpl-", 0), 0u);
  EXPECT_NE(h.id, new_answer_header(Endpoint::Chat, "m").id);
  json role = role_chunk_json(h);
  EXPECT_EQ(role["object"], "chat.completion.chunk");
  EXPECT_EQ(role["choices"][0]["delta"]["role"], "assistant");
  EXPECT_TRUE(role["choices"][0]["finish_reason"].is_null());
  json d = delta_chunk_json(h, "h\xC3\xA9", nullptr);
  EXPECT_EQ(d["choices"][0]["delta"]["content"], "h\xC3\xA9");
  EXPECT_EQ(d["id"], h.id);
  json f = finish_chunk_json(h, "length", {{"x", 1}});
  EXPECT_EQ(f["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(f["metrics"]["x"], 1);
  json u = usage_chunk_json(h, {{"prompt_tokens", 1}});
  EXPECT_TRUE(u["choices"].empty());
  std::string ev = sse_event({{"a", 1}});
  EXPECT_EQ(ev, "data: {\"a\":1}\n\n");
  EXPECT_STREQ(kSseDone, "data: [DONE]\n\n");
  // Invalid UTF-8 never throws on the wire.
  EXPECT_NO_THROW(sse_event(delta_chunk_json(h, "\xff", nullptr)));
}

TEST(OpenAiFormat, CompletionObjects) {
  AnswerHeader h = new_answer_header(Endpoint::Chat, "m");
  json c = completion_json(h, "hello", "stop", nullptr, {{"prompt_tokens", 1}}, {{"ttft_s", 0.1}});
  EXPECT_EQ(c["object"], "chat.completion");
  EXPECT_EQ(c["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(c["choices"][0]["message"]["content"], "hello");
  EXPECT_EQ(c["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(c["metrics"]["ttft_s"], 0.1);
  AnswerHeader t = new_answer_header(Endpoint::TextCompletion, "m");
  json tc = completion_json(t, "hi", "length", nullptr, json::object(), json::object());
  EXPECT_EQ(tc["object"], "text_completion");
  EXPECT_EQ(tc["choices"][0]["text"], "hi");
  EXPECT_EQ(delta_chunk_json(t, "x", nullptr)["choices"][0]["text"], "x");
}

TEST(OpenAiFormat, Logprobs) {
  cpuchat::TokenLogprob lp{104, "h", -0.5f, {{104, -0.5f}, {105, -1.5f}}};
  auto bytes = [](int id) { return std::string(1, static_cast<char>(id)); };
  json chat = logprobs_json(Endpoint::Chat, {lp}, bytes);
  EXPECT_EQ(chat["content"][0]["token"], "h");
  EXPECT_EQ(chat["content"][0]["bytes"], json({104}));
  EXPECT_EQ(chat["content"][0]["top_logprobs"].size(), 2u);
  EXPECT_EQ(chat["content"][0]["top_logprobs"][1]["token"], "i");
  json legacy = logprobs_json(Endpoint::TextCompletion, {lp, lp}, bytes, 3);
  EXPECT_EQ(legacy["tokens"], json({"h", "h"}));
  EXPECT_EQ(legacy["text_offset"], json({3, 4}));
  EXPECT_EQ(legacy["top_logprobs"][0]["i"], -1.5f);
}

TEST(Prometheus, RendersCountersGaugesAndHistograms) {
  ServerMetrics m;
  m.count_request("chat_completions", 200);
  m.count_request("chat_completions", 200);
  m.count_request("chat_completions", 400);
  cpuchat::Metrics g;
  g.prompt_tokens = 10; g.prompt_tokens_processed = 4; g.completion_tokens = 7;
  g.ttft_s = 0.03; g.decode_tokens_per_s = 120;
  m.observe_generation("m-int4", g, "stop");
  m.stream_opened();
  std::string text = m.render({{"m-int4", 2, 1, 3}}, true);
  auto has = [&](const std::string& line) { return text.find(line) != std::string::npos; };
  EXPECT_TRUE(has("cpuchat_http_requests_total{route=\"chat_completions\",status=\"200\"} 2\n")) << text;
  EXPECT_TRUE(has("cpuchat_http_requests_total{route=\"chat_completions\",status=\"400\"} 1\n"));
  EXPECT_TRUE(has("cpuchat_generated_tokens_total{model=\"m-int4\"} 7\n"));
  EXPECT_TRUE(has("cpuchat_prompt_tokens_total{model=\"m-int4\"} 10\n"));
  EXPECT_TRUE(has("cpuchat_ttft_seconds_bucket{model=\"m-int4\",le=\"0.025\"} 0\n"));
  EXPECT_TRUE(has("cpuchat_ttft_seconds_bucket{model=\"m-int4\",le=\"0.05\"} 1\n"));
  EXPECT_TRUE(has("cpuchat_ttft_seconds_bucket{model=\"m-int4\",le=\"+Inf\"} 1\n"));
  EXPECT_TRUE(has("cpuchat_ttft_seconds_count{model=\"m-int4\"} 1\n"));
  EXPECT_TRUE(has("cpuchat_decode_tokens_per_second_bucket{model=\"m-int4\",le=\"200\"} 1\n"));
  EXPECT_TRUE(has("cpuchat_queue_depth{model=\"m-int4\"} 3\n"));
  EXPECT_TRUE(has("cpuchat_active_requests{model=\"m-int4\"} 1\n"));
  EXPECT_TRUE(has("cpuchat_active_streams 1\n"));
  EXPECT_TRUE(has("# TYPE cpuchat_ttft_seconds histogram\n"));
  EXPECT_TRUE(has("cpuchat_ready 1\n"));
}

namespace {
const unsigned char kIndex[] = "<html>hi</html>";
const unsigned char kJs[] = "console.log(1)";
const cpuchat::WebAsset kAssets[] = {{"/index.html", kIndex, sizeof kIndex - 1}, {"/app.js", kJs, sizeof kJs - 1}};
}  // namespace

TEST(StaticFiles, ExactLookupOnly) {
  StaticFiles files(kAssets, 2);
  ASSERT_TRUE(files.find("/"));
  EXPECT_EQ(files.find("/")->path, "/index.html");
  EXPECT_EQ(files.find("/index.html")->content_type, "text/html; charset=utf-8");
  EXPECT_EQ(files.find("/app.js")->content_type, "text/javascript; charset=utf-8");
  for (const char* bad : {"/../app.js", "/./app.js", "//app.js", "/app.js/", "/APP.JS", "app.js",
                          "/%2e%2e/app.js", "/etc/passwd", "/index.html%00"})
    EXPECT_FALSE(files.find(bad)) << bad;
  EXPECT_EQ(StaticFiles::content_type_for("/a.css"), "text/css; charset=utf-8");
  EXPECT_EQ(StaticFiles::content_type_for("/a.svg"), "image/svg+xml");
  // ETags differ by content and are quoted.
  EXPECT_NE(files.find("/")->etag, files.find("/app.js")->etag);
  EXPECT_EQ(files.find("/")->etag.front(), '"');
  EXPECT_TRUE(etag_matches(files.find("/")->etag, files.find("/")->etag));
  EXPECT_TRUE(etag_matches("\"x\", W/" + files.find("/")->etag, files.find("/")->etag));
  EXPECT_TRUE(etag_matches("*", "\"y\""));
  EXPECT_FALSE(etag_matches("\"x\"", files.find("/")->etag));
  EXPECT_FALSE(etag_matches("", files.find("/")->etag));
}

namespace {
ServeOptions parse(std::vector<std::string> args) {
  args.insert(args.begin(), "serve");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  return parse_serve_args(static_cast<int>(argv.size()), argv.data());
}
}  // namespace

TEST(ServeOptions, ParsesFlags) {
  ServeOptions o = parse({"--model", "m", "--backend", "int4,bf16", "--port=0", "--parallel", "3",
                          "--max-queue", "0", "--instance", "c8g.2xlarge", "--price-per-hour", "0.5",
                          "--api-key", "k", "--cors-origin", "*", "--quant", "q4c", "--cache-packed",
                          "--threads", "2", "--ctx", "256", "--host", "0.0.0.0", "--max-body-bytes", "2048"});
  EXPECT_EQ(o.model_path, "m");
  ASSERT_EQ(o.backends.size(), 2u);
  EXPECT_EQ(o.backends[0], cpuchat::Backend::INT4);
  EXPECT_EQ(o.backends[1], cpuchat::Backend::BF16);
  EXPECT_EQ(o.port, 0);
  EXPECT_EQ(o.parallel, 3);
  EXPECT_EQ(o.max_queue, 0);
  EXPECT_EQ(o.pricing.instance, "c8g.2xlarge");
  EXPECT_EQ(o.pricing.price_per_hour_usd, 0.5);
  EXPECT_EQ(o.api_key, "k");
  EXPECT_EQ(o.cors_origin, "*");
  EXPECT_EQ(o.quant, cpuchat::QuantScheme::Q4C);
  EXPECT_TRUE(o.cache_packed);
  EXPECT_EQ(o.host, "0.0.0.0");
  EXPECT_EQ(o.max_body_bytes, 2048u);
  ServeOptions d = parse({"--model", "m"});
  EXPECT_EQ(d.host, "127.0.0.1");  // local only unless told otherwise
  EXPECT_EQ(d.port, 8080);
  EXPECT_EQ(d.pricing.instance, "r8g.4xlarge");
  EXPECT_EQ(d.drain_timeout_s, 30);
  EXPECT_EQ(d.instance_id, "");  // serve then names itself host:port
  ServeOptions f = parse({"--model", "m", "--drain-timeout", "0", "--instance-id=pod-3"});
  EXPECT_EQ(f.drain_timeout_s, 0);
  EXPECT_EQ(f.instance_id, "pod-3");
  EXPECT_TRUE(parse({"--help"}).help);
}

TEST(ServeOptions, RejectsBadFlags) {
  for (std::vector<std::string> bad : std::vector<std::vector<std::string>>{
           {},  // no --model
           {"--model", "m", "--instance", "r8g.giant"},
           {"--model", "m", "--backend", "int8"},
           {"--model", "m", "--backend", "int4,int4"},
           {"--model", "m", "--port", "70000"},
           {"--model", "m", "--port", "abc"},
           {"--model", "m", "--parallel", "0"},
           {"--model", "m", "--kv-type", "fp16"},
           {"--model", "m", "--kv-type"},
           {"--model", "m", "--step-budget-ms", "0"},
           {"--model", "m", "--batch-tokens", "0"},
           {"--model", "m", "--batch-tokens", "many"},
           {"--model", "m", "--price-per-hour", "-1"},
           {"--model", "m", "--wat"},
           {"--model", "m", "--drain-timeout", "-1"},
           {"--model", "m", "--drain-timeout", "soon"},
           {"--model", "m", "--instance-id", ""},
           {"--model", "m", "--instance-id", "two words"},
           {"--model", "m", "--instance-id", "bad\r\nX-Injected: 1"},
           {"--model"}}) {
    EXPECT_THROW(parse(bad), UsageError);
  }
  try {
    parse({"--model", "m", "--instance", "r8g.giant"});
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("r8g.giant"), std::string::npos);
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);  // one line
  }
}
