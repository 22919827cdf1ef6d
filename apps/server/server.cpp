// The HTTP layer of `amused serve`: routes, authentication, limits, errors in the OpenAI shape,
// synchronous and asynchronous generation through the JobQueue, metrics, and request logging.
#include "server/server.h"

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

namespace amused::server {
namespace {
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// Start of the request this HTTP thread is serving (set before routing, read by the logger).
thread_local std::optional<Clock::time_point> t_request_start;

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  // Replacement characters rather than an exception should any string be invalid UTF-8.
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

void send_error(httplib::Response& res, const ApiError& e) {
  send_json(res, e.status, e.to_json());
}

ApiError error_of(int status, std::string type, std::string code, std::string message) {
  ApiError e;
  e.status = status;
  e.type = std::move(type);
  e.code = std::move(code);
  e.message = std::move(message);
  return e;
}

// Answers before the body has been read: the unread body would otherwise be taken for the next
// request on a keep-alive connection, so the connection is closed after this response.
void reject_before_body(const httplib::Request& req, httplib::Response& res, const ApiError& e) {
  auto& mreq = const_cast<httplib::Request&>(req);  // httplib owns it non-const
  mreq.headers.erase("Connection");
  mreq.headers.emplace("Connection", "close");
  send_error(res, e);
}

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

// Retry-After with jitter: a burst of refused clients should not all come back in the same second.
int with_jitter(int seconds) {
  thread_local std::mt19937 rng{std::random_device{}()};
  const int spread = std::max(1, seconds / 2);
  return seconds + std::uniform_int_distribution<int>(0, spread)(rng);
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

  // ------------------------------------------------------------------ generation (worker thread)

  json generate(const Job& job, const JobQueue::Progress& progress) {
    const ImageRequest& r = job.request;
    GenerationCall call = to_params(r);
    const ProgressCallback cb = [&](const StepInfo& s) {
      return progress(s.step, s.num_steps, s.step_seconds);
    };
    call.common(r.mode).progress = cb;
    const GenerationResult result = r.mode == "text-to-image"    ? pipeline.text_to_image(call.t2i)
                                    : r.mode == "image-to-image" ? pipeline.image_to_image(call.img2img)
                                                                 : pipeline.inpaint(call.inpaint);
    const ModelSummary& summary = pipeline.summary();
    json data = json::array();
    for (size_t i = 0; i < result.images.size(); ++i) {
      const std::string png = encode_png(
          result.images[i],
          png_metadata(r, result, i, options.model, summary.masking_schedule, summary.dtype));
      data.push_back({{"b64_json", base64_encode(png)}, {"seed", result.seed}, {"index", i}});
    }
    const Timings& t = result.timings;
    return {{"created", unix_now()},
            {"data", data},
            {"seed", result.seed},
            {"model", options.model_id},
            {"mode", r.mode},
            {"width", result.images.empty() ? 0 : result.images[0].width},
            {"height", result.images.empty() ? 0 : result.images[0].height},
            {"steps", steps_to_run(r)},  // run: int(steps * strength) for edits
            {"timings",
             {{"text_encoder_s", t.text_encoder_s},
              {"transformer_s", t.transformer_s},
              {"scheduler_s", t.scheduler_s},
              {"vq_decode_s", t.vq_decode_s},
              {"generate_s", t.total_s},
              {"step_s", t.step_s}}}};
  }

  // ------------------------------------------------------------------ request parsing

  Parsed<ImageRequest> parse(const httplib::Request& req, Endpoint endpoint) {
    if (req.is_multipart_form_data()) {
      if (endpoint == Endpoint::Generations)
        return invalid("", "/v1/images/generations takes a JSON body (multipart is for edits)",
                       "invalid_content_type");
      std::vector<FormField> fields;
      for (const auto& [name, f] : req.files)
        fields.push_back({f.name, f.content, f.filename, f.content_type});
      return parse_multipart_request(fields, endpoint, options.limits);
    }
    return parse_json_request(req.body, endpoint, options.limits);
  }

  void reject_full(httplib::Response& res, bool shutting_down) {
    if (shutting_down) {
      send_error(res,
                 error_of(503, "server_error", "shutting_down", "the server is shutting down"));
      return;
    }
    const int retry = with_jitter(queue->retry_after_seconds());
    res.set_header("Retry-After", std::to_string(retry));
    send_error(res, error_of(429, "rate_limit_exceeded", "queue_full",
                             "the queue is full (" + std::to_string(options.max_queue) +
                                 " waiting); retry after " + std::to_string(retry) + " s"));
  }

  // ------------------------------------------------------------------ handlers

  void images_sync(const httplib::Request& req, httplib::Response& res, Endpoint endpoint) {
    auto parsed = parse(req, endpoint);
    if (auto* e = std::get_if<ApiError>(&parsed)) return send_error(res, *e);
    // The worker asks at every step whether the client is still there; so does this thread while
    // the job waits in the queue.
    const int fd = find_connection_socket(req.local_port, req.remote_addr, req.remote_port);
    auto handler_done = std::make_shared<std::atomic<bool>>(false);
    std::function<bool()> alive;
    if (fd >= 0) alive = [fd, handler_done] { return !*handler_done && connection_alive(fd); };
    bool shutting_down = false;
    auto job =
        queue->submit(std::move(std::get<ImageRequest>(parsed)), false, alive, &shutting_down);
    if (!job) return reject_full(res, shutting_down);
    while (!queue->wait(job, std::chrono::milliseconds(50))) {
      if (alive && !alive()) {
        queue->cancel(job);
        *handler_done = true;  // the descriptor may be reused once this handler returns
        send_error(res, error_of(499, "invalid_request_error", "client_closed_request",
                                 "the client closed the connection; the job was cancelled"));
        return;
      }
    }
    *handler_done = true;
    finish_sync(res, job);
  }

  // Answers for a finished job (whose fields no longer change once its status is final).
  void finish_sync(httplib::Response& res, const std::shared_ptr<Job>& job) {
    switch (queue->status(job)) {
      case JobStatus::Succeeded:
        send_json(res, 200, *job->result);
        return;
      case JobStatus::Cancelled:
        if (stopping)
          return send_error(
              res, error_of(503, "server_error", "shutting_down", "the server is shutting down"));
        [[fallthrough]];
      default:
        return send_error(
            res, job->error ? *job->error : error_of(500, "server_error", "internal", "no result"));
    }
  }

  void jobs_submit(const httplib::Request& req, httplib::Response& res) {
    auto parsed = parse(req, Endpoint::Jobs);
    if (auto* e = std::get_if<ApiError>(&parsed)) return send_error(res, *e);
    bool shutting_down = false;
    auto job = queue->submit(std::move(std::get<ImageRequest>(parsed)), true, {}, &shutting_down);
    if (!job) return reject_full(res, shutting_down);
    res.set_header("Location", "/v1/jobs/" + job->id);
    send_json(res, 202, queue->describe(job));
  }

  std::shared_ptr<Job> find_job(const httplib::Request& req, httplib::Response& res) {
    auto job = queue->find(req.matches[1]);
    if (!job)
      send_error(res, error_of(404, "invalid_request_error", "job_not_found",
                               "no job '" + std::string(req.matches[1]) +
                                   "' (unknown, or finished and forgotten)"));
    return job;
  }

  void jobs_result(const httplib::Request& req, httplib::Response& res) {
    auto job = find_job(req, res);
    if (!job) return;
    const JobStatus s = queue->status(job);
    if (s == JobStatus::Queued || s == JobStatus::Running) {
      res.set_header("Retry-After", "1");
      return send_error(res, error_of(409, "invalid_request_error", "job_not_finished",
                                      std::string("the job is ") + to_string(s) +
                                          "; poll GET /v1/jobs/" + job->id));
    }
    finish_sync(res, job);
  }

  void jobs_cancel(const httplib::Request& req, httplib::Response& res, bool is_delete) {
    auto job = find_job(req, res);
    if (!job) return;
    if (queue->cancel(job)) {
      json j = queue->describe(job);
      return send_json(res, j["status"] == "cancelled" ? 200 : 202, j);
    }
    // Already finished.
    if (is_delete && queue->remove(job))
      return send_json(res, 200, {{"id", job->id}, {"object", "image.job"}, {"deleted", true}});
    send_error(res, error_of(409, "invalid_request_error", "job_finished",
                             std::string("the job has already finished (") +
                                 to_string(queue->status(job)) + ")"));
  }

  void health(httplib::Response& res) {
    const QueueStats s = queue->stats();
    json j = {{"status", stopping ? "shutting_down" : "ok"},
              {"model", options.model_id},
              {"queue_length", s.queued},
              {"running", s.running},
              {"uptime_s", std::chrono::duration<double>(Clock::now() - started).count()}};
    send_json(res, stopping ? 503 : 200, j);
  }

  void models(httplib::Response& res) {
    send_json(res, 200, {{"object", "list"}, {"data", json::array({model_object()})}});
  }

  // GET /v1/models/{id} (the OpenAI SDK's models.retrieve): this server's model by its id (or by
  // the -m argument), else 404.
  void model(const httplib::Request& req, httplib::Response& res) {
    const std::string id = req.matches[1];
    if (id == options.model_id || id == options.model) return send_json(res, 200, model_object());
    send_error(res, error_of(404, "invalid_request_error", "model_not_found",
                             "no model '" + id + "' here; this server serves '" + options.model_id +
                                 "' (GET /v1/models)"));
  }

  json model_object() const {
    const ModelSummary& s = pipeline.summary();
    return {
        {"id", options.model_id},
        {"object", "model"},
        {"created", created},
        {"owned_by", "amused.cpp"},
        {"default_size", std::to_string(s.default_width) + "x" + std::to_string(s.default_height)},
        {"vq_scale_factor", s.vq_scale_factor},
        {"device", s.device},
        {"dtype", s.dtype},
        {"masking_schedule", s.masking_schedule}};
  }

  void metrics(const httplib::Request& req, httplib::Response& res) {
    const QueueStats s = queue->stats();
    std::map<int, uint64_t> by_status;
    {
      std::lock_guard<std::mutex> lock(metrics_mu);
      by_status = responses_by_status;
    }
    const double uptime = std::chrono::duration<double>(Clock::now() - started).count();
    if (req.get_param_value("format") == "json" ||
        req.get_header_value("Accept").find("application/json") != std::string::npos) {
      json codes = json::object();
      uint64_t total = 0;
      for (const auto& [code, n] : by_status) {
        codes[std::to_string(code)] = n;
        total += n;
      }
      return send_json(
          res, 200,
          {{"uptime_s", uptime},
           {"requests", {{"total", total}, {"by_status", codes}}},
           {"queue", {{"length", s.queued}, {"running", s.running}, {"max", options.max_queue}}},
           {"jobs",
            {{"submitted", s.submitted},
             {"rejected", s.rejected},
             {"succeeded", s.succeeded},
             {"failed", s.failed},
             {"cancelled", s.cancelled}}},
           {"steps",
            {{"count", s.steps},
             {"seconds_sum", s.step_seconds_sum},
             {"seconds_mean", s.steps ? s.step_seconds_sum / s.steps : 0.0},
             {"seconds_last", s.last_step_seconds}}},
           {"generations",
            {{"count", s.generations},
             {"seconds_sum", s.generation_seconds_sum},
             {"seconds_mean", s.generations ? s.generation_seconds_sum / s.generations : 0.0}}}});
    }
    // Prometheus text exposition format.
    std::ostringstream o;
    auto metric = [&](const char* name, const char* type, const char* help) {
      o << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n';
    };
    metric("amused_requests_total", "counter", "HTTP responses sent, by status code.");
    for (const auto& [code, n] : by_status)
      o << "amused_requests_total{code=\"" << code << "\"} " << n << '\n';
    metric("amused_queue_length", "gauge", "Jobs waiting in the queue.");
    o << "amused_queue_length " << s.queued << '\n';
    metric("amused_jobs_running", "gauge", "Jobs being generated (0 or 1).");
    o << "amused_jobs_running " << (s.running ? 1 : 0) << '\n';
    metric("amused_jobs_total", "counter", "Jobs by outcome.");
    o << "amused_jobs_total{outcome=\"submitted\"} " << s.submitted << '\n'
      << "amused_jobs_total{outcome=\"rejected\"} " << s.rejected << '\n'
      << "amused_jobs_total{outcome=\"succeeded\"} " << s.succeeded << '\n'
      << "amused_jobs_total{outcome=\"failed\"} " << s.failed << '\n'
      << "amused_jobs_total{outcome=\"cancelled\"} " << s.cancelled << '\n';
    metric("amused_step_seconds", "summary", "Wall time of denoising steps.");
    o << "amused_step_seconds_count " << s.steps << '\n'
      << "amused_step_seconds_sum " << s.step_seconds_sum << '\n';
    metric("amused_step_seconds_last", "gauge", "Wall time of the last denoising step.");
    o << "amused_step_seconds_last " << s.last_step_seconds << '\n';
    metric("amused_generation_seconds", "summary", "Wall time of successful generations.");
    o << "amused_generation_seconds_count " << s.generations << '\n'
      << "amused_generation_seconds_sum " << s.generation_seconds_sum << '\n';
    metric("amused_uptime_seconds", "gauge", "Seconds since the server started.");
    o << "amused_uptime_seconds " << uptime << '\n';
    res.status = 200;
    res.set_content(o.str(), "text/plain; version=0.0.4");
  }

  // ------------------------------------------------------------------ wiring

  void setup() {
    const size_t threads = std::clamp<size_t>(options.max_queue + 8, 8, 256);
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
      if (req.has_header("Transfer-Encoding")) {
        reject_before_body(
            req, res,
            error_of(411, "invalid_request_error", "length_required",
                     "chunked request bodies are not accepted; send Content-Length"));
        return httplib::Server::HandlerResponse::Handled;
      }
      if (req.has_header("Content-Encoding")) {
        reject_before_body(
            req, res,
            error_of(415, "invalid_request_error", "unsupported_encoding",
                     "compressed request bodies (Content-Encoding) are not accepted"));
        return httplib::Server::HandlerResponse::Handled;
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
          if (req.get_header_value<uint64_t>("Content-Length") > options.max_body_bytes) {
            reject_before_body(req, res, too_large());
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
              e = too_large();
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
    auto guard = [this](std::function<void(const Req&, Res&)> fn) {
      return [this, fn = std::move(fn)](const Req& req, Res& res) {
        if (auto e = auth_error(req)) {
          res.set_header("WWW-Authenticate", "Bearer");
          return send_error(res, *e);
        }
        fn(req, res);
      };
    };
    http.Get("/health", [this](const Req&, Res& res) { health(res); });
    http.Get("/v1/models", guard([this](const Req&, Res& res) { models(res); }));
    http.Get("/v1/models/(.+)", guard([this](const Req& req, Res& res) { model(req, res); }));
    http.Get("/metrics", guard([this](const Req& req, Res& res) { metrics(req, res); }));
    http.Post("/v1/images/generations", guard([this](const Req& req, Res& res) {
                images_sync(req, res, Endpoint::Generations);
              }));
    http.Post("/v1/images/edits",
              guard([this](const Req& req, Res& res) { images_sync(req, res, Endpoint::Edits); }));
    http.Post("/v1/jobs", guard([this](const Req& req, Res& res) { jobs_submit(req, res); }));
    http.Get("/v1/jobs",
             guard([this](const Req&, Res& res) { send_json(res, 200, queue->list()); }));
    const std::string id = "/v1/jobs/([A-Za-z0-9_]{1,64})";
    http.Get(id, guard([this](const Req& req, Res& res) {
               if (auto job = find_job(req, res)) send_json(res, 200, queue->describe(job));
             }));
    http.Get(id + "/result", guard([this](const Req& req, Res& res) { jobs_result(req, res); }));
    http.Post(id + "/cancel",
              guard([this](const Req& req, Res& res) { jobs_cancel(req, res, false); }));
    http.Delete(id, guard([this](const Req& req, Res& res) { jobs_cancel(req, res, true); }));
  }

  // 401 when an API key is set and the request does not carry it (/health is open).
  std::optional<ApiError> auth_error(const httplib::Request& req) const {
    if (options.api_key.empty() || req.path == "/health") return std::nullopt;
    const std::string auth = req.get_header_value("Authorization");
    if (const auto key = bearer_token(auth); key && same_secret(*key, options.api_key))
      return std::nullopt;
    return error_of(
        401, "invalid_request_error", "invalid_api_key",
        auth.empty() ? "missing 'Authorization: Bearer <key>' header" : "invalid API key");
  }

  ApiError too_large() const {
    return error_of(413, "invalid_request_error", "payload_too_large",
                    "the request body is larger than the limit of " +
                        std::to_string(options.max_body_bytes) + " bytes");
  }
};

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
