#include "server/http_connections.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <thread>

namespace cpuchat::server {

namespace {

using Clock = std::chrono::steady_clock;

int ms_until(Clock::time_point t) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(t - Clock::now()).count();
  return ms <= 0 ? 0 : int(std::min<int64_t>(ms, 1 << 30));
}

void endpoint(int fd, bool peer, std::string& ip, int& port) {
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  const int r = peer ? getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len)
                     : getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  char host[NI_MAXHOST], serv[NI_MAXSERV];
  if (r == 0 && getnameinfo(reinterpret_cast<sockaddr*>(&addr), len, host, sizeof host, serv, sizeof serv,
                            NI_NUMERICHOST | NI_NUMERICSERV) == 0) {
    ip = host;
    port = std::atoi(serv);
  }
}

// One connection's socket as httplib sees it. The read buffer lives as long as the
// connection, so bytes of a pipelined next request are kept, not dropped. Reads stop at the
// request's deadline however slowly bytes trickle in.
class ConnectionStream : public httplib::Stream {
 public:
  ConnectionStream(int fd, int wake_fd, int write_timeout_ms) : fd_(fd), wake_fd_(wake_fd), write_timeout_ms_(write_timeout_ms) {}

  // Called before each request: a new deadline, and the next write starts a response.
  void start_request(Clock::time_point deadline) {
    deadline_ = deadline;
    response_started_ = false;
    close_after_response_ = false;
  }
  // The response said "Connection: close" (e.g. an error sent before an announced body was
  // read: the rest of the connection cannot be parsed, so it must end).
  bool close_after_response() const { return close_after_response_; }
  bool has_buffered() const { return begin_ < end_; }

  // Waits up to `timeout_ms` for the first byte of a next request (or the server stopping).
  bool wait_for_request(int timeout_ms) {
    if (has_buffered()) return true;
    return wait_readable(timeout_ms) && fill() > 0;
  }

