// The job API: POST /v1/jobs, GET /v1/jobs/{id}[/result], POST /v1/jobs/{id}/cancel, DELETE.
#include "server/server_impl.h"

namespace amused::server {

void Server::Impl::jobs_submit(const httplib::Request& req, httplib::Response& res,
                               Parsed<GenerationRequest>&& parsed) {
  if (auto* e = std::get_if<ApiError>(&parsed)) return send_error(res, *e);
  bool shutting_down = false;
  auto job = queue->submit(std::move(std::get<GenerationRequest>(parsed)), true, {}, &shutting_down);
  if (!job) return reject_full(res, shutting_down);
  res.set_header("Location", "/v1/jobs/" + job->id);
  send_json(res, 202, queue->describe(job));
}

std::shared_ptr<Job> Server::Impl::find_job(const httplib::Request& req, httplib::Response& res) {
  auto job = queue->find(req.matches[1]);
  if (!job)
    send_error(res, error_of(404, "invalid_request_error", "job_not_found",
                             "no job '" + std::string(req.matches[1]) +
                                 "' (unknown, or finished and forgotten)"));
  return job;
}

void Server::Impl::jobs_result(const httplib::Request& req, httplib::Response& res) {
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

void Server::Impl::jobs_preview(const httplib::Request& req, httplib::Response& res) {
  auto job = find_job(req, res);
  if (!job) return;
  if (!job->request.preview)
    return send_error(res, error_of(404, "invalid_request_error", "no_preview",
                                    "job '" + job->id + "' was not submitted with \"preview\": true (add it to the "
                                    "POST /v1/jobs body to get a preview after every step)"));
  size_t index = 0;
  if (req.has_param("image")) {
    const std::string v = req.get_param_value("image");
    const bool ok = !v.empty() && v.size() <= 6 && v.find_first_not_of("0123456789") == std::string::npos;
    if (!ok) return send_error(res, invalid("image", "'image' must be an image index (0, 1, ...), got '" +
                                                       v.substr(0, 32) + "'"));
    index = std::stoul(v);
  }
  std::string png;
  int step = 0;
  size_t images = 0;
  {
    std::lock_guard<std::mutex> lock(job->partials->mu);
    step = job->partials->preview_step;
    images = job->partials->preview_pngs.size();
    if (index < images) png = job->partials->preview_pngs[index];
  }
  if (step == 0) {
    res.set_header("Retry-After", "1");
    return send_error(res, error_of(409, "invalid_request_error", "preview_not_ready",
                                    std::string("no step has finished yet (the job is ") +
                                        to_string(queue->status(job)) + "); poll again"));
  }
  if (index >= images)
    return send_error(res, invalid("image", "the job has " + std::to_string(images) + " image(s); 'image' " +
                                                std::to_string(index) + " is out of range"));
  res.set_header("X-Amused-Step", std::to_string(step));
  res.set_header("Cache-Control", "no-store");
  res.set_content(png, "image/png");
}

void Server::Impl::jobs_cancel(const httplib::Request& req, httplib::Response& res, bool is_delete) {
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

}  // namespace amused::server
