// PeerWatch finds a connection's socket by its endpoints and sees the peer hang up.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "server/peer_watch.h"

using cpuchat::server::PeerWatch;

namespace {
int port_of(int fd, bool peer) {
  sockaddr_in a{};
  socklen_t len = sizeof a;
  peer ? getpeername(fd, reinterpret_cast<sockaddr*>(&a), &len) : getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  return ntohs(a.sin_port);
}
}  // namespace

TEST(PeerWatch, SeesTheClientHangUp) {
  int listener = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(listen(listener, 1), 0);
  socklen_t len = sizeof addr;
  getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len);
  int client = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_EQ(connect(client, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  int served = accept(listener, nullptr, nullptr);
  ASSERT_GE(served, 0);

  PeerWatch w = PeerWatch::find("127.0.0.1", port_of(served, false), "127.0.0.1", port_of(served, true));
  ASSERT_TRUE(w.valid());
  EXPECT_FALSE(w.closed());
  EXPECT_EQ(write(client, "GET", 3), 3);  // pending request bytes are not a hang-up
  usleep(10000);
  EXPECT_FALSE(w.closed());
  close(client);
  usleep(10000);
  EXPECT_TRUE(w.closed());

  EXPECT_FALSE(PeerWatch::find("127.0.0.1", 1, "127.0.0.1", 2).valid());
  EXPECT_FALSE(PeerWatch().closed());
  close(served);
  close(listener);
}
