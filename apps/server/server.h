// `amused serve`: an HTTP service with an OpenAI-compatible images API over one loaded Pipeline.
// Endpoints, limits and error codes are documented in docs/server.md.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "amused/pipeline.h"
#include "server/api.h"

namespace amused::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                // 0: any free port (Server::bind returns it)
  size_t max_queue = 8;           // jobs waiting behind the running one; more: 429
  std::string api_key;            // non-empty: every endpoint but /health needs "Bearer KEY"
  std::string model;              // the -m argument (PNG metadata, as `amused generate` writes it)
  // The name clients see in /v1/models and the "model" of responses; empty: model_id_for(model).
  std::string model_id;
  // Non-empty: browsers on this origin ("*": any) may call the API (CORS headers, preflight
  // answered without the API key). Empty (default): no CORS headers.
  std::string cors_origin;
  size_t max_body_bytes = 32u << 20;
  // A connection must deliver each whole request (line, headers, body) within this many seconds
  // of being accepted or of its previous answer, or it is closed (slow clients cannot hold the
  // connection threads). Handling time does not count.
  double request_timeout_s = 30;
  // Connection threads (0: max_queue + 56, at least 64, at most 256): waiting synchronous
  // requests, polls and slow clients share them. Open connections beyond 4x as many are closed,
  // the newest first, unless they are being answered.
  size_t connection_threads = 0;
  int max_side = 0;                // largest output width/height; 0: twice the model's default
  size_t keep_finished_jobs = 64;  // finished async jobs kept for polling
  double keep_job_seconds = 3600;
  RequestLimits limits;  // vq_scale_factor and default size are taken from the model
};

// The model id a server shows for its -m argument: a folder's name ("amused-emoji" for
// models/amused-emoji/), not its path on the server; a hub repo id as it is ("amused/amused-256").
std::string model_id_for(const std::string& model);

class Server {
 public:
  // The pipeline must outlive the server; only the server's worker thread uses it.
  Server(Pipeline& pipeline, ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds the listening socket; returns the port. Throws amused::IoError when it cannot.
  int bind();
  // Serves until stop(); returns after in-flight requests have been answered.
  void run();
  // Stops: refuses new work, cancels queued and running jobs (a running one at its next step),
  // closes the listening socket. Thread-safe; call again until run() has returned (a stop that
  // lands just before run() starts listening is repeated safely).
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace amused::server
