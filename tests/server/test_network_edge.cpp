// The network edge of the real `cpuchat serve` (issue 12, items 3-7): slow and idle sockets
// do not starve anyone, a port in use is an error, keep-alive and pipelining behave as
// clients expect, HTTP/1.0 streams are readable, and auth is strict but case-insensitive.
// Driven over raw sockets, so every byte on the wire is what a client really gets.
#include <gtest/gtest.h>
#include <poll.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/run_process.h"
#include "common/serve_process.h"

using cpuchat::test::connect_local;
using cpuchat::test::raw_http;
using cpuchat::test::read_until_close;
using cpuchat::test::send_all;
using cpuchat::test::ServeProcess;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

const std::string kModel = std::string(CPUCHAT_SHARED_DIR) + "/models/hf/stories260K";
constexpr const char* kKey = "sk-test-0123456789";

// One server for the whole suite: starting one costs a model load.
ServeProcess* server = nullptr;

class NetworkEdge : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server = new ServeProcess({"--model", kModel, "--backend", "fp32", "--api-key", kKey, "--threads", "1"});
  }
  static void TearDownTestSuite() {
    delete server;
    server = nullptr;
  }
  void SetUp() override { ASSERT_TRUE(server->ready()) << server->stop(); }
  static int port() { return server->port(); }
};

std::string completion_body(int max_tokens, bool stream = false) {
  return json{{"prompt", "Once upon a time"}, {"max_tokens", max_tokens}, {"temperature", 0}, {"stream", stream}}.dump();
}

std::string post(const std::string& path, const std::string& body, const std::string& extra_headers = "",
                 const std::string& version = "HTTP/1.1") {
  return "POST " + path + " " + version + "\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer " + kKey +
         "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n" + extra_headers + "\r\n" + body;
}

int status_of(const std::string& response) {
  return response.size() > 12 && response.rfind("HTTP/1.", 0) == 0 ? std::atoi(response.c_str() + 9) : -1;
}

// Milliseconds for one GET /health on a fresh connection, or -1 if it did not answer 200.
double health_ms(int port) {
  const auto t0 = std::chrono::steady_clock::now();
  const std::string r = raw_http(port, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 5000);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return status_of(r) == 200 ? ms : -1;
}

