// ApiServer: the httplib wiring of docs/API.md.
#include "server/server.h"

#include <atomic>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>

#include <spdlog/spdlog.h>

#include "server/api_error.h"
#include "server/auth.h"
#include "server/peer_watch.h"
#include "server/request_parser.h"
#include "server/structured_output.h"

namespace cpuchat::server {

using nlohmann::json;
using nlohmann::ordered_json;

namespace {

constexpr const char* kJson = "application/json";

// The API routes and their one allowed method (everything else under them is a 405).
struct Route { const char* path; const char* method; const char* name; };
const Route kRoutes[] = {
    {"/v1/chat/completions", "POST", "chat_completions"},
    {"/v1/completions", "POST", "completions"},
    {"/v1/responses", "POST", "responses"},
    {"/v1/models", "GET", "models"},
    {"/v1/instances", "GET", "instances"},
    {"/health", "GET", "health"},
    {"/health/live", "GET", "health_live"},
    {"/metrics", "GET", "metrics"},
};

bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

// A header value made of HTTP token characters, commas and spaces (a header name list, a
// request id): safe to echo back. Empty or longer than max_len: no.
bool is_header_token_list(const std::string& v, size_t max_len) {
  if (v.empty() || v.size() > max_len) return false;
  for (unsigned char c : v)
    if (!(std::isalnum(c) || std::strchr("!#$%&'*+-.^_`|~, ", c))) return false;
  return true;
}

// The content types httplib compresses when the client sends Accept-Encoding (its
// can_compress_content_type; an event stream never is).
bool compressible_type(const std::string& content_type) {
  if (starts_with(content_type, "text/event-stream")) return false;
  for (const char* t : {"text/", "application/json", "application/javascript", "application/xml",
                        "application/xhtml+xml", "image/svg+xml"})
    if (starts_with(content_type, t)) return true;
  return false;
}

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(dump_json(body), kJson);
}

bool is_known_method(const std::string& m) {
  for (const char* known : {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
    if (m == known) return true;
  return false;
}

json model_card(const std::string& id, const ModelInfo& info, const SchedulerStats& st) {
  return {{"id", id},
          {"object", "model"},
          {"created", 0},
          {"owned_by", "cpuchat"},
          {"backend", info.backend},
          {"quant", info.quant},
          {"isa", info.isa},
          {"threads", info.threads},
          {"ctx", info.ctx},
          {"format", info.format},
          {"kv_type", info.kv_type},
          {"kv_bytes_per_token", info.kv_bytes_per_token},
          {"slots", {{"total", st.slots}, {"in_use", st.busy_slots}, {"queued", st.queued}, {"max_queue", info.max_queue}}},
          {"kv_cache_bytes", {{"in_use", st.kv_bytes_in_use}, {"capacity", st.kv_bytes_capacity}}}};
}

// Name of a model for its ids: ModelInfo::name, else the path's last component / file stem.
std::string model_name(const ModelInfo& info) {
  if (!info.name.empty()) return info.name;
  std::string p = info.path;
  while (!p.empty() && p.back() == '/') p.pop_back();
  std::string base = p.substr(p.find_last_of('/') == std::string::npos ? 0 : p.find_last_of('/') + 1);
  size_t dot = base.find_last_of('.');
  return dot == std::string::npos || dot == 0 ? base : base.substr(0, dot);
}

// Waits for every generation at once: each wait() runs on a thread of its own and hands its
// events to this thread, which calls on_token(choice, event) in arrival order. on_token
// returning false, or keep_going, stops them all. One generation is waited for in place.
std::vector<GenerateResult> wait_for_choices(const std::vector<std::shared_ptr<Generation>>& gens,
                                             const std::function<bool(int, const TokenEvent&)>& on_token,
                                             const std::function<bool()>& keep_going) {
  std::vector<GenerateResult> results(gens.size());
  if (gens.size() == 1) {
    TokenCallback one;
    if (on_token) one = [&](const TokenEvent& ev) { return on_token(0, ev); };
    results[0] = gens[0]->wait(one, keep_going);
    return results;
  }
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::pair<int, TokenEvent>> events;
  size_t finished = 0;
  std::atomic<bool> stop{false};
  std::vector<std::exception_ptr> errors(gens.size());
  std::vector<std::thread> waiters;
  for (size_t i = 0; i < gens.size(); ++i)
    waiters.emplace_back([&, i] {
      try {
        TokenCallback forward;
        if (on_token)
          forward = [&](const TokenEvent& ev) {
            {
              std::lock_guard<std::mutex> lock(mu);
              events.emplace_back(int(i), ev);
            }
            cv.notify_one();
            return !stop.load();
          };
        results[i] = gens[i]->wait(forward, [&] { return !stop.load() && (!keep_going || keep_going()); });
      } catch (...) {
        errors[i] = std::current_exception();
        for (const auto& g : gens) g->cancel();  // one failed: the answer as a whole has
      }
      {
        std::lock_guard<std::mutex> lock(mu);
        ++finished;
      }
      cv.notify_one();
    });
  for (;;) {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return !events.empty() || finished == gens.size(); });
    if (events.empty()) break;  // all finished, all delivered
    std::pair<int, TokenEvent> ev = std::move(events.front());
    events.pop_front();
    lock.unlock();
    if (!stop && !on_token(ev.first, ev.second)) {
      stop = true;
      for (const auto& g : gens) g->cancel();
    }
  }
  for (std::thread& t : waiters) t.join();
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);
  return results;
}

