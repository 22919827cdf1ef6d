// libFuzzer target: `amused serve`'s HTTP layer, bytes on the wire. One server runs in this process
// for the whole session (tiny-a from the golden folder, port 0, queue 2, an API key, a 0.3 s request
// deadline, 1 MiB bodies); each input is sent as raw bytes on a new connection and everything the
// server answers is read until it closes, or until the answer is complete and quiet for 150 ms.
// (The sending side stays open: cpp-httplib 0.11.4 writes nothing to a client that has half-closed,
// see docs/server.md.) The first byte chooses a prefix so that the fuzzer starts from well-formed
// request lines (prefix 0: none). Checked for every input:
//  - the answer is empty (the server closed without one) or a sequence of HTTP/1.1 responses, each
//    with a status in 100..599 and the body its Content-Length announces;
//  - an error answer (4xx/5xx with a JSON body) is JSON with error.code and error.message;
//  - a connection without a complete answer is closed within 5 s (the request deadline holds);
//  - a GET /health then answers 200 (no input wedges the server).
// Anything else traps. Server-side crashes and sanitizer reports surface on their own.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <string_view>
#include <thread>

#include "amused/pipeline.h"
#include "fuzz_common.h"
#include "server/connection.h"
#include "server/server.h"

namespace {
using Clock = std::chrono::steady_clock;

struct Running {
  std::unique_ptr<amused::Pipeline> pipeline;
  std::unique_ptr<amused::server::Server> server;
  std::thread thread;
  int port = 0;
};

Running& server() {
  static Running* r = [] {
    amused::fuzz::quiet_logs();
    auto* s = new Running;
    amused::LoadOptions lo;
    lo.dtype = amused::DType::Float32;
    lo.threads = 1;
    lo.offline = true;
    s->pipeline = amused::Pipeline::load((amused::fuzz::golden_dir() / "models" / "tiny-a").string(), lo);
    amused::server::ServerOptions o;
    o.port = 0;
    o.max_queue = 2;
    o.api_key = "fuzz-key";
    o.model = "tiny-a";
    o.max_body_bytes = 1u << 20;
    o.request_timeout_s = 0.3;
    s->server = std::make_unique<amused::server::Server>(*s->pipeline, o);
    s->port = s->server->bind();
    s->thread = std::thread([s] { s->server->run(); });
    return s;
  }();
  return *r;
}

int connect_to(int port) { return amused::server::connect_loopback(port); }

// Parses the responses in `answer`: traps on anything malformed; returns true when `answer` ends
// exactly after a complete final (non-100) response.
bool check_answer(const std::string& answer) {
  static const std::regex status_line("HTTP/1\\.1 ([0-9]{3}) [^\r\n]*\r\n");
  static const std::regex content_length("\r\n[Cc]ontent-[Ll]ength: *([0-9]+)");
  size_t pos = 0;
  bool complete = false;
  while (pos < answer.size()) {
    complete = false;
    const size_t head_end = answer.find("\r\n\r\n", pos);
    if (head_end == std::string::npos) return false;  // more to come (or cut: the caller decides)
    const std::string head = answer.substr(pos, head_end + 2 - pos);
    std::smatch m;
    if (!std::regex_search(head, m, status_line, std::regex_constants::match_continuous)) __builtin_trap();
    const int status = std::stoi(m[1]);
    if (status < 100 || status > 599) __builtin_trap();
    size_t body_len = 0;
    if (std::smatch len; std::regex_search(head, len, content_length)) body_len = std::stoul(len[1]);
    const size_t body_start = head_end + 4;
    if (body_start + body_len > answer.size()) return false;
    if (status >= 400 && head.find("application/json") != std::string::npos) {
      const auto body = nlohmann::json::parse(answer.substr(body_start, body_len), nullptr, false);
      if (body.is_discarded() || !body.contains("error") || !body["error"].contains("code") ||
          !body["error"].contains("message"))
        __builtin_trap();
    }
    pos = body_start + body_len;
    complete = status != 100;  // an interim answer: the final one follows
  }
  return complete;
}

// Sends `request` and reads the answer until the server closes, or until it is complete and
// nothing more arrives for 150 ms, or `limit` passes. Returns the answer; `closed` says whether the
// server closed, `complete` whether a whole final response came.
std::string exchange(int port, std::string_view request, std::chrono::seconds limit, bool& closed,
                     bool& complete) {
  const int fd = connect_to(port);
  if (fd < 0) __builtin_trap();  // the listener is gone
  size_t sent = 0;
  while (sent < request.size()) {
    const ssize_t n = send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;  // the server may close early (a refusal before the body)
    sent += static_cast<size_t>(n);
  }
  std::string out;
  char buf[16384];
  closed = complete = false;
  const auto deadline = Clock::now() + limit;
  auto last_data = Clock::now();
  while (Clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 50) <= 0) {
      if (complete && Clock::now() - last_data > std::chrono::milliseconds(150)) break;
      continue;
    }
    const ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) {
      closed = true;
      break;
    }
    last_data = Clock::now();
    if (out.size() < (8u << 20)) out.append(buf, static_cast<size_t>(n));
    complete = check_answer(out);
  }
  close(fd);
  complete = check_answer(out);
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Running& s = server();
  if (size == 0) return 0;
  static const char* const kPrefixes[] = {
      "",
      "POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer fuzz-key\r\n",
      "POST /v1/images/edits HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer fuzz-key\r\n",
      "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer fuzz-key\r\n",
      "GET /v1/jobs/",
      "GET /",
  };
  const size_t n_prefixes = sizeof kPrefixes / sizeof kPrefixes[0];
  std::string request = kPrefixes[data[0] % n_prefixes];
  request.append(reinterpret_cast<const char*>(data + 1), size - 1);
  bool closed = false, complete = false;
  const std::string answer = exchange(s.port, request, std::chrono::seconds(5), closed, complete);
  // Without a complete answer the server must have closed: malformed, or the deadline.
  if (!complete && !closed) __builtin_trap();
  if (closed && !answer.empty() && !complete && answer.find("\r\n\r\n") != std::string::npos &&
      answer.rfind("HTTP/1.1 100", 0) != 0)
    __builtin_trap();  // a response cut short
  bool health_closed = false, health_complete = false;
  const std::string health = exchange(s.port, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                                      std::chrono::seconds(5), health_closed, health_complete);
  if (health.rfind("HTTP/1.1 200", 0) != 0) __builtin_trap();
  return 0;
}
