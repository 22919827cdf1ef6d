// The server's job queue with a fake runner (no model): order, bounds, cancellation of queued and
// running jobs, disconnected clients, failures, async bookkeeping and shutdown.
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "amused/error.h"
#include "server/jobs.h"

using amused::server::GenerationRequest;
using amused::server::Job;
using amused::server::JobQueue;
using amused::server::JobStatus;
using json = nlohmann::json;
using namespace std::chrono_literals;

namespace {

// A runner that takes `request.steps` steps; while `hold` is set it keeps stepping (slowly) so a
// job stays "running" until released or cancelled.
struct FakeModel {
  std::atomic<bool> hold{false};
  std::atomic<int> active{0}, max_active{0}, runs{0};
  std::mutex mu;
  std::vector<std::string> order;

  JobQueue::Runner runner() {
    return [this](const Job& job, const JobQueue::Progress& progress) -> json {
      const int now = ++active;
      int prev = max_active.load();
      while (now > prev && !max_active.compare_exchange_weak(prev, now)) {
      }
      ++runs;
      {
        std::lock_guard<std::mutex> lock(mu);
        order.push_back(job.request.prompts.at(0));
      }
      struct Leave {
        std::atomic<int>& a;
        ~Leave() { --a; }
      } leave{active};
      if (job.request.prompts.at(0) == "bad") throw amused::InvalidArgument("bad prompt");
      if (job.request.prompts.at(0) == "boom") throw std::runtime_error("boom");
      const int n = job.request.steps;
      for (int i = 1; i <= n || hold; ++i) {
        std::this_thread::sleep_for(1ms);
        if (!progress(std::min(i, n), n, 0.001))
          throw amused::Cancelled("cancelled after step " + std::to_string(i));
      }
      return json{{"prompt", job.request.prompts.at(0)}};
    };
  }
};

GenerationRequest request(const std::string& prompt, int steps = 3) {
  GenerationRequest r;
  r.prompts = {prompt};
  r.steps = steps;
  return r;
}

bool wait_status(JobQueue& q, const std::shared_ptr<Job>& job, JobStatus s) {
  for (int i = 0; i < 2000; ++i) {
    if (q.status(job) == s) return true;
    std::this_thread::sleep_for(1ms);
  }
  return false;
}

}  // namespace

TEST(ServerQueue, RunsJobsOneAtATimeInOrder) {
  FakeModel model;
  JobQueue q(16, model.runner());
  std::vector<std::shared_ptr<Job>> jobs;
  for (int i = 0; i < 10; ++i) jobs.push_back(q.submit(request("p" + std::to_string(i)), i % 2));
  for (auto& j : jobs) {
    ASSERT_TRUE(j);
    ASSERT_TRUE(q.wait(j, 5s));
    EXPECT_EQ(q.status(j), JobStatus::Succeeded);
    EXPECT_EQ((*j->result)["prompt"], j->request.prompts.at(0));
    EXPECT_EQ(j->step, 3);
    EXPECT_EQ(j->num_steps, 3);
  }
  EXPECT_EQ(model.max_active, 1);
  for (int i = 0; i < 10; ++i)
    EXPECT_EQ(model.order[static_cast<size_t>(i)], "p" + std::to_string(i));
  const auto s = q.stats();
  EXPECT_EQ(s.submitted, 10u);
  EXPECT_EQ(s.succeeded, 10u);
  EXPECT_EQ(s.steps, 30u);
  EXPECT_EQ(s.generations, 10u);
}

TEST(ServerQueue, FullQueueRefusesAndCancelsWork) {
  FakeModel model;
  model.hold = true;
  JobQueue q(2, model.runner());
  auto running = q.submit(request("running"), true);
  ASSERT_TRUE(wait_status(q, running, JobStatus::Running));
  auto a = q.submit(request("a"), true);
  auto b = q.submit(request("b"), false);
  ASSERT_TRUE(a && b);
  bool shutting_down = true;
  EXPECT_EQ(q.submit(request("c"), true, {}, &shutting_down), nullptr);
  EXPECT_FALSE(shutting_down);
  EXPECT_EQ(q.stats().rejected, 1u);
  EXPECT_EQ(q.stats().queued, 2u);
  EXPECT_GE(q.retry_after_seconds(), 1);
  EXPECT_EQ(q.describe(a)["queue_position"], 0);
  EXPECT_EQ(q.describe(b)["queue_position"], 1);
  EXPECT_EQ(q.describe(running)["status"], "running");

  // A queued job leaves the queue at once and never runs.
  EXPECT_TRUE(q.cancel(a));
  EXPECT_EQ(q.status(a), JobStatus::Cancelled);
  EXPECT_EQ(a->error->code, "job_cancelled");
  EXPECT_EQ(q.describe(b)["queue_position"], 0);
  // The running one stops at its next step.
  EXPECT_TRUE(q.cancel(running));
  ASSERT_TRUE(q.wait(running, 5s));
  EXPECT_EQ(q.status(running), JobStatus::Cancelled);
  EXPECT_FALSE(q.cancel(running));  // already finished
  model.hold = false;
  ASSERT_TRUE(q.wait(b, 5s));
  EXPECT_EQ(q.status(b), JobStatus::Succeeded);
  EXPECT_EQ(model.runs, 2);  // running and b; a never ran
  EXPECT_EQ(q.stats().cancelled, 2u);
}

