// Detecting a client that has gone away while its synchronous request waits or runs.
//
// cpp-httplib 0.11.4 (Debian 12) has no Request::is_connection_closed() and does not hand the
// socket to handlers, so the connection's socket is looked up by its addresses: among this
// process's open sockets (/proc/self/fd), the one whose local port and peer address/port are the
// request's. Linux only; elsewhere find_connection_socket returns -1 and nothing is detected.
#pragma once

#include <string>

namespace amused::server {

// The socket descriptor of the TCP connection (local_port, remote_addr:remote_port), or -1.
int find_connection_socket(int local_port, const std::string& remote_addr, int remote_port);

// False once the peer has closed or reset the connection (EOF, RST, or a half-close: a client
// that shuts down its sending side while waiting counts as gone). Does not consume data.
bool connection_alive(int fd);

}  // namespace amused::server