  bool is_readable() const override {
    return has_buffered() || const_cast<ConnectionStream*>(this)->wait_readable(ms_until(deadline_));
  }
  bool is_writable() const override {
    pollfd p{fd_, POLLOUT, 0};
    if (poll(&p, 1, write_timeout_ms_) <= 0 || (p.revents & (POLLERR | POLLHUP))) return false;
    char c;
    const ssize_t n = recv(fd_, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n != 0;  // 0: the peer closed; -1 (EAGAIN) or data: still there
  }
  ssize_t read(char* ptr, size_t size) override {
    if (!has_buffered()) {
      if (!wait_readable(ms_until(deadline_))) return -1;
      if (fill() <= 0) return -1;
    }
    const size_t n = std::min(size, end_ - begin_);
    std::memcpy(ptr, buf_ + begin_, n);
    begin_ += n;
    return ssize_t(n);
  }
  ssize_t write(const char* ptr, size_t size) override {
    if (!response_started_) {  // httplib writes the status line and headers in one piece
      response_started_ = true;
      std::string head(ptr, std::min(size, size_t(16384)));
      head = head.substr(0, head.find("\r\n\r\n") + 2);
      for (char& c : head) c = char(std::tolower(static_cast<unsigned char>(c)));
      close_after_response_ = head.find("\r\nconnection: close\r\n") != std::string::npos;
    }
    size_t sent = 0;
    while (sent < size) {
      const ssize_t n = send(fd_, ptr + sent, size - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        sent += size_t(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        pollfd p{fd_, POLLOUT, 0};
        if (poll(&p, 1, write_timeout_ms_) > 0 && !(p.revents & (POLLERR | POLLHUP))) continue;
      }
      return -1;
    }
    return ssize_t(size);
  }
  void get_remote_ip_and_port(std::string& ip, int& port) const override { endpoint(fd_, true, ip, port); }
  void get_local_ip_and_port(std::string& ip, int& port) const override { endpoint(fd_, false, ip, port); }
  socket_t socket() const override { return fd_; }

 private:
  bool wait_readable(int timeout_ms) {
    pollfd p[2] = {{fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    for (;;) {
      const int r = poll(p, 2, timeout_ms);
      if (r < 0 && errno == EINTR) continue;
      return r > 0 && (p[0].revents & (POLLIN | POLLHUP | POLLERR)) && !(p[1].revents & POLLIN);
    }
  }
  ssize_t fill() {
    begin_ = end_ = 0;
    for (;;) {
      const ssize_t n = recv(fd_, buf_, sizeof buf_, MSG_DONTWAIT);
      if (n < 0 && errno == EINTR) continue;
      if (n > 0) end_ = size_t(n);
      return n;
    }
  }

  int fd_, wake_fd_, write_timeout_ms_;
  Clock::time_point deadline_ = Clock::now();
  bool response_started_ = false, close_after_response_ = false;
  char buf_[16384];
  size_t begin_ = 0, end_ = 0;
};

// Connection threads: started on demand, each serves connections from the queue and exits
// after a minute without one (so a busy server reuses threads and their OpenMP teams).
}  // namespace

struct HttpConnectionServer::Workers {
  std::mutex mu;
  std::condition_variable ready;
  std::deque<int> pending;
  int idle = 0, live = 0;
};

namespace {

// The whole answer to a connection over the cap, made once.
const std::string& busy_response() {
  static const std::string response = [] {
    const std::string body =
        R"({"error":{"message":"too many open connections; retry later","type":"server_busy","param":null,"code":"server_busy"}})";
    return "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
           "Connection: close\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  }();
  return response;
}

}  // namespace

HttpConnectionServer::HttpConnectionServer(ConnectionLimits limits)
    : limits_(limits), workers_(std::make_unique<Workers>()) {
  if (pipe2(wake_pipe_, O_CLOEXEC | O_NONBLOCK) != 0) wake_pipe_[0] = wake_pipe_[1] = -1;
  set_keep_alive_max_count(size_t(limits_.max_requests_per_connection));  // what the Keep-Alive header says
  set_keep_alive_timeout(std::max(1, limits_.idle_timeout_ms / 1000));
}

HttpConnectionServer::~HttpConnectionServer() {
  stop_serving();
  Workers& w = *workers_;
  std::unique_lock<std::mutex> lock(w.mu);
  w.ready.notify_all();
  w.ready.wait(lock, [&] { return w.live == 0; });
  lock.unlock();
  svr_sock_ = INVALID_SOCKET;
  if (listen_fd_ >= 0) close(listen_fd_);  // bound but never served
  for (int fd : wake_pipe_)
    if (fd >= 0) close(fd);
}

int HttpConnectionServer::bind_exclusive(const std::string& host, int port, std::string* error) {
  addrinfo hints{}, *result = nullptr;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  const std::string service = std::to_string(port);
  if (const int r = getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &result); r != 0) {
    if (error) *error = gai_strerror(r);
    return -1;
  }
  std::string why = "no usable address";
  for (addrinfo* ai = result; ai; ai = ai->ai_next) {
    const int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) continue;
    // SO_REUSEADDR only lets us rebind over TIME_WAIT leftovers; without SO_REUSEPORT a
    // port another server listens on is refused (EADDRINUSE), never shared.
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && ::listen(fd, 1024) == 0) {
      listen_fd_ = fd;
      break;
    }
    why = std::strerror(errno);
    close(fd);
  }
  freeaddrinfo(result);
  if (listen_fd_ < 0) {
    if (error) *error = why;
    return -1;
  }
  // httplib's writers ask whether the server is shutting down by looking at svr_sock_.
  svr_sock_ = listen_fd_;
  std::string ip;
  int bound = -1;
  endpoint(listen_fd_, false, ip, bound);
  return bound;
}

bool HttpConnectionServer::serve() {
  if (listen_fd_ < 0) return false;
  serving_ = true;
  Workers& w = *workers_;
  while (!stopping_) {
    pollfd p[2] = {{listen_fd_, POLLIN, 0}, {wake_pipe_[0], POLLIN, 0}};
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (stopping_ || (p[1].revents & POLLIN)) break;
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE) std::this_thread::sleep_for(std::chrono::milliseconds(5));
      continue;
    }
    if (open_connections_.load() >= limits_.max_connections) {
      refuse_connection(fd);
      continue;
    }
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // SSE events are small: send each now
    ++open_connections_;
    std::lock_guard<std::mutex> lock(w.mu);
    w.pending.push_back(fd);
    // An idle worker takes it, unless every idle worker already has one coming (a woken
    // worker counts as idle until it runs): then a new thread, or the socket would wait
    // for a busy connection to end.
    if (w.pending.size() <= size_t(w.idle)) {
      w.ready.notify_one();
      continue;
    }
    // A new thread with a small stack: hundreds of idle connections cost little memory.
    ++w.live;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 2u << 20);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t thread;
    auto* self = this;
    const int r = pthread_create(
        &thread, &attr,
        [](void* arg) -> void* {
          auto* server = static_cast<HttpConnectionServer*>(arg);
          Workers& w = *server->workers_;
          std::unique_lock<std::mutex> lock(w.mu);
          for (;;) {
            if (w.pending.empty()) {
              ++w.idle;
              const bool got = w.ready.wait_for(lock, std::chrono::seconds(60), [&] {
                return !w.pending.empty() || server->stopping_.load();
              });
              --w.idle;
              if (!got || w.pending.empty()) break;
            }
            const int fd = w.pending.front();
            w.pending.pop_front();
            lock.unlock();
            server->serve_connection(fd);
            lock.lock();
          }
          --w.live;
          w.ready.notify_all();
          return nullptr;
        },
        self);
    pthread_attr_destroy(&attr);
    if (r != 0) {  // out of threads: refuse this one rather than leave it hanging
      --w.live;
      w.pending.pop_back();
      --open_connections_;
      refuse_connection(fd);
    }
  }
  serving_ = false;
  svr_sock_ = INVALID_SOCKET;  // streams in progress see the shutdown
  if (listen_fd_ >= 0) {
    close(listen_fd_);
    listen_fd_ = -1;
  }
  // Wait for connections to finish: idle ones see the wake pipe and close at once.
  std::unique_lock<std::mutex> lock(w.mu);
  w.ready.notify_all();
  w.ready.wait(lock, [&] { return w.live == 0 || (w.live == w.idle && w.pending.empty()); });
  return true;
}

