// Finding and probing the socket of an HTTP connection (see connection.h).
#include "server/connection.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <unistd.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <vector>

namespace amused::server {
namespace {

// The numeric host and port of a socket address, as httplib reports them (getnameinfo).
bool host_and_port(const sockaddr_storage& addr, socklen_t len, std::string& host, int& port) {
  char h[NI_MAXHOST];
  char s[NI_MAXSERV];
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&addr), len, h, sizeof h, s, sizeof s,
                  NI_NUMERICHOST | NI_NUMERICSERV) != 0)
    return false;
  host = h;
  port = std::atoi(s);
  return true;
}

// Calls `fn(fd, peer_host, peer_port)` for every connected TCP socket of this process whose local
// port is `local_port`, until `fn` returns false.
template <class Fn>
void for_each_connection(int local_port, Fn fn) {
#ifdef __linux__
  DIR* dir = opendir("/proc/self/fd");
  if (!dir) return;
  while (dirent* entry = readdir(dir)) {
    char* end = nullptr;
    const long fd = std::strtol(entry->d_name, &end, 10);
    if (end == entry->d_name || *end != '\0' || fd == dirfd(dir)) continue;
    struct stat st;
    if (fstat(static_cast<int>(fd), &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    sockaddr_storage local{}, peer{};
    socklen_t local_len = sizeof local, peer_len = sizeof peer;
    if (getsockname(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&local), &local_len) != 0 ||
        getpeername(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0)
      continue;
    std::string lhost, phost;
    int lport = 0, pport = 0;
    if (!host_and_port(local, local_len, lhost, lport) ||
        !host_and_port(peer, peer_len, phost, pport))
      continue;
    if (lport == local_port && !fn(static_cast<int>(fd), phost, pport)) break;
  }
  closedir(dir);
#else
  (void)local_port;
  (void)fn;
#endif
}

std::string key_of(const std::string& host, int port) { return host + "|" + std::to_string(port); }

}  // namespace

int find_connection_socket(int local_port, const std::string& remote_addr, int remote_port) {
  int found = -1;
  for_each_connection(local_port, [&](int fd, const std::string& host, int port) {
    if (port != remote_port || host != remote_addr) return true;
    found = fd;
    return false;
  });
  return found;
}

int connect_loopback(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

bool connection_alive(int fd) {
  if (fd < 0) return true;
  pollfd p{};
  p.fd = fd;
  p.events = POLLIN;
#ifdef POLLRDHUP
  p.events |= POLLRDHUP;
#endif
  if (poll(&p, 1, 0) < 0) return true;  // unknown: keep working
  if (p.revents & (POLLERR | POLLHUP | POLLNVAL)) return false;
#ifdef POLLRDHUP
  if (p.revents & POLLRDHUP) return false;
#endif
  if (p.revents & POLLIN) {
    char c;
    const ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0) return false;  // orderly shutdown by the peer
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return false;
  }
  return true;
}

ConnectionWatchdog::ConnectionWatchdog(int local_port, std::chrono::milliseconds deadline, size_t max_open,
                                       std::chrono::milliseconds period)
    : local_port_(local_port), deadline_(deadline), period_(period), max_open_(max_open) {
  thread_ = std::thread([this] { loop(); });
}

ConnectionWatchdog::~ConnectionWatchdog() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void ConnectionWatchdog::handling(const std::string& remote_addr, int remote_port) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& c = connections_[key_of(remote_addr, remote_port)];
  if (c.since == std::chrono::steady_clock::time_point{}) c.since = std::chrono::steady_clock::now();
  c.in_handler = true;
}

void ConnectionWatchdog::answered(const std::string& remote_addr, int remote_port) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& c = connections_[key_of(remote_addr, remote_port)];
  c.in_handler = false;
  c.since = std::chrono::steady_clock::now();  // a next request on the connection starts now
}

void ConnectionWatchdog::loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    wake_.wait_for(lock, period_, [this] { return stopping_; });
    if (stopping_) break;
    lock.unlock();
    scan();
    lock.lock();
  }
}

void ConnectionWatchdog::scan() {
  std::map<std::string, int> now_open;  // peer -> fd
  for_each_connection(local_port_, [&](int fd, const std::string& host, int port) {
    now_open[key_of(host, port)] = fd;
    return true;
  });
  const auto now = std::chrono::steady_clock::now();
  std::lock_guard<std::mutex> lock(mu_);
  // Forget closed connections (a peer seen only through handling() stays until its socket shows).
  for (auto it = connections_.begin(); it != connections_.end();) {
    if (!now_open.count(it->first) && (it->second.fd >= 0 || now - it->second.since > deadline_))
      it = connections_.erase(it);
    else
      ++it;
  }
  std::vector<std::pair<std::chrono::steady_clock::time_point, Connection*>> waiting;
  for (const auto& [key, fd] : now_open) {
    auto& c = connections_[key];
    if (c.fd != fd) {  // new (or the number was reused for another peer)
      if (c.fd >= 0) c = Connection{};
      c.fd = fd;
      if (c.since == std::chrono::steady_clock::time_point{}) c.since = now;
    }
    if (!c.in_handler && !c.shut) waiting.emplace_back(c.since, &c);
  }
  open_ = now_open.size();
  auto shut = [&](Connection& c) {
    ::shutdown(c.fd, SHUT_RDWR);  // the blocked recv() returns; httplib closes the socket
    c.shut = true;
    ++cut_;
  };
  for (auto& [since, c] : waiting)
    if (now - since > deadline_) shut(*c);
  // Beyond max_open, the newest waiting connections go first (the older ones may be nearly done).
  size_t open_count = 0;
  for (const auto& [key, c] : connections_) open_count += c.fd >= 0 && !c.shut;
  std::sort(waiting.begin(), waiting.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  for (auto& [since, c] : waiting) {
    if (open_count <= max_open_) break;
    if (c->shut) continue;
    shut(*c);
    --open_count;
  }
}

}  // namespace amused::server
