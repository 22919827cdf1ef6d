// The HTTP layer of `amused serve`: the route table, middleware (limits, CORS, errors in the OpenAI
// shape, request logging) and authentication. The handlers are in routes_*.cpp (server_impl.h).
#include "server/server.h"

#include <poll.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <map>
#include <mutex>
#include <random>
#include <sstream>

#include "amused/amused.h"
#include "amused/image_io.h"
#include "server/base64.h"
#include "server/connection.h"
#include "server/http.h"
#include "server/jobs.h"
#include "server/server_impl.h"

namespace amused::server {
namespace {

// Freed heap pages back to the system (glibc: every arena, the connection threads' included; each
// connection thread allocates from its own arena, which otherwise keeps a large body's pages).
void give_back_free_memory() {
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
}

// Start of the request this HTTP thread is serving (set before routing, read by the logger).
thread_local std::optional<Clock::time_point> t_request_start;

// Constant-time comparison (the API key must not leak through response timing).
bool same_secret(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i)
    diff |= static_cast<unsigned char>(a[i] ^ (i < b.size() ? b[i] : 0));
  return diff == 0;
}

// The key of an Authorization header whose scheme is Bearer (case-insensitive, RFC 7235), else
// nullopt.
std::optional<std::string> bearer_token(const std::string& auth) {
  const size_t space = auth.find(' ');
  if (space == std::string::npos || space != 6) return std::nullopt;
  for (size_t i = 0; i < 6; ++i)
    if (std::tolower(static_cast<unsigned char>(auth[i])) != "bearer"[i]) return std::nullopt;
  const size_t key = auth.find_first_not_of(' ', space);
  if (key == std::string::npos) return std::nullopt;
  return auth.substr(key);
}

// A lingering close after an answer sent before the request's body was read (413, 401, ...):
// the write side is shut (the client sees the end of the answer), then what the client still
// sends is read and dropped, until it pauses for 200 ms, stops, or 2 s or 64 MiB have passed.
// Closing at once would reset the connection under a client still writing its body, which then
// never reads the answer. Bounded, so a refused client holds its thread for 2 s at most.
void drain_after_refusal(const httplib::Request& req) {
  const int fd = find_connection_socket(req.local_port, req.remote_addr, req.remote_port);
  if (fd < 0) return;
  ::shutdown(fd, SHUT_WR);
  char buf[16384];
  size_t drained = 0;
  const auto deadline = Clock::now() + std::chrono::seconds(2);
  while (drained < (64u << 20) && Clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 200) <= 0) break;
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    drained += static_cast<size_t>(n);
  }
}

}  // namespace

std::string model_id_for(const std::string& model) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(model, ec)) return model;
  fs::path p = fs::path(model).lexically_normal();
  if (!p.has_filename()) p = p.parent_path();  // "models/amused-emoji/"
  std::string name = p.filename().string();
  if (name.empty() || name == "." || name == "..") {
    const fs::path abs = fs::weakly_canonical(fs::path(model), ec);
    name = ec ? std::string() : abs.filename().string();
  }
  return name.empty() ? model : name;
}

