// `cpuchat serve`: flags, engines, the HTTP server's lifecycle and clean shutdown.
#include <pthread.h>
#include <unistd.h>
#include <signal.h>

#include <chrono>
#include <condition_variable>
#include <future>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <thread>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "cpuchat/server.h"
#include "server/serve_options.h"
#include "server/server.h"

namespace cpuchat {

using namespace cpuchat::server;

namespace {

// Where the main thread waits: for the models to load, then for a signal.
struct Lifecycle {
  std::mutex mu;
  std::condition_variable cv;
  bool loaded = false, load_failed = false, stop_requested = false;
  bool forced = false;  // a second signal: stop draining, exit now
  bool awaiting_second_signal = false;
  int signal = 0;
  std::string error;
};

std::string describe(const ModelInfo& info) {
  std::string s = info.name + " (" + info.format + "), backend " + info.backend;
  if (!info.quant.empty()) s += "/" + info.quant;
  s += ", ISA " + (info.isa.empty() ? std::string("torch") : info.isa);
  s += ", " + std::to_string(info.threads) + " threads, ctx " + std::to_string(info.ctx);
  s += ", " + std::to_string(info.slots) + " slots, KV " + info.kv_type + " (" +
       std::to_string(info.kv_bytes_per_token) + " B/token)";
  char load[32];
  snprintf(load, sizeof load, ", loaded in %.2fs", info.load_time_s);
  return s + load;
}

}  // namespace

int serve_command(int argc, char** argv) {
  ServeOptions opts;
  try {
    opts = parse_serve_args(argc, argv);
  } catch (const UsageError& e) {
    fprintf(stderr, "cpuchat serve: error: %s\n", e.what());
    return 2;
  }
  if (opts.help) {
    fputs(serve_usage(), stdout);
    return 0;
  }

  // Logs go to stderr; stdout carries only the "listening on" line that tests read.
  spdlog::set_default_logger(spdlog::stderr_color_mt("cpuchat-serve"));

  // Signals are taken by one thread with sigwait; block them before any thread starts
  // (httplib's pool, the engine's compute threads) so they all inherit the mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);  // a client that hangs up must not kill the server

  ApiServerConfig cfg;
  cfg.parallel = opts.parallel;
  cfg.max_queue = opts.max_queue;
  cfg.expected_models = static_cast<int>(opts.backends.size());
  cfg.max_body_bytes = opts.max_body_bytes;
  cfg.connections.max_connections = opts.max_connections;
  cfg.pricing = opts.pricing;
  cfg.api_key = opts.api_key;
  cfg.cors_origin = opts.cors_origin;
  cfg.max_stored_responses = opts.max_stored_responses;
  cfg.assets = web_assets(&cfg.asset_count);
  ApiServer server(cfg);

  const int port = server.bind(opts.host, opts.port);
  if (port < 0) {
    spdlog::error("cannot bind {}:{}: {}", opts.host, opts.port, server.bind_error());
    fprintf(stderr, "cpuchat serve: error: cannot listen on %s:%d: %s\n", opts.host.c_str(), opts.port,
            server.bind_error().c_str());
    return 1;
  }
  const std::string url = "http://" + (opts.host.find(':') != std::string::npos ? "[" + opts.host + "]" : opts.host) +
                          ":" + std::to_string(port);
  server.set_instance_id(opts.instance_id.empty() ? url.substr(strlen("http://")) : opts.instance_id);
  printf("listening on %s\n", url.c_str());
  fflush(stdout);
  spdlog::info("listening on {} (loading the model{}...)", url, opts.backends.size() > 1 ? "s" : "");
  spdlog::info("pricing: {} at ${}/h", opts.pricing.instance, opts.pricing.price_per_hour_usd);
  if (!opts.api_key.empty()) spdlog::info("API key required on /v1/* and /metrics");
  std::promise<void> http_done;
  std::future<void> http_stopped = http_done.get_future();
  std::thread http_thread([&server, &http_done] {
    server.listen();
    http_done.set_value();
  });

  Lifecycle life;
  // First signal: drain. Second: stop draining. The thread then ends, so a third signal
  // (still blocked) cannot hang anything.
  std::thread signal_thread([&] {
    for (int n = 0; n < 2; ++n) {
      int sig = 0;
      sigwait(&stop_signals, &sig);
      std::lock_guard<std::mutex> lock(life.mu);
      if (n == 0) {
        life.stop_requested = true;
        life.signal = sig;
      } else {
        life.forced = true;
      }
      life.awaiting_second_signal = n == 0 && life.loaded;  // still loading: one signal is enough
      life.cv.notify_all();
      if (!life.awaiting_second_signal) break;
    }
  });

  // Load in the background so /health answers "loading" meanwhile and a signal during a
  // long load still stops the process promptly.
  std::thread loader([&] {
    std::vector<std::unique_ptr<ServedModel>> models;
    try {
      for (Backend b : opts.backends) {
        LoadOptions lo;
        lo.model_path = opts.model_path;
        lo.tokenizer_path = opts.tokenizer_path;
        lo.backend = b;
        lo.quant = opts.quant;
        lo.threads = opts.threads;
        lo.ctx = opts.ctx;
        lo.cache_packed = opts.cache_packed;
        lo.kv_type = opts.kv_type;
        lo.batch.slots = opts.parallel;
        lo.batch.max_queue = opts.max_queue;
        lo.batch.step_budget_ms = opts.step_budget_ms;
        lo.batch.batch_tokens = opts.batch_tokens;
        models.push_back(load_engine_model(lo));
        spdlog::info("model {}", describe(models.back()->info()));
      }
      server.set_models(std::move(models));
      std::lock_guard<std::mutex> lock(life.mu);
      life.loaded = true;
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lock(life.mu);
      life.load_failed = true;
      life.error = e.what();
    }
    life.cv.notify_all();
  });

  std::unique_lock<std::mutex> lock(life.mu);
  life.cv.wait(lock, [&] { return life.loaded || life.load_failed || life.stop_requested; });
  if (life.load_failed) {
    lock.unlock();
    spdlog::error("cannot load the model: {}", life.error);
    fprintf(stderr, "cpuchat serve: error: %s\n", life.error.c_str());
    fflush(stderr);
    _exit(1);  // threads are blocked in sigwait/listen: skip joining them
  }
  if (life.loaded) {
    std::string ids;
    for (const std::string& id : server.model_ids()) ids += (ids.empty() ? "" : ", ") + id;
    spdlog::info("ready: serving {} on {} ({} slot(s) each, queue {})", ids, url, opts.parallel, opts.max_queue);
    life.cv.wait(lock, [&] { return life.stop_requested; });
  }
  const int sig = life.signal;
  const bool still_loading = !life.loaded;
  lock.unlock();

  const char* sig_name = sig == SIGINT ? "SIGINT" : "SIGTERM";
  if (!still_loading && opts.drain_timeout_s > 0) {
    // Graceful drain: /health is 503 from now on, so balancers route away, while what runs finishes.
    spdlog::info("{} received: draining (up to {}s; a second signal exits at once)", sig_name, opts.drain_timeout_s);
    server.begin_drain();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(opts.drain_timeout_s);
    lock.lock();
    while (!life.forced && !server.idle() && std::chrono::steady_clock::now() < deadline)
      life.cv.wait_for(lock, std::chrono::milliseconds(20));
    const bool forced = life.forced;
    lock.unlock();
    if (forced) {
      spdlog::warn("second signal: exiting without waiting for {} generation(s)", server.active_generations());
      server.begin_shutdown();  // open streams get an error event, if they can take it at once
      server.wait_idle(200);
      spdlog::default_logger()->flush();
      _exit(1);
    }
    if (server.idle()) spdlog::info("drained");
    else spdlog::warn("drain timeout: cancelling {} generation(s)", server.active_generations());
  } else {
    spdlog::info("{} received: shutting down", sig_name);
  }
  server.begin_shutdown();
  if (!server.wait_idle(5000)) spdlog::warn("some streams did not finish in time");
  server.stop();
  // The signal thread may still wait for a second signal: send it one (it is blocked everywhere).
  {
    std::lock_guard<std::mutex> guard(life.mu);
    if (life.awaiting_second_signal) pthread_kill(signal_thread.native_handle(), SIGTERM);
  }
  signal_thread.join();
  // httplib joins its workers, and one idling on a keep-alive connection only notices after
  // its timeout (5 s). Every answer has been sent by now, so do not wait for idle sockets.
  const bool http_joined = http_stopped.wait_for(std::chrono::milliseconds(500)) == std::future_status::ready;
  if (!http_joined || still_loading) {  // (an engine load cannot be interrupted either)
    spdlog::info("stopped{}", still_loading ? " (during load)" : "");
    spdlog::default_logger()->flush();
    fflush(stdout);
    _exit(0);
  }
  http_thread.join();
  loader.join();
  spdlog::info("stopped");
  return 0;
}

}  // namespace cpuchat
