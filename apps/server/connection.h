// Detecting a client that has gone away while its synchronous request waits or runs.
//
// cpp-httplib 0.11.4 (Debian 12) has no Request::is_connection_closed() and does not hand the
// socket to handlers, so the connection's socket is looked up by its addresses: among this
// process's open sockets (/proc/self/fd), the one whose local port and peer address/port are the
// request's. Linux only; elsewhere find_connection_socket returns -1 and nothing is detected.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <thread>

namespace amused::server {

// The socket descriptor of the TCP connection (local_port, remote_addr:remote_port), or -1.
int find_connection_socket(int local_port, const std::string& remote_addr, int remote_port);

// A TCP connection to 127.0.0.1:port (tests and fuzzing talk to a server so), or -1.
int connect_loopback(int port);

// False once the peer has closed or reset the connection (EOF, RST, or a half-close: a client
// that shuts down its sending side while waiting counts as gone). Does not consume data.
bool connection_alive(int fd);

// Deadlines for HTTP connections outside a handler. httplib gives each connection a thread that
// blocks in recv(); its read timeout restarts with every byte, so a client sending one byte a
// second held a thread for ever, and a dozen of them starved /health (issue 19). Every `period`
// the watchdog lists this process's TCP sockets on `local_port` (find_connection_socket's
// /proc/self/fd scan): a connection that has not delivered a whole request (request line, headers
// and body) within `deadline` of being accepted, or of its previous answer, is shut down, which
// ends the blocked read and frees the thread. So are the newest waiting connections beyond
// `max_open`. A request being handled (a generation may take minutes) is exempt: the routes call
// handling() once the request is in, httplib's logger answered() once the response is written.
// Linux only (elsewhere it watches nothing).
class ConnectionWatchdog {
 public:
  ConnectionWatchdog(int local_port, std::chrono::milliseconds deadline, size_t max_open,
                     std::chrono::milliseconds period = std::chrono::milliseconds(100));
  ~ConnectionWatchdog();
  ConnectionWatchdog(const ConnectionWatchdog&) = delete;
  ConnectionWatchdog& operator=(const ConnectionWatchdog&) = delete;

  void handling(const std::string& remote_addr, int remote_port);
  void answered(const std::string& remote_addr, int remote_port);
  uint64_t cut() const { return cut_; }  // connections shut down so far
  size_t open() const { return open_; }  // connections seen at the last scan

 private:
  struct Connection {
    int fd = -1;
    std::chrono::steady_clock::time_point since;  // accepted, or last answered
    bool in_handler = false;
    bool shut = false;
  };
  void loop();
  void scan();

  const int local_port_;
  const std::chrono::milliseconds deadline_, period_;
  const size_t max_open_;
  std::mutex mu_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::map<std::string, Connection> connections_;  // by "peer address|port"
  std::atomic<uint64_t> cut_{0};
  std::atomic<size_t> open_{0};
  std::thread thread_;
};

}  // namespace amused::server