void Server::Impl::setup() {
  // Connection threads apart from the one generation worker: synchronous requests waiting for
  // it, polls, and slow clients until the watchdog's deadline (bind()).
  const size_t threads = connection_threads =
      options.connection_threads > 0 ? std::min<size_t>(options.connection_threads, 1024)
                                     : std::clamp<size_t>(options.max_queue + 56, 64, 256);
  http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  http.set_payload_max_length(options.max_body_bytes);
  http.set_keep_alive_timeout(2);
  http.set_read_timeout(10);
  http.set_write_timeout(30);

  // Rejected before the body is read (it could be unbounded or a decompression bomb).
  http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    t_request_start = Clock::now();
    // CORS preflight (only when --cors-origin is set): answered before authentication, as
    // browsers send it without credentials.
    if (!options.cors_origin.empty() && req.method == "OPTIONS") {
      res.status = 204;
      res.set_header("Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS");
      res.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type");
      res.set_header("Access-Control-Max-Age", "600");
      return httplib::Server::HandlerResponse::Handled;
    }
    // Chunked bodies (the OpenAI SDK's uploads of streams) are read by the POST routes that take
    // a body, with the same cap; no other transfer coding, nothing chunked elsewhere, and never
    // together with Content-Length (request smuggling).
    if (req.has_header("Transfer-Encoding")) {
      std::string te = req.get_header_value("Transfer-Encoding");
      std::transform(te.begin(), te.end(), te.begin(), [](unsigned char c) { return std::tolower(c); });
      const bool body_route = req.method == "POST" && (req.path == "/v1/images/generations" ||
                                                       req.path == "/v1/images/edits" || req.path == "/v1/jobs");
      if (te != "chunked" || !body_route || req.has_header("Content-Length") ||
          req.get_header_value_count("Transfer-Encoding") > 1) {
        reject_before_body(
            req, res,
            error_of(411, "invalid_request_error", "length_required",
                     te != "chunked" ? "Transfer-Encoding '" + te.substr(0, 32) + "' is not accepted (chunked is)"
                     : !body_route   ? "this route takes no chunked body; send Content-Length"
                                     : "Transfer-Encoding and Content-Length together are not accepted"));
        return httplib::Server::HandlerResponse::Handled;
      }
    }
    if (req.has_header("Content-Encoding")) {
      reject_before_body(
          req, res,
          error_of(415, "invalid_request_error", "unsupported_encoding",
                   "compressed request bodies (Content-Encoding) are not accepted"));
      return httplib::Server::HandlerResponse::Handled;
    }
    // Content-Length, before a byte of the body is read: one value, decimal digits, within the
    // route's cap. (A second, different value, "-5" or 20 digits used to hold the connection until
    // the read timed out; an oversized body was read before the 413.)
    if (const size_t n = req.get_header_value_count("Content-Length"); n > 0) {
      const std::string first = req.get_header_value("Content-Length", 0);
      for (size_t i = 1; i < n; ++i)
        if (req.get_header_value("Content-Length", i) != first) {
          reject_before_body(req, res,
                             error_of(400, "invalid_request_error", "bad_request",
                                      "conflicting Content-Length headers"));
          return httplib::Server::HandlerResponse::Handled;
        }
      const bool digits = !first.empty() && first.size() <= 18 &&
                          first.find_first_not_of("0123456789") == std::string::npos;
      if (!digits) {
        reject_before_body(req, res,
                           error_of(first.size() > 18 && first.find_first_not_of("0123456789") ==
                                                                std::string::npos
                                        ? 413
                                        : 400,
                                    "invalid_request_error",
                                    first.size() > 18 ? "payload_too_large" : "bad_request",
                                    "invalid Content-Length '" + first.substr(0, 32) + "'"));
        return httplib::Server::HandlerResponse::Handled;
      }
      const uint64_t cap = body_cap(req);
      if (std::stoull(first) > cap) {
        reject_before_body(req, res, too_large(cap));
        return httplib::Server::HandlerResponse::Handled;
      }
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });

  // Clients that ask first (curl does for bodies over 1 MiB) learn about a bad key or an
  // oversized body before sending it. Otherwise an oversized body is read and dropped by
  // httplib (413), and a bad key is answered after the body: answering before it and closing
  // could reset the connection before the client reads the answer.
  http.set_expect_100_continue_handler(
      [this](const httplib::Request& req, httplib::Response& res) {
        // The body was not sent: closing after the answer leaves nothing unread behind.
        if (auto e = auth_error(req)) {
          res.set_header("WWW-Authenticate", "Bearer");
          reject_before_body(req, res, *e);
          return 401;
        }
        if (req.get_header_value<uint64_t>("Content-Length") > body_cap(req)) {
          reject_before_body(req, res, too_large(body_cap(req)));
          return 413;
        }
        return 100;
      });

  http.set_error_handler(httplib::Server::HandlerWithResponse(
      [this](const httplib::Request& req, httplib::Response& res) {
        // Handled either way: httplib then adds Content-Length, which it leaves out of
        // responses written before routing (the Expect: 100-continue refusals).
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Handled;
        ApiError e;
        switch (res.status) {
          case 404:
            if (auto auth = auth_error(req)) {
              res.set_header("WWW-Authenticate", "Bearer");
              e = *auth;
              break;
            }
            e = error_of(404, "invalid_request_error", "not_found",
                         "no route for " + req.method + " " + req.path + " (see docs/server.md)");
            break;
          case 413:
            e = too_large(body_cap(req));
            break;
          case 414:
            e = error_of(414, "invalid_request_error", "uri_too_long",
                         "the request line is too long (paths and query strings are short here)");
            break;
          case 400:
            e = error_of(400, "invalid_request_error", "bad_request",
                         "malformed HTTP request (or multipart body)");
            break;
          default:
            e = error_of(res.status, res.status >= 500 ? "server_error" : "invalid_request_error",
                         "http_" + std::to_string(res.status),
                         "HTTP error " + std::to_string(res.status));
        }
        send_error(res, e);
        return httplib::Server::HandlerResponse::Handled;
      }));

  // CORS headers on every response, when asked for.
  http.set_post_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (options.cors_origin.empty()) return;
    const std::string origin = req.get_header_value("Origin");
    if (options.cors_origin == "*") {
      res.set_header("Access-Control-Allow-Origin", "*");
    } else if (origin == options.cors_origin) {
      res.set_header("Access-Control-Allow-Origin", origin);
      res.set_header("Vary", "Origin");
    } else {
      return;
    }
    res.set_header("Access-Control-Expose-Headers", "Location, Retry-After");
  });

  http.set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "unknown error";
        try {
          std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        send_error(res, error_of(500, "server_error", "internal_error", what));
      });

  http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    // The answer is written: the connection's next request has a fresh deadline.
    if (watchdog) watchdog->answered(req.remote_addr, req.remote_port);
    // Called once the answer is written: a refusal sent before the body lingers here.
    if (t_refused_before_body) {
      t_refused_before_body = false;
      drain_after_refusal(req);
    }
    {
      std::lock_guard<std::mutex> lock(metrics_mu);
      ++responses_by_status[res.status];
    }
    double ms = 0;
    if (t_request_start)
      ms = std::chrono::duration<double, std::milli>(Clock::now() - *t_request_start).count();
    t_request_start.reset();
    const std::time_t now = std::time(nullptr);
    std::tm tm{};
    gmtime_r(&now, &tm);
    char stamp[32];
    std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", &tm);
    std::lock_guard<std::mutex> lock(log_mu);
    std::fprintf(stderr, "%s %s:%d \"%s %s\" %d %zu %.1fms\n", stamp, req.remote_addr.c_str(),
                 req.remote_port, req.method.c_str(), req.path.c_str(), res.status,
                 res.body.size(), ms);
  });

  using Req = httplib::Request;
  using Res = httplib::Response;
  // Every route but /health needs the API key when one is set.
  // The request is in (httplib reads bodies before these handlers): no deadline while it runs.
  auto in_handler = [this](const Req& req) {
    if (watchdog) watchdog->handling(req.remote_addr, req.remote_port);
  };
  auto guard = [this, in_handler](std::function<void(const Req&, Res&)> fn) {
    return [this, in_handler, fn = std::move(fn)](const Req& req, Res& res) {
      in_handler(req);
      if (auto e = auth_error(req)) {
        res.set_header("WWW-Authenticate", "Bearer");
        return send_error(res, *e);
      }
      fn(req, res);
    };
  };
  http.Get("/health", [this, in_handler](const Req& req, Res& res) {
    in_handler(req);
    health(res);
  });
  http.Get("/v1/models", guard([this](const Req&, Res& res) { models(res); }));
  http.Get("/v1/models/(.+)", guard([this](const Req& req, Res& res) { model(req, res); }));
  http.Get("/metrics", guard([this](const Req& req, Res& res) { metrics(req, res); }));
  // The routes that take a body read it themselves (read_body): chunked or not, up to their cap,
  // and parse it into a request here. Bodies over 1 MiB are parsed one at a time and freed before
  // the handler runs: eight concurrent 30 MB edits parsed at once took 1 GB.
  using RequestHandler = std::function<void(const Req&, Res&, Parsed<GenerationRequest>&&)>;
  auto with_request = [this, in_handler](Endpoint endpoint, RequestHandler fn) {
    return [this, in_handler, endpoint, fn = std::move(fn)](const Req& req, Res& res,
                                                            const httplib::ContentReader& reader) {
      Body body;
      const auto read_error = read_body(req, reader, body);  // within the deadline
      in_handler(req);
      // Not held while reading: a client sending slowly would hold every other upload back.
      const bool big = body.text.size() + (body.fields.empty() ? 0 : body.fields.back().content.size()) > (1u << 20) ||
                       req.get_header_value<uint64_t>("Content-Length") > (1u << 20);
      std::unique_lock<std::mutex> one_big_body(big_body_mu, std::defer_lock);
      // The key is checked once the body is in (answering earlier and closing could reset the
      // connection before the client reads the answer).
      if (auto e = auth_error(req)) {
        res.set_header("WWW-Authenticate", "Bearer");
        return send_error(res, *e);
      }
      if (read_error) return reject_before_body(req, res, *read_error);
      if (big) one_big_body.lock();
      Parsed<GenerationRequest> parsed = parse(req, body, endpoint);
      body = Body{};
      if (big) {
        one_big_body.unlock();
        give_back_free_memory();
      }
      fn(req, res, std::move(parsed));
    };
  };
  http.Post("/v1/images/generations",
            with_request(Endpoint::Generations, [this](const Req& req, Res& res, Parsed<GenerationRequest>&& r) {
              images_sync(req, res, std::move(r), Endpoint::Generations);
            }));
  http.Post("/v1/images/edits",
            with_request(Endpoint::Edits, [this](const Req& req, Res& res, Parsed<GenerationRequest>&& r) {
              images_sync(req, res, std::move(r), Endpoint::Edits);
            }));
  http.Post("/v1/jobs", with_request(Endpoint::Jobs, [this](const Req& req, Res& res, Parsed<GenerationRequest>&& r) {
              jobs_submit(req, res, std::move(r));
            }));
  http.Get("/v1/jobs",
           guard([this](const Req&, Res& res) { send_json(res, 200, queue->list()); }));
  const std::string id = "/v1/jobs/([A-Za-z0-9_]{1,64})";
  http.Get(id, guard([this](const Req& req, Res& res) {
             if (auto job = find_job(req, res)) send_json(res, 200, queue->describe(job));
           }));
  http.Get(id + "/result", guard([this](const Req& req, Res& res) { jobs_result(req, res); }));
  http.Get(id + "/preview", guard([this](const Req& req, Res& res) { jobs_preview(req, res); }));
  http.Post(id + "/cancel",
            guard([this](const Req& req, Res& res) { jobs_cancel(req, res, false); }));
  http.Delete(id, guard([this](const Req& req, Res& res) { jobs_cancel(req, res, true); }));
}

