// The bounded job queue and its single worker thread.
#include "server/jobs.h"

#include <algorithm>
#include <cmath>
#include <random>

#include <c10/util/Exception.h>

#include "amused/error.h"

namespace amused::server {
namespace {
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

bool finished(JobStatus s) {
  return s == JobStatus::Succeeded || s == JobStatus::Failed || s == JobStatus::Cancelled;
}

ApiError cancelled_error(const std::string& message) {
  ApiError e;
  e.status = 409;
  e.message = message;
  e.code = "job_cancelled";
  return e;
}

std::string new_job_id() {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  std::lock_guard<std::mutex> lock(mu);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id = "job_";
  uint64_t v = rng();
  for (int i = 0; i < 16; ++i, v >>= 4) id += kHex[v & 15];
  return id;
}

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}
}  // namespace

const char* to_string(JobStatus s) {
  switch (s) {
    case JobStatus::Queued:
      return "queued";
    case JobStatus::Running:
      return "running";
    case JobStatus::Succeeded:
      return "succeeded";
    case JobStatus::Failed:
      return "failed";
    case JobStatus::Cancelled:
      return "cancelled";
  }
  return "unknown";
}

json job_json(const Job& job, std::optional<size_t> queue_position) {
  json j = {{"id", job.id},
            {"object", "image.job"},
            {"status", to_string(job.status)},
            {"created", job.created},
            {"mode", to_string(job.request.mode)},
            {"progress", {{"step", job.step}, {"num_steps", job.num_steps}}},
            {"cancel_requested", job.cancel_requested}};
  if (queue_position) j["queue_position"] = *queue_position;
  if (job.error) j["error"] = job.error->to_json()["error"];
  if (job.status == JobStatus::Succeeded) j["result_url"] = "/v1/jobs/" + job.id + "/result";
  if (job.request.preview) {
    std::lock_guard<std::mutex> lock(job.partials->mu);
    if (job.partials->preview_step > 0)
      j["progress"]["preview"] = {{"step", job.partials->preview_step},
                                  {"images", job.partials->preview_pngs.size()},
                                  {"url", "/v1/jobs/" + job.id + "/preview"}};
  }
  return j;
}

JobQueue::JobQueue(size_t max_queue, Runner runner, size_t keep_finished, double keep_seconds)
    : max_queue_(max_queue),
      keep_finished_(keep_finished),
      keep_seconds_(keep_seconds),
      runner_(std::move(runner)) {
  worker_ = std::thread([this] { worker_loop(); });
}

JobQueue::~JobQueue() { shutdown(); }

std::shared_ptr<Job> JobQueue::submit(GenerationRequest request, bool async,
                                      std::function<bool()> client_alive, bool* shutting_down) {
  std::lock_guard<std::mutex> lock(mu_);
  if (shutting_down) *shutting_down = stopping_;
  if (stopping_) return nullptr;
  if (queue_.size() >= max_queue_) {
    ++stats_.rejected;
    return nullptr;
  }
  auto job = std::make_shared<Job>();
  job->id = new_job_id();
  job->request = std::move(request);
  job->async = async;
  job->created = unix_now();
  job->client_alive = std::move(client_alive);
  job->num_steps = steps_to_run(job->request);
  queue_.push_back(job);
  if (async) jobs_[job->id] = job;
  ++stats_.submitted;
  work_cv_.notify_one();
  return job;
}

std::shared_ptr<Job> JobQueue::find(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  evict_locked();
  auto it = jobs_.find(id);
  return it == jobs_.end() ? nullptr : it->second;
}

bool JobQueue::cancel(const std::shared_ptr<Job>& job) {
  std::lock_guard<std::mutex> lock(mu_);
  if (job->status == JobStatus::Queued) {
    queue_.erase(std::remove(queue_.begin(), queue_.end(), job), queue_.end());
    finish_locked(*job, JobStatus::Cancelled,
                  cancelled_error("the job was cancelled before it started"), nullptr);
    return true;
  }
  if (job->status == JobStatus::Running) {
    job->cancel_requested = true;
    return true;
  }
  return false;
}

bool JobQueue::remove(const std::shared_ptr<Job>& job) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!finished(job->status)) return false;
  jobs_.erase(job->id);
  finished_.erase(std::remove(finished_.begin(), finished_.end(), job), finished_.end());
  return true;
}

bool JobQueue::wait(const std::shared_ptr<Job>& job, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  return done_cv_.wait_for(lock, timeout, [&] { return finished(job->status); });
}

json JobQueue::describe(const std::shared_ptr<Job>& job) {
  std::lock_guard<std::mutex> lock(mu_);
  return job_json(*job, position_locked(*job));
}

json JobQueue::list() {
  std::lock_guard<std::mutex> lock(mu_);
  evict_locked();
  json data = json::array();
  for (const auto& [id, job] : jobs_) data.push_back(job_json(*job, position_locked(*job)));
  return {{"object", "list"}, {"data", data}};
}

