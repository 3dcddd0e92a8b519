// The whole HTTP surface, in process, over real sockets, with a scripted model
// (fake_model.h): streaming, errors, auth, CORS, queueing, disconnects, drain, shutdown.
#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <thread>

#include "fake_model.h"
#include "server/server.h"

using namespace cpuchat::server;
using namespace cpuchat::server::testing;
using nlohmann::json;

namespace {

const unsigned char kIndex[] = "<!doctype html><title>cpuchat</title>";
const unsigned char kCss[] = "body{}";
const cpuchat::WebAsset kAssets[] = {{"/index.html", kIndex, sizeof kIndex - 1},
                                     {"/style.css", kCss, sizeof kCss - 1}};

struct Harness {
  explicit Harness(ApiServerConfig cfg = {}, FakeConfig fake = {}, int n_models = 1) {
    cfg.assets = kAssets;
    cfg.asset_count = 2;
    cfg.expected_models = n_models;
    fake.parallel = cfg.parallel;
    fake.max_queue = cfg.max_queue;
    server = std::make_unique<ApiServer>(cfg);
    port = server->bind("127.0.0.1", 0);
    thread = std::thread([this] { server->listen(); });
    while (!server->listening()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    std::vector<std::unique_ptr<ServedModel>> models;
    models.push_back(std::make_unique<FakeModel>(fake));
    if (n_models > 1) {
      FakeConfig second = fake;
      second.backend = "bf16";
      models.push_back(std::make_unique<FakeModel>(second));
    }
    server->set_models(std::move(models));
  }
  ~Harness() {
    server->begin_shutdown();
    server->wait_idle(2000);
    server->stop();
    thread.join();
  }
  httplib::Client client() {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(10, 0);
    return c;
  }
  httplib::Result post(const std::string& path, const std::string& body, httplib::Headers h = {}) {
    return client().Post(path.c_str(), h, body, "application/json");
  }
  httplib::Result get(const std::string& path, httplib::Headers h = {}) { return client().Get(path.c_str(), h); }

  // Streams a request; `on_event` sees each `data:` payload and may return false to hang up.
  int stream(const std::string& path, const json& body, std::vector<std::string>& events,
             std::function<bool(const std::string&)> on_event = {}) {
    httplib::Request req;
    req.method = "POST";
    req.path = path;
    req.body = body.dump();
    req.set_header("Content-Type", "application/json");
    std::string buffer;
    req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
      buffer.append(data, len);
      size_t end;
      while ((end = buffer.find("\n\n")) != std::string::npos) {
        std::string ev = buffer.substr(0, end);
        buffer.erase(0, end + 2);
        EXPECT_EQ(ev.rfind("data: ", 0), 0u) << ev;
        events.push_back(ev.substr(6));
        if (on_event && !on_event(events.back())) return false;
      }
      return true;
    };
    auto c = client();
    auto res = c.send(req);
    return res ? res->status : -1;
  }

  std::string metrics_text() { return get("/metrics")->body; }
  // The value of a Prometheus sample line starting with `prefix`.
  double metric(const std::string& prefix) {
    std::string text = metrics_text();
    size_t pos = text.find("\n" + prefix);
    if (pos == std::string::npos) return -1;
    size_t sp = text.find(' ', pos + 1 + prefix.size());
    return std::stod(text.substr(sp + 1, text.find('\n', sp) - sp - 1));
  }

  std::unique_ptr<ApiServer> server;
  int port = -1;
  std::thread thread;
};

json chat_body(const std::string& content, json extra = json::object()) {
  json b = {{"messages", {{{"role", "user"}, {"content", content}}}}, {"temperature", 0}};
  for (auto& [k, v] : extra.items()) b[k] = v;
  return b;
}

void expect_error_shape(const httplib::Result& r, int status, const std::string& code = "") {
  ASSERT_TRUE(r) << "no response";
  EXPECT_EQ(r->status, status) << r->body;
  json j = json::parse(r->body, nullptr, false);
  ASSERT_TRUE(j.is_object()) << r->body;
  ASSERT_TRUE(j.contains("error")) << r->body;
  for (const char* k : {"message", "type", "param", "code"}) EXPECT_TRUE(j["error"].contains(k)) << k << " " << r->body;
  EXPECT_TRUE(j["error"]["message"].is_string());
  if (!code.empty()) EXPECT_EQ(j["error"]["code"], code) << r->body;
  EXPECT_EQ(r->get_header_value("Content-Type"), "application/json");
}

void expect_serves(Harness& h) {
  auto r = h.post("/v1/chat/completions", chat_body("hi", {{"max_tokens", 3}}).dump());
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
}

}  // namespace