// The metrics of n answers to one prompt, as one answer's: the prompt counted once, the
// generated tokens, times billed and costs summed, speeds over the answers together.
Metrics combined_metrics(const std::vector<GenerateResult>& results) {
  Metrics all = results.front().metrics;
  for (size_t i = 1; i < results.size(); ++i) {
    const Metrics& m = results[i].metrics;
    all.prompt_tokens_processed += m.prompt_tokens_processed;
    all.completion_tokens += m.completion_tokens;
    all.ttft_s = std::min(all.ttft_s, m.ttft_s);
    all.decode_tokens_per_s += m.decode_tokens_per_s;  // the answers decode side by side
    all.total_time_s = std::max(all.total_time_s, m.total_time_s);
    all.queue_time_s = std::max(all.queue_time_s, m.queue_time_s);
    all.billed_time_s += m.billed_time_s;
    all.billed_decode_time_s += m.billed_decode_time_s;
    all.mean_batch_size += m.mean_batch_size;
    all.instance_decode_tokens_per_s = std::max(all.instance_decode_tokens_per_s, m.instance_decode_tokens_per_s);
  }
  all.mean_batch_size /= double(results.size());
  return all;
}

}  // namespace

void send_error(httplib::Response& res, const ApiError& e) {
  if (e.status == 429) res.set_header("Retry-After", "1");
  if (e.status == 401) res.set_header("WWW-Authenticate", "Bearer");
  send_json(res, e.status, e.to_json());
}

struct ApiServer::PreparedGeneration {
  ModelEntry* entry = nullptr;
  Endpoint endpoint = Endpoint::Chat;
  AnswerHeader header;
  CompletionParams params;
  GenerateRequest request;
  Pricing pricing;
  std::vector<std::shared_ptr<Generation>> generations;  // queued on the model's engine, one per choice (n)
  PeerWatch peer;
  ResponsesTurn turn;  // Endpoint::Responses: what it adds to the chat request it runs as

  // Alive while the server runs and the client is connected.
  std::function<bool()> keep_going;

  // However the response ended (or never started), the engine stops working on it.
  ~PreparedGeneration() {
    for (auto& g : generations) g->cancel();
  }
};

ApiServer::ApiServer(ApiServerConfig cfg)
    : cfg_(std::move(cfg)), http_(cfg_.connections), static_files_(cfg_.assets, cfg_.asset_count),
      responses_(cfg_.max_stored_responses, cfg_.max_stored_response_bytes) {
  // Every connection has its own thread (HttpConnectionServer), so queued or running
  // requests never starve /health and /metrics; the connection cap bounds them all.
  http_.set_payload_max_length(cfg_.max_body_bytes);
  register_routes();
}

ApiServer::~ApiServer() = default;

int ApiServer::bind(const std::string& host, int port) { return http_.bind_exclusive(host, port, &bind_error_); }

bool ApiServer::listen() { return http_.serve(); }

void ApiServer::set_models(std::vector<std::unique_ptr<ServedModel>> models) {
  for (auto& m : models) {
    auto e = std::make_unique<ModelEntry>();
    const ModelInfo& info = m->info();
    e->name = model_name(info);
    e->backend = info.backend;
    e->id = e->name + "-" + info.backend;
    e->model = std::move(m);
    models_.push_back(std::move(e));
  }
  ready_.store(true);  // release: handlers read models_ only after seeing ready_
}

std::vector<std::string> ApiServer::model_ids() const {
  std::vector<std::string> ids;
  if (!ready_) return ids;
  for (const auto& e : models_) ids.push_back(e->id);
  return ids;
}

void ApiServer::begin_drain() {
  shutting_down_.store(true);
  if (ready_)
    for (auto& e : models_) e->model->drain();
}

void ApiServer::begin_shutdown() {
  shutting_down_.store(true);
  cancelling_.store(true);
  if (ready_)
    for (auto& e : models_) e->model->shutdown();
}

bool ApiServer::idle() const {
  if (active_generations_.load() > 0 || metrics_.active_streams() > 0) return false;
  if (ready_)  // also a request between its submit() and its wait()
    for (const auto& e : models_) {
      const SchedulerStats st = e->model->stats();
      if (st.busy_slots > 0 || st.queued > 0) return false;
    }
  return true;
}

