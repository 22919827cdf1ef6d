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