std::optional<ApiError> Server::Impl::auth_error(const httplib::Request& req) const {
  if (options.api_key.empty() || req.path == "/health") return std::nullopt;
  const std::string auth = req.get_header_value("Authorization");
  if (const auto key = bearer_token(auth); key && same_secret(*key, options.api_key))
    return std::nullopt;
  return error_of(
      401, "invalid_request_error", "invalid_api_key",
      auth.empty() ? "missing 'Authorization: Bearer <key>' header" : "invalid API key");
}

ApiError Server::Impl::too_large(uint64_t cap) const {
  return error_of(413, "invalid_request_error", "payload_too_large",
                  "the request body is larger than this route's limit of " + std::to_string(cap) +
                      " bytes");
}

uint64_t Server::Impl::body_cap(const httplib::Request& req) const {
  const uint64_t all = options.max_body_bytes;
  // Only edits (and jobs, which may be edits) carry images; a generation is a few kB of JSON.
  if (req.method == "POST" && (req.path == "/v1/images/edits" || req.path == "/v1/jobs")) return all;
  if (req.method == "POST" && req.path == "/v1/images/generations")
    return std::min<uint64_t>(all, 256u << 10);
  return std::min<uint64_t>(all, 64u << 10);  // job cancels, GET, DELETE: no body worth the name
}