bool ApiServer::wait_idle(int timeout_ms) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (!idle()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

void ApiServer::stop() { http_.stop_serving(); }

std::string ApiServer::route_name(const std::string& path) const {
  for (const Route& r : kRoutes)
    if (path == r.path) return r.name;
  if (starts_with(path, "/v1/models/")) return "models";
  if (starts_with(path, "/v1/responses/")) return "responses";
  if (static_files_.find(path)) return "static";
  return "other";
}

std::string ApiServer::allowed_methods(const std::string& path) const {
  for (const Route& r : kRoutes)
    if (path == r.path) return r.method;
  if (starts_with(path, "/v1/models/") || static_files_.find(path)) return "GET";
  if (starts_with(path, "/v1/responses/")) return "GET, DELETE";
  return "";
}

// ---- Routing ---------------------------------------------------------------------------

void ApiServer::register_routes() {
  http_.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    const auto handled = pre_route(req, res);
    // Answered before an announced body was read: the connection cannot go on (its next
    // bytes are that body), so it closes after this response.
    if (handled == httplib::Server::HandlerResponse::Handled &&
        ((req.has_header("Content-Length") && req.get_header_value("Content-Length") != "0") ||
         req.has_header("Transfer-Encoding")))
      res.set_header("Connection", "close");
    return handled;
  });

  http_.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
    handle_generation(req, res, Endpoint::Chat);
  });
  http_.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    handle_generation(req, res, Endpoint::TextCompletion);
  });
  register_responses_routes();

  http_.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    if (!ready_) return send_error(res, ApiError(503, "the model is still loading", "model_loading"));
    json data = json::array();
    for (const auto& e : models_) data.push_back(model_card(e->id, e->model->info(), e->model->stats()));
    send_json(res, 200, {{"object", "list"}, {"data", data}});
  });
  http_.Get("/v1/models/(.+)", [this](const httplib::Request& req, httplib::Response& res) {
    if (!ready_) return send_error(res, ApiError(503, "the model is still loading", "model_loading"));
    try {  // the ids chat accepts: "<name>-<backend>", or the bare name for the first backend
      const ModelEntry& e = resolve_model(req.matches[1].str());
      send_json(res, 200, model_card(e.id, e.model->info(), e.model->stats()));
    } catch (const ApiError& e) {
      send_error(res, e);
    }
  });

  http_.Get("/v1/instances", [this](const httplib::Request&, httplib::Response& res) {
    json list = json::array();
    for (const InstancePreset& p : instance_presets())
      list.push_back({{"name", p.name}, {"price_per_hour_usd", p.price_per_hour_usd},
                      {"vcpus", p.vcpus}, {"arch", p.arch}, {"cpu", p.cpu}});
    send_json(res, 200, {{"default", cfg_.pricing.instance},
                         {"price_per_hour_usd", cfg_.pricing.price_per_hour_usd},
                         {"instances", list}});
  });

  // Readiness (for balancers and Kubernetes readinessProbe): 503 while loading, draining,
  // or while a model's queue is full (a new request would get 429).
  http_.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    if (shutting_down_) return send_json(res, 503, {{"status", "shutting_down"}});
    if (!ready_) return send_json(res, 503, {{"status", "loading"}});
    for (const auto& e : models_) {
      const SchedulerStats st = e->model->stats();
      if (st.busy_slots >= st.slots && st.queued >= e->model->info().max_queue)
        return send_json(res, 503, {{"status", "overloaded"}, {"queued", st.queued}});
    }
    send_json(res, 200, {{"status", "ok"}});
  });
  // Liveness (Kubernetes livenessProbe): the process answers HTTP, whatever it is doing.
  http_.Get("/health/live", [](const httplib::Request&, httplib::Response& res) {
    send_json(res, 200, {{"status", "alive"}});
  });

  http_.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    std::vector<ModelGauges> gauges;
    if (ready_)
      for (const auto& e : models_) {
        const SchedulerStats st = e->model->stats();
        gauges.push_back({e->id, st.slots, st.busy_slots, st.queued, st});
      }
    res.set_content(metrics_.render(gauges, ready_ && !shutting_down_), "text/plain; version=0.0.4");
  });

  // Everything else: the page for GET, else 405 (known path) or 404. Registered last:
  // httplib tries handlers in registration order.
  http_.Get(".*", [this](const httplib::Request& req, httplib::Response& res) {
    handle_get_fallback(req, res);
  });
  auto unrouted = [this](const httplib::Request& req, httplib::Response& res) { handle_unrouted(req, res); };
  http_.Post(".*", unrouted);
  http_.Put(".*", unrouted);
  http_.Patch(".*", unrouted);
  http_.Delete(".*", unrouted);

  // Errors httplib produces itself (413 body too large, 400 bad request line) get our JSON shape.
  http_.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;  // already one of ours
    // httplib's own errors (bad request line or headers, body too large) leave the rest of
    // the connection unparsable: end it after this answer.
    res.set_header("Connection", "close");
    if (res.status == 400 && !req.method.empty() && !is_known_method(req.method)) {
      // httplib refuses a request line with a method it does not know; that is a 405.
      res.status = 405;
      res.set_header("Allow", "GET, POST, OPTIONS");
      return send_error(res, ApiError(405, "method " + req.method + " not allowed (use GET or POST)", "method_not_allowed"));
    }
    if (res.status == 413)
      return send_error(res, ApiError(413, "request body too large", "request_too_large"));
    send_error(res, ApiError(res.status, res.status == 400 ? "malformed HTTP request" : "HTTP error " + std::to_string(res.status)));
  });
  http_.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "internal error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    spdlog::error("unhandled exception: {}", what);
    send_error(res, ApiError(500, "internal error: " + what, "internal_error"));
  });

  // Counted before the response is written (the logger runs after), so a client that has
  // its answer also finds it counted in /metrics.
  http_.set_post_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    metrics_.count_request(route_name(req.path), res.status);
    serve_http10_stream_unchunked(req, res);
    // httplib gzip/brotli-compresses these types when the client accepts it: caches must
    // keep the variants apart.
    if (compressible_type(res.get_header_value("Content-Type"))) {
      const std::string vary = res.get_header_value("Vary");
      res.headers.erase("Vary");
      res.set_header("Vary", vary.empty() ? "Accept-Encoding" : vary + ", Accept-Encoding");
    }
  });
  http_.set_logger([](const httplib::Request& req, const httplib::Response& res) {
    spdlog::debug("{} {} -> {}", req.method, req.path, res.status);
  });
}

