// End to end: starts the built `amused serve` with the golden tiny model on a free loopback port
// and talks HTTP to it: every endpoint, errors, API key, jobs (progress, cancel), a full queue,
// a disconnecting client, a burst of concurrent clients, graceful shutdown, and images equal to
// the CLI's for the same seed and parameters.
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <poll.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <thread>

#include "amused/image_io.h"
#include "server/base64.h"
#include "server/connection.h"
#include "server/http.h"
#include "support/golden.h"

extern char** environ;

namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;
using amused::testing::TempDir;
using namespace std::chrono_literals;

std::string tiny_model() { return amused::testing::golden_path("models/tiny-a").string(); }

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// `amused serve` as a child process on port 0 (the kernel picks a free one; the server prints
// it). Killed (SIGTERM, then SIGKILL) when it goes out of scope.
class ServeProcess {
 public:
  explicit ServeProcess(std::vector<std::string> extra = {}) {
    log_ = tmp_ / "serve.log";
    std::vector<std::string> args = {AMUSED_CLI_PATH, "serve", "-m",        tiny_model(),
                                     "--port",        "0",     "--threads", "1"};
    args.insert(args.end(), extra.begin(), extra.end());
    // Killed by the kernel if this test process dies first (a crashed test left a server behind).
    pid_ = amused::testing::spawn_tied_to_test(args, "", log_.string());
    if (pid_ < 0) throw std::runtime_error("cannot start " + std::string(AMUSED_CLI_PATH));
    try {
      wait_until_ready();
    } catch (...) {
      stop();  // no stray server when the start fails
      throw;
    }
  }
  ~ServeProcess() { stop(); }

  void wait_until_ready() {
    const std::regex listening("listening on http://127\\.0\\.0\\.1:([0-9]+)");
    for (int i = 0; i < 600 && port_ == 0; ++i) {
      std::smatch m;
      const std::string log = slurp(log_);
      if (std::regex_search(log, m, listening)) {
        port_ = std::stoi(m[1]);
        break;
      }
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        throw std::runtime_error("amused serve exited early:\n" + log);
      }
      std::this_thread::sleep_for(50ms);
    }
    if (port_ == 0) throw std::runtime_error("amused serve did not start:\n" + slurp(log_));
    auto c = client();
    for (int i = 0; i < 100; ++i) {
      if (auto r = c->Get("/health"); r && r->status == 200) return;
      std::this_thread::sleep_for(50ms);
    }
    throw std::runtime_error("/health never answered 200:\n" + slurp(log_));
  }

  std::unique_ptr<httplib::Client> client(std::chrono::milliseconds read_timeout = 60s) const {
    auto c = std::make_unique<httplib::Client>("127.0.0.1", port_);
    c->set_read_timeout(std::chrono::duration_cast<std::chrono::seconds>(read_timeout).count(),
                        (read_timeout.count() % 1000) * 1000);
    c->set_connection_timeout(5);
    return c;
  }
  int port() const { return port_; }
  std::string log() const { return slurp(log_); }

  // SIGTERM, then the exit code (-1 if it had to be killed or did not exit normally).
  int stop(std::chrono::seconds timeout = 10s) {
    if (pid_ <= 0) return exit_code_;
    kill(pid_, SIGTERM);
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    int status = 0;
    while (std::chrono::steady_clock::now() < deadline) {
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      std::this_thread::sleep_for(20ms);
    }
    kill(pid_, SIGKILL);
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return exit_code_ = -1;
  }

 private:
  TempDir tmp_;
  fs::path log_;
  pid_t pid_ = -1;
  int port_ = 0;
  int exit_code_ = -1;
};

json body_of(const httplib::Result& r) {
  if (!r) return json();
  return json::parse(r->body, nullptr, false);
}

// Every 4xx/5xx has the OpenAI error shape.
void expect_error(const httplib::Result& r, int status, const std::string& code,
                  const std::string& what) {
  ASSERT_TRUE(r) << what << ": no response (" << httplib::to_string(r.error()) << ")";
  EXPECT_EQ(r->status, status) << what << ": " << r->body;
  const json j = body_of(r);
  ASSERT_TRUE(j.is_object() && j.contains("error")) << what << ": " << r->body;
  const json& e = j["error"];
  EXPECT_TRUE(e["message"].is_string() && !e["message"].get<std::string>().empty()) << what;
  EXPECT_TRUE(e["type"].is_string()) << what;
  EXPECT_TRUE(e.contains("param")) << what;
  EXPECT_TRUE(e.contains("code")) << what;
  if (!code.empty()) {
    EXPECT_EQ(e["code"], code) << what << ": " << r->body;
  }
  EXPECT_EQ(r->get_header_value("Content-Type"), "application/json") << what;
}

std::string post_json(const json& j) { return j.dump(); }

// The PNG bytes of data[i].b64_json.
std::string png_bytes(const json& response, size_t i) {
  auto bytes = amused::server::base64_decode(response["data"][i]["b64_json"].get<std::string>());
  if (!bytes) throw std::runtime_error("b64_json is not valid base64");
  return *bytes;
}

// The server's PNG equals the CLI's: pixels, then text chunks, then every byte.
void expect_same_png(const std::string& server_png, const fs::path& cli_png, const TempDir& tmp,
                     const std::string& what) {
  const std::string cli = slurp(cli_png);
  ASSERT_FALSE(cli.empty()) << what << ": the CLI wrote no " << cli_png;
  const amused::Image a = amused::decode_image(server_png, "server");
  const amused::Image b = amused::decode_image(cli, "cli");
  EXPECT_EQ(a.width, b.width) << what;
  EXPECT_EQ(a.height, b.height) << what;
  EXPECT_TRUE(a.pixels == b.pixels) << what << ": pixels differ";
  const fs::path copy = tmp / "server-copy.png";
  std::ofstream(copy, std::ios::binary) << server_png;
  EXPECT_EQ(amused::read_png_text(copy), amused::read_png_text(cli_png)) << what;
  EXPECT_TRUE(server_png == cli) << what << ": PNG bytes differ";
}

