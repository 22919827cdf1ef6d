// Server::Impl: the state of `amused serve` and its route handlers, shared by the files that hold
// them (server.cpp: the wiring, middleware and authentication; routes_images.cpp: generation,
// synchronous and queued; routes_jobs.cpp: the job API; routes_info.cpp: health, models, metrics).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "server/connection.h"
#include "server/http.h"
#include "server/jobs.h"
#include "server/server.h"

namespace amused::server {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

inline int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

inline void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  // Replacement characters rather than an exception should any string be invalid UTF-8.
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

inline void send_error(httplib::Response& res, const ApiError& e) {
  send_json(res, e.status, e.to_json());
}

inline ApiError error_of(int status, std::string type, std::string code, std::string message) {
  ApiError e;
  e.status = status;
  e.type = std::move(type);
  e.code = std::move(code);
  e.message = std::move(message);
  return e;
}

// Set by reject_before_body for the request this HTTP thread serves: once the answer is written, the
// logger lingers on the connection (drain_after_refusal) before httplib closes it.
inline thread_local bool t_refused_before_body = false;

// Answers before the body has been read: the unread body would otherwise be taken for the next
// request on a keep-alive connection, so the connection is closed after this response (after a
// short drain, so that a client still sending its body gets to read the answer).
inline void reject_before_body(const httplib::Request& req, httplib::Response& res, const ApiError& e) {
  t_refused_before_body = true;
  auto& mreq = const_cast<httplib::Request&>(req);  // httplib owns it non-const
  mreq.headers.erase("Connection");
  mreq.headers.emplace("Connection", "close");
  send_error(res, e);
}

struct Server::Impl {
  Pipeline& pipeline;
  ServerOptions options;
  httplib::Server http;
  std::unique_ptr<JobQueue> queue;
  std::atomic<bool> stopping{false};
  std::mutex stop_mu;
  bool http_stopped = false;
  const Clock::time_point started = Clock::now();
  const int64_t created = unix_now();

  std::mutex metrics_mu;
  std::map<int, uint64_t> responses_by_status;
  std::mutex log_mu;
  size_t connection_threads = 0;
  std::mutex big_body_mu;  // bodies over 1 MiB are parsed one at a time
  std::unique_ptr<ConnectionWatchdog> watchdog;  // from bind() on (it needs the port)

  Impl(Pipeline& p, ServerOptions o) : pipeline(p), options(std::move(o)) {
    if (options.model_id.empty()) options.model_id = model_id_for(options.model);
    const ModelSummary& s = pipeline.summary();
    options.limits.vq_scale_factor = s.vq_scale_factor > 0 ? s.vq_scale_factor : 1;
    options.limits.default_width = s.default_width;
    options.limits.default_height = s.default_height;
    // Attention cost grows with the square of the token count: by default at most twice the
    // model's side (four times its tokens).
    const int q = options.limits.vq_scale_factor;
    const int side =
        options.max_side > 0 ? options.max_side : 2 * std::max(s.default_width, s.default_height);
    options.limits.max_side = std::max(q, side / q * q);
    queue = std::make_unique<JobQueue>(
        options.max_queue,
        [this](const Job& job, const JobQueue::Progress& progress) {
          return generate(job, progress);
        },
        options.keep_finished_jobs, options.keep_job_seconds);
    setup();
  }

  // A POST body as the routes that take one read it themselves (with Content-Length or chunked),
  // never more than the route's cap: the text of a JSON body, or the parts of a multipart one.
  struct Body {
    std::string text;
    std::vector<FormField> fields;
    bool multipart = false;
  };
  // Reads it; an error (413 over the cap, 400 malformed) when it cannot.
  std::optional<ApiError> read_body(const httplib::Request& req, const httplib::ContentReader& reader,
                                    Body& out);

  // routes_images.cpp: generation on the worker thread, request parsing, the synchronous routes.
  json generate(const Job& job, const JobQueue::Progress& progress);
  Parsed<GenerationRequest> parse(const httplib::Request& req, const Body& body, Endpoint endpoint);
  void reject_full(httplib::Response& res, bool shutting_down);
  void images_sync(const httplib::Request& req, httplib::Response& res, Parsed<GenerationRequest>&& parsed,
                   Endpoint endpoint);
  // Answers for a finished job (whose fields no longer change once its status is final).
  void finish_sync(httplib::Response& res, const std::shared_ptr<Job>& job);
  // `stream: true`: server-sent events (partial images, then the image) while the job runs.
  void stream_events(httplib::Response& res, const std::shared_ptr<Job>& job, Endpoint endpoint,
                     std::shared_ptr<std::atomic<bool>> handler_done);

  // routes_jobs.cpp: the job API.
  void jobs_submit(const httplib::Request& req, httplib::Response& res, Parsed<GenerationRequest>&& parsed);
  std::shared_ptr<Job> find_job(const httplib::Request& req, httplib::Response& res);
  void jobs_result(const httplib::Request& req, httplib::Response& res);
  void jobs_preview(const httplib::Request& req, httplib::Response& res);
  void jobs_cancel(const httplib::Request& req, httplib::Response& res, bool is_delete);

  // routes_info.cpp: health, models, metrics.
  void health(httplib::Response& res);
  void models(httplib::Response& res);
  // GET /v1/models/{id} (the OpenAI SDK's models.retrieve): this server's model by its id (or by
  // the -m argument), else 404.
  void model(const httplib::Request& req, httplib::Response& res);
  json model_object() const;
  void metrics(const httplib::Request& req, httplib::Response& res);

  // server.cpp: middleware and the route table; authentication.
  void setup();
  // 401 when an API key is set and the request does not carry it (/health is open).
  std::optional<ApiError> auth_error(const httplib::Request& req) const;
  // 413 for a body over `cap` bytes.
  ApiError too_large(uint64_t cap) const;
  // The largest body a request's route accepts: --max-body-mb for edits and jobs, 256 KiB for
  // generations (JSON without images), 64 KiB elsewhere.
  uint64_t body_cap(const httplib::Request& req) const;
};

}  // namespace amused::server
