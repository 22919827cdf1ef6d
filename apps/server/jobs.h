// The server's work queue: a bounded FIFO of generation jobs run one at a time by a single worker
// thread (the only thread that touches the Pipeline), with progress, cancellation (queued jobs
// leave the queue; a running job stops at its next step through the progress callback), finished
// async jobs kept for a while for polling, and the counters behind /metrics.
//
// The worker runs a `Runner`, so this file knows nothing about the model and is tested with a
// fake one.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "server/api.h"

namespace amused::server {

enum class JobStatus { Queued, Running, Succeeded, Failed, Cancelled };
const char* to_string(JobStatus s);

struct Job {
  std::string id;
  GenerationRequest request;
  bool async = false;
  int64_t created = 0;  // unix seconds
  // Optional: false once the client of a synchronous request has gone (checked at every step).
  std::function<bool()> client_alive;
  // Partial images (PNG bytes) of a streamed request, added by the worker as the steps run, and
  // the latest step's previews of a job asked with `preview` (one PNG per image).
  struct Partials {
    std::mutex mu;
    std::vector<std::string> pngs;
    std::string size;      // "WxH" of the partial images
    int preview_step = 0;  // 0: none yet
    std::vector<std::string> preview_pngs;
  };
  std::shared_ptr<Partials> partials = std::make_shared<Partials>();

  // Everything below is guarded by the queue's mutex.
  JobStatus status = JobStatus::Queued;
  int step = 0, num_steps = 0;
  bool cancel_requested = false;
  std::optional<ApiError> error;                 // Failed / Cancelled
  std::shared_ptr<const nlohmann::json> result;  // Succeeded: the images response body
  std::chrono::steady_clock::time_point finished_at;
};

// A snapshot of a job for the status endpoint (no result payload).
nlohmann::json job_json(const Job& job, std::optional<size_t> queue_position);

struct QueueStats {
  size_t queued = 0;
  bool running = false;
  uint64_t submitted = 0, rejected = 0, succeeded = 0, failed = 0, cancelled = 0;
  uint64_t steps = 0;
  double step_seconds_sum = 0, last_step_seconds = 0;
  uint64_t generations = 0;
  double generation_seconds_sum = 0;
};

class JobQueue {
 public:
  // Runs one job on the worker thread: `progress(step, num_steps, step_seconds)` after each step,
  // which returns false to cancel (the runner then throws amused::Cancelled). Returns the response
  // body; throws amused::Error (InvalidArgument -> 400, Cancelled, others -> 500).
  using Progress = std::function<bool(int step, int num_steps, double step_seconds)>;
  using Runner = std::function<nlohmann::json(const Job& job, const Progress& progress)>;

  // `max_queue`: jobs waiting (the running one not counted); `keep_finished`: finished async jobs
  // kept for polling (oldest dropped first), each for at most `keep_seconds`.
  JobQueue(size_t max_queue, Runner runner, size_t keep_finished = 64, double keep_seconds = 3600);
  ~JobQueue();
  JobQueue(const JobQueue&) = delete;
  JobQueue& operator=(const JobQueue&) = delete;

  // Queues a job; nullptr when the queue is full or shutting down (`*shutting_down` tells which).
  std::shared_ptr<Job> submit(GenerationRequest request, bool async,
                              std::function<bool()> client_alive = {},
                              bool* shutting_down = nullptr);
  // An async job by id (nullptr if unknown or forgotten).
  std::shared_ptr<Job> find(const std::string& id);
  // Cancels a queued (immediately) or running (at its next step) job. False if already finished.
  bool cancel(const std::shared_ptr<Job>& job);
  // Forgets a finished async job. False if it is still queued or running.
  bool remove(const std::shared_ptr<Job>& job);
  // Waits until the job has finished or `timeout` passed; true when finished.
  bool wait(const std::shared_ptr<Job>& job, std::chrono::milliseconds timeout);

  // Locked reads for the endpoints.
  nlohmann::json describe(const std::shared_ptr<Job>& job);
  nlohmann::json list();
  QueueStats stats();
  JobStatus status(const std::shared_ptr<Job>& job);
  // Seconds a client should wait before retrying after a 429: the expected time to drain the queue.
  int retry_after_seconds();

  // Stops accepting, cancels every job, joins the worker. Idempotent.
  void shutdown();

 private:
  void worker_loop();
  void finish_locked(Job& job, JobStatus status, std::optional<ApiError> error,
                     std::shared_ptr<const nlohmann::json> result);
  void evict_locked();
  std::optional<size_t> position_locked(const Job& job) const;

  const size_t max_queue_, keep_finished_;
  const double keep_seconds_;
  Runner runner_;
  std::mutex mu_;
  std::condition_variable work_cv_, done_cv_;
  std::deque<std::shared_ptr<Job>> queue_;
  std::shared_ptr<Job> running_;
  std::map<std::string, std::shared_ptr<Job>> jobs_;  // async jobs by id
  std::deque<std::shared_ptr<Job>> finished_;         // finished async jobs, oldest first
  QueueStats stats_;
  bool stopping_ = false;
  std::thread worker_;
};

}  // namespace amused::server