amused::Image half_white_mask(int w, int h) {
  amused::Image m;
  m.width = w;
  m.height = h;
  m.channels = 3;
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c) m.pixels.push_back(x < w / 2 ? 255 : 0);
  return m;
}

// Polls GET /v1/jobs/{id} until `pred` holds (or ~20 s).
json poll_job(httplib::Client& c, const std::string& id,
              const std::function<bool(const json&)>& pred) {
  json j;
  for (int i = 0; i < 2000; ++i) {
    j = body_of(c.Get(("/v1/jobs/" + id).c_str()));
    if (pred(j)) return j;
    std::this_thread::sleep_for(10ms);
  }
  return j;
}


// Sends `request` as raw bytes and returns the server's answer: the status line, headers and the
// Content-Length body, or what came before it closed, or "" when nothing came within `timeout`.
int connect_to(int port) { return amused::server::connect_loopback(port); }

std::string raw_exchange(int port, const std::string& request, std::chrono::milliseconds timeout = 5s) {
  const int fd = connect_to(port);
  if (fd < 0) return "";
  send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  std::string out;
  char buf[4096];
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (poll(&p, 1, static_cast<int>(std::max<int64_t>(1, left.count()))) <= 0) break;
    const ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
    const size_t head_end = out.find("\r\n\r\n");
    if (head_end == std::string::npos) continue;
    std::smatch m;
    const std::string head = out.substr(0, head_end);
    if (std::regex_search(head, m, std::regex("[Cc]ontent-[Ll]ength: *([0-9]+)")) &&
        out.size() >= head_end + 4 + std::stoul(m[1]))
      break;
  }
  close(fd);
  return out;
}


// True once the server has closed (or reset) the connection: a read sees EOF or an error.
bool closed_by_server(int fd) {
  pollfd p{fd, POLLIN, 0};
  if (poll(&p, 1, 0) <= 0) return false;
  char c;
  const ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT);
  return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
}
}  // namespace