TEST(HttpFake, HealthModelsInstances) {
  Harness h({}, {}, 2);
  auto health = h.get("/health");
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(json::parse(health->body)["status"], "ok");
  EXPECT_EQ(h.get("/health/live")->status, 200);
  EXPECT_EQ(health->get_header_value("X-Cpuchat-Instance"), "");  // none configured
  json models = json::parse(h.get("/v1/models")->body);
  ASSERT_EQ(models["data"].size(), 2u);
  EXPECT_EQ(models["data"][0]["id"], "fake-fp32");
  EXPECT_EQ(models["data"][1]["id"], "fake-bf16");
  EXPECT_EQ(models["data"][0]["backend"], "fp32");
  EXPECT_EQ(models["data"][0]["ctx"], 256);
  EXPECT_EQ(h.get("/v1/models/fake-bf16")->status, 200);
  json inst = json::parse(h.get("/v1/instances")->body);
  EXPECT_EQ(inst["default"], "r8g.4xlarge");
  EXPECT_GE(inst["instances"].size(), 20u);
  // model selection: bare name -> first backend; id -> that backend
  json a = json::parse(h.post("/v1/chat/completions", chat_body("x", {{"model", "fake"}}).dump())->body);
  EXPECT_EQ(a["model"], "fake-fp32");
  json b = json::parse(h.post("/v1/chat/completions", chat_body("x", {{"model", "fake-bf16"}}).dump())->body);
  EXPECT_EQ(b["model"], "fake-bf16");
  EXPECT_EQ(b["metrics"]["backend"], "bf16");
}

