// Generation routes: POST /v1/images/generations and /v1/images/edits (synchronous, through the
// job queue), the worker's generate(), request parsing and the queue-full answer.
#include "server/server_impl.h"

#include <random>

#include "amused/image_io.h"
#include "server/base64.h"
#include "server/connection.h"

namespace amused::server {

namespace {
// Retry-After with jitter: a burst of refused clients should not all come back in the same second.
int with_jitter(int seconds) {
  thread_local std::mt19937 rng{std::random_device{}()};
  const int spread = std::max(1, seconds / 2);
  return seconds + std::uniform_int_distribution<int>(0, spread)(rng);
}
}  // namespace

json Server::Impl::generate(const Job& job, const JobQueue::Progress& progress) {
  const GenerationRequest& r = job.request;
  const ProgressCallback cb = [&](const StepInfo& s) {
    // Partial images at evenly spaced steps before the last: step ceil(N (k + 1) / (P + 1)).
    if (r.partial_images > 0 && s.details && s.step < s.num_steps) {
      const int p = r.partial_images, n = s.num_steps;
      bool emit = false;
      for (int k = 0; k < p; ++k) emit = emit || s.step == std::max(1, (n * (k + 1) + p) / (p + 1));
      if (emit) {
        const int cell = std::max<int>(1, pipeline.summary().vq_scale_factor);
        const TokenGrid& grid = s.details->predicted.at(0);
        std::string png = encode_png(pipeline.preview(grid, cell));
        std::lock_guard<std::mutex> lock(job.partials->mu);
        job.partials->pngs.push_back(std::move(png));
        job.partials->size = std::to_string(grid.width * cell) + "x" + std::to_string(grid.height * cell);
      }
    }
    if (r.preview && s.details) {
      // Job API: the prediction after every step, one PNG per image.
      const int cell = std::max<int>(1, pipeline.summary().vq_scale_factor);
      std::vector<std::string> pngs;
      for (const auto& grid : s.details->predicted) pngs.push_back(encode_png(pipeline.preview(grid, cell)));
      std::lock_guard<std::mutex> lock(job.partials->mu);
      job.partials->preview_pngs = std::move(pngs);
      job.partials->preview_step = s.step;
    }
    return progress(s.step, s.num_steps, s.step_seconds);
  };
  const GenerationResult result = run_request(pipeline, r, cb);
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
          {"mode", to_string(r.mode)},
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

Parsed<GenerationRequest> Server::Impl::parse(const httplib::Request& req, const Body& body,
                                              Endpoint endpoint) {
  if (body.multipart) {
    if (endpoint == Endpoint::Generations)
      return invalid("", "/v1/images/generations takes a JSON body (multipart is for edits)",
                     "invalid_content_type");
    return parse_multipart_request(body.fields, endpoint, options.limits);
  }
  return parse_json_request(body.text, endpoint, options.limits);
}

void Server::Impl::reject_full(httplib::Response& res, bool shutting_down) {
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

void Server::Impl::images_sync(const httplib::Request& req, httplib::Response& res,
                               Parsed<GenerationRequest>&& parsed, Endpoint endpoint) {
  if (auto* e = std::get_if<ApiError>(&parsed)) return send_error(res, *e);
  // The worker asks at every step whether the client is still there; so does this thread while
  // the job waits in the queue.
  const int fd = find_connection_socket(req.local_port, req.remote_addr, req.remote_port);
  auto handler_done = std::make_shared<std::atomic<bool>>(false);
  std::function<bool()> alive;
  if (fd >= 0) alive = [fd, handler_done] { return !*handler_done && connection_alive(fd); };
  bool shutting_down = false;
  auto job =
      queue->submit(std::move(std::get<GenerationRequest>(parsed)), false, alive, &shutting_down);
  if (!job) return reject_full(res, shutting_down);
  if (job->request.stream) return stream_events(res, job, endpoint, handler_done);
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

void Server::Impl::stream_events(httplib::Response& res, const std::shared_ptr<Job>& job, Endpoint endpoint,
                                 std::shared_ptr<std::atomic<bool>> handler_done) {
  // OpenAI's image streaming: `image_generation.partial_image` events (image_edit.* for edits),
  // then `image_generation.completed` with the image, as server-sent events; an `error` event if
  // the job fails. Written while the job runs (chunked), polled every 50 ms.
  const std::string prefix = endpoint == Endpoint::Edits ? "image_edit." : "image_generation.";
  res.set_header("Cache-Control", "no-cache");
  size_t sent = 0;
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, job, prefix, sent](size_t, httplib::DataSink& sink) mutable {
        auto event = [&](const std::string& type, const json& data) {
          const std::string text = "event: " + type + "\ndata: " +
                                   data.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
          return sink.write(text.data(), text.size());
        };
        const bool finished = queue->wait(job, std::chrono::milliseconds(50));
        std::vector<std::string> fresh;
        std::string size;
        {
          std::lock_guard<std::mutex> lock(job->partials->mu);
          fresh.assign(job->partials->pngs.begin() + static_cast<std::ptrdiff_t>(sent), job->partials->pngs.end());
          size = job->partials->size;
        }
        // The fields of OpenAI's events (quality and background have no meaning here: "auto", "opaque").
        for (const auto& png : fresh) {
          if (!event(prefix + "partial_image", {{"type", prefix + "partial_image"},
                                                {"b64_json", base64_encode(png)},
                                                {"created_at", unix_now()},
                                                {"size", size},
                                                {"quality", "auto"},
                                                {"background", "opaque"},
                                                {"output_format", "png"},
                                                {"partial_image_index", sent}})) {
            queue->cancel(job);  // the client went away
            return false;
          }
          ++sent;
        }
        if (!finished) return true;  // called again
        if (queue->status(job) == JobStatus::Succeeded && job->result) {
          const json& r = *job->result;
          for (const auto& item : r.at("data")) {
            const int w = r.value("width", 0), h = r.value("height", 0);
            const int64_t tokens = static_cast<int64_t>(w / std::max<int64_t>(1, pipeline.summary().vq_scale_factor)) *
                                   (h / std::max<int64_t>(1, pipeline.summary().vq_scale_factor));
            event(prefix + "completed", {{"type", prefix + "completed"},
                                         {"b64_json", item.at("b64_json")},
                                         {"created_at", r.value("created", unix_now())},
                                         {"size", std::to_string(w) + "x" + std::to_string(h)},
                                         {"quality", "auto"},
                                         {"background", "opaque"},
                                         {"output_format", "png"},
                                         {"seed", item.value("seed", json())},
                                         {"usage", {{"input_tokens", 0},
                                                    {"input_tokens_details", {{"image_tokens", 0}, {"text_tokens", 0}}},
                                                    {"output_tokens", tokens},
                                                    {"total_tokens", tokens}}}});
          }
        } else {
          const ApiError e = job->error ? *job->error : error_of(500, "server_error", "internal", "no result");
          event("error", {{"type", "error"}, {"error", {{"type", e.type}, {"code", e.code}, {"message", e.message}}}});
        }
        sink.done();
        return true;
      },
      [handler_done](bool) { *handler_done = true; });
}

void Server::Impl::finish_sync(httplib::Response& res, const std::shared_ptr<Job>& job) {
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

}  // namespace amused::server