std::optional<ApiError> Server::Impl::read_body(const httplib::Request& req,
                                                const httplib::ContentReader& reader, Body& out) {
  const uint64_t cap = body_cap(req);
  uint64_t total = 0;
  bool over = false;
  // A known length within the cap is reserved at once (no doubling as the body grows).
  if (const uint64_t declared = req.get_header_value<uint64_t>("Content-Length"); declared > 0 && declared <= cap &&
                                                                           !req.is_multipart_form_data())
    out.text.reserve(declared);
  auto take = [&](size_t n) {
    total += n;
    over = total > cap;
    return !over;
  };
  bool ok = false;
  if (req.is_multipart_form_data()) {
    out.multipart = true;
    ok = reader(
        [&](const httplib::MultipartFormData& part) {
          if (out.fields.size() >= 64) return false;  // no request has more fields
          out.fields.push_back({part.name, "", part.filename, part.content_type});
          return true;
        },
        [&](const char* data, size_t n) {
          if (!take(n) || out.fields.empty()) return false;
          out.fields.back().content.append(data, n);
          return true;
        });
  } else {
    ok = reader([&](const char* data, size_t n) {
      if (!take(n)) return false;
      out.text.append(data, n);
      return true;
    });
  }
  if (over) {
    out = Body{};  // the memory back at once
    return too_large(cap);
  }
  if (!ok) {
    out = Body{};
    return error_of(400, "invalid_request_error", "bad_request",
                    "malformed HTTP request body (or multipart body)");
  }
  return std::nullopt;
}

