// Information routes: GET /health, /v1/models, /v1/models/{id}, /metrics.
#include "server/server_impl.h"

#include <sstream>

namespace amused::server {

void Server::Impl::health(httplib::Response& res) {
  const QueueStats s = queue->stats();
  json j = {{"status", stopping ? "shutting_down" : "ok"},
            {"model", options.model_id},
            {"queue_length", s.queued},
            {"running", s.running},
            {"uptime_s", std::chrono::duration<double>(Clock::now() - started).count()}};
  send_json(res, stopping ? 503 : 200, j);
}

void Server::Impl::models(httplib::Response& res) {
  send_json(res, 200, {{"object", "list"}, {"data", json::array({model_object()})}});
}

void Server::Impl::model(const httplib::Request& req, httplib::Response& res) {
  const std::string id = req.matches[1];
  if (id == options.model_id || id == options.model) return send_json(res, 200, model_object());
  send_error(res, error_of(404, "invalid_request_error", "model_not_found",
                           "no model '" + id + "' here; this server serves '" + options.model_id +
                               "' (GET /v1/models)"));
}

json Server::Impl::model_object() const {
  const ModelSummary& s = pipeline.summary();
  return {
      {"id", options.model_id},
      {"object", "model"},
      {"created", created},
      {"owned_by", "amused.cpp"},
      {"default_size", std::to_string(s.default_width) + "x" + std::to_string(s.default_height)},
      {"vq_scale_factor", s.vq_scale_factor},
      {"device", s.device.str()},
      {"dtype", to_string(s.dtype)},
      {"masking_schedule", to_string(s.masking_schedule)}};
}

void Server::Impl::metrics(const httplib::Request& req, httplib::Response& res) {
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
         {"connections", {{"open", watchdog ? watchdog->open() : 0}, {"cut", watchdog ? watchdog->cut() : 0}}},
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
  metric("amused_connections_open", "gauge", "Open HTTP connections (at the last watchdog scan).");
  o << "amused_connections_open " << (watchdog ? watchdog->open() : 0) << '\n';
  metric("amused_connections_cut_total", "counter",
         "Connections closed for not sending a whole request within --request-timeout (or beyond the open limit).");
  o << "amused_connections_cut_total " << (watchdog ? watchdog->cut() : 0) << '\n';
  metric("amused_uptime_seconds", "gauge", "Seconds since the server started.");
  o << "amused_uptime_seconds " << uptime << '\n';
  res.status = 200;
  res.set_content(o.str(), "text/plain; version=0.0.4");
}

}  // namespace amused::server
