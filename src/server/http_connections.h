// The connection layer under httplib's routing: we accept, bound and read the sockets
// ourselves and hand each request to httplib::Server::process_request.
//
// httplib 0.11 runs one pool thread per connection and waits up to 5 s per header line, so
// 33 slow clients starved /health. Here every connection gets its own cheap thread (small
// stack), idle keep-alive connections are closed after a timeout, a request's headers and
// body must arrive within one deadline however slowly they trickle, and beyond a global
// connection cap new connections get an immediate 503 and are closed. There is no per-client
// cap: behind a load balancer or on loopback every client shares one address.
//
// Also: the port is bound without SO_REUSEPORT (a second server on the same port fails
// instead of splitting traffic); pipelined requests are answered in order (the read buffer
// lives as long as the connection); keep-alive allows many requests per connection.
#pragma once
#include <atomic>
#include <memory>
#include <string>

#include <httplib.h>

namespace cpuchat::server {

struct ConnectionLimits {
  int max_connections = 512;           // open at once; more get 503 + close (fds stay < FD_SETSIZE)
  int request_deadline_ms = 10000;     // from a request's first byte to the end of its body
  int idle_timeout_ms = 5000;          // a keep-alive connection with no next request is closed
  int max_requests_per_connection = 1000;
  int write_timeout_ms = 30000;        // a client that reads nothing for this long is dropped
};

class HttpConnectionServer : public httplib::Server {
 public:
  explicit HttpConnectionServer(ConnectionLimits limits = {});
  ~HttpConnectionServer() override;

  // Binds host:port (0: any free port) exclusively. Returns the port, or -1 with `error` set
  // ("address already in use", ...).
  int bind_exclusive(const std::string& host, int port, std::string* error);
  // Accepts and serves connections until stop_serving(). Returns false if never bound.
  bool serve();
  // Stops accepting, closes the listening socket and wakes idle connections (they close).
  void stop_serving();
  bool serving() const { return serving_.load(); }
  int open_connections() const { return open_connections_.load(); }
  const ConnectionLimits& limits() const { return limits_; }

 private:
  struct Workers;  // the connection threads and the accepted sockets waiting for one
  void serve_connection(int fd);
  void refuse_connection(int fd);

  ConnectionLimits limits_;
  std::unique_ptr<Workers> workers_;
  int listen_fd_ = -1;
  int wake_pipe_[2] = {-1, -1};  // written by stop_serving to wake poll()s
  std::atomic<bool> serving_{false}, stopping_{false};
  std::atomic<int> open_connections_{0};
};

}  // namespace cpuchat::server
