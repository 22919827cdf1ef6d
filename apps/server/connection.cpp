// Finding and probing the socket of an HTTP connection (see connection.h).
#include "server/connection.h"

#include <dirent.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

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

}  // namespace

int find_connection_socket(int local_port, const std::string& remote_addr, int remote_port) {
#ifdef __linux__
  DIR* dir = opendir("/proc/self/fd");
  if (!dir) return -1;
  int found = -1;
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
    if (lport == local_port && pport == remote_port && phost == remote_addr) {
      found = static_cast<int>(fd);
      break;
    }
  }
  closedir(dir);
  return found;
#else
  (void)local_port;
  (void)remote_addr;
  (void)remote_port;
  return -1;
#endif
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

}  // namespace amused::server