// Item 4: a slowloris client. 200 sockets from one address: half idle (connected, silent),
// half trickling a request header byte by byte. /health and a real completion must still
// answer within 100 ms of work (the completion is measured to its first byte of answer).
TEST_F(NetworkEdge, SlowlorisLeavesHealthAndRequestsAnswering) {
  // The same completion without slow sockets first: on a busy machine (CI runs tests in
  // parallel) the model's own time varies, and only what the slow sockets add is the server's.
  const std::string one_token = post("/v1/completions", completion_body(1), "Connection: close\r\n");
  auto completion_ms = [&] {
    const auto t0 = std::chrono::steady_clock::now();
    const std::string r = raw_http(port(), one_token, 10000);
    EXPECT_EQ(status_of(r), 200) << r;
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  };
  const double quiet_completion_ms = completion_ms();
  std::vector<int> slow;
  for (int i = 0; i < 200; ++i) {
    const int fd = connect_local(port());
    ASSERT_GE(fd, 0);
    slow.push_back(fd);
  }
  std::atomic<bool> stop{false};
  std::thread trickler([&] {
    const std::string header = "GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    for (size_t i = 0; !stop; ++i) {
      for (size_t s = 1; s < slow.size(); s += 2) send(slow[s], &header[i % header.size()], 1, MSG_NOSIGNAL);
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // let the server take them all
  std::vector<double> health;
  for (int i = 0; i < 11; ++i) {
    const double ms = health_ms(port());
    ASSERT_GE(ms, 0) << "/health did not answer with 200 slow sockets open";
    health.push_back(ms);
  }
  const double slow_completion_ms = completion_ms();
  stop = true;
  trickler.join();
  for (int fd : slow) close(fd);
  std::sort(health.begin(), health.end());
  const double median_health = health[health.size() / 2], worst_health = health.back();
  std::printf("[ measure ] 200 slow sockets: /health median %.1f ms, worst %.1f ms; 1-token completion %.1f ms (%.1f ms without them)\n",
              median_health, worst_health, slow_completion_ms, quiet_completion_ms);
  // A server the slow sockets block answers in seconds (their header deadline), if at all;
  // a scheduler hiccup of the busy test machine can delay one probe, not the median.
  EXPECT_LT(median_health, 100) << "median /health with 200 slow sockets (ms)";
  EXPECT_LT(worst_health, 1000) << "slowest /health with 200 slow sockets (ms)";
  EXPECT_LT(slow_completion_ms, 100 + 2 * quiet_completion_ms) << "a one-token completion with 200 slow sockets (ms)";
}

TEST_F(NetworkEdge, TrickledHeaderIsCutOffAtTheDeadline) {
  const int fd = connect_local(port());
  ASSERT_GE(fd, 0);
  const std::string header = "GET /health HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
  const auto t0 = std::chrono::steady_clock::now();
  bool closed = false;
  for (size_t i = 0; i < header.size() && !closed; ++i) {
    closed = send(fd, &header[i], 1, MSG_NOSIGNAL) < 0;
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 200) > 0) closed = true;  // the server answered (an error) or closed
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  close(fd);
  EXPECT_TRUE(closed) << "a header trickled for " << s << " s was still being read";
  EXPECT_LT(s, 12.0);
}

// Item 4: beyond the connection cap, a clear 503 at once (not a hang).
TEST(NetworkEdgeCap, ConnectionsBeyondTheCapGet503) {
  ServeProcess capped({"--model", kModel, "--backend", "fp32", "--max-connections", "8"});
  ASSERT_TRUE(capped.ready()) << capped.stop();
  std::vector<int> held;
  for (int i = 0; i < 8; ++i) held.push_back(connect_local(capped.port()));
  // The server counts a connection once it has accepted it: a slow (sanitizer) build may need
  // a moment for all 8, so the probe is repeated for up to 5 s.
  std::string r;
  for (int attempt = 0; attempt < 50 && status_of(r) != 503; ++attempt) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    r = raw_http(capped.port(), "GET /health HTTP/1.1\r\nHost: x\r\n\r\n", 3000);
  }
  EXPECT_EQ(status_of(r), 503) << r;
  EXPECT_NE(r.find("\"code\":\"server_busy\""), std::string::npos) << r;
  for (int fd : held) close(fd);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(status_of(raw_http(capped.port(), "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")), 200);
}

// Item 5: SO_REUSEPORT let a second server share the port (and split traffic with it).
TEST_F(NetworkEdge, PortInUseIsAnError) {
  auto r = cpuchat::test::run_process({"/usr/bin/timeout", "60", CPUCHAT_BINARY, "serve", "--model", kModel, "--backend",
                                       "fp32", "--port", std::to_string(port())});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("cannot listen on 127.0.0.1:" + std::to_string(port()) + ": Address already in use"), std::string::npos)
      << r.err;
}

