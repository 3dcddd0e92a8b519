// Starts the real `cpuchat serve` binary on a free port for a test, waits until /health is
// 200, and stops it (SIGTERM, then SIGKILL) when the test ends.
#pragma once
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace cpuchat::test {

// Connects a TCP socket to 127.0.0.1:port (blocking), or returns -1.
inline int connect_local(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(uint16_t(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd >= 0 && connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) return fd;
  if (fd >= 0) close(fd);
  return -1;
}

inline void send_all(int fd, const std::string& bytes) {
  size_t sent = 0;
  while (sent < bytes.size()) {
    const ssize_t n = send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return;
    sent += size_t(n);
  }
}

// Reads until the peer closes or `timeout_ms` passes without data.
inline std::string read_until_close(int fd, int timeout_ms) {
  timeval tv{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string out;
  char buf[65536];
  for (;;) {
    const ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    out.append(buf, size_t(n));
  }
  return out;
}

// One raw HTTP exchange on a fresh connection: sends `request`, returns all bytes until close.
inline std::string raw_http(int port, const std::string& request, int timeout_ms = 5000) {
  const int fd = connect_local(port);
  if (fd < 0) return "";
  send_all(fd, request);
  std::string out = read_until_close(fd, timeout_ms);
  close(fd);
  return out;
}

class ServeProcess {
 public:
  // `args` after "serve"; --port is added. Waits (up to 60 s) for /health 200.
  explicit ServeProcess(std::vector<std::string> args, int port = 0) {
    port_ = port > 0 ? port : free_port();
    args.insert(args.begin(), {CPUCHAT_BINARY, "serve", "--port", std::to_string(port_)});
    // stderr to a file, not a pipe: a pipe nobody drains would block the server's logging.
    log_path_ = "/tmp/cpuchat_serve_" + std::to_string(getpid()) + "_" + std::to_string(port_) + ".log";
    pid_ = fork();
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the test (it would hold its stdout open)
      const int log = open(log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      dup2(log, 1);
      dup2(log, 2);
      close(log);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline && alive()) {
      if (raw_http(port_, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 2000).find(" 200 ") != std::string::npos) {
        ready_ = true;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  ~ServeProcess() { stop(); }

  bool ready() const { return ready_; }
  int port() const { return port_; }
  bool alive() {
    if (pid_ <= 0) return false;
    int status = 0;
    const pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      exit_status_ = status;
      pid_ = -1;
      return false;
    }
    return true;
  }
  // Stops the server and returns its stderr.
  std::string stop() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      for (int i = 0; i < 100 && alive(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
      if (pid_ > 0) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &exit_status_, 0);
        pid_ = -1;
      }
    }
    if (!log_path_.empty()) {
      std::ifstream in(log_path_);
      stderr_ = std::string(std::istreambuf_iterator<char>(in), {});
      unlink(log_path_.c_str());
      log_path_.clear();
    }
    return stderr_;
  }
  int exit_status() const { return exit_status_; }

  static int free_port() {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    socklen_t len = sizeof addr;
    getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    close(fd);
    return ntohs(addr.sin_port);
  }

 private:
  pid_t pid_ = -1;
  int port_ = 0, exit_status_ = 0;
  bool ready_ = false;
  std::string stderr_, log_path_;
};

}  // namespace cpuchat::test
