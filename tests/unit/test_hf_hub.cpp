// Hugging Face hub cache and downloader, against a small hub served on 127.0.0.1 with cpp-httplib
// (API endpoint, /resolve/ with ETag headers, LFS-style redirects, Range requests).
#include <gtest/gtest.h>

// Debian's libcpp-httplib is compiled with OpenSSL support, which changes httplib::Request's
// layout: the header must see the same setting.
#ifndef CPPHTTPLIB_OPENSSL_SUPPORT
#define CPPHTTPLIB_OPENSSL_SUPPORT
#endif
#include <httplib.h>

#include <fstream>
#include <mutex>
#include <set>
#include <thread>

#include "amused/error.h"
#include "io/diffusers_repo.h"
#include "io/hf_hub.h"
#include "io/safetensors.h"
#include "support/golden.h"
#include "support/scoped_env.h"

namespace fs = std::filesystem;
namespace hub = amused::io::hub;
using amused::io::DiffusersRepo;
using amused::testing::golden_path;
using amused::testing::ScopedEnv;
using amused::testing::TempDir;
using nlohmann::json;

namespace {

std::string sha256(const std::string& s) {
  hub::Sha256 h;
  h.update(s.data(), s.size());
  return h.hex_digest();
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

const std::string kCommit = "0123456789abcdef0123456789abcdef01234567";

// A hub holding one repo, "org/<model>", in the hub's URL layout.
class FakeHub {
 public:
  struct Request {
    std::string method, path, range, auth;
  };

  explicit FakeHub(const std::string& model, const std::string& repo = "org/tiny") : repo_(repo) {
    const fs::path src = golden_path("models/" + model);
    for (const auto& e : fs::recursive_directory_iterator(src))
      if (e.is_regular_file()) files_[fs::relative(e.path(), src).string()] = slurp(e.path());
    // Files a pipeline does not need: never requested.
    files_["README.md"] = "# tiny";
    files_["vqvae/diffusion_pytorch_model.bin"] = "pickle";
    files_["transformer/diffusion_pytorch_model.fp16.safetensors"] =
        files_["transformer/diffusion_pytorch_model.safetensors"];

    server_.set_logger([this](const httplib::Request& req, const httplib::Response&) {
      std::lock_guard<std::mutex> lock(mu_);
      requests_.push_back({req.method, req.path, req.get_header_value("Range"),
                           req.get_header_value("Authorization")});
    });
    server_.Get("/api/models/" + repo_ + "/revision/(.+)", [this](const httplib::Request& req,
                                                                  httplib::Response& res) {
      if (req.matches[1] != "main" && req.matches[1] != kCommit) {
        res.status = 404;
        return;
      }
      json siblings = json::array();
      for (const auto& [name, _] : files_) siblings.push_back({{"rfilename", name}});
      res.set_content(json{{"id", repo_}, {"sha", kCommit}, {"siblings", siblings}}.dump(),
                      "application/json");
    });
    // Resolve: LFS files (*.safetensors) redirect to the "CDN" with X-Linked-* headers; small files
    // answer directly with a git-style ETag.
    server_.Get("/" + repo_ + "/resolve/" + kCommit + "/(.+)", [this](const httplib::Request& req,
                                                                      httplib::Response& res) {
      const std::string name = req.matches[1];
      auto it = files_.find(name);
      if (it == files_.end()) {
        res.status = 404;
        return;
      }
      const std::string& data = it->second;
      if (name.size() > 12 && name.substr(name.size() - 12) == ".safetensors") {
        const std::string sha = sha256(data);
        res.status = 302;
        res.set_header("Location", "http://127.0.0.1:" + std::to_string(port_) + "/cdn/" + sha);
        res.set_header("X-Linked-Etag", "\"" + sha + "\"");
        res.set_header("X-Linked-Size", std::to_string(data.size()));
        res.set_header("ETag", "\"not-the-blob-name\"");
        return;
      }
      res.set_header("ETag", "\"" + sha256(name + data).substr(0, 40) + "\"");
      res.set_content(data, "application/octet-stream");
    });
    server_.Get("/cdn/([0-9a-f]{64})", [this](const httplib::Request& req, httplib::Response& res) {
      std::string sha = req.matches[1];
      const std::string* found = nullptr;
      std::string name;
      for (const auto& [n, data] : files_)
        if (sha256(data) == sha) found = &data, name = n;
      if (!found) {
        res.status = 404;
        return;
      }
      std::string data = *found;
      if (corrupt_.count(name)) data[data.size() / 2] ^= 0x55;
      bool cut = false;
      {
        std::lock_guard<std::mutex> lock(mu_);
        cut = interrupt_.erase(name) > 0;
      }
      res.set_header("ETag", "\"cdn-etag\"");
      // The first time an interrupted file is asked for, send half of it and drop the connection.
      res.set_content_provider(data.size(), "application/octet-stream",
                               [data, cut](size_t offset, size_t length, httplib::DataSink& sink) {
                                 const size_t half = data.size() / 2;
                                 if (cut) {
                                   if (offset < half)
                                     sink.write(data.data() + offset, half - offset);
                                   return false;
                                 }
                                 sink.write(data.data() + offset, std::min<size_t>(length, 4096));
                                 return true;
                               });
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    while (!server_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ~FakeHub() { stop(); }
  void stop() {
    if (thread_.joinable()) {
      server_.stop();
      thread_.join();
    }
  }

  std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(port_); }
  const std::string& data(const std::string& name) const { return files_.at(name); }
  void interrupt_once(const std::string& name) { interrupt_.insert(name); }
  void corrupt(const std::string& name) { corrupt_.insert(name); }
  std::vector<Request> requests() {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_;
  }
  std::set<std::string> downloaded() {  // resolve paths asked for with GET
    std::set<std::string> out;
    const std::string prefix = "/" + repo_ + "/resolve/" + kCommit + "/";
    for (const auto& r : requests())
      if (r.method == "GET" && r.path.rfind(prefix, 0) == 0)
        out.insert(r.path.substr(prefix.size()));
    return out;
  }

 private:
  std::string repo_;
  std::map<std::string, std::string> files_;
  std::set<std::string> interrupt_, corrupt_;
  httplib::Server server_;
  std::thread thread_;
  int port_ = 0;
  std::mutex mu_;
  std::vector<Request> requests_;
};

// Points the hub environment at a temporary cache and the fake hub.
struct HubEnv {
  TempDir tmp;
  ScopedEnv cache{"HF_HUB_CACHE", (tmp / "hub").string()};
  ScopedEnv home{"HF_HOME", std::nullopt};
  ScopedEnv offline{"HF_HUB_OFFLINE", std::nullopt};
  ScopedEnv token{"HF_TOKEN", std::string("hf_test_token")};
  std::optional<ScopedEnv> endpoint;
  explicit HubEnv(const FakeHub* hub) {
    if (hub) endpoint.emplace("HF_ENDPOINT", hub->endpoint());
  }
  fs::path repo_folder() const { return tmp / "hub" / "models--org--tiny"; }
};

}  // namespace

TEST(HfHub, Sha256KnownAnswers) {
  // FIPS 180-4 / NIST example messages.
  EXPECT_EQ(sha256(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  const std::string million(1000000, 'a');
  EXPECT_EQ(sha256(million), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  hub::Sha256 pieces;  // streaming in odd-sized pieces gives the same digest
  for (size_t i = 0; i < million.size();) {
    const size_t n = std::min<size_t>(1 + i % 97, million.size() - i);
    pieces.update(million.data() + i, n);
    i += n;
  }
  EXPECT_EQ(pieces.hex_digest(), sha256(million));
}

TEST(HfHub, CacheDirAndNames) {
  {
    ScopedEnv a("HF_HUB_CACHE", std::string("/x/cache"));
    ScopedEnv b("HF_HOME", std::string("/y/home"));
    EXPECT_EQ(hub::cache_dir(), fs::path("/x/cache"));
  }
  {
    ScopedEnv a("HF_HUB_CACHE", std::nullopt);
    ScopedEnv b("HF_HOME", std::string("/y/home"));
    EXPECT_EQ(hub::cache_dir(), fs::path("/y/home/hub"));
  }
  {
    ScopedEnv a("HF_HUB_CACHE", std::nullopt);
    ScopedEnv b("HF_HOME", std::nullopt);
    ScopedEnv c("XDG_CACHE_HOME", std::nullopt);
    ScopedEnv d("HOME", std::string("/home/u"));
    EXPECT_EQ(hub::cache_dir(), fs::path("/home/u/.cache/huggingface/hub"));
  }
  {
    ScopedEnv a("HF_ENDPOINT", std::string("http://mirror.example/"));
    EXPECT_EQ(hub::endpoint(), "http://mirror.example");
    ScopedEnv b("HF_ENDPOINT", std::nullopt);
    EXPECT_EQ(hub::endpoint(), "https://huggingface.co");
  }
  for (const char* v : {"1", "ON", "yes", "True"}) {
    ScopedEnv a("HF_HUB_OFFLINE", std::string(v));
    EXPECT_TRUE(hub::offline_from_env()) << v;
  }
  ScopedEnv a("HF_HUB_OFFLINE", std::string("0"));
  EXPECT_FALSE(hub::offline_from_env());
  EXPECT_TRUE(hub::is_repo_id("amused/amused-256"));
  EXPECT_TRUE(hub::is_repo_id("gpt2"));
  for (const char* bad :
       {"", "/abs/path", "a/b/c", "../x", "./x", "a/", "a b/c", "org/.hidden", "a--b/c"})
    EXPECT_FALSE(hub::is_repo_id(bad)) << bad;
  EXPECT_EQ(hub::repo_cache_folder("/c", "amused/amused-256"),
            fs::path("/c/models--amused--amused-256"));
}

// A cache laid out the way huggingface_hub writes it (blobs + relative symlinks + refs/main) is
// used offline without any server.
TEST(HfHub, OfflineUsesAPopulatedCache) {
  AMUSED_REQUIRE_GOLDEN();
  HubEnv env(nullptr);
  ScopedEnv endpoint("HF_ENDPOINT", std::string("http://127.0.0.1:9"));  // nothing listens there
  const fs::path repo = env.repo_folder();
  const fs::path src = golden_path("models/tiny-a");
  const fs::path snap = repo / "snapshots" / kCommit;
  for (const auto& e : fs::recursive_directory_iterator(src)) {
    if (!e.is_regular_file()) continue;
    const fs::path rel = fs::relative(e.path(), src);
    const std::string etag = sha256(slurp(e.path()));
    fs::create_directories(repo / "blobs");
    fs::copy_file(e.path(), repo / "blobs" / etag, fs::copy_options::overwrite_existing);
    fs::create_directories((snap / rel).parent_path());
    std::string target;
    for (auto it = rel.begin(); it != rel.end(); ++it) target += "../";
    fs::create_symlink(target + "../blobs/" + etag, snap / rel);
  }
  fs::create_directories(repo / "refs");
  std::ofstream(repo / "refs" / "main") << kCommit;

  ScopedEnv offline("HF_HUB_OFFLINE", std::string("1"));
  const auto r = DiffusersRepo::open("org/tiny");
  EXPECT_TRUE(r.from_hub_cache());
  EXPECT_EQ(r.root(), snap);
  const auto sd = r.component_weights("transformer");
  EXPECT_EQ(sd.size(), amused::io::load_safetensors(src / "transformer" /
                                                    "diffusion_pytorch_model.safetensors")
                           .size());
  // A revision that is a commit hash works too.
  amused::RepoOptions by_commit;
  by_commit.revision = kCommit;
  EXPECT_EQ(DiffusersRepo::open("org/tiny", by_commit).root(), snap);

  // Not in the cache, offline: a clear error, no network.
  try {
    DiffusersRepo::open("org/absent");
    FAIL() << "expected IoError";
  } catch (const amused::IoError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("org/absent"), std::string::npos) << msg;
    EXPECT_NE(msg.find("offline"), std::string::npos) << msg;
    EXPECT_NE(msg.find("without --offline"), std::string::npos) << msg;
  }
  ScopedEnv online("HF_HUB_OFFLINE", std::nullopt);
  amused::RepoOptions opts;
  opts.offline = true;
  EXPECT_THROW(DiffusersRepo::open("org/absent", opts), amused::IoError);
}

TEST(HfHub, DownloadsAPipelineIntoTheHubLayout) {
  AMUSED_REQUIRE_GOLDEN();
  FakeHub server("tiny-a");
  HubEnv env(&server);
  std::map<std::string, std::pair<uint64_t, uint64_t>> progress;
  amused::RepoOptions opts;
  opts.progress = [&](const std::string& f, uint64_t done, uint64_t total) {
    progress[f] = {done, total};
  };
  const auto repo = DiffusersRepo::open("org/tiny", opts);
  const fs::path snap = env.repo_folder() / "snapshots" / kCommit;
  EXPECT_EQ(repo.root(), snap);
  EXPECT_EQ(slurp(env.repo_folder() / "refs" / "main"), kCommit);

  // Only what the pipeline needs: no README, no .bin, no other variant.
  const std::set<std::string> expected = {"model_index.json",
                                          "scheduler/scheduler_config.json",
                                          "text_encoder/config.json",
                                          "text_encoder/model.safetensors",
                                          "tokenizer/merges.txt",
                                          "tokenizer/special_tokens_map.json",
                                          "tokenizer/tokenizer_config.json",
                                          "tokenizer/vocab.json",
                                          "transformer/config.json",
                                          "transformer/diffusion_pytorch_model.safetensors",
                                          "vqvae/config.json",
                                          "vqvae/diffusion_pytorch_model.safetensors"};
  EXPECT_EQ(server.downloaded(), expected);
  for (const auto& r : server.requests())
    EXPECT_TRUE(r.path.rfind("/cdn/", 0) == 0 || r.auth == "Bearer hf_test_token") << r.path;

  // Snapshot entries are relative symlinks into blobs/<etag>; LFS blobs are named by their SHA-256.
  for (const auto& f : expected) {
    SCOPED_TRACE(f);
    const fs::path p = snap / f;
    ASSERT_TRUE(fs::is_symlink(p));
    const fs::path target = fs::read_symlink(p);
    EXPECT_TRUE(target.is_relative());
    EXPECT_EQ(fs::canonical(p).parent_path(), fs::canonical(env.repo_folder() / "blobs"));
    EXPECT_EQ(slurp(p), server.data(f));
    if (f.find(".safetensors") != std::string::npos) {
      EXPECT_EQ(target.filename().string(), sha256(server.data(f)));
      EXPECT_EQ(progress[f].first, server.data(f).size());
      EXPECT_EQ(progress[f].second, server.data(f).size());
    }
  }
  for (const auto& e : fs::directory_iterator(env.repo_folder() / "blobs"))
    EXPECT_EQ(e.path().extension(), "") << "left behind: " << e.path();
  const auto golden = amused::io::load_safetensors(
      golden_path("models/tiny-a/vqvae/diffusion_pytorch_model.safetensors"));
  const auto got = repo.component_weights("vqvae");
  ASSERT_EQ(got.size(), golden.size());
  for (const auto& [k, v] : golden) EXPECT_TRUE(got.at(k).equal(v)) << k;

  // Cached and complete: opening again touches no network, even with the server gone.
  server.stop();
  EXPECT_EQ(DiffusersRepo::open("org/tiny").root(), snap);
  ScopedEnv offline("HF_HUB_OFFLINE", std::string("1"));
  EXPECT_EQ(DiffusersRepo::open("org/tiny").component_weights("transformer").size(),
            amused::io::load_safetensors(
                golden_path("models/tiny-a/transformer/diffusion_pytorch_model.safetensors"))
                .size());
}

TEST(HfHub, InterruptedTransferResumesWithRange) {
  AMUSED_REQUIRE_GOLDEN();
  FakeHub server("tiny-b");
  HubEnv env(&server);
  const std::string file = "transformer/diffusion_pytorch_model.safetensors";
  const std::string& data = server.data(file);
  const std::string sha = sha256(data);
  const fs::path incomplete = env.repo_folder() / "blobs" / (sha + ".incomplete");

  // One attempt only: the call fails, keeping the partial blob for the next one.
  server.interrupt_once(file);
  hub::DownloadOptions o;
  o.max_attempts = 1;
  hub::HubClient client(o);
  try {
    client.download_file("org/tiny", kCommit, file);
    FAIL() << "expected the interrupted download to fail";
  } catch (const amused::IoError& e) {
    EXPECT_NE(std::string(e.what()).find("run again to resume"), std::string::npos) << e.what();
  }
  ASSERT_TRUE(fs::exists(incomplete));
  const uint64_t partial = fs::file_size(incomplete);
  EXPECT_GT(partial, 0u);
  EXPECT_LT(partial, data.size());
  EXPECT_FALSE(fs::exists(env.repo_folder() / "blobs" / sha));

  // The next attempt asks only for the rest, and ends with the verified, complete file.
  const fs::path p = client.download_file("org/tiny", kCommit, file);
  EXPECT_EQ(slurp(p), data);
  EXPECT_FALSE(fs::exists(incomplete));
  bool ranged = false;
  for (const auto& r : server.requests())
    ranged = ranged || r.range == "bytes=" + std::to_string(partial) + "-";
  EXPECT_TRUE(ranged);

  // Through DiffusersRepo::open, the retry happens inside one call.
  FakeHub server2("tiny-a");
  HubEnv env2(&server2);
  const std::string vq = "vqvae/diffusion_pytorch_model.safetensors";
  server2.interrupt_once(vq);
  const auto repo = DiffusersRepo::open("org/tiny");
  EXPECT_EQ(slurp(repo.root() / vq), server2.data(vq));
  int ranged_requests = 0;  // at the CDN (the resolve request before the redirect carries it too)
  for (const auto& r : server2.requests())
    ranged_requests += r.path.rfind("/cdn/", 0) == 0 && !r.range.empty();
  EXPECT_EQ(ranged_requests, 1);
}

TEST(HfHub, ChecksumMismatchIsDetectedAndNotKept) {
  AMUSED_REQUIRE_GOLDEN();
  FakeHub server("tiny-a");
  HubEnv env(&server);
  const std::string file = "text_encoder/model.safetensors";
  server.corrupt(file);
  const std::string sha = sha256(server.data(file));
  try {
    DiffusersRepo::open("org/tiny");
    FAIL() << "expected a checksum error";
  } catch (const amused::IoError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("SHA-256 mismatch"), std::string::npos) << msg;
    EXPECT_NE(msg.find(file), std::string::npos) << msg;
  }
  EXPECT_FALSE(fs::exists(env.repo_folder() / "blobs" / sha));
  EXPECT_FALSE(fs::exists(env.repo_folder() / "blobs" / (sha + ".incomplete")));
  EXPECT_FALSE(fs::exists(fs::symlink_status(env.repo_folder() / "snapshots" / kCommit / file)));
}

TEST(HfHub, HubErrors) {
  AMUSED_REQUIRE_GOLDEN();
  FakeHub server("tiny-a");
  HubEnv env(&server);
  // Unknown repo / revision: the HTTP status and a hint.
  try {
    DiffusersRepo::open("org/other");
    FAIL();
  } catch (const amused::IoError& e) {
    EXPECT_NE(std::string(e.what()).find("HTTP 404"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("HF_TOKEN"), std::string::npos) << e.what();
  }
  amused::RepoOptions rev;
  rev.revision = "v9";
  EXPECT_THROW(DiffusersRepo::open("org/tiny", rev), amused::IoError);
  // A variant the repo lacks fails before any weight is downloaded.
  amused::RepoOptions fp16;
  fp16.variant = "fp16";
  try {
    DiffusersRepo::open("org/tiny", fp16);
    FAIL();
  } catch (const amused::CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find("variants present: default"), std::string::npos)
        << e.what();
  }
  for (const auto& f : server.downloaded())
    EXPECT_EQ(f.find(".safetensors"), std::string::npos) << f;
  // Nothing listens: a clear network error.
  ScopedEnv dead("HF_ENDPOINT", std::string("http://127.0.0.1:9"));
  EXPECT_THROW(DiffusersRepo::open("org/tiny2"), amused::IoError);
}