httplib::Server::HandlerResponse ApiServer::pre_route(const httplib::Request& req, httplib::Response& res) {
  using HR = httplib::Server::HandlerResponse;
  // Which replica answered: lets a client (and the fleet test) see the balancer's choice.
  if (!cfg_.instance_id.empty()) res.set_header("X-Cpuchat-Instance", cfg_.instance_id);
  // The client's X-Request-Id (for its logs and ours), else a new one.
  const std::string request_id = req.get_header_value("X-Request-Id");
  res.set_header("X-Request-Id", is_header_token_list(request_id, 128) && request_id.find(',') == std::string::npos
                                     ? request_id : new_request_id());
  if (!cfg_.cors_origin.empty()) {
    res.set_header("Access-Control-Allow-Origin", cfg_.cors_origin);
    if (cfg_.cors_origin != "*") res.set_header("Vary", "Origin");
    res.set_header("Access-Control-Expose-Headers", "Retry-After, X-Cpuchat-Instance, X-Request-Id");
  }
  if (req.method == "OPTIONS") {  // CORS preflight (or a plain OPTIONS): no auth, no body
    std::string allowed = allowed_methods(req.path);
    res.status = allowed.empty() ? 404 : 204;
    res.set_header("Allow", allowed.empty() ? "OPTIONS" : allowed + ", OPTIONS");
    if (!cfg_.cors_origin.empty()) {
      res.set_header("Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS");
      // Whatever headers the page asks for (the openai SDK sends x-stainless-*): the origin is
      // trusted, and the API key, not a header list, guards the API.
      const std::string requested = req.get_header_value("Access-Control-Request-Headers");
      res.set_header("Access-Control-Allow-Headers", is_header_token_list(requested, 2048)
                                                         ? requested : "Authorization, Content-Type, X-Session-Id");
      res.set_header("Access-Control-Max-Age", "600");
    }
    return HR::Handled;
  }
  // Only GET, POST and DELETE are served (HEAD and OPTIONS aside): refuse others before any body is read.
  if (req.method != "GET" && req.method != "POST" && req.method != "HEAD" &&
      !(req.method == "DELETE" && starts_with(req.path, "/v1/responses/"))) {
    handle_unrouted(req, res);
    return HR::Handled;
  }
  // Without Content-Length or chunked encoding httplib would read the body until the client
  // closes; HTTP says there is no body then, and we need one: 411, at once.
  if (req.method == "POST" && !req.has_header("Content-Length") &&
      req.get_header_value("Transfer-Encoding").find("chunked") == std::string::npos) {
    send_error(res, ApiError(411, "a POST needs a Content-Length header (or chunked transfer encoding)", "length_required"));
    return HR::Handled;
  }
  // The key guards the API and the metrics; /health and the page stay open.
  if (!cfg_.api_key.empty() && (starts_with(req.path, "/v1/") || req.path == "/metrics")) {
    const std::optional<std::string> token = bearer_token(req.get_header_value("Authorization"));
    if (!token) {
      send_error(res, ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", "missing_api_key"));
      return HR::Handled;
    }
    if (!same_secret(*token, cfg_.api_key)) {
      send_error(res, ApiError(401, "incorrect API key", "invalid_api_key"));
      return HR::Handled;
    }
  }
  return HR::Unhandled;
}

void ApiServer::serve_http10_stream_unchunked(const httplib::Request& req, httplib::Response& res) {
  // An HTTP/1.0 client cannot decode chunked encoding: send its stream raw, ended by the
  // close (process_request closes HTTP/1.0 connections after the response).
  if (req.version == "HTTP/1.0" && res.is_chunked_content_provider_) {
    res.is_chunked_content_provider_ = false;
    res.content_length_ = 0;
    res.headers.erase("Transfer-Encoding");
    res.set_header("Connection", "close");
  }
}

void ApiServer::handle_get_fallback(const httplib::Request& req, httplib::Response& res) {
  const StaticFile* f = static_files_.find(req.path);
  if (!f) return handle_unrouted(req, res);
  res.set_header("Cache-Control", "no-cache");  // revalidate each time: cheap with the ETag
  res.set_header("ETag", f->etag);
  res.set_header("X-Content-Type-Options", "nosniff");
  if (etag_matches(req.get_header_value("If-None-Match"), f->etag)) {
    res.status = 304;
    return;
  }
  res.status = 200;
  res.set_content(reinterpret_cast<const char*>(f->data), f->size, f->content_type);
}

void ApiServer::handle_unrouted(const httplib::Request& req, httplib::Response& res) {
  std::string allowed = allowed_methods(req.path);
  if (!allowed.empty()) {
    res.set_header("Allow", allowed);
    return send_error(res, ApiError(405, "method " + req.method + " not allowed for " + req.path +
                                             " (use " + allowed + ")",
                                    "method_not_allowed"));
  }
  send_error(res, ApiError(404, "no route for " + req.method + " " + req.path, "unknown_route"));
}

// ---- Generation ------------------------------------------------------------------------

ApiServer::ModelEntry& ApiServer::resolve_model(const std::string& requested) {
  if (requested.empty() || requested == models_.front()->name) return *models_.front();
  for (auto& e : models_)
    if (e->id == requested) return *e;
  std::string available;
  for (auto& e : models_) available += (available.empty() ? "" : ", ") + e->id;
  throw ApiError(404, "The model '" + requested + "' does not exist (available: " + available + ")",
                 "model_not_found", "model");
}

// The conversation's id, so its turns keep their slot: the X-Session-Id header (what a
// balancer hashes, docs/DEPLOY.md), else the body's prompt_cache_key, else user.
static std::string affinity_key(const httplib::Request& req, const json& body) {
  constexpr size_t kMaxKey = 256;
  std::string key = req.get_header_value("X-Session-Id");
  const char* param = "X-Session-Id";
  for (const char* field : {"prompt_cache_key", "user"}) {
    if (!key.empty()) break;
    auto it = body.find(field);
    if (it == body.end() || it->is_null()) continue;
    if (!it->is_string())
      throw ApiError(400, std::string("'") + field + "' must be a string", "invalid_type", field);
    key = it->get<std::string>();
    param = field;
  }
  if (key.size() > kMaxKey)
    throw ApiError(400, std::string(param) + " is longer than " + std::to_string(kMaxKey) + " bytes",
                   "invalid_value", param);
  return key;
}

std::shared_ptr<ApiServer::PreparedGeneration> ApiServer::prepare(const httplib::Request& req,
                                                                  Endpoint endpoint) {
  if (shutting_down_) throw ApiError(503, "the server is shutting down", "server_shutting_down");
  if (!ready_) throw ApiError(503, "the model is still loading", "model_loading");
  if (req.body.size() > cfg_.max_body_bytes)  // httplib enforces this too; belt and braces
    throw ApiError(413, "request body too large", "request_too_large");

  auto g = std::make_shared<PreparedGeneration>();
  g->endpoint = endpoint;
  json body = parse_json_object(req.body);
  std::vector<int> prompt;
  const char* prompt_param = "messages";
  if (endpoint == Endpoint::Chat) {
    ChatRequest r = parse_chat_request(body, req.body);
    g->entry = &resolve_model(r.params.model);
    prompt = chat_prompt(*g->entry->model, r);  // with the tools, if any
    g->params = std::move(r.params);
  } else if (endpoint == Endpoint::Responses) {
    prepare_responses_prompt(*g, req, prompt);
    prompt_param = "input";
  } else {
    TextCompletionRequest r = parse_completion_request(body);
    g->params = std::move(r.params);
    g->entry = &resolve_model(g->params.model);
    prompt = g->entry->model->encode_text(r.prompt);
    prompt_param = "prompt";
  }
  try {
    g->pricing = resolve_pricing(g->params.instance, g->params.price_per_hour, cfg_.pricing);
  } catch (const std::invalid_argument& e) {
    throw ApiError(400, e.what(), "invalid_value", "instance");
  }

  // Never truncate silently: the prompt plus one answer token must fit the context.
  const int ctx = g->entry->model->info().ctx;
  const int prompt_tokens = static_cast<int>(prompt.size());
  if (prompt_tokens + 1 > ctx)
    throw ApiError(400,
                   "This model's context is " + std::to_string(ctx) + " tokens, but the prompt has " +
                       std::to_string(prompt_tokens) + " tokens (at least 1 must remain for the answer). "
                       "Shorten the " + prompt_param + ".",
                   "context_length_exceeded", prompt_param);

  GenerateRequest& gr = g->request;
  gr.prompt_ids = std::move(prompt);
  // Past the context end the engine stops with "length" anyway; clamp to say so upfront.
  gr.max_tokens = std::min(g->params.max_tokens.value_or(ctx), ctx - prompt_tokens);
  gr.sampling = g->params.sampling;
  gr.stop = g->params.stop;
  gr.top_logprobs = g->params.top_logprobs;
  gr.ignore_eos = g->params.ignore_eos;
  gr.affinity_key = affinity_key(req, body);
  gr.constraint = make_constraint(*g->entry->model, g->params.output, gr.max_tokens);  // tools, formats, logit_bias
  g->header = new_answer_header(endpoint, g->entry->id);
  if (endpoint == Endpoint::Responses) {
    g->turn.id = g->header.id;
    if (g->turn.root_id.empty()) g->turn.root_id = g->turn.id;
    // A continuation goes back to the slot whose KV cache holds its conversation.
    if (gr.affinity_key.empty()) gr.affinity_key = g->turn.root_id;
  }
  g->peer = PeerWatch::find(req.local_addr, req.local_port, req.remote_addr, req.remote_port);
  PeerWatch peer = g->peer;
  g->keep_going = [this, peer] { return !cancelling_.load() && !peer.closed(); };

  // n > 1: n requests with one prompt (the engine computes it once and copies its rows into
  // the other slots), seeds seed, seed + 1, ... so a fixed seed gives a fixed set of answers.
  const int n = g->params.n;
  const ModelInfo& info = g->entry->model->info();
  if (n > info.slots + info.max_queue)
    throw ApiError(400, "n=" + std::to_string(n) + " is more answers than " + g->entry->id + " can hold at once (" +
                            std::to_string(info.slots) + " slots + " + std::to_string(info.max_queue) + " queued)",
                   "invalid_value", "n");
  try {
    for (int i = 0; i < n; ++i) {
      GenerateRequest choice = g->request;
      if (i > 0) {
        if (choice.sampling.seed) choice.sampling.seed = *choice.sampling.seed + uint64_t(i);
        choice.constraint = make_constraint(*g->entry->model, g->params.output, gr.max_tokens);  // its own state
      }
      g->generations.push_back(g->entry->model->submit(std::move(choice)));
    }
  } catch (const QueueFull&) {  // the choices already queued are cancelled with g
    throw ApiError(429, "too many requests: " + std::to_string(g->entry->model->info().max_queue) +
                            " already wait for " + g->entry->id + "; retry shortly",
                   "rate_limit_exceeded");
  } catch (const SchedulerStopped&) {
    throw ApiError(503, "the server is shutting down", "server_shutting_down");
  } catch (const ContextOverflow& e) {
    throw ApiError(400, e.what(), "context_length_exceeded", prompt_param);
  } catch (const std::invalid_argument& e) {
    throw ApiError(400, e.what(), "invalid_value", prompt_param);
  }
  return g;
}

void ApiServer::handle_generation(const httplib::Request& req, httplib::Response& res, Endpoint endpoint) {
  std::shared_ptr<PreparedGeneration> g;
  try {
    g = prepare(req, endpoint);
    if (g->params.stream) return respond_streaming(std::move(g), res);
    respond_blocking(*g, req, res);
  } catch (const ApiError& e) {
    send_error(res, e);
  } catch (const std::exception& e) {
    spdlog::error("{} {}: {}", req.method, req.path, e.what());
    send_error(res, ApiError(500, std::string("internal error: ") + e.what(), "internal_error"));
  }
}

std::vector<GenerateResult> ApiServer::run_generations(PreparedGeneration& g, const ChoiceTokenCallback& on_token) {
  struct ActiveCount {  // visible in /metrics and to wait_idle()
    std::atomic<int>& n;
    explicit ActiveCount(std::atomic<int>& c) : n(c) { ++n; }
    ~ActiveCount() { --n; }
  } active(active_generations_);
  std::vector<GenerateResult> results = wait_for_choices(g.generations, on_token, g.keep_going);
  for (const GenerateResult& result : results) {
    metrics_.observe_generation(g.entry->id, result.metrics, result.finish_reason);
    const Metrics& m = result.metrics;
    spdlog::info("{} {}: prompt {} ({} run), {} tokens, {}, ttft {:.3f}s, {:.1f} tok/s, batch {:.1f}", g.header.id,
                 g.entry->id, m.prompt_tokens, m.prompt_tokens_processed, m.completion_tokens, result.finish_reason,
                 m.ttft_s, m.decode_tokens_per_s, m.mean_batch_size);
  }
  return results;
}

json ApiServer::answer_metrics(const PreparedGeneration& g, const Metrics& m) const {
  return metrics_json(m, g.pricing, g.entry->backend, g.entry->id);
}

void ApiServer::respond_blocking(PreparedGeneration& g, const httplib::Request&, httplib::Response& res) {
  const std::vector<GenerateResult> results = run_generations(g, {});
  for (const GenerateResult& r : results)
    if (r.finish_reason == "cancelled") {
      if (cancelling_) throw ApiError(503, "the server is shutting down; generation cancelled", "server_shutting_down");
      throw ApiError(499, "client closed the connection", "client_closed");
    }
  if (g.endpoint == Endpoint::Responses) {  // one answer (the Responses API has no n)
    const GenerateResult& r = results.front();
    const ChatAnswer a = shape_answer(g.params.output, r.text, r.finish_reason);
    const json response = response_object(g.turn, g.header, response_status(a.finish_reason), output_items(g.header, a),
                                          responses_usage_json(r.metrics), answer_metrics(g, r.metrics));
    store_response(g, a, response);
    return send_json(res, 200, response);
  }
  const Metrics all = combined_metrics(results);
  json answer;
  for (size_t i = 0; i < results.size(); ++i) {
    const GenerateResult& r = results[i];
    AnswerHeader h = g.header;
    h.choice = int(i);
    json logprobs = g.request.top_logprobs >= 0
                        ? logprobs_json(g.endpoint, r.logprobs,
                                        [&](int id) { return g.entry->model->token_bytes(id); })
                        : json();
    const json one = g.endpoint == Endpoint::Chat  // content, or the tool calls in it
                         ? chat_answer_json(h, shape_answer(g.params.output, r.text, r.finish_reason), logprobs,
                                            usage_json(all), answer_metrics(g, all))
                         : completion_json(h, r.text, r.finish_reason, logprobs, usage_json(all), answer_metrics(g, all));
    if (i == 0) answer = one;
    else answer["choices"].push_back(one["choices"][0]);
  }
  send_json(res, 200, answer);
}

void ApiServer::respond_streaming(std::shared_ptr<PreparedGeneration> g, httplib::Response& res) {
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");  // tell reverse proxies not to buffer the stream
  metrics_.stream_opened();
  // The releaser runs once the response is over however it ended: the stream count
  // drops even if httplib never called the provider.
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, g](size_t, httplib::DataSink& sink) {
        run_stream(*g, sink);
        sink.done();
        return true;
      },
      [this](bool) { metrics_.stream_closed(); });
}