void HttpConnectionServer::stop_serving() {
  stopping_ = true;
  if (wake_pipe_[1] >= 0) {
    const char c = 1;
    ssize_t ignored = ::write(wake_pipe_[1], &c, 1);
    (void)ignored;
  }
  Workers& w = *workers_;
  std::lock_guard<std::mutex> lock(w.mu);
  w.ready.notify_all();
}

void HttpConnectionServer::refuse_connection(int fd) {
  // Best effort and never blocking: the accept loop must stay fast under a flood.
  ssize_t ignored = send(fd, busy_response().data(), busy_response().size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  (void)ignored;
  shutdown(fd, SHUT_WR);
  close(fd);
}

void HttpConnectionServer::serve_connection(int fd) {
  {
    ConnectionStream stream(fd, wake_pipe_[0], limits_.write_timeout_ms);
    for (int served = 0; served < limits_.max_requests_per_connection && !stopping_; ++served) {
      if (!stream.wait_for_request(limits_.idle_timeout_ms)) break;
      stream.start_request(Clock::now() + std::chrono::milliseconds(limits_.request_deadline_ms));
      const bool last = served + 1 >= limits_.max_requests_per_connection || stopping_;
      bool connection_closed = false;
      if (!process_request(stream, last, connection_closed, nullptr) || connection_closed || last ||
          stream.close_after_response())
        break;
    }
  }
  // Uncounted before the client can see the close: a client that opens a new connection
  // the moment its last one ends (as every keep-alive pool does) must not find it still counted.
  --open_connections_;
  shutdown(fd, SHUT_RDWR);
  close(fd);
}

}  // namespace cpuchat::server
