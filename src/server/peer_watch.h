// Tells whether the HTTP client of a request has gone away, without writing to it.
// httplib 0.11 hides the socket and only reports a closed peer when a write fails --
// which, after a close, is usually the second write. Generation must stop within one
// token of a disconnect (and a non-streaming request never writes until the end), so we
// find the request's socket by its addresses and poll it for a hang-up.
#pragma once
#include <string>

namespace cpuchat::server {

class PeerWatch {
 public:
  PeerWatch() = default;
  // Finds this process's TCP socket with these endpoints (-1 if none; closed() is then false).
  static PeerWatch find(const std::string& local_addr, int local_port,
                        const std::string& remote_addr, int remote_port);
  bool valid() const { return fd_ >= 0; }
  // True once the peer closed or reset the connection. Cheap (one poll).
  bool closed() const;

 private:
  int fd_ = -1;
};

}  // namespace cpuchat::server