QueueStats JobQueue::stats() {
  std::lock_guard<std::mutex> lock(mu_);
  QueueStats s = stats_;
  s.queued = queue_.size();
  s.running = running_ != nullptr;
  return s;
}

JobStatus JobQueue::status(const std::shared_ptr<Job>& job) {
  std::lock_guard<std::mutex> lock(mu_);
  return job->status;
}

int JobQueue::retry_after_seconds() {
  std::lock_guard<std::mutex> lock(mu_);
  const double per_job =
      stats_.generations > 0 ? stats_.generation_seconds_sum / stats_.generations : 1.0;
  const double wait = per_job * static_cast<double>(queue_.size() + 1);
  return static_cast<int>(std::clamp(std::ceil(wait), 1.0, 3600.0));
}

void JobQueue::shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopping_) {
      stopping_ = true;
      for (auto& job : queue_)
        finish_locked(*job, JobStatus::Cancelled, cancelled_error("the server is shutting down"),
                      nullptr);
      queue_.clear();
      if (running_) running_->cancel_requested = true;
    }
  }
  work_cv_.notify_all();
  if (worker_.joinable() && worker_.get_id() != std::this_thread::get_id()) worker_.join();
}

void JobQueue::worker_loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    work_cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping with nothing left
    std::shared_ptr<Job> job = queue_.front();
    queue_.pop_front();
    job->status = JobStatus::Running;
    running_ = job;
    lock.unlock();

    JobStatus final_status = JobStatus::Succeeded;
    std::optional<ApiError> error;
    std::shared_ptr<const json> result;
    const auto t0 = Clock::now();
    // A synchronous client that left while its job waited: nothing to run.
    const bool gone = job->client_alive && !job->client_alive();
    try {
      if (gone) throw Cancelled("the client disconnected before the job started");
      const Progress progress = [&](int step, int num_steps, double step_seconds) {
        const bool alive = !job->client_alive || job->client_alive();
        std::lock_guard<std::mutex> g(mu_);
        job->step = step;
        job->num_steps = num_steps;
        ++stats_.steps;
        stats_.step_seconds_sum += step_seconds;
        stats_.last_step_seconds = step_seconds;
        if (!alive) job->cancel_requested = true;
        return !job->cancel_requested && !stopping_;
      };
      result = std::make_shared<const json>(runner_(*job, progress));
    } catch (const Cancelled& e) {
      final_status = JobStatus::Cancelled;
      error = cancelled_error(std::string("the job was cancelled: ") + e.what());
    } catch (const InvalidArgument& e) {
      final_status = JobStatus::Failed;
      error = invalid("", e.what(), "invalid_value");
    } catch (const std::exception& e) {
      final_status = JobStatus::Failed;
      ApiError err;
      err.status = 500;
      err.type = "server_error";
      // LibTorch errors carry a C++ backtrace: clients get the message only.
      const auto* c10e = dynamic_cast<const c10::Error*>(&e);
      err.message = std::string("generation failed: ") + (c10e ? c10e->what_without_backtrace() : e.what());
      err.code = "generation_failed";
      error = err;
    }
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    lock.lock();
    running_.reset();
    if (final_status == JobStatus::Succeeded) {
      ++stats_.generations;
      stats_.generation_seconds_sum += seconds;
    }
    finish_locked(*job, final_status, std::move(error), std::move(result));
  }
}

void JobQueue::finish_locked(Job& job, JobStatus status, std::optional<ApiError> error,
                             std::shared_ptr<const json> result) {
  job.status = status;
  job.error = std::move(error);
  job.result = std::move(result);
  job.finished_at = Clock::now();
  job.client_alive = nullptr;
  if (status == JobStatus::Succeeded) ++stats_.succeeded;
  if (status == JobStatus::Failed) ++stats_.failed;
  if (status == JobStatus::Cancelled) ++stats_.cancelled;
  if (job.async) {
    auto it = jobs_.find(job.id);
    if (it != jobs_.end()) finished_.push_back(it->second);
    evict_locked();
  }
  done_cv_.notify_all();
}

void JobQueue::evict_locked() {
  const auto now = Clock::now();
  while (!finished_.empty() &&
         (finished_.size() > keep_finished_ ||
          std::chrono::duration<double>(now - finished_.front()->finished_at).count() >
              keep_seconds_)) {
    jobs_.erase(finished_.front()->id);
    finished_.pop_front();
  }
}

std::optional<size_t> JobQueue::position_locked(const Job& job) const {
  if (job.status != JobStatus::Queued) return std::nullopt;
  for (size_t i = 0; i < queue_.size(); ++i)
    if (queue_[i].get() == &job) return i;
  return std::nullopt;
}

}  // namespace amused::server
