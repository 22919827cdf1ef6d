// Finding a request's socket by its addresses and noticing when the peer has gone (the server's
// disconnect detection for synchronous requests).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server/connection.h"

namespace {
int local_port(int fd) {
  sockaddr_in a{};
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  return ntohs(a.sin_port);
}
}  // namespace

TEST(ServerConnection, FindsTheSocketAndSeesThePeerLeave) {
#ifndef __linux__
  GTEST_SKIP() << "connection lookup is Linux-only";
#endif
  const int listener = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(listener, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  ASSERT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(listen(listener, 4), 0);
  const int server_port = local_port(listener);
  addr.sin_port = htons(static_cast<uint16_t>(server_port));

  const int client = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_EQ(connect(client, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  const int conn = accept(listener, nullptr, nullptr);
  ASSERT_GE(conn, 0);
  const int client_port = local_port(client);

  // The accepted socket, not the listener nor the client's end.
  EXPECT_EQ(amused::server::find_connection_socket(server_port, "127.0.0.1", client_port), conn);
  EXPECT_EQ(amused::server::find_connection_socket(server_port, "127.0.0.2", client_port), -1);
  EXPECT_EQ(amused::server::find_connection_socket(server_port, "127.0.0.1", 1), -1);

  EXPECT_TRUE(amused::server::connection_alive(conn));
  // Pending data (a pipelined request) is not a disconnect, and is not consumed.
  ASSERT_EQ(write(client, "x", 1), 1);
  EXPECT_TRUE(amused::server::connection_alive(conn));
  char c = 0;
  ASSERT_EQ(read(conn, &c, 1), 1);
  EXPECT_EQ(c, 'x');
  close(client);
  bool alive = true;
  for (int i = 0; i < 100 && alive; ++i) {
    alive = amused::server::connection_alive(conn);
    if (alive) usleep(1000);
  }
  EXPECT_FALSE(alive);
  EXPECT_TRUE(amused::server::connection_alive(-1));  // unknown socket: keep working
  close(conn);
  close(listener);
}
