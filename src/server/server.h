// The HTTP wiring: routes, auth, CORS, errors, the embedded page, and handing generations
// to each model's engine scheduler (blocking JSON answers or SSE streams). Models can be attached after the socket
// is listening, so /health reports "loading" meanwhile.
#pragma once
#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include <httplib.h>

#include "server/api_error.h"
#include "server/http_connections.h"
#include "server/openai_api.h"
#include "server/pricing.h"
#include "server/prometheus.h"
#include "server/responses_api.h"
#include "server/served_model.h"
#include "server/static_files.h"

namespace cpuchat::server {

struct ApiServerConfig {
  int parallel = 1;
  int max_queue = 16;
  int expected_models = 1;      // sizes the HTTP thread pool before models arrive
  size_t max_body_bytes = 4u << 20;
  Pricing pricing;
  std::string api_key;
  std::string cors_origin;
  const WebAsset* assets = nullptr;
  size_t asset_count = 0;
  std::string instance_id;      // sent as X-Cpuchat-Instance on every response ("": none)
  ConnectionLimits connections;  // open connections, request deadline, keep-alive
  size_t max_stored_responses = 1000;          // /v1/responses store: LRU by count ...
  size_t max_stored_response_bytes = 256u << 20;  // ... and by bytes
};

class ApiServer {
 public:
  explicit ApiServer(ApiServerConfig cfg);
  ~ApiServer();

  // Binds exclusively (a port in use is an error, never shared); port 0 picks a free one.
  // Returns the port, or -1 with bind_error() saying why.
  int bind(const std::string& host, int port);
  // Names this replica in X-Cpuchat-Instance (call before listen(); port 0 is known only after bind()).
  void set_instance_id(std::string id) { cfg_.instance_id = std::move(id); }
  const std::string& bind_error() const { return bind_error_; }
  // Serves until stop() (blocks; run it on its own thread).
  bool listen();
  bool listening() const { return http_.serving(); }

  // Attaches the loaded models (model id "<name>-<backend>") and starts serving them.
  void set_models(std::vector<std::unique_ptr<ServedModel>> models);
  bool ready() const { return ready_.load(); }
  std::vector<std::string> model_ids() const;

  // Graceful drain: /health turns 503 "shutting_down" and new generations get 503
  // server_shutting_down, while queued and running ones (streams too) run to their end.
  void begin_drain();
  // Shutdown, in order: refuse new work and cancel generations (open streams get an
  // error event and [DONE]); wait (bounded) until they have finished; stop listening.
  // After a drain it cancels only what outlived the drain timeout.
  void begin_shutdown();
  bool idle() const;  // no generation queued, running or streaming
  bool wait_idle(int timeout_ms);
  void stop();

  int active_generations() const { return active_generations_.load(); }

 private:
  struct ModelEntry {
    std::string id, name, backend;
    std::unique_ptr<ServedModel> model;  // its engine owns the slots, the queue and the batching
  };
  struct PreparedGeneration;  // a validated request, ready to run

  void register_routes();
  httplib::Server::HandlerResponse pre_route(const httplib::Request& req, httplib::Response& res);
  void handle_generation(const httplib::Request& req, httplib::Response& res, Endpoint endpoint);
  std::shared_ptr<PreparedGeneration> prepare(const httplib::Request& req, Endpoint endpoint);
  void respond_blocking(PreparedGeneration& g, const httplib::Request& req, httplib::Response& res);
  void respond_streaming(std::shared_ptr<PreparedGeneration> g, httplib::Response& res);
  void run_stream(PreparedGeneration& g, httplib::DataSink& sink);
  void register_responses_routes();
  void prepare_responses_prompt(PreparedGeneration& g, const httplib::Request& req, std::vector<int>& prompt);
  void store_response(const PreparedGeneration& g, const ChatAnswer& a, const nlohmann::json& response);
  // Waits for every choice of g (n > 1: all at once); on_token(choice, event) sees each
  // event on the calling thread, and stops the answers by returning false.
  using ChoiceTokenCallback = std::function<bool(int choice, const TokenEvent&)>;
  std::vector<GenerateResult> run_generations(PreparedGeneration& g, const ChoiceTokenCallback& on_token);
  nlohmann::json answer_metrics(const PreparedGeneration& g, const Metrics& m) const;

  ModelEntry& resolve_model(const std::string& requested);
  void handle_get_fallback(const httplib::Request& req, httplib::Response& res);
  void handle_unrouted(const httplib::Request& req, httplib::Response& res);
  static void serve_http10_stream_unchunked(const httplib::Request& req, httplib::Response& res);
  std::string route_name(const std::string& path) const;
  std::string allowed_methods(const std::string& path) const;  // "" for unknown paths

  ApiServerConfig cfg_;
  HttpConnectionServer http_;
  std::string bind_error_;
  StaticFiles static_files_;
  ServerMetrics metrics_;
  ResponseStore responses_;  // conversations for previous_response_id and GET /v1/responses/{id}
  std::vector<std::unique_ptr<ModelEntry>> models_;  // written once, before ready_
  std::atomic<bool> ready_{false};
  std::atomic<bool> shutting_down_{false};  // draining or stopping: refuse new work
  std::atomic<bool> cancelling_{false};      // stopping: cut what still runs
  std::atomic<int> active_generations_{0};
};

void send_error(httplib::Response& res, const ApiError& e);

}  // namespace cpuchat::server
