#include "server/peer_watch.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <cstdlib>
#include <cstring>

namespace cpuchat::server {

namespace {

// "127.0.0.1"/port of a socket address (v4, v6, v4-mapped v6 shown as v4).
bool endpoint_of(const sockaddr_storage& ss, std::string& addr, int& port) {
  char buf[INET6_ADDRSTRLEN] = {0};
  if (ss.ss_family == AF_INET) {
    auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, buf, sizeof buf);
    port = ntohs(a->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
    if (IN6_IS_ADDR_V4MAPPED(&a->sin6_addr)) {
      inet_ntop(AF_INET, reinterpret_cast<const char*>(&a->sin6_addr) + 12, buf, sizeof buf);
    } else {
      inet_ntop(AF_INET6, &a->sin6_addr, buf, sizeof buf);
    }
    port = ntohs(a->sin6_port);
  } else {
    return false;
  }
  addr = buf;
  return true;
}

bool same_endpoint(const std::string& want_addr, int want_port, const std::string& addr, int port) {
  if (port != want_port) return false;
  // httplib reports v4-mapped addresses either way; compare the v4 tail.
  auto strip = [](const std::string& a) { return a.rfind("::ffff:", 0) == 0 ? a.substr(7) : a; };
  return strip(want_addr) == strip(addr);
}

}  // namespace

PeerWatch PeerWatch::find(const std::string& local_addr, int local_port,
                          const std::string& remote_addr, int remote_port) {
  PeerWatch w;
  if (local_port < 0 || remote_port < 0) return w;
  DIR* dir = opendir("/proc/self/fd");
  if (!dir) return w;
  while (dirent* e = readdir(dir)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    int fd = std::atoi(e->d_name);
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    sockaddr_storage peer{}, self{};
    socklen_t plen = sizeof peer, slen = sizeof self;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &plen) != 0) continue;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&self), &slen) != 0) continue;
    std::string pa, sa;
    int pp = 0, sp = 0;
    if (!endpoint_of(peer, pa, pp) || !endpoint_of(self, sa, sp)) continue;
    if (same_endpoint(remote_addr, remote_port, pa, pp) && same_endpoint(local_addr, local_port, sa, sp)) {
      w.fd_ = fd;
      break;
    }
  }
  closedir(dir);
  return w;
}

bool PeerWatch::closed() const {
  if (fd_ < 0) return false;
  pollfd p{fd_, POLLRDHUP, 0};
  if (poll(&p, 1, 0) <= 0) return false;
  return (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

}  // namespace cpuchat::server