TEST(ServerE2E, EndpointsAndCliParity) {
  AMUSED_REQUIRE_GOLDEN();
  ServeProcess server;
  auto c = server.client();
  TempDir tmp;

  auto health = c->Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(body_of(health)["status"], "ok");

  const json models = body_of(c->Get("/v1/models"));
  ASSERT_EQ(models["object"], "list");
  ASSERT_EQ(models["data"].size(), 1u);
  // The model's id is its folder's name, not the server's path to it (issue 19).
  EXPECT_EQ(models["data"][0]["id"], "tiny-a");
  EXPECT_EQ(models["data"][0]["object"], "model");
  // GET /v1/models/{id}, as the OpenAI SDK's models.retrieve; an unknown id is a JSON 404.
  const json one = body_of(c->Get("/v1/models/tiny-a"));
  EXPECT_EQ(one["id"], "tiny-a");
  EXPECT_EQ(one["object"], "model");
  expect_error(c->Get("/v1/models/dall-e-3"), 404, "model_not_found", "unknown model id");
  // No CORS headers unless --cors-origin asks for them.
  auto plain = c->Get("/health", {{"Origin", "https://app.example"}});
  ASSERT_TRUE(plain);
  EXPECT_FALSE(plain->has_header("Access-Control-Allow-Origin"));

  // Text-to-image: the same seed and parameters as the CLI give the same PNG.
  auto r = c->Post("/v1/images/generations",
                   post_json({{"prompt", "a red fox"},
                              {"seed", 7},
                              {"steps", 4},
                              {"n", 2},
                              {"response_format", "b64_json"}}),
                   "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const json gen = body_of(r);
  ASSERT_EQ(gen["data"].size(), 2u);
  EXPECT_EQ(gen["seed"], 7);
  EXPECT_TRUE(gen["created"].is_number_integer());
  auto cli = amused::testing::run_cli("generate -m '" + tiny_model() +
                                      "' -p 'a red fox' --seed 7 --steps 4 --num-images 2 "
                                      "--threads 1 -q -o '" +
                                      (tmp / "t2i.png").string() + "'");
  ASSERT_EQ(cli.exit_code, 0) << cli.err;
  expect_same_png(png_bytes(gen, 0), tmp / "t2i-0.png", tmp, "text-to-image #0");
  expect_same_png(png_bytes(gen, 1), tmp / "t2i-1.png", tmp, "text-to-image #1");

  // Image-to-image and inpainting through multipart edits (file names = the CLI's paths, so the
  // PNG metadata matches too).
  const fs::path init = tmp / "t2i-0.png";
  const std::string init_bytes = slurp(init);
  const amused::Image init_image = amused::load_image(init);
  const fs::path mask = tmp / "mask.png";
  amused::save_png(mask, half_white_mask(init_image.width, init_image.height));
  httplib::MultipartFormDataItems i2i = {{"image", init_bytes, init.string(), "image/png"},
                                         {"prompt", "a blue fox", "", ""},
                                         {"seed", "9", "", ""},
                                         {"steps", "4", "", ""},
                                         {"strength", "0.6", "", ""}};
  r = c->Post("/v1/images/edits", i2i);
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(body_of(r)["mode"], "image-to-image");
  cli = amused::testing::run_cli("generate -m '" + tiny_model() +
                                 "' -p 'a blue fox' --seed 9 --steps 4 --strength 0.6 "
                                 "--threads 1 -q --init-image '" +
                                 init.string() + "' -o '" + (tmp / "i2i.png").string() + "'");
  ASSERT_EQ(cli.exit_code, 0) << cli.err;
  expect_same_png(png_bytes(body_of(r), 0), tmp / "i2i.png", tmp, "image-to-image");

  httplib::MultipartFormDataItems inpaint = {{"image", init_bytes, init.string(), "image/png"},
                                             {"mask", slurp(mask), mask.string(), "image/png"},
                                             {"prompt", "a green fox", "", ""},
                                             {"seed", "11", "", ""},
                                             {"steps", "3", "", ""}};
  r = c->Post("/v1/images/edits", inpaint);
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(body_of(r)["mode"], "inpaint");
  cli = amused::testing::run_cli("generate -m '" + tiny_model() +
                                 "' -p 'a green fox' --seed 11 --steps 3 --threads 1 -q "
                                 "--init-image '" +
                                 init.string() + "' --mask '" + mask.string() + "' -o '" +
                                 (tmp / "inpaint.png").string() + "'");
  ASSERT_EQ(cli.exit_code, 0) << cli.err;
  expect_same_png(png_bytes(body_of(r), 0), tmp / "inpaint.png", tmp, "inpaint");

  // The async job API end to end: submit, poll to success, fetch the result, list, delete.
  r = c->Post("/v1/jobs", post_json({{"prompt", "a red fox"}, {"seed", 7}, {"steps", 4}, {"n", 2}}),
              "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 202) << r->body;
  const std::string id = body_of(r)["id"];
  EXPECT_EQ(r->get_header_value("Location"), "/v1/jobs/" + id);
  const json done = poll_job(*c, id, [](const json& j) { return j["status"] == "succeeded"; });
  ASSERT_EQ(done["status"], "succeeded") << done.dump();
  EXPECT_EQ(done["progress"]["step"], 4);
  EXPECT_EQ(done["progress"]["num_steps"], 4);
  r = c->Get(("/v1/jobs/" + id + "/result").c_str());
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  EXPECT_TRUE(png_bytes(body_of(r), 1) == png_bytes(gen, 1));  // same as the synchronous call
  const json list = body_of(c->Get("/v1/jobs"));
  ASSERT_EQ(list["data"].size(), 1u);
  EXPECT_EQ(list["data"][0]["id"], id);
  r = c->Delete(("/v1/jobs/" + id).c_str());
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(body_of(r)["deleted"], true);
  expect_error(c->Get(("/v1/jobs/" + id).c_str()), 404, "job_not_found", "deleted job");

  // Metrics: Prometheus text and JSON.
  r = c->Get("/metrics");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_NE(r->body.find("amused_queue_length 0"), std::string::npos) << r->body;
  EXPECT_NE(r->body.find("amused_requests_total{code=\"200\"}"), std::string::npos);
  EXPECT_NE(r->body.find("amused_step_seconds_count"), std::string::npos);
  const json m = body_of(c->Get("/metrics?format=json"));
  EXPECT_EQ(m["jobs"]["succeeded"], 4);
  EXPECT_EQ(m["steps"]["count"], 4 + 2 + 3 + 4);  // i2i at strength 0.6 runs int(4 * 0.6) steps
  EXPECT_EQ(m["queue"]["length"], 0);

  EXPECT_EQ(server.stop(), 0) << server.log();
  // One log line per request.
  EXPECT_NE(server.log().find("\"POST /v1/images/generations\" 200"), std::string::npos);
}

TEST(ServerE2E, ErrorsAreJsonAndNeverFatal) {
  AMUSED_REQUIRE_GOLDEN();
  ServeProcess server({"--max-body-mb", "1"});
  auto c = server.client();
  const std::string png = amused::encode_png(half_white_mask(16, 16));
  struct Case {
    std::string body;
    int status;
    std::string code;
  };
  const std::vector<Case> json_cases = {
      {"{not json", 400, "invalid_json"},
      {"[]", 400, "invalid_json"},
      {R"({"n": 1})", 400, "missing_parameter"},
      {R"({"prompt": 3})", 400, "invalid_type"},
      {R"({"prompt": "x", "size": "17x16"})", 400, "invalid_size"},
      {R"({"prompt": "x", "size": "4096x4096"})", 400, "invalid_size"},
      {R"({"prompt": "x", "n": 9})", 400, "invalid_value"},
      {R"({"prompt": "x", "steps": 101})", 400, "invalid_value"},
      {R"({"prompt": "x", "steps": 0})", 400, "invalid_value"},
      {R"({"prompt": "x", "response_format": "url"})", 400, "unsupported_response_format"},
      {R"({"prompt": "x", "seed": -5})", 400, "invalid_value"},
      {R"({"prompt": "x", "bogus": 1})", 400, "unknown_parameter"},
  };
  for (const auto& k : json_cases) {
    expect_error(c->Post("/v1/images/generations", k.body, "application/json"), k.status, k.code,
                 k.body);
    expect_error(c->Post("/v1/jobs", k.body, "application/json"), k.status, k.code, k.body);
  }
  // Edits: bad base64, undecodable images, a mask that does not fit, a missing image.
  expect_error(c->Post("/v1/images/edits", post_json({{"prompt", "x"}, {"image", "@@@"}}),
                       "application/json"),
               400, "invalid_base64", "bad base64");
  expect_error(c->Post("/v1/images/edits",
                       httplib::MultipartFormDataItems{{"image", "GIF89a", "a.gif", "image/gif"},
                                                       {"prompt", "x", "", ""}}),
               400, "invalid_image", "undecodable image");
  expect_error(
      c->Post("/v1/images/edits",
              httplib::MultipartFormDataItems{
                  {"image", png, "a.png", "image/png"},
                  {"mask", amused::encode_png(half_white_mask(16, 8)), "m.png", "image/png"},
                  {"prompt", "x", "", ""}}),
      400, "mask_mismatch", "mask/image mismatch");
  expect_error(
      c->Post("/v1/images/edits", httplib::MultipartFormDataItems{{"prompt", "x", "", ""}}), 400,
      "missing_parameter", "no image");
  expect_error(c->Post("/v1/images/edits", "--nope--", "multipart/form-data; boundary=zzz"), 400,
               "", "malformed multipart");
  // A body over --max-body-mb.
  expect_error(c->Post("/v1/images/generations", std::string(2u << 20, 'a'), "application/json"),
               413, "payload_too_large", "oversized body");
  // Unknown routes and jobs.
  expect_error(c->Get("/v1/nothing"), 404, "not_found", "unknown route");
  // An over-long request line: a documented code (it was "http_414").
  expect_error(server.client()->Get(("/v1/" + std::string(9000, 'a')).c_str()), 414, "uri_too_long",
               "long URI");
  expect_error(c->Get("/v1/jobs/job_0000000000000000"), 404, "job_not_found", "unknown job");
  expect_error(c->Get("/v1/jobs/job_0000000000000000/result"), 404, "job_not_found",
               "unknown job result");
  expect_error(c->Delete("/v1/jobs/job_0000000000000000"), 404, "job_not_found",
               "unknown job delete");
  // Still healthy.
  auto h = c->Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  EXPECT_EQ(server.stop(), 0) << server.log();
}

TEST(ServerE2E, ApiKey) {
  AMUSED_REQUIRE_GOLDEN();
  ServeProcess server({"--api-key", "s3cret"});
  auto c = server.client();
  auto h = c->Get("/health");  // open, for load balancers
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  auto r = c->Get("/v1/models");
  expect_error(r, 401, "invalid_api_key", "no key");
  EXPECT_EQ(r->get_header_value("WWW-Authenticate"), "Bearer");
  expect_error(c->Get("/v1/models", {{"Authorization", "Bearer wrong"}}), 401, "invalid_api_key",
               "wrong key");
  expect_error(c->Get("/v1/models", {{"Authorization", "s3cret"}}), 401, "invalid_api_key",
               "no Bearer");
  expect_error(
      c->Post("/v1/images/generations", R"({"prompt": "x", "steps": 1})", "application/json"), 401,
      "invalid_api_key", "generation without key");
  expect_error(c->Get("/metrics"), 401, "invalid_api_key", "metrics without key");
  // The scheme is case-insensitive (RFC 7235): "bearer" and "BEARER" work as "Bearer".
  for (const char* scheme : {"bearer s3cret", "BEARER s3cret", "Bearer  s3cret"}) {
    r = c->Get("/v1/models", {{"Authorization", scheme}});
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200) << scheme << ": " << r->body;
  }
  expect_error(c->Get("/v1/models", {{"Authorization", "Bearers3cret"}}), 401, "invalid_api_key",
               "no space after the scheme");
  c->set_bearer_token_auth("s3cret");
  r = c->Get("/v1/models");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  r = c->Post("/v1/images/generations", R"({"prompt": "x", "steps": 1})", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
}

TEST(ServerE2E, CancelAndFullQueue) {
  AMUSED_REQUIRE_GOLDEN();
  ServeProcess server({"--max-queue", "1"});
  auto c = server.client();
  // A slow job: many steps, eight 32x32 images with guidance (a batch of 16 per step).
  const json slow = {{"prompt", "slow"}, {"steps", 100}, {"n", 8}, {"size", "32x32"}};
  auto r = c->Post("/v1/jobs", slow.dump(), "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 202) << r->body;
  const std::string a = body_of(r)["id"];
  const json running = poll_job(*c, a, [](const json& j) {
    return j["status"] != "queued" && j["progress"]["step"].get<int>() >= 1;
  });
  ASSERT_EQ(running["status"], "running") << "the slow job finished too early: " << running;
  EXPECT_EQ(running["progress"]["num_steps"], 100);

  // One job may wait; the next is refused with Retry-After (async and sync alike).
  r = c->Post("/v1/jobs", json({{"prompt", "waits"}, {"steps", 2}}).dump(), "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 202) << r->body;
  const std::string b = body_of(r)["id"];
  EXPECT_EQ(body_of(r)["queue_position"], 0);
  r = c->Post("/v1/jobs", json({{"prompt", "refused"}}).dump(), "application/json");
  expect_error(r, 429, "queue_full", "full queue (jobs)");
  ASSERT_TRUE(r);
  EXPECT_GE(std::atoi(r->get_header_value("Retry-After").c_str()), 1);
  r = c->Post("/v1/images/generations", json({{"prompt", "refused"}}).dump(), "application/json");
  expect_error(r, 429, "queue_full", "full queue (sync)");
  EXPECT_TRUE(r && r->has_header("Retry-After"));
  // Retry-After has jitter, so that a burst of refused clients does not come back in lockstep.
  std::set<std::string> retry_afters;
  for (int i = 0; i < 24; ++i) {
    r = c->Post("/v1/jobs", json({{"prompt", "refused"}}).dump(), "application/json");
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 429) << r->body;
    retry_afters.insert(r->get_header_value("Retry-After"));
  }
  EXPECT_GE(retry_afters.size(), 2u) << "24 refusals, all with the same Retry-After";
  expect_error(c->Get(("/v1/jobs/" + a + "/result").c_str()), 409, "job_not_finished",
               "result of a running job");

  // Cancel the queued job (at once), then the running one (at its next step).
  r = c->Post(("/v1/jobs/" + b + "/cancel").c_str());
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(body_of(r)["status"], "cancelled");
  r = c->Delete(("/v1/jobs/" + a).c_str());
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->status == 202 || r->status == 200) << r->body;
  const json cancelled = poll_job(*c, a, [](const json& j) { return j["status"] == "cancelled"; });
  ASSERT_EQ(cancelled["status"], "cancelled") << cancelled;
  EXPECT_LT(cancelled["progress"]["step"].get<int>(), 100);
  expect_error(c->Get(("/v1/jobs/" + a + "/result").c_str()), 409, "job_cancelled",
               "result of a cancelled job");
  expect_error(c->Post(("/v1/jobs/" + a + "/cancel").c_str()), 409, "job_finished", "cancel twice");

  // A synchronous client that gives up: its job is cancelled, not left running.
  auto impatient = server.client(300ms);
  auto gone = impatient->Post("/v1/images/generations", slow.dump(), "application/json");
  EXPECT_FALSE(gone);  // read timeout
  json m;
  for (int i = 0; i < 500; ++i) {
    m = body_of(c->Get("/metrics?format=json"));
    if (m["jobs"]["cancelled"] == 3 && m["queue"]["running"] == false) break;
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_EQ(m["jobs"]["cancelled"], 3) << m;
  EXPECT_EQ(m["queue"]["running"], false) << m;
  EXPECT_EQ(m["jobs"]["succeeded"], 0) << m;

  // Graceful shutdown with a job running: exit code 0.
  r = c->Post("/v1/jobs", slow.dump(), "application/json");
  ASSERT_TRUE(r);
  const std::string d = body_of(r)["id"];
  poll_job(*c, d, [](const json& j) { return j["status"] != "queued"; });
  EXPECT_EQ(server.stop(), 0) << server.log();
}

TEST(ServerE2E, BurstOfConcurrentClients) {
  AMUSED_REQUIRE_GOLDEN();
  ServeProcess server({"--max-queue", "16"});
  constexpr int kClients = 8, kRequests = 10;
  std::atomic<int> ok{0};
  std::vector<std::string> failures;
  std::mutex mu;
  std::vector<std::thread> threads;
  for (int t = 0; t < kClients; ++t) {
    threads.emplace_back([&, t] {
      auto c = server.client();
      for (int i = 0; i < kRequests; ++i) {
        const int seed = t * 100 + i;
        // Alternate the synchronous endpoint and the job API.
        httplib::Result r =
            i % 2 == 0 ? c->Post("/v1/images/generations",
                                 json({{"prompt", "burst"}, {"seed", seed}, {"steps", 2}}).dump(),
                                 "application/json")
                       : c->Post("/v1/jobs",
                                 json({{"prompt", "burst"}, {"seed", seed}, {"steps", 2}}).dump(),
                                 "application/json");
        std::string problem;
        if (!r) {
          problem = "no response";
        } else if (i % 2 == 0) {
          const json j = body_of(r);
          if (r->status != 200 || j["data"].size() != 1 || j["seed"] != seed ||
              amused::decode_image(png_bytes(j, 0), "burst").width <= 0)
            problem = "generation " + std::to_string(r->status) + " " + r->body.substr(0, 200);
        } else if (r->status != 202) {
          problem = "job " + std::to_string(r->status) + " " + r->body.substr(0, 200);
        } else {
          const std::string id = body_of(r)["id"];
          const json j = poll_job(*c, id, [](const json& s) {
            return s["status"] == "succeeded" || s["status"] == "failed";
          });
          auto res = c->Get(("/v1/jobs/" + id + "/result").c_str());
          if (j["status"] != "succeeded" || !res || res->status != 200 ||
              body_of(res)["seed"] != seed)
            problem = "job result " + j.dump();
        }
        if (problem.empty()) {
          ++ok;
        } else {
          std::lock_guard<std::mutex> lock(mu);
          failures.push_back(problem);
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok, kClients * kRequests);
  for (const auto& f : failures) ADD_FAILURE() << f;
  auto c = server.client();
  auto h = c->Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  const json m = body_of(c->Get("/metrics?format=json"));
  EXPECT_EQ(m["jobs"]["succeeded"], kClients * kRequests);
  EXPECT_EQ(m["queue"]["length"], 0);
  EXPECT_EQ(server.stop(), 0) << server.log();
}

// --cors-origin: browser pages on that origin may call the API; the preflight is answered without
// the API key (browsers send none); other origins get no CORS headers.
TEST(ServerE2E, CorsWhenAsked) {
  AMUSED_REQUIRE_GOLDEN();
  ServeProcess server({"--cors-origin", "https://app.example", "--api-key", "k",
                       "--model-id", "emoji"});
  auto c = server.client();
  const httplib::Headers from_app = {{"Origin", "https://app.example"},
                                     {"Access-Control-Request-Method", "POST"}};
  auto r = c->Options("/v1/images/generations", from_app);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 204) << r->body;
  EXPECT_EQ(r->get_header_value("Access-Control-Allow-Origin"), "https://app.example");
  EXPECT_NE(r->get_header_value("Access-Control-Allow-Headers").find("Authorization"), std::string::npos);
  EXPECT_NE(r->get_header_value("Access-Control-Allow-Methods").find("POST"), std::string::npos);

  r = c->Get("/v1/models", {{"Origin", "https://app.example"}, {"Authorization", "Bearer k"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->get_header_value("Access-Control-Allow-Origin"), "https://app.example");
  EXPECT_EQ(body_of(r)["data"][0]["id"], "emoji");  // --model-id
  // Errors carry the header too, or the page could not read them.
  r = c->Get("/v1/models", {{"Origin", "https://app.example"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  EXPECT_EQ(r->get_header_value("Access-Control-Allow-Origin"), "https://app.example");

  r = c->Get("/health", {{"Origin", "https://elsewhere.example"}});
  ASSERT_TRUE(r);
  EXPECT_FALSE(r->has_header("Access-Control-Allow-Origin"));
  EXPECT_EQ(server.stop(), 0) << server.log();
}

// Content-Length is checked before a byte of the body is read (issue 19): conflicting values,
// "-5", 20 digits and a body over the route's cap are each answered at once (they used to hold the
// connection until the 10 s read timeout). raw_exchange gives up after 5 s, and no body is sent.
TEST(ServerE2E, ContentLengthIsCheckedBeforeTheBody) {
  AMUSED_REQUIRE_GOLDEN();
  ServeProcess server;
  const std::string head = "POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n";
  struct Case {
    std::string headers;
    std::string status, code;
  };
  const std::vector<Case> cases = {
      {"Content-Length: 10\r\nContent-Length: 12\r\n", "400", "bad_request"},
      {"Content-Length: -5\r\n", "400", "bad_request"},
      {"Content-Length: 99999999999999999999\r\n", "413", "payload_too_large"},
      // A generation is a few kB of JSON: its route takes 256 KiB, whatever --max-body-mb says.
      {"Content-Length: 300000\r\n", "413", "payload_too_large"},
  };
  for (const auto& c : cases) {
    const std::string answer = raw_exchange(server.port(), head + c.headers + "\r\n");
    EXPECT_EQ(answer.substr(0, 12), "HTTP/1.1 " + c.status) << c.headers << answer;
    EXPECT_NE(answer.find(c.code), std::string::npos) << c.headers << answer;
  }
  // Edits keep the --max-body-mb limit: the same length there is read (and then refused as a
  // malformed body, not as too large).
  auto edit = server.client()->Post("/v1/images/edits", std::string(300000, 'x'), "application/json");
  ASSERT_TRUE(edit);
  EXPECT_EQ(edit->status, 400) << edit->body;
  EXPECT_EQ(server.stop(), 0) << server.log();
}

// Chunked uploads (the OpenAI SDK sends streams so) are read with the same per-route cap; they
// were answered 411 (issue 19).
TEST(ServerE2E, ChunkedBodiesAreAccepted) {
  AMUSED_REQUIRE_GOLDEN();
  ServeProcess server;
  auto c = server.client();
  const std::string gen = json({{"prompt", "a red fox"}, {"seed", 7}, {"steps", 2}}).dump();
  auto r = c->Post(
      "/v1/images/generations",
      [&](size_t, httplib::DataSink& sink) {
        sink.write(gen.data(), gen.size() / 2);
        sink.write(gen.data() + gen.size() / 2, gen.size() - gen.size() / 2);
        sink.done();
        return true;
      },
      "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;

  // A multipart edit, chunked.
  const std::string png = amused::encode_png(half_white_mask(16, 16));
  const std::string boundary = "amusedboundary";
  std::string form = "--" + boundary + "\r\nContent-Disposition: form-data; name=\"image\"; filename=\"in.png\"\r\n"
                     "Content-Type: image/png\r\n\r\n" + png + "\r\n--" + boundary +
                     "\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\na blue fox\r\n--" + boundary +
                     "\r\nContent-Disposition: form-data; name=\"steps\"\r\n\r\n2\r\n--" + boundary + "--\r\n";
  r = c->Post(
      "/v1/images/edits",
      [&](size_t, httplib::DataSink& sink) {
        for (size_t at = 0; at < form.size(); at += 1000) sink.write(form.data() + at, std::min<size_t>(1000, form.size() - at));
        sink.done();
        return true;
      },
      "multipart/form-data; boundary=" + boundary);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(body_of(r)["mode"], "image-to-image");

  // Over the generation route's 256 KiB, chunked: refused once the cap is passed.
  std::string big = "POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n";
  char size_line[32];
  std::snprintf(size_line, sizeof size_line, "%x\r\n", 280000);
  big += size_line + std::string(270000, ' ');
  const std::string answer = raw_exchange(server.port(), big);
  EXPECT_EQ(answer.substr(0, 12), "HTTP/1.1 413") << answer.substr(0, 400);
  EXPECT_NE(answer.find("payload_too_large"), std::string::npos) << answer.substr(0, 400);

  // Chunked and Content-Length together, or another transfer coding: refused.
  const std::string both = raw_exchange(server.port(),
      "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n");
  EXPECT_EQ(both.substr(0, 12), "HTTP/1.1 411") << both;
  const std::string gzip = raw_exchange(server.port(),
      "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n");
  EXPECT_EQ(gzip.substr(0, 12), "HTTP/1.1 411") << gzip;
  EXPECT_EQ(server.stop(), 0) << server.log();
}

// Slow clients (one byte of a request at a time, never finishing) are closed once the request
// deadline passes, and /health answers meanwhile: at once while they are fewer than the
// connection threads, within the deadline when they hold them all (issue 19: a dozen froze the
// server for as long as they lasted). The metrics count them.
TEST(ServerE2E, SlowClientsAreClosedAndHealthAnswers) {
  AMUSED_REQUIRE_GOLDEN();
  // 64 connection threads (the least there are); deadline 2 s.
  ServeProcess server({"--max-queue", "2", "--request-timeout", "2"});
  std::vector<int> slow;
  std::atomic<bool> trickle{true};
  auto open_slow = [&](int n) {
    for (int i = 0; i < n; ++i) {
      const int fd = connect_to(server.port());
      ASSERT_GE(fd, 0);
      const std::string start = "GET /health HTTP/1.1\r\nHost: x\r\n";
      send(fd, start.data(), start.size(), MSG_NOSIGNAL);
      slow.push_back(fd);
    }
  };
  open_slow(20);
  std::vector<int> fds_for_trickle = slow;
  std::thread trickler([&] {
    // One header byte per connection every 300 ms: each read succeeds, so httplib's read timeout
    // alone never fires.
    while (trickle) {
      for (int fd : fds_for_trickle) send(fd, "X", 1, MSG_NOSIGNAL | MSG_DONTWAIT);
      std::this_thread::sleep_for(300ms);
    }
  });
  std::this_thread::sleep_for(500ms);
  {
    auto c = server.client(5s);
    const auto t0 = std::chrono::steady_clock::now();
    auto r = c->Get("/health");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 3s) << "20 slow clients delayed /health";
  }
  // Every slow client is closed once its deadline passes.
  const auto deadline = std::chrono::steady_clock::now() + 8s;
  size_t closed = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    closed = 0;
    for (int fd : slow) closed += closed_by_server(fd) ? 1 : 0;
    if (closed == slow.size()) break;
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_EQ(closed, slow.size()) << server.log();
  trickle = false;
  trickler.join();
  for (int fd : slow) close(fd);
  slow.clear();

  // More slow clients than connection threads: /health still answers within the deadline (plus
  // the watchdog's period and some slack for a loaded machine).
  open_slow(80);
  {
    auto c = server.client(10s);
    const auto t0 = std::chrono::steady_clock::now();
    auto r = c->Get("/health");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 6s) << "80 slow clients starved /health";
  }
  for (int fd : slow) close(fd);
  auto m = server.client()->Get("/metrics?format=json");
  ASSERT_TRUE(m);
  EXPECT_GE(body_of(m)["connections"]["cut"].get<int>(), 20) << m->body;
  EXPECT_EQ(server.stop(), 0) << server.log();
}


// OpenAI-style streaming (issue 18): `stream: true` with `partial_images` answers server-sent
// events, the partial previews then the completed image, equal to the same request unstreamed.
TEST(ServerE2E, StreamsPartialImagesAsServerSentEvents) {
  AMUSED_REQUIRE_GOLDEN();
  ServeProcess server;
  auto c = server.client();
  const json gen = {{"prompt", "a red fox"}, {"seed", 5}, {"steps", 6}};
  auto plain = c->Post("/v1/images/generations", gen.dump(), "application/json");
  ASSERT_TRUE(plain);
  ASSERT_EQ(plain->status, 200) << plain->body;

  json streamed = gen;
  streamed["stream"] = true;
  streamed["partial_images"] = 2;
  auto r = c->Post("/v1/images/generations", streamed.dump(), "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_NE(r->get_header_value("Content-Type").find("text/event-stream"), std::string::npos);
  // "event: TYPE\ndata: JSON\n\n" blocks.
  std::vector<std::pair<std::string, json>> events;
  std::istringstream in(r->body);
  std::string line, type;
  while (std::getline(in, line)) {
    if (line.rfind("event: ", 0) == 0) type = line.substr(7);
    if (line.rfind("data: ", 0) == 0) events.emplace_back(type, json::parse(line.substr(6)));
  }
  ASSERT_EQ(events.size(), 3u) << r->body.substr(0, 500);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(events[i].first, "image_generation.partial_image");
    EXPECT_EQ(events[i].second["type"], "image_generation.partial_image");
    EXPECT_EQ(events[i].second["partial_image_index"], i);
    const auto png = amused::server::base64_decode(events[i].second["b64_json"].get<std::string>());
    ASSERT_TRUE(png);
    EXPECT_GT(amused::decode_image(*png, "partial").width, 0);
  }
  EXPECT_EQ(events[2].first, "image_generation.completed");
  EXPECT_EQ(events[2].second["b64_json"], body_of(plain)["data"][0]["b64_json"]);
  EXPECT_GT(events[2].second["usage"]["output_tokens"].get<int>(), 0);

  // Streaming makes one image; partial images need it.
  json two = streamed;
  two["n"] = 2;
  expect_error(c->Post("/v1/images/generations", two.dump(), "application/json"), 400, "invalid_value", "stream");
  json partial_only = gen;
  partial_only["partial_images"] = 1;
  expect_error(c->Post("/v1/images/generations", partial_only.dump(), "application/json"), 400, "invalid_value",
               "partial_images");
  EXPECT_EQ(server.stop(), 0) << server.log();
}

// A server-sent-events reader as the SSE specification (and the OpenAI SDKs' decoders) reads a
// stream: bytes in any chunks, lines ending in LF, CRLF or CR, `field: value` with one optional
// space, several `data` lines joined by LF, comments (`:`), an event dispatched at a blank line.
class SseReader {
 public:
  struct Event {
    std::string type;  // "message" when no `event` field
    std::string data;
  };
  void feed(const char* bytes, size_t n) {
    for (size_t i = 0; i < n; ++i) {
      const char ch = bytes[i];
      if (after_cr_ && ch == '\n') {
        after_cr_ = false;
        continue;
      }
      after_cr_ = ch == '\r';
      if (ch == '\n' || ch == '\r') {
        line(line_);
        line_.clear();
      } else {
        line_ += ch;
      }
    }
  }
  std::vector<Event> events;

 private:
  void line(const std::string& l) {
    if (l.empty()) {
      if (has_data_) events.push_back({type_.empty() ? "message" : type_, data_});
      type_.clear();
      data_.clear();
      has_data_ = false;
      return;
    }
    if (l[0] == ':') return;  // a comment
    const size_t colon = l.find(':');
    const std::string field = l.substr(0, colon);
    std::string value = colon == std::string::npos ? "" : l.substr(colon + 1);
    if (!value.empty() && value[0] == ' ') value.erase(0, 1);
    if (field == "event") type_ = value;
    if (field == "data") {
      if (has_data_) data_ += '\n';
      data_ += value;
      has_data_ = true;
    }
  }
  std::string line_, type_, data_;
  bool has_data_ = false, after_cr_ = false;
};

// What an SSE client sees (issue 18): the events arrive as the steps run, not all at the end; each
// has the fields of OpenAI's `image_generation.partial_image` / `.completed` event types, and the
// completed image is the unstreamed request's.
TEST(ServerE2E, StreamedEventsArriveWhileTheImageIsMade) {
  AMUSED_REQUIRE_GOLDEN();
  ServeProcess server({"--max-side", "64"});
  auto c = server.client();
  auto watcher = server.client();
  // Long enough (100 steps at 32x32 tokens, about 3 s) that the partials of steps 25 and 50 come well
  // before the end.
  const json gen = {{"prompt", "a slow fox"}, {"seed", 3}, {"steps", 100}, {"size", "64x64"}};
  auto plain = c->Post("/v1/images/generations", gen.dump(), "application/json");
  ASSERT_TRUE(plain);
  ASSERT_EQ(plain->status, 200) << plain->body;

  json streamed = gen;
  streamed["stream"] = true;
  streamed["partial_images"] = 3;
  SseReader sse;
  std::vector<bool> running_when_received;  // per event: was the job still running?
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/images/generations";
  req.headers = {{"Content-Type", "application/json"}, {"Accept", "text/event-stream"}};
  req.body = streamed.dump();
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    const size_t before = sse.events.size();
    sse.feed(data, n);
    for (size_t i = before; i < sse.events.size(); ++i) {
      const json m = body_of(watcher->Get("/metrics?format=json"));
      running_when_received.push_back(m["queue"]["running"] == true);
    }
    return true;
  };
  auto r = c->send(req);
  ASSERT_TRUE(r) << httplib::to_string(r.error());
  ASSERT_EQ(r->status, 200);
  EXPECT_NE(r->get_header_value("Content-Type").find("text/event-stream"), std::string::npos);
  ASSERT_EQ(sse.events.size(), 4u);
  for (int i = 0; i < 3; ++i) {
    const auto& e = sse.events[static_cast<size_t>(i)];
    EXPECT_EQ(e.type, "image_generation.partial_image");
    const json d = json::parse(e.data);
    EXPECT_EQ(d["type"], "image_generation.partial_image");
    EXPECT_EQ(d["partial_image_index"], i);
    for (const char* f : {"b64_json", "created_at", "size", "quality", "background", "output_format"})
      EXPECT_TRUE(d.contains(f)) << "partial_image event without '" << f << "': " << e.data.substr(0, 200);
    EXPECT_EQ(d["size"], "64x64");
    const auto png = amused::server::base64_decode(d["b64_json"].get<std::string>());
    ASSERT_TRUE(png);
    const auto im = amused::decode_image(*png, "partial");
    EXPECT_EQ(im.width, 64);
    EXPECT_EQ(im.height, 64);
    // Sent during the generation, not kept for the end.
    if (i < 2) EXPECT_TRUE(running_when_received[static_cast<size_t>(i)]) << "partial " << i << " came after the end";
  }
  const json done = json::parse(sse.events[3].data);
  EXPECT_EQ(sse.events[3].type, "image_generation.completed");
  EXPECT_EQ(done["type"], "image_generation.completed");
  for (const char* f : {"b64_json", "created_at", "size", "quality", "background", "output_format", "usage"})
    EXPECT_TRUE(done.contains(f)) << "completed event without '" << f << "'";
  EXPECT_EQ(done["usage"]["output_tokens"], 32 * 32);  // tiny-a: a token is 2x2 pixels
  EXPECT_EQ(done["b64_json"], body_of(plain)["data"][0]["b64_json"]);
  EXPECT_EQ(server.stop(), 0) << server.log();
}

// The job API's progress carries a preview of the prediction after every step (issue 18), asked
// with "preview": true and read at GET /v1/jobs/{id}/preview.
TEST(ServerE2E, JobProgressHasStepPreviews) {
  AMUSED_REQUIRE_GOLDEN();
  ServeProcess server;
  auto c = server.client();
  const json slow = {{"prompt", "a fox"}, {"steps", 100}, {"n", 2}, {"size", "32x32"}, {"preview", true}};
  auto r = c->Post("/v1/jobs", slow.dump(), "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 202) << r->body;
  const std::string id = body_of(r)["id"];
  const json running = poll_job(*c, id, [](const json& j) { return j["progress"].contains("preview"); });
  ASSERT_TRUE(running["progress"].contains("preview")) << running;
  const json& pv = running["progress"]["preview"];
  EXPECT_GE(pv["step"].get<int>(), 1);
  EXPECT_EQ(pv["images"], 2);
  EXPECT_EQ(pv["url"], "/v1/jobs/" + id + "/preview");
  for (int i = 0; i < 2; ++i) {
    auto p = c->Get(("/v1/jobs/" + id + "/preview?image=" + std::to_string(i)).c_str());
    ASSERT_TRUE(p);
    ASSERT_EQ(p->status, 200) << p->body;
    EXPECT_EQ(p->get_header_value("Content-Type"), "image/png");
    EXPECT_GE(std::atoi(p->get_header_value("X-Amused-Step").c_str()), 1);
    const auto im = amused::decode_image(p->body, "preview");
    EXPECT_EQ(im.width, 32);
    EXPECT_EQ(im.height, 32);
  }
  expect_error(c->Get(("/v1/jobs/" + id + "/preview?image=2").c_str()), 400, "invalid_value", "image out of range");
  expect_error(c->Get(("/v1/jobs/" + id + "/preview?image=x").c_str()), 400, "invalid_value", "image not a number");
  // The preview advances with the steps; the last one is the final prediction.
  const json done = poll_job(*c, id, [](const json& j) { return j["status"] == "succeeded"; });
  ASSERT_EQ(done["status"], "succeeded") << done;
  EXPECT_EQ(done["progress"]["preview"]["step"], 100);

  // Without "preview": a clear 404; on a synchronous endpoint: refused.
  r = c->Post("/v1/jobs", json({{"prompt", "x"}, {"steps", 2}}).dump(), "application/json");
  ASSERT_TRUE(r);
  const std::string plain = body_of(r)["id"];
  poll_job(*c, plain, [](const json& j) { return j["status"] == "succeeded"; });
  EXPECT_FALSE(body_of(c->Get(("/v1/jobs/" + plain).c_str()))["progress"].contains("preview"));
  expect_error(c->Get(("/v1/jobs/" + plain + "/preview").c_str()), 404, "no_preview", "job without preview");
  expect_error(c->Post("/v1/images/generations", json({{"prompt", "x"}, {"preview", true}}).dump(), "application/json"),
               400, "invalid_value", "preview on a sync endpoint");
  expect_error(c->Post("/v1/jobs", json({{"prompt", "x"}, {"preview", 1}}).dump(), "application/json"), 400,
               "invalid_type", "preview not a boolean");
  EXPECT_EQ(server.stop(), 0) << server.log();
}