void ApiServer::run_stream(PreparedGeneration& g, httplib::DataSink& sink) {
  bool write_failed = false;
  auto send = [&](const std::string& event) {
    if (!write_failed && !sink.write(event.data(), event.size())) write_failed = true;
    return !write_failed;
  };
  // Responses streams typed events made from the chat chunks the shaper produces.
  const bool responses = g.endpoint == Endpoint::Responses;
  std::optional<ResponsesStream> typed;
  if (responses) typed.emplace(g.turn, g.header);
  auto send_chunk = [&](json chunk) {
    if (responses) {
      const std::string events = typed->push(chunk);
      return events.empty() || send(events);
    }
    if (g.params.include_usage) chunk["usage"] = nullptr;  // as OpenAI: only the last chunk has it
    return send(sse_event(chunk));
  };
  auto send_error_event = [&](const ApiError& e) {
    if (responses) {
      send(typed->failed(e));
      return;
    }
    send(sse_event(e.to_json()));
    send(kSseDone);
  };
  auto cancel_all = [&] {
    for (auto& gen : g.generations) gen->cancel();
  };
  try {
    // Each choice (n > 1) streams its own deltas under its index, interleaved as they come.
    struct ChoiceStream {
      AnswerHeader header, chat_header;  // with the choice's index; the chat one the shaper refers to
      std::string streamed;  // text sent so far
      std::optional<ChatStreamShaper> shaper;  // content or tool-call deltas (chat chunks, also for Responses)
    };
    std::vector<ChoiceStream> choices(g.generations.size());  // never resized: the shapers point into it
    bool started = !responses || send(typed->start());
    for (size_t i = 0; i < choices.size() && started; ++i) {
      ChoiceStream& c = choices[i];
      c.header = g.header;
      c.header.choice = int(i);
      c.chat_header = c.header;
      c.chat_header.endpoint = Endpoint::Chat;
      c.shaper.emplace(c.chat_header, g.params.output);
      if (g.endpoint == Endpoint::Chat) started = send_chunk(role_chunk_json(c.header));
    }
    if (!started) return cancel_all();

    auto token_bytes = [&](int id) { return g.entry->model->token_bytes(id); };
    auto send_delta = [&](ChoiceStream& c, const std::string& text, const json& lp) {
      if (g.endpoint == Endpoint::TextCompletion) return send_chunk(delta_chunk_json(c.header, text, lp));
      for (const json& chunk : c.shaper->push(text, lp))
        if (!send_chunk(chunk)) return false;
      return true;
    };
    std::vector<GenerateResult> results = run_generations(g, [&](int choice, const TokenEvent& ev) {
      if (!g.keep_going()) return false;
      if (ev.text.empty() && !ev.logprob) return true;  // text held back (partial character / stop string)
      ChoiceStream& c = choices[size_t(choice)];
      json lp = ev.logprob ? logprobs_json(g.endpoint, {*ev.logprob}, token_bytes, c.streamed.size()) : json();
      c.streamed += ev.text;
      return send_delta(c, ev.text, lp);
    });
    if (write_failed) return;  // the client is gone: nobody to tell
    for (const GenerateResult& r : results)
      if (r.finish_reason == "cancelled") {
        if (cancelling_) send_error_event(ApiError(503, "the server is shutting down; generation cancelled", "server_shutting_down"));
        return;
      }
    for (size_t i = 0; i < choices.size(); ++i) {
      ChoiceStream& c = choices[i];
      GenerateResult& r = results[i];
      // Whatever the engine held back and only released in the final text.
      if (r.text.size() > c.streamed.size() && r.text.compare(0, c.streamed.size(), c.streamed) == 0)
        send_delta(c, r.text.substr(c.streamed.size()), json());
      if (g.endpoint != Endpoint::TextCompletion)
        for (const json& chunk : c.shaper->finish(r.text, r.finish_reason)) send_chunk(chunk);
      if (responses) {
        ChatAnswer answer;
        json response;
        send(typed->finish(r.finish_reason, responses_usage_json(r.metrics), answer_metrics(g, r.metrics), &answer, &response));
        store_response(g, answer, response);
        return;
      }
      send_chunk(finish_chunk_json(c.header, r.finish_reason, answer_metrics(g, r.metrics)));
    }
    if (g.params.include_usage) send(sse_event(usage_chunk_json(g.header, usage_json(combined_metrics(results)))));
    send(kSseDone);
  } catch (const ApiError& e) {
    send_error_event(e);
  } catch (const std::exception& e) {
    spdlog::error("stream {}: {}", g.header.id, e.what());
    send_error_event(ApiError(500, std::string("internal error: ") + e.what(), "internal_error"));
  }
}