// Item 6: Keep-Alive allowed only 5 requests per connection.
TEST_F(NetworkEdge, KeepAliveServesManyRequestsOnOneConnection) {
  const int fd = connect_local(port());
  ASSERT_GE(fd, 0);
  // One request at a time, each answer read in full (it may arrive in pieces) before the next.
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string all;
  auto answers = [&] {
    int n = 0;
    for (size_t at = all.find("HTTP/1.1 200"); at != std::string::npos; at = all.find("HTTP/1.1 200", at + 1)) ++n;
    return n;
  };
  int answered = 0;
  for (int i = 0; i < 50 && answered == i; ++i) {
    send_all(fd, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    char buf[4096];
    while (answers() < i + 1 || all.find("{\"status\":\"ok\"}", all.rfind("HTTP/1.1 200")) == std::string::npos) {
      const ssize_t n = recv(fd, buf, sizeof buf, 0);
      if (n <= 0) break;
      all.append(buf, size_t(n));
    }
    answered = answers();
  }
  close(fd);
  EXPECT_EQ(answered, 50);
}

// Item 6: pipelined requests were dropped after the first; they are answered in order.
TEST_F(NetworkEdge, PipelinedRequestsAreAnsweredInOrder) {
  const int fd = connect_local(port());
  ASSERT_GE(fd, 0);
  std::string batch;
  batch += "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
  batch += post("/v1/completions", completion_body(2));
  batch += "GET /v1/nope HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + std::string(kKey) + "\r\n\r\n";
  batch += "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  send_all(fd, batch);
  const std::string all = read_until_close(fd, 10000);
  close(fd);
  std::vector<int> statuses;
  for (size_t at = all.find("HTTP/1.1 "); at != std::string::npos; at = all.find("HTTP/1.1 ", at + 1))
    statuses.push_back(std::atoi(all.c_str() + at + 9));
  EXPECT_EQ(statuses, (std::vector<int>{200, 200, 404, 200})) << all;
}

// Item 6: an HTTP/1.0 client got chunked encoding, which HTTP/1.0 does not have.
TEST_F(NetworkEdge, Http10StreamIsNotChunked) {
  const std::string r = raw_http(port(), post("/v1/completions", completion_body(4, true), "", "HTTP/1.0"), 10000);
  EXPECT_EQ(status_of(r), 200) << r;
  const std::string head = r.substr(0, r.find("\r\n\r\n"));
  EXPECT_EQ(head.find("chunked"), std::string::npos) << head;
  const std::string body = r.substr(r.find("\r\n\r\n") + 4);
  EXPECT_EQ(body.rfind("data: {", 0), 0u) << body;  // raw SSE events, no chunk sizes
  EXPECT_NE(body.find("data: [DONE]"), std::string::npos) << body;
}

// Item 6: methods other than GET/POST were a 400; they are a 405 naming what is allowed.
TEST_F(NetworkEdge, OtherMethodsAre405) {
  for (const char* method : {"PUT", "PATCH", "DELETE", "FROB"}) {
    SCOPED_TRACE(method);
    const std::string r = raw_http(port(), std::string(method) + " /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                                                  "Authorization: Bearer " + kKey + "\r\nConnection: close\r\n\r\n{}");
    EXPECT_EQ(status_of(r), 405) << r;
    EXPECT_NE(r.find("Allow: "), std::string::npos) << r;
    EXPECT_NE(r.find("method_not_allowed"), std::string::npos) << r;
  }
}

// Item 6: a POST without Content-Length stalled 5 s waiting for a body that never comes.
TEST_F(NetworkEdge, PostWithoutContentLengthIs411AtOnce) {
  const int fd = connect_local(port());
  ASSERT_GE(fd, 0);
  const auto t0 = std::chrono::steady_clock::now();
  send_all(fd, std::string("POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ") + kKey + "\r\n\r\n");
  char buf[4096];
  const ssize_t n = recv(fd, buf, sizeof buf, 0);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  close(fd);
  ASSERT_GT(n, 0);
  EXPECT_EQ(status_of(std::string(buf, size_t(n))), 411) << std::string(buf, size_t(n));
  EXPECT_LT(ms, 1000);
}

// Item 6: the auth scheme is case-insensitive (RFC 7235); items 7: wrong keys of any length fail.
TEST_F(NetworkEdge, BearerSchemeIsCaseInsensitive) {
  for (const char* scheme : {"Bearer", "bearer", "BEARER"}) {
    const std::string r = raw_http(port(), "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: " + std::string(scheme) + " " + kKey +
                                               "\r\nConnection: close\r\n\r\n");
    EXPECT_EQ(status_of(r), 200) << scheme << ": " << r;
  }
  for (const std::string& wrong : {std::string(kKey) + "x", std::string(kKey).substr(1), std::string("sk")}) {
    const std::string r = raw_http(port(), "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + wrong +
                                               "\r\nConnection: close\r\n\r\n");
    EXPECT_EQ(status_of(r), 401) << wrong << ": " << r;
  }
}

// Item 6: bytes after the JSON value (behind a NUL) were accepted.
TEST_F(NetworkEdge, TrailingBytesAfterTheJsonAreRefused) {
  const std::string body = completion_body(1) + std::string("\0garbage", 8);
  const std::string r = raw_http(port(), post("/v1/completions", body, "Connection: close\r\n"));
  EXPECT_EQ(status_of(r), 400) << r;
  EXPECT_NE(r.find("invalid_json"), std::string::npos) << r;
}

// A copy of stories260K the test may change, under /tmp.
fs::path writable_model_copy(const std::string& prefix) {
  const fs::path dir = fs::temp_directory_path() / (prefix + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::copy(kModel, dir);
  for (const auto& e : fs::directory_iterator(dir)) fs::permissions(e.path(), fs::perms::owner_write, fs::perm_options::add);
  fs::permissions(dir, fs::perms::owner_all, fs::perm_options::add);
  return dir;
}

// Item 3: the packed cache is read into memory, so truncating it under a running server
// cannot SIGBUS it; the server keeps answering with the same weights.
TEST(CacheUnderServer, TruncatedCacheDoesNotCrashTheServer) {
  const fs::path dir = writable_model_copy("cpuchat_cache_trunc_");
  const std::vector<std::string> args = {"--model", dir.string(), "--backend", "int4", "--cache-packed", "--threads", "1"};
  std::string first;
  {
    ServeProcess writer(args);  // packs and saves the cache
    ASSERT_TRUE(writer.ready()) << writer.stop();
    first = raw_http(writer.port(), post("/v1/completions", completion_body(16), "Connection: close\r\n"), 20000);
  }
  ServeProcess reader(args);  // loads the cache
  ASSERT_TRUE(reader.ready()) << reader.stop();
  fs::path cache;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".cache") cache = e.path();
  ASSERT_FALSE(cache.empty());
  fs::resize_file(cache, 4096);  // under the running server
  const std::string after = raw_http(reader.port(), post("/v1/completions", completion_body(16), "Connection: close\r\n"), 20000);
  EXPECT_TRUE(reader.alive()) << reader.stop();
  ASSERT_EQ(status_of(after), 200) << after;
  auto text_of = [](const std::string& r) { return json::parse(r.substr(r.find("\r\n\r\n") + 4))["choices"][0]["text"]; };
  EXPECT_EQ(text_of(after), text_of(first));
  const std::string log = reader.stop();
  EXPECT_NE(log.find("int4 weights mapped from"), std::string::npos) << log;
  fs::remove_all(dir);
}

}  // namespace

namespace {

// Item 3, the mapped weights: documented as must-not-change; truncating them under a running
// server is fatal, but the death says why instead of being an unexplained crash.
TEST(CacheUnderServer, TruncatedWeightsUnderAServerFailWithAClearMessage) {
  const fs::path dir = writable_model_copy("cpuchat_weights_trunc_");
  ServeProcess server({"--model", dir.string(), "--backend", "fp32", "--threads", "1"});  // fp32 weights are views into the map
  ASSERT_TRUE(server.ready()) << server.stop();
  fs::resize_file(dir / "model.safetensors", 64);
  raw_http(server.port(), post("/v1/completions", completion_body(4), "Connection: close\r\n"), 20000);
  for (int i = 0; i < 100 && server.alive(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const std::string log = server.stop();
  EXPECT_TRUE(WIFSIGNALED(server.exit_status()) && WTERMSIG(server.exit_status()) == SIGBUS) << log;
  EXPECT_NE(log.find("SIGBUS reading a memory-mapped model file: it was truncated or replaced while in use"),
            std::string::npos) << log;
  fs::remove_all(dir);
}

}  // namespace