Server::Server(Pipeline& pipeline, ServerOptions options)
    : impl_(std::make_unique<Impl>(pipeline, std::move(options))) {}

Server::~Server() {
  stop();
  impl_->queue->shutdown();
}

int Server::bind() {
  auto& o = impl_->options;
  int port = o.port;
  if (port == 0) {
    port = impl_->http.bind_to_any_port(o.host);
  } else if (!impl_->http.bind_to_port(o.host, port)) {
    port = -1;
  }
  if (port <= 0)
    throw IoError("cannot listen on " + o.host + ":" + std::to_string(o.port) +
                  " (address in use, or not a local address? try another --port or --host)");
  impl_->watchdog = std::make_unique<ConnectionWatchdog>(
      port, std::chrono::milliseconds(static_cast<int64_t>(o.request_timeout_s * 1000)),
      4 * impl_->connection_threads);
  return port;
}

void Server::run() {
  if (!impl_->stopping) impl_->http.listen_after_bind();
}

void Server::stop() {
  impl_->stopping = true;
  // Cancel first: synchronous handlers waiting on their jobs then answer at once, so the HTTP
  // threads can finish and the listener can close.
  impl_->queue->shutdown();
  std::lock_guard<std::mutex> lock(impl_->stop_mu);
  if (!impl_->http_stopped && impl_->http.is_running()) {
    impl_->http.stop();
    impl_->http_stopped = true;
  }
}

}  // namespace amused::server