TEST(ServerQueue, DisconnectedClientStopsItsJob) {
  FakeModel model;
  model.hold = true;
  JobQueue q(4, model.runner());
  std::atomic<bool> connected{true};
  auto job = q.submit(request("sync"), false, [&] { return connected.load(); });
  ASSERT_TRUE(wait_status(q, job, JobStatus::Running));
  connected = false;
  ASSERT_TRUE(q.wait(job, 5s));
  EXPECT_EQ(q.status(job), JobStatus::Cancelled);
  // A client gone before its job started: the job is dropped without running.
  const int runs = model.runs;
  model.hold = false;
  auto gone = q.submit(request("gone"), false, [] { return false; });
  ASSERT_TRUE(q.wait(gone, 5s));
  EXPECT_EQ(q.status(gone), JobStatus::Cancelled);
  EXPECT_EQ(model.runs, runs);
}

TEST(ServerQueue, FailuresBecomeApiErrors) {
  FakeModel model;
  JobQueue q(4, model.runner());
  auto bad = q.submit(request("bad"), true);
  auto boom = q.submit(request("boom"), true);
  ASSERT_TRUE(q.wait(bad, 5s) && q.wait(boom, 5s));
  EXPECT_EQ(q.status(bad), JobStatus::Failed);
  EXPECT_EQ(bad->error->status, 400);
  EXPECT_EQ(q.status(boom), JobStatus::Failed);
  EXPECT_EQ(boom->error->status, 500);
  EXPECT_EQ(boom->error->type, "server_error");
  EXPECT_EQ(q.describe(boom)["error"]["type"], "server_error");
  EXPECT_EQ(q.stats().failed, 2u);
  // The worker survives and keeps serving.
  auto fine = q.submit(request("fine"), false);
  ASSERT_TRUE(q.wait(fine, 5s));
  EXPECT_EQ(q.status(fine), JobStatus::Succeeded);
}

TEST(ServerQueue, AsyncJobsAreKeptThenForgotten) {
  FakeModel model;
  JobQueue q(8, model.runner(), /*keep_finished=*/2);
  auto sync = q.submit(request("s"), false);
  std::vector<std::shared_ptr<Job>> jobs;
  for (int i = 0; i < 3; ++i) jobs.push_back(q.submit(request("a" + std::to_string(i)), true));
  for (auto& j : jobs) ASSERT_TRUE(q.wait(j, 5s));
  ASSERT_TRUE(q.wait(sync, 5s));
  EXPECT_EQ(q.find(sync->id), nullptr);     // synchronous jobs are not listed
  EXPECT_EQ(q.find(jobs[0]->id), nullptr);  // evicted: only the last 2 are kept
  ASSERT_EQ(q.find(jobs[2]->id), jobs[2]);
  EXPECT_EQ(q.list()["data"].size(), 2u);
  EXPECT_EQ(q.describe(jobs[2])["result_url"], "/v1/jobs/" + jobs[2]->id + "/result");
  EXPECT_TRUE(q.remove(jobs[2]));
  EXPECT_EQ(q.find(jobs[2]->id), nullptr);
  EXPECT_EQ(jobs[1]->id.rfind("job_", 0), 0u);
  EXPECT_NE(jobs[1]->id, jobs[2]->id);
}

TEST(ServerQueue, ShutdownCancelsEverything) {
  FakeModel model;
  model.hold = true;
  JobQueue q(4, model.runner());
  auto running = q.submit(request("r"), true);
  ASSERT_TRUE(wait_status(q, running, JobStatus::Running));
  auto queued = q.submit(request("q"), false);
  q.shutdown();
  EXPECT_EQ(q.status(running), JobStatus::Cancelled);
  EXPECT_EQ(q.status(queued), JobStatus::Cancelled);
  bool shutting_down = false;
  EXPECT_EQ(q.submit(request("late"), true, {}, &shutting_down), nullptr);
  EXPECT_TRUE(shutting_down);
  q.shutdown();  // idempotent
}
