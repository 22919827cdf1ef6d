// `amused serve`: loads a model once and serves the images API over HTTP (docs/server.md).
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <thread>

#include "amused/amused.h"
#include "amused/pipeline.h"
#include "command.h"
#include "server/server.h"

namespace {

struct ServeArgs {
  std::string model;
  std::string host = "127.0.0.1";
  int port = 8080;
  int max_queue = 8;
  std::string api_key;
  int max_body_mb = 32;
  double request_timeout = 30;
  int max_side = 0;
  std::string device = "cpu", dtype = "auto", variant;
  int threads = 0;
  bool offline = false;
  std::vector<std::string> loras;
  std::string model_id, cors_origin;
};

// SIGINT/SIGTERM -> one byte on a pipe, read by a watcher thread (a signal handler may do little
// more than write(2)). Works whichever thread the signal lands on.
int g_signal_pipe[2] = {-1, -1};
volatile std::sig_atomic_t g_signal = 0;

extern "C" void on_signal(int sig) {
  g_signal = sig;
  const char byte = 1;
  [[maybe_unused]] ssize_t n = ::write(g_signal_pipe[1], &byte, 1);
}

void install_signal_handlers() {
  if (::pipe(g_signal_pipe) != 0) throw amused::IoError("cannot create the signal pipe");
  ::fcntl(g_signal_pipe[1], F_SETFL, O_NONBLOCK);
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  // A client that disconnects mid-response must not kill the server.
  std::signal(SIGPIPE, SIG_IGN);
}

// True when a signal arrived (waits at most `ms`).
bool wait_signal(int ms) {
  pollfd p{g_signal_pipe[0], POLLIN, 0};
  return ::poll(&p, 1, ms) > 0;
}

int run(const ServeArgs& given) {
  ServeArgs a = given;
  if (a.model.empty()) a.model = amused::cli::default_model();  // the embedded emoji model
  if (a.port < 0 || a.port > 65535)
    throw amused::InvalidArgument("--port must be in [0, 65535], got " + std::to_string(a.port));
  if (a.max_queue < 1 || a.max_queue > 10000)
    throw amused::InvalidArgument("--max-queue must be in [1, 10000], got " +
                                  std::to_string(a.max_queue));
  if (a.max_side < 0 || a.max_side > 16384)
    throw amused::InvalidArgument("--max-side must be in [0, 16384], got " +
                                  std::to_string(a.max_side));
  if (a.max_body_mb < 1 || a.max_body_mb > 1024)
    throw amused::InvalidArgument("--max-body-mb must be in [1, 1024], got " +
                                  std::to_string(a.max_body_mb));
  if (!(a.request_timeout >= 0.1 && a.request_timeout <= 3600))
    throw amused::InvalidArgument("--request-timeout must be in [0.1, 3600] seconds, got " +
                                  std::to_string(a.request_timeout));
  install_signal_handlers();

  amused::LoadOptions lo = amused::cli::load_options(a.device, a.dtype, a.threads, a.variant, a.offline);
  // Run-time adapters: each request may scale them ("loras": {"name": scale}) at no reload cost.
  for (const auto& spec : a.loras) lo.loras.push_back(amused::cli::parse_lora_flag(spec));
  lo.merge_loras = false;
  auto pipe = amused::Pipeline::load(a.model, lo);
  if (g_signal) return 0;  // interrupted while loading

  amused::server::ServerOptions so;
  so.host = a.host;
  so.port = a.port;
  so.max_queue = static_cast<size_t>(a.max_queue);
  so.api_key = a.api_key;
  so.model = a.model;
  so.model_id = a.model_id;
  so.cors_origin = a.cors_origin;
  so.max_body_bytes = static_cast<size_t>(a.max_body_mb) << 20;
  so.request_timeout_s = a.request_timeout;
  so.max_side = a.max_side;
  const amused::cli::ModelDefaults defaults = amused::cli::model_defaults(a.model);
  if (defaults.steps) so.limits.default_steps = std::min(*defaults.steps, so.limits.max_steps);
  if (defaults.guidance_scale) so.limits.default_guidance_scale = *defaults.guidance_scale;
  amused::server::Server server(*pipe, so);
  const int port = server.bind();
  const auto& s = pipe->summary();
  const std::string id = a.model_id.empty() ? amused::server::model_id_for(a.model) : a.model_id;
  std::fprintf(stderr,
               "amused serve: %s (model id '%s', %s, %s) loaded in %.2f s; listening on http://%s:%d%s\n",
               a.model.c_str(), id.c_str(), s.device.str().c_str(), amused::to_string(s.dtype), s.load_seconds, a.host.c_str(),
               port, a.api_key.empty() ? "" : " (API key required)");
  std::fflush(stderr);

  std::atomic<bool> done{false};
  std::thread watcher([&] {
    while (!done) {
      if (!wait_signal(200)) continue;
      std::fprintf(stderr, "amused serve: signal %d, shutting down\n", static_cast<int>(g_signal));
      // Repeated until run() returns: a stop that lands before listening starts is retried.
      while (!done) {
        server.stop();
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    }
  });
  server.run();
  done = true;
  watcher.join();
  server.stop();
  std::fprintf(stderr, "amused serve: stopped\n");
  return 0;
}

amused::cli::Registrar reg(
    "serve", "Serve the images API over HTTP (see docs/server.md)", [](CLI::App& sub) {
      auto a = std::make_shared<ServeArgs>();
      sub.add_option("-m,--model", a->model, "Model folder or hub repo id (e.g. amused/amused-256); default: the embedded emoji model");
      sub.add_option("--host", a->host, "Address to listen on (loopback by default)")
          ->capture_default_str();
      sub.add_option("--port", a->port, "Port (0: any free port, printed on stderr)")
          ->capture_default_str();
      sub.add_option("--max-queue", a->max_queue,
                     "Jobs that may wait behind the running one; more are answered 429")
          ->capture_default_str();
      sub.add_option("--api-key", a->api_key,
                     "Require 'Authorization: Bearer KEY' on every endpoint but /health")
          ->envname("AMUSED_API_KEY");
      sub.add_option("--request-timeout", a->request_timeout,
                     "Seconds a connection has to send each whole request (headers and body); slower ones are closed")
          ->capture_default_str();
      sub.add_option("--max-body-mb", a->max_body_mb, "Largest request body accepted, in MiB")
          ->capture_default_str();
      sub.add_option(
          "--max-side", a->max_side,
          "Largest image width/height a request may ask for (default: twice the model's)");
      sub.add_option("--device", a->device, "cpu | cuda | cuda:N")->check(amused::cli::device_choice())->capture_default_str();
      sub.add_option("--dtype", a->dtype, "auto | float32 | bfloat16 | float16 (auto: bfloat16 on CPUs with native bf16, float16 on CUDA, else float32; float32 reproduces the reference exactly)")->check(amused::cli::dtype_choice())->capture_default_str();
      sub.add_option("--threads", a->threads, "Compute threads (default: all physical cores)");
      sub.add_option("--variant", a->variant, "Weight variant to load (e.g. fp16)");
      sub.add_option("--lora", a->loras,
                     "LoRA adapter FILE[:SCALE] loaded at start (repeatable; requests scale them by name with "
                     "\"loras\": {\"NAME\": SCALE}, NAME = the file's stem)");
      sub.add_flag("--offline", a->offline, "Never use the network (also HF_HUB_OFFLINE=1)");
      sub.add_option("--model-id", a->model_id,
                     "The model's name in /v1/models and responses (default: the model folder's name, or "
                     "the hub repo id)");
      sub.add_option("--cors-origin", a->cors_origin,
                     "Let browser pages from this origin (e.g. https://app.example, or *) call the API: CORS "
                     "headers and preflight answers (off by default)");
      return std::function<int()>([a] { return run(*a); });
    });

}  // namespace