TEST(HttpFake, StreamingMatchesNonStreaming) {
  Harness h;
  json body = chat_body("Tell me a story", {{"max_tokens", 30}, {"seed", 1}});
  auto r = h.post("/v1/chat/completions", body.dump());
  ASSERT_EQ(r->status, 200) << r->body;
  json full = json::parse(r->body);
  EXPECT_EQ(full["object"], "chat.completion");
  std::string text = full["choices"][0]["message"]["content"];
  EXPECT_EQ(full["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(full["usage"]["completion_tokens"], 30);
  EXPECT_EQ(full["usage"]["total_tokens"], full["usage"]["prompt_tokens"].get<int>() + 30);

  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  std::vector<std::string> events;
  EXPECT_EQ(h.stream("/v1/chat/completions", body, events), 200);
  ASSERT_GE(events.size(), 4u) << (events.size() < 2 ? "" : events[1]);
  EXPECT_EQ(events.back(), "[DONE]");
  json first = json::parse(events[0]);
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  std::string streamed;
  json finish, usage;
  for (size_t i = 1; i + 1 < events.size(); ++i) {
    json e = json::parse(events[i]);
    EXPECT_EQ(e["object"], "chat.completion.chunk");
    EXPECT_EQ(e["id"], first["id"]);
    if (!e["choices"].empty() && e["choices"][0]["delta"].contains("content"))
      streamed += e["choices"][0]["delta"]["content"].get<std::string>();
    if (!e["choices"].empty() && !e["choices"][0]["finish_reason"].is_null()) finish = e;
    if (e.contains("usage")) usage = e;
  }
  EXPECT_EQ(streamed, text);
  ASSERT_TRUE(finish.is_object());
  EXPECT_EQ(finish["choices"][0]["finish_reason"], "length");
  json m = finish["metrics"];
  EXPECT_EQ(m["completion_tokens"], 30);
  EXPECT_EQ(m["model"], "fake-fp32");
  // Billed its share of the steps it took part in (alone here: all of each step).
  const double price = m["price_per_hour_usd"].get<double>();
  EXPECT_NEAR(m["total_cost_usd"].get<double>(), price * m["billed_time_s"].get<double>() / 3600, 1e-12);
  EXPECT_LE(m["billed_time_s"].get<double>(), m["total_time_s"].get<double>());
  EXPECT_NEAR(m["cost_per_million_tokens_usd"].get<double>(),
              price * m["billed_decode_time_s"].get<double>() / 3600 / (30 - 1) * 1e6,
              1e-9 * m["cost_per_million_tokens_usd"].get<double>());
  EXPECT_DOUBLE_EQ(m["mean_batch_size"].get<double>(), 1.0);
  ASSERT_TRUE(usage.is_object());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 30);
  EXPECT_TRUE(usage["choices"].empty());
  // usage comes after the finish chunk, right before [DONE]
  EXPECT_EQ(json::parse(events[events.size() - 2]), usage);
}

TEST(HttpFake, StopAndLogprobsAndTextCompletions) {
  Harness h;
  json r = json::parse(h.post("/v1/chat/completions", chat_body("x", {{"stop", ","}}).dump())->body);
  EXPECT_EQ(r["choices"][0]["message"]["content"], "Once upon a time");
  EXPECT_EQ(r["choices"][0]["finish_reason"], "stop");
  r = json::parse(h.post("/v1/chat/completions", chat_body("x", {{"max_tokens", 2}, {"logprobs", true}, {"top_logprobs", 2}}).dump())->body);
  ASSERT_EQ(r["choices"][0]["logprobs"]["content"].size(), 2u);
  EXPECT_EQ(r["choices"][0]["logprobs"]["content"][0]["top_logprobs"].size(), 2u);
  r = json::parse(h.post("/v1/completions", json{{"prompt", "Once"}, {"max_tokens", 4}}.dump())->body);
  EXPECT_EQ(r["object"], "text_completion");
  EXPECT_EQ(r["choices"][0]["text"], " upo");  // the story goes on from the prompt
  EXPECT_TRUE(r.contains("metrics"));
  std::vector<std::string> events;
  h.stream("/v1/completions", {{"prompt", "Once"}, {"max_tokens", 4}, {"stream", true}}, events);
  std::string text;
  for (size_t i = 0; i + 1 < events.size(); ++i) text += json::parse(events[i])["choices"][0]["text"].get<std::string>();
  EXPECT_EQ(text, " upo");
  EXPECT_EQ(events.back(), "[DONE]");
}

TEST(HttpFake, BadInputsGetJsonErrorsAndTheServerKeepsServing) {
  ApiServerConfig cfg;
  cfg.max_body_bytes = 64 * 1024;
  Harness h(cfg);
  struct Case { std::string method, path, body; int status; std::string code; };
  std::vector<Case> cases = {
      {"POST", "/v1/chat/completions", "{not json", 400, "invalid_json"},
      {"POST", "/v1/chat/completions", "", 400, "invalid_json"},
      {"POST", "/v1/chat/completions", "[]", 400, "invalid_json"},
      {"POST", "/v1/chat/completions", R"({"messages": "hi"})", 400, "invalid_type"},
      {"POST", "/v1/chat/completions", R"({"messages": []})", 400, "invalid_value"},
      {"POST", "/v1/chat/completions", R"({})", 400, "missing_required_parameter"},
      {"POST", "/v1/chat/completions", R"({"messages": [{"role": "user", "content": 5}]})", 400, "invalid_type"},
      {"POST", "/v1/chat/completions", R"({"messages": [{"role": "bot", "content": "x"}]})", 400, "invalid_value"},
      {"POST", "/v1/chat/completions", chat_body("x", {{"temperature", "hot"}}).dump(), 400, "invalid_type"},
      {"POST", "/v1/chat/completions", chat_body("x", {{"temperature", 3}}).dump(), 400, "invalid_value"},
      {"POST", "/v1/chat/completions", chat_body("x", {{"top_p", 0}}).dump(), 400, "invalid_value"},
      {"POST", "/v1/chat/completions", chat_body("x", {{"max_tokens", -5}}).dump(), 400, "invalid_value"},
      {"POST", "/v1/chat/completions", chat_body("x", {{"max_tokens", 1e7}}).dump(), 400, ""},
      {"POST", "/v1/chat/completions", chat_body("x", {{"n", 0}}).dump(), 400, "invalid_value"},
      {"POST", "/v1/chat/completions", chat_body("x", {{"model", "gpt-4"}}).dump(), 404, "model_not_found"},
      {"POST", "/v1/chat/completions", chat_body("x", {{"instance", "nope.large"}}).dump(), 400, "invalid_value"},
      {"POST", "/v1/chat/completions", chat_body(std::string(300, 'a')).dump(), 400, "context_length_exceeded"},
      {"POST", "/v1/chat/completions", chat_body(std::string(70 * 1024, 'a')).dump(), 413, "request_too_large"},
      {"GET", "/v1/chat/completions", "", 405, "method_not_allowed"},
      {"DELETE", "/v1/models", "", 405, "method_not_allowed"},
      {"POST", "/health", "{}", 405, "method_not_allowed"},
      {"GET", "/v1/nothing", "", 404, "unknown_route"},
      {"POST", "/nothing", "{}", 404, "unknown_route"},
      {"GET", "/v1/models/nope", "", 404, "model_not_found"},
      {"POST", "/v1/completions", R"({"prompt": 5})", 400, "invalid_type"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.method + " " + c.path + " " + c.body.substr(0, 80));
    auto cli = h.client();
    httplib::Result r = c.method == "GET"      ? cli.Get(c.path.c_str())
                        : c.method == "DELETE" ? cli.Delete(c.path.c_str())
                                               : cli.Post(c.path.c_str(), c.body, "application/json");
    expect_error_shape(r, c.status, c.code);
    if (c.status == 405) EXPECT_FALSE(r->get_header_value("Allow").empty());
    expect_serves(h);
  }
  // The context-overflow message states both numbers.
  auto r = h.post("/v1/chat/completions", chat_body(std::string(300, 'a')).dump());
  std::string msg = json::parse(r->body)["error"]["message"];
  EXPECT_NE(msg.find("256"), std::string::npos) << msg;
  EXPECT_NE(msg.find(std::to_string(1 + std::string("user: \nassistant: ").size() + 300)), std::string::npos) << msg;
}

TEST(HttpFake, MaxTokensBeyondContextStopsWithLength) {
  FakeConfig fake;
  fake.ctx = 40;
  Harness h({}, fake);
  json r = json::parse(h.post("/v1/chat/completions", chat_body("hello", {{"max_tokens", 100000}}).dump())->body);
  EXPECT_EQ(r["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(r["usage"]["prompt_tokens"].get<int>() + r["usage"]["completion_tokens"].get<int>(), 40);
}

TEST(HttpFake, ApiKeyAndCors) {
  ApiServerConfig cfg;
  cfg.api_key = "sekret";
  cfg.cors_origin = "https://chat.example";
  Harness h(cfg);
  expect_error_shape(h.post("/v1/chat/completions", chat_body("x").dump()), 401, "missing_api_key");
  expect_error_shape(h.post("/v1/chat/completions", chat_body("x").dump(), {{"Authorization", "Bearer wrong"}}), 401, "invalid_api_key");
  expect_error_shape(h.get("/v1/models"), 401);
  expect_error_shape(h.get("/metrics"), 401);
  EXPECT_EQ(h.get("/health")->status, 200);  // stays open
  EXPECT_EQ(h.get("/")->status, 200);        // the page too
  auto ok = h.post("/v1/chat/completions", chat_body("x", {{"max_tokens", 2}}).dump(), {{"Authorization", "Bearer sekret"}});
  EXPECT_EQ(ok->status, 200);
  EXPECT_EQ(ok->get_header_value("Access-Control-Allow-Origin"), "https://chat.example");
  auto pre = h.client().Options("/v1/chat/completions", {{"Origin", "https://chat.example"},
                                                         {"Access-Control-Request-Method", "POST"},
                                                         {"Access-Control-Request-Headers", "authorization,content-type"}});
  ASSERT_TRUE(pre);
  EXPECT_EQ(pre->status, 204);
  EXPECT_EQ(pre->get_header_value("Access-Control-Allow-Origin"), "https://chat.example");
  EXPECT_EQ(pre->get_header_value("Access-Control-Allow-Headers"), "authorization,content-type");  // echoed
  EXPECT_NE(pre->get_header_value("Access-Control-Allow-Methods").find("POST"), std::string::npos);
  // Errors carry the CORS header too, so the page can read them.
  EXPECT_EQ(h.get("/v1/models")->get_header_value("Access-Control-Allow-Origin"), "https://chat.example");
}

TEST(HttpFake, StaticPage) {
  Harness h;
  auto index = h.get("/");
  ASSERT_EQ(index->status, 200);
  EXPECT_EQ(index->body, std::string(reinterpret_cast<const char*>(kIndex)));
  EXPECT_EQ(index->get_header_value("Content-Type"), "text/html; charset=utf-8");
  EXPECT_EQ(index->get_header_value("Cache-Control"), "no-cache");
  std::string etag = index->get_header_value("ETag");
  ASSERT_FALSE(etag.empty());
  auto again = h.get("/index.html", {{"If-None-Match", etag}});
  EXPECT_EQ(again->status, 304);
  EXPECT_TRUE(again->body.empty());
  EXPECT_EQ(h.get("/style.css")->get_header_value("Content-Type"), "text/css; charset=utf-8");
  for (const char* bad : {"/../style.css", "/%2e%2e/style.css", "/static/../../etc/passwd", "/index.htm", "/style.css/"})
    EXPECT_EQ(h.get(bad)->status, 404) << bad;
  expect_error_shape(h.post("/", "{}"), 405);
}

TEST(HttpFake, FullQueueAnswers429WithRetryAfter) {
  ApiServerConfig cfg;
  cfg.parallel = 1;
  cfg.max_queue = 0;
  FakeConfig fake;
  fake.per_token_ms = 20;
  Harness h(cfg, fake);
  std::atomic<bool> started{false};
  std::thread busy([&] {
    std::vector<std::string> events;
    h.stream("/v1/chat/completions", chat_body("x", {{"stream", true}, {"max_tokens", 25}}), events,
             [&](const std::string&) { started = true; return true; });
  });
  while (!started) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  auto r = h.post("/v1/chat/completions", chat_body("y").dump());
  expect_error_shape(r, 429, "rate_limit_exceeded");
  EXPECT_EQ(r->get_header_value("Retry-After"), "1");
  // /health and /metrics are not starved meanwhile; readiness says the replica is full
  // (once the stream, whose first event precedes its admission, holds the slot)
  for (int i = 0; i < 200 && h.metric("cpuchat_active_requests{model=\"fake-fp32\"}") != 1; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  auto health = h.get("/health");
  EXPECT_EQ(health->status, 503);
  EXPECT_EQ(json::parse(health->body)["status"], "overloaded");
  EXPECT_EQ(h.get("/health/live")->status, 200);
  EXPECT_EQ(h.metric("cpuchat_active_requests{model=\"fake-fp32\"}"), 1);
  busy.join();
  EXPECT_EQ(h.get("/health")->status, 200);
  expect_serves(h);
}

TEST(HttpFake, QueuedRequestsWaitTheirTurn) {
  ApiServerConfig cfg;
  cfg.parallel = 1;
  cfg.max_queue = 4;
  FakeConfig fake;
  fake.per_token_ms = 5;
  Harness h(cfg, fake);
  std::vector<std::thread> clients;
  std::atomic<int> ok{0};
  for (int i = 0; i < 4; ++i)
    clients.emplace_back([&] {
      auto r = h.post("/v1/chat/completions", chat_body("q", {{"max_tokens", 10}}).dump());
      if (r && r->status == 200) ++ok;
    });
  for (auto& t : clients) t.join();
  EXPECT_EQ(ok, 4);
}

TEST(HttpFake, DisconnectStopsGenerationAndFreesTheSlot) {
  ApiServerConfig cfg;
  cfg.parallel = 1;
  cfg.max_queue = 0;
  FakeConfig fake;
  fake.per_token_ms = 30;  // the full story would take ~2.5 s
  Harness h(cfg, fake);
  std::vector<std::string> events;
  auto t0 = std::chrono::steady_clock::now();
  h.stream("/v1/chat/completions", chat_body("x", {{"stream", true}}), events,
           [&](const std::string&) { return events.size() < 4; });  // hang up after 3 tokens
  // The slot frees within about one token.
  double active = -1;
  for (int i = 0; i < 100; ++i) {
    active = h.metric("cpuchat_active_requests{model=\"fake-fp32\"}");
    if (active == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(active, 0);
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(elapsed, 1.0);
  EXPECT_LE(h.metric("cpuchat_generated_tokens_total{model=\"fake-fp32\"}"), 6);
  EXPECT_EQ(h.metric("cpuchat_generations_total{model=\"fake-fp32\",finish_reason=\"cancelled\"}"), 1);
  expect_serves(h);  // the slot serves again
}

TEST(HttpFake, FollowUpTurnReusesItsSlotsCache) {
  ApiServerConfig cfg;
  cfg.parallel = 2;
  Harness h(cfg);
  json turn1 = chat_body("Tell me about Bolt, the little robot who loves red balls.", {{"max_tokens", 20}});
  json a1 = json::parse(h.post("/v1/chat/completions", turn1.dump())->body);
  // Another conversation in between takes the other slot.
  json other = json::parse(h.post("/v1/chat/completions", chat_body("Something else entirely, please.").dump())->body);
  json turn2 = turn1;
  turn2["messages"].push_back({{"role", "assistant"}, {"content", a1["choices"][0]["message"]["content"]}});
  turn2["messages"].push_back({{"role", "user"}, {"content", "And then?"}});
  json a2 = json::parse(h.post("/v1/chat/completions", turn2.dump())->body);
  int prompt = a2["metrics"]["prompt_tokens"], processed = a2["metrics"]["prompt_tokens_processed"];
  EXPECT_GT(prompt, 80);
  EXPECT_LT(processed, 30) << "prompt " << prompt;
  EXPECT_EQ(a2["usage"]["prompt_tokens_details"]["cached_tokens"], prompt - processed);
}

TEST(HttpFake, AffinityKeysKeepConversationsWithASharedPrefixApart) {
  ApiServerConfig cfg;
  cfg.parallel = 2;
  Harness h(cfg);
  // Both conversations start with the same long system prompt, so without keys the second
  // one's first turn would take (and overwrite) the first one's slot.
  const std::string system(120, 's');
  auto first_turn = [&](const std::string& who) {
    return json{{"messages", {{{"role", "system"}, {"content", system}}, {{"role", "user"}, {"content", who}}}},
                {"max_tokens", 10}, {"temperature", 0}};
  };
  auto next_turn = [](json turn, const json& answer) {
    turn["messages"].push_back({{"role", "assistant"}, {"content", answer["choices"][0]["message"]["content"]}});
    turn["messages"].push_back({{"role", "user"}, {"content", "And then?"}});
    return turn;
  };
  json alice1 = first_turn("alice"), bob1 = first_turn("bob");
  json bob1_body = bob1;
  bob1_body["user"] = "bob";  // the body fields work like the header
  json a1 = json::parse(h.post("/v1/chat/completions", alice1.dump(), {{"X-Session-Id", "alice"}})->body);
  json b1 = json::parse(h.post("/v1/chat/completions", bob1_body.dump())->body);
  EXPECT_GE(b1["usage"]["prompt_tokens_details"]["cached_tokens"], 120);  // the shared prefix, copied
  json alice2 = next_turn(alice1, a1);
  json a2 = json::parse(h.post("/v1/chat/completions", alice2.dump(), {{"X-Session-Id", "alice"}})->body);
  // Alice's whole first turn (prompt and answer) was still in her slot.
  EXPECT_GE(a2["usage"]["prompt_tokens_details"]["cached_tokens"].get<int>(),
            a1["usage"]["prompt_tokens"].get<int>() + a1["usage"]["completion_tokens"].get<int>() - 1);
  json bob2 = next_turn(bob1, b1);
  bob2["prompt_cache_key"] = "bob";
  json b2 = json::parse(h.post("/v1/chat/completions", bob2.dump())->body);
  EXPECT_GE(b2["usage"]["prompt_tokens_details"]["cached_tokens"].get<int>(),
            b1["usage"]["prompt_tokens"].get<int>() + b1["usage"]["completion_tokens"].get<int>() - 1);
  // Bad keys are refused, not ignored.
  expect_error_shape(h.post("/v1/chat/completions", chat_body("x", {{"user", 5}}).dump()), 400, "invalid_type");
  expect_error_shape(h.post("/v1/chat/completions", chat_body("x").dump(), {{"X-Session-Id", std::string(300, 'k')}}),
                     400, "invalid_value");
}

TEST(HttpFake, ShutdownEndsOpenStreamsWithAnError) {
  FakeConfig fake;
  fake.per_token_ms = 30;
  auto h = std::make_unique<Harness>(ApiServerConfig{}, fake);
  std::vector<std::string> events;
  std::atomic<bool> started{false};
  std::thread client([&] {
    h->stream("/v1/chat/completions", chat_body("x", {{"stream", true}}), events,
              [&](const std::string&) { started = true; return true; });
  });
  while (!started) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  auto t0 = std::chrono::steady_clock::now();
  h->server->begin_shutdown();
  EXPECT_TRUE(h->server->wait_idle(2000));
  client.join();
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 1.0);
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(events.back(), "[DONE]");
  json err = json::parse(events[events.size() - 2]);
  EXPECT_EQ(err["error"]["code"], "server_shutting_down");
  EXPECT_EQ(h->get("/health")->status, 503);
  expect_error_shape(h->post("/v1/chat/completions", chat_body("x").dump()), 503);
  h.reset();
}

TEST(HttpFake, DrainLetsStreamsFinishWhileRefusingNewWork) {
  FakeConfig fake;
  fake.per_token_ms = 5;  // the story (~90 tokens) takes ~0.5 s
  ApiServerConfig cfg;
  cfg.instance_id = "replica-7";
  auto h = std::make_unique<Harness>(cfg, fake);
  std::vector<std::string> events;
  std::atomic<bool> started{false};
  int status = 0;
  std::thread client([&] {
    status = h->stream("/v1/chat/completions", chat_body("x", {{"stream", true}}), events,
                       [&](const std::string&) { started = true; return true; });
  });
  while (!started) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  h->server->begin_drain();
  // At once: not ready, new work refused; alive.
  auto health = h->get("/health");
  EXPECT_EQ(health->status, 503);
  EXPECT_EQ(json::parse(health->body)["status"], "shutting_down");
  EXPECT_EQ(health->get_header_value("X-Cpuchat-Instance"), "replica-7");
  EXPECT_EQ(h->get("/health/live")->status, 200);
  expect_error_shape(h->post("/v1/chat/completions", chat_body("y").dump()), 503, "server_shutting_down");
  EXPECT_FALSE(h->server->idle());
  EXPECT_TRUE(h->server->wait_idle(5000));
  client.join();
  EXPECT_EQ(status, 200);
  // The stream ran to its natural end: the whole story, a finish reason, [DONE].
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text;
  std::string finish;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    json e = json::parse(events[i]);
    EXPECT_FALSE(e.contains("error")) << events[i];
    const json& c = e["choices"][0];
    if (c["delta"].contains("content")) text += c["delta"]["content"].get<std::string>();
    if (c["finish_reason"].is_string()) finish = c["finish_reason"];
  }
  EXPECT_EQ(text, cpuchat::testing::kStory);
  EXPECT_EQ(finish, "stop");
  h.reset();
}

TEST(HttpFake, MetricsEndpointCounts) {
  Harness h;
  expect_serves(h);
  h.post("/v1/chat/completions", "{");
  std::string text = h.metrics_text();
  EXPECT_NE(text.find("cpuchat_http_requests_total{route=\"chat_completions\",status=\"200\"} 1"), std::string::npos) << text;
  EXPECT_NE(text.find("cpuchat_http_requests_total{route=\"chat_completions\",status=\"400\"} 1"), std::string::npos);
  EXPECT_EQ(h.metric("cpuchat_generated_tokens_total{model=\"fake-fp32\"}"), 3);
  EXPECT_EQ(h.metric("cpuchat_ttft_seconds_count{model=\"fake-fp32\"}"), 1);
  EXPECT_EQ(h.metric("cpuchat_queue_depth{model=\"fake-fp32\"}"), 0);
}