// ---- Responses API (responses_api.h) ---------------------------------------------------

void ApiServer::register_responses_routes() {
  http_.Post("/v1/responses", [this](const httplib::Request& req, httplib::Response& res) {
    handle_generation(req, res, Endpoint::Responses);
  });
  auto not_found = [](const std::string& id) {
    return ApiError(404, "Response with id '" + id + "' not found (never stored, deleted, or evicted from the store)",
                    "response_not_found", "response_id");
  };
  http_.Get("/v1/responses/([^/]+)", [this, not_found](const httplib::Request& req, httplib::Response& res) {
    const std::optional<StoredResponse> r = responses_.get(req.matches[1].str());
    if (!r) return send_error(res, not_found(req.matches[1].str()));
    send_json(res, 200, r->response);
  });
  http_.Delete("/v1/responses/([^/]+)", [this, not_found](const httplib::Request& req, httplib::Response& res) {
    const std::string id = req.matches[1].str();
    if (!responses_.erase(id)) return send_error(res, not_found(id));
    send_json(res, 200, {{"id", id}, {"object", "response"}, {"deleted", true}});
  });
}

void ApiServer::prepare_responses_prompt(PreparedGeneration& g, const httplib::Request& req, std::vector<int>& prompt) {
  g.turn = parse_responses_request(req.body, responses_);
  ordered_json& messages = g.turn.chat_body["messages"];
  const size_t first = g.turn.instruction_messages;  // the instructions always stay
  for (;;) {
    const std::string chat_text = g.turn.chat_body.dump();
    ChatRequest r = parse_chat_request(json::parse(chat_text), chat_text);
    g.entry = &resolve_model(r.params.model);
    prompt = chat_prompt(*g.entry->model, r);  // with the tools, if any
    g.params = std::move(r.params);
    // truncation "auto": drop the oldest turns until the prompt fits (as OpenAI), keeping the last input.
    if (!g.turn.truncation_auto || static_cast<int>(prompt.size()) < g.entry->model->info().ctx ||
        messages.size() <= first + 1)
      return;
    messages.erase(messages.begin() + first);
    while (messages.size() > first + 1 && messages[first]["role"] == "tool")  // a result without its call
      messages.erase(messages.begin() + first);
  }
}

void ApiServer::store_response(const PreparedGeneration& g, const ChatAnswer& a, const json& response) {
  if (g.turn.store) responses_.put(g.header.id, stored_response(g.turn, g.header, a, response));
}

}  // namespace cpuchat::server
