// Hugging Face hub cache layout and libcurl downloader (see hf_hub.h).
// Ref: huggingface_hub/file_download.py, huggingface_hub/constants.py (layout and headers only).
#include "io/hf_hub.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>

#include "amused/error.h"
#include "core/config.h"
#include "core/log.h"
#include "io/atomic_file.h"

namespace amused::io::hub {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

fs::path expand_user(const std::string& p) {
  if (p.rfind("~/", 0) == 0 || p == "~")
    return fs::path(env("HOME")) / p.substr(p.size() > 1 ? 2 : 1);
  return fs::path(p);
}

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

bool is_hex(const std::string& s, size_t n) {
  if (s.size() != n) return false;
  for (char c : s)
    if (!std::isxdigit(static_cast<unsigned char>(c))) return false;
  return true;
}

// Percent-encodes everything but unreserved characters (and '/' when keep_slash).
std::string url_quote(const std::string& s, bool keep_slash) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' ||
        (keep_slash && c == '/')) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(hex[c >> 4]);
      out.push_back(hex[c & 15]);
    }
  }
  return out;
}

// ETag header value -> blob name: strip a weak prefix and quotes, as huggingface_hub does.
std::string normalize_etag(std::string e) {
  if (e.rfind("W/", 0) == 0) e = e.substr(2);
  if (e.size() >= 2 && e.front() == '"' && e.back() == '"') e = e.substr(1, e.size() - 2);
  return e;
}

void ensure_curl_init() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

struct CurlHandle {
  CURL* h;
  curl_slist* headers = nullptr;
  CurlHandle() : h(curl_easy_init()) {
    if (!h) throw IoError("cannot initialise libcurl");
  }
  ~CurlHandle() {
    if (headers) curl_slist_free_all(headers);
    curl_easy_cleanup(h);
  }
  void add_header(const std::string& line) { headers = curl_slist_append(headers, line.c_str()); }
};

// Headers of the last response (lower-case names); a new status line starts a new response.
size_t header_cb(char* data, size_t size, size_t n, void* user) {
  auto* headers = static_cast<std::map<std::string, std::string>*>(user);
  std::string line(data, size * n);
  while (!line.empty() && (line.back() == '\r' || line.back() == '\n')) line.pop_back();
  if (line.rfind("HTTP/", 0) == 0) {
    headers->clear();
  } else if (auto colon = line.find(':'); colon != std::string::npos) {
    std::string value = line.substr(colon + 1);
    size_t b = value.find_first_not_of(" \t");
    value = b == std::string::npos ? "" : value.substr(b);
    (*headers)[lower(line.substr(0, colon))] = value;
  }
  return size * n;
}

size_t string_write_cb(char* data, size_t size, size_t n, void* user) {
  auto* s = static_cast<std::string*>(user);
  if (s->size() < (64u << 20)) s->append(data, size * n);
  return size * n;
}

struct Response {
  long status = 0;
  std::map<std::string, std::string> headers;
  std::string body;
};

class Session {
 public:
  explicit Session(const DownloadOptions& o) : o_(o) { ensure_curl_init(); }

  void setup(CurlHandle& c, const std::string& url, bool follow) const {
    curl_easy_setopt(c.h, CURLOPT_URL, url.c_str());
    curl_easy_setopt(c.h, CURLOPT_FOLLOWLOCATION, follow ? 1L : 0L);
    curl_easy_setopt(c.h, CURLOPT_MAXREDIRS, 10L);
    curl_easy_setopt(c.h, CURLOPT_CONNECTTIMEOUT, o_.connect_timeout_s);
    // Abort a stalled transfer (below 1 byte/s for 60 s) instead of hanging forever.
    curl_easy_setopt(c.h, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(c.h, CURLOPT_LOW_SPEED_TIME, 60L);
    curl_easy_setopt(c.h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c.h, CURLOPT_USERAGENT, "amused.cpp");
    // libcurl drops a custom Authorization header when a redirect leaves the host (the CDN), so the
    // token only goes to the endpoint.
    if (!o_.token.empty()) c.add_header("Authorization: Bearer " + o_.token);
    c.add_header("Accept-Encoding: identity");
  }

  Response request(const std::string& url, bool head, bool follow) const {
    CurlHandle c;
    setup(c, url, follow);
    Response r;
    if (head) curl_easy_setopt(c.h, CURLOPT_NOBODY, 1L);
    curl_easy_setopt(c.h, CURLOPT_HTTPHEADER, c.headers);
    curl_easy_setopt(c.h, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(c.h, CURLOPT_HEADERDATA, &r.headers);
    curl_easy_setopt(c.h, CURLOPT_WRITEFUNCTION, string_write_cb);
    curl_easy_setopt(c.h, CURLOPT_WRITEDATA, &r.body);
    const CURLcode rc = curl_easy_perform(c.h);
    if (rc != CURLE_OK) {
      throw IoError("cannot reach " + url + ": " + curl_easy_strerror(rc) +
                    " (check the network, HF_ENDPOINT, or use --offline with a cached model)");
    }
    curl_easy_getinfo(c.h, CURLINFO_RESPONSE_CODE, &r.status);
    return r;
  }

 private:
  const DownloadOptions& o_;
};

std::string http_error(const std::string& what, const std::string& url, long status,
                       const std::string& body) {
  std::string msg = what + ": HTTP " + std::to_string(status) + " from " + url;
  if (status == 401 || status == 403 || status == 404) {
    msg +=
        " (repository, revision or file not found, or private/gated: check the name, and set "
        "HF_TOKEN for gated or private repos)";
  }
  return msg;
}

// Exclusive lock shared with huggingface_hub (same lock file path; it uses flock too).
class FileLock {
 public:
  explicit FileLock(const fs::path& path) {
    std::error_code ec;
    fs::create_directories(path.parent_path(), ec);
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT, 0644);
    if (fd_ >= 0 && ::flock(fd_, LOCK_EX) != 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }
  ~FileLock() {
    if (fd_ >= 0) {
      ::flock(fd_, LOCK_UN);
      ::close(fd_);
    }
  }
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

 private:
  int fd_ = -1;
};

// Body sink for a blob download: appends (206) or restarts (200) the .incomplete file.
struct BlobSink {
  CURL* h = nullptr;
  fs::path path;
  uint64_t offset = 0;  // bytes already in the file when the request was made
  FILE* f = nullptr;
  bool opened = false;
  long status = 0;
  uint64_t done = 0;  // bytes of the file now written (offset included when appending)
  uint64_t total = 0;
  std::string error_body;
  std::string file;  // repo path, for progress
  const Progress* progress = nullptr;
  bool write_failed = false;
};

size_t blob_write_cb(char* data, size_t size, size_t n, void* user) {
  auto* s = static_cast<BlobSink*>(user);
  const size_t bytes = size * n;
  if (!s->opened) {
    s->opened = true;
    curl_easy_getinfo(s->h, CURLINFO_RESPONSE_CODE, &s->status);
    if (s->status == 206) {
      s->f = std::fopen(s->path.c_str(), "ab");
      s->done = s->offset;
    } else if (s->status == 200) {
      s->f = std::fopen(s->path.c_str(), "wb");
      s->done = 0;
    }
    if ((s->status == 200 || s->status == 206) && !s->f) {
      s->write_failed = true;
      return 0;
    }
  }
  if (!s->f) {
    if (s->error_body.size() < 4096) s->error_body.append(data, bytes);
    return bytes;
  }
  if (std::fwrite(data, 1, bytes, s->f) != bytes) {
    s->write_failed = true;
    return 0;
  }
  s->done += bytes;
  if (s->progress && *s->progress) (*s->progress)(s->file, s->done, s->total);
  return bytes;
}

uint64_t file_size_or_zero(const fs::path& p) {
  std::error_code ec;
  auto n = fs::file_size(p, ec);
  return ec ? 0 : static_cast<uint64_t>(n);
}

}  // namespace

// ----------------------------------------------------------------------------- environment

fs::path cache_dir() {
  if (auto v = env("HF_HUB_CACHE"); !v.empty()) return expand_user(v);
  if (auto v = env("HF_HOME"); !v.empty()) return expand_user(v) / "hub";
  if (auto v = env("XDG_CACHE_HOME"); !v.empty()) return expand_user(v) / "huggingface" / "hub";
  return expand_user("~/.cache/huggingface/hub");
}

std::string endpoint() {
  std::string e = env("HF_ENDPOINT");
  if (e.empty()) e = "https://huggingface.co";
  while (!e.empty() && e.back() == '/') e.pop_back();
  return e;
}

bool offline_from_env() {
  const std::string v = lower(env("HF_HUB_OFFLINE"));
  return v == "1" || v == "on" || v == "yes" || v == "true";
}

std::string token_from_env() {
  if (auto t = env("HF_TOKEN"); !t.empty()) return t;
  if (auto t = env("HUGGING_FACE_HUB_TOKEN"); !t.empty()) return t;
  // The file `huggingface-cli login` writes: $HF_TOKEN_PATH, else $HF_HOME/token, else
  // ~/.cache/huggingface/token.
  fs::path file;
  if (auto v = env("HF_TOKEN_PATH"); !v.empty()) {
    file = expand_user(v);
  } else if (auto h = env("HF_HOME"); !h.empty()) {
    file = expand_user(h) / "token";
  } else {
    file = expand_user("~/.cache/huggingface/token");
  }
  std::ifstream in(file);
  std::string token;
  if (in) std::getline(in, token);
  while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back()))) token.pop_back();
  return token;
}

bool is_repo_id(const std::string& s) {
  if (s.empty() || s.size() > 200 || s.front() == '/' || s.back() == '/') return false;
  if (s.find("..") != std::string::npos || s.find("--") != std::string::npos) return false;
  int slashes = 0;
  for (char c : s) {
    if (c == '/') {
      ++slashes;
    } else if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') {
      return false;
    }
  }
  return slashes <= 1 && s.front() != '.' && s.find("/.") == std::string::npos;
}

fs::path repo_cache_folder(const fs::path& cache, const std::string& repo_id) {
  std::string name = "models--";
  for (char c : repo_id) name += c == '/' ? std::string("--") : std::string(1, c);
  return cache / name;
}

std::optional<std::string> cached_commit(const fs::path& cache, const std::string& repo_id,
                                         const std::string& revision) {
  const fs::path folder = repo_cache_folder(cache, repo_id);
  std::error_code ec;
  if (is_hex(revision, 40) && fs::is_directory(folder / "snapshots" / revision, ec))
    return revision;
  std::ifstream in(folder / "refs" / revision);
  if (!in) return std::nullopt;
  std::string commit;
  std::getline(in, commit);
  while (!commit.empty() && std::isspace(static_cast<unsigned char>(commit.back())))
    commit.pop_back();
  if (commit.empty()) return std::nullopt;
  return commit;
}

// ----------------------------------------------------------------------------- client

HubClient::HubClient(DownloadOptions options) : options_(std::move(options)) {
  if (options_.endpoint.empty()) options_.endpoint = endpoint();
  while (!options_.endpoint.empty() && options_.endpoint.back() == '/')
    options_.endpoint.pop_back();
  if (options_.token.empty()) options_.token = token_from_env();
  if (options_.cache.empty()) options_.cache = cache_dir();
  if (options_.max_attempts < 1) options_.max_attempts = 1;
}

RepoRevision HubClient::revision_info(const std::string& repo_id,
                                      const std::string& revision) const {
  const std::string url = options_.endpoint + "/api/models/" + repo_id + "/revision/" +
                          url_quote(revision, /*keep_slash=*/false);
  Session s(options_);
  Response r = s.request(url, /*head=*/false, /*follow=*/true);
  if (r.status != 200)
    throw IoError(
        http_error("cannot resolve '" + repo_id + "@" + revision + "'", url, r.status, r.body));
  json j;
  try {
    j = json::parse(r.body);
  } catch (const json::exception& e) {
    throw IoError(url + ": expected a JSON answer, got invalid JSON (" + e.what() + ")");
  }
  RepoRevision out;
  if (!j.is_object() || !j.contains("sha") || !j["sha"].is_string())
    throw IoError(url + ": answer has no 'sha' string (is HF_ENDPOINT a Hugging Face hub?)");
  out.commit = j["sha"].get<std::string>();
  if (!is_hex(out.commit, 40) && out.commit.find('/') != std::string::npos)
    throw IoError(url + ": 'sha' = '" + out.commit + "' is not a commit hash");
  if (j.contains("siblings") && j["siblings"].is_array()) {
    for (const auto& sib : j["siblings"])
      if (sib.is_object() && sib.contains("rfilename") && sib["rfilename"].is_string())
        out.files.push_back(sib["rfilename"].get<std::string>());
  }
  return out;
}

void HubClient::write_ref(const std::string& repo_id, const std::string& revision,
                          const std::string& commit) const {
  if (revision == commit) return;
  const fs::path ref = repo_cache_folder(options_.cache, repo_id) / "refs" / revision;
  std::error_code ec;
  fs::create_directories(ref.parent_path(), ec);
  if (ec) throw IoError("cannot create '" + ref.parent_path().string() + "': " + ec.message());
  write_file_atomic(ref, commit);
}

fs::path HubClient::download_file(const std::string& repo_id, const std::string& commit,
                                  const std::string& file) const {
  if (file.empty() || file.front() == '/' || file.find("..") != std::string::npos)
    throw IoError("refusing to download '" + file + "' from " + repo_id +
                  ": not a relative path inside the repo");
  const fs::path repo_folder = repo_cache_folder(options_.cache, repo_id);
  const fs::path snapshot_file = repo_folder / "snapshots" / commit / file;
  std::error_code ec;
  if (fs::exists(snapshot_file, ec)) return snapshot_file;  // follows the symlink to the blob

  // HEAD: the blob's name (ETag) and size. LFS files answer with a redirect to the CDN that
  // carries X-Linked-Etag / X-Linked-Size; relative redirects (renamed repos) are followed.
  Session session(options_);
  std::string url =
      options_.endpoint + "/" + repo_id + "/resolve/" + commit + "/" + url_quote(file, true);
  const std::string resolve_url = url;
  Response head;
  for (int hops = 0;; ++hops) {
    head = session.request(url, /*head=*/true, /*follow=*/false);
    const auto loc = head.headers.find("location");
    if (head.status >= 300 && head.status < 400 && loc != head.headers.end() &&
        !loc->second.empty() && loc->second.front() == '/' && hops < 5 &&
        !head.headers.count("x-linked-etag")) {
      url = options_.endpoint + loc->second;
      continue;
    }
    break;
  }
  if (head.status >= 400)
    throw IoError(
        http_error("cannot download '" + file + "' from " + repo_id, url, head.status, ""));
  std::string etag;
  if (auto it = head.headers.find("x-linked-etag"); it != head.headers.end())
    etag = normalize_etag(it->second);
  if (etag.empty())
    if (auto it = head.headers.find("etag"); it != head.headers.end())
      etag = normalize_etag(it->second);
  if (etag.empty() || etag.find('/') != std::string::npos || etag == "." || etag == "..")
    throw IoError(url + ": the server sent no usable ETag for '" + file +
                  "' (is HF_ENDPOINT a Hugging Face hub?)");
  uint64_t expected = 0;
  bool size_known = false;
  for (const char* h : {"x-linked-size", "content-length"}) {
    if (auto it = head.headers.find(h); it != head.headers.end() && !it->second.empty()) {
      expected = std::strtoull(it->second.c_str(), nullptr, 10);
      size_known = true;
      break;
    }
  }

  const fs::path blobs = repo_folder / "blobs";
  const fs::path blob = blobs / etag;
  const fs::path incomplete = blobs / (etag + ".incomplete");
  fs::create_directories(blobs, ec);
  if (ec) throw IoError("cannot create cache folder '" + blobs.string() + "': " + ec.message());
  {
    FileLock lock(options_.cache / ".locks" / repo_folder.filename() / (etag + ".lock"));
    if (!fs::exists(blob, ec)) {
      for (int attempt = 1;; ++attempt) {
        uint64_t offset = file_size_or_zero(incomplete);
        if (size_known && offset > expected) {
          fs::remove(incomplete, ec);
          offset = 0;
        }
        if (size_known && offset == expected && expected > 0) break;  // complete; verify below
        CurlHandle c;
        session.setup(c, resolve_url, /*follow=*/true);
        if (offset > 0) c.add_header("Range: bytes=" + std::to_string(offset) + "-");
        curl_easy_setopt(c.h, CURLOPT_HTTPHEADER, c.headers);
        BlobSink sink;
        sink.h = c.h;
        sink.path = incomplete;
        sink.offset = offset;
        sink.total = expected;
        sink.file = file;
        sink.progress = &options_.progress;
        curl_easy_setopt(c.h, CURLOPT_WRITEFUNCTION, blob_write_cb);
        curl_easy_setopt(c.h, CURLOPT_WRITEDATA, &sink);
        const CURLcode rc = curl_easy_perform(c.h);
        if (sink.f) std::fclose(sink.f);
        long status = sink.status;
        if (!sink.opened) curl_easy_getinfo(c.h, CURLINFO_RESPONSE_CODE, &status);
        if (sink.write_failed)
          throw IoError("cannot write '" + incomplete.string() + "' (disk full or no permission?)");
        if (rc == CURLE_OK && status == 200 && !sink.opened) {
          write_file_atomic(incomplete, std::string_view());  // an empty file
        }
        if (rc == CURLE_OK &&
            status == 416) {  // our partial file does not fit the server's: restart
          fs::remove(incomplete, ec);
          if (attempt < options_.max_attempts) continue;
        }
        if (rc == CURLE_OK && (status == 200 || status == 206)) break;
        if (rc == CURLE_OK && status >= 400 && status < 500 && status != 416)
          throw IoError(http_error("cannot download '" + file + "' from " + repo_id, resolve_url,
                                   status, sink.error_body));
        const std::string why =
            rc != CURLE_OK ? std::string(curl_easy_strerror(rc)) : "HTTP " + std::to_string(status);
        const uint64_t have = file_size_or_zero(incomplete);
        if (attempt >= options_.max_attempts) {
          throw IoError("download of '" + file + "' from " + repo_id + " failed after " +
                        std::to_string(attempt) + " attempt(s): " + why + " (" +
                        std::to_string(have) + " of " +
                        (size_known ? std::to_string(expected) : std::string("?")) +
                        " bytes kept in '" + incomplete.string() + "'; run again to resume)");
        }
        log::warn("download of '" + file + "' interrupted (" + why + ") at " +
                  std::to_string(have) + " bytes; resuming");
      }
      const uint64_t got = file_size_or_zero(incomplete);
      if (size_known && got != expected) {
        fs::remove(incomplete, ec);
        throw IoError("download of '" + file + "' from " + repo_id + ": expected " +
                      std::to_string(expected) + " bytes, got " + std::to_string(got) +
                      " (corrupt transfer; removed, run again)");
      }
      if (is_hex(etag, 64)) {
        const std::string digest = sha256_file(incomplete);
        if (digest != lower(etag)) {
          fs::remove(incomplete, ec);
          throw IoError("download of '" + file + "' from " + repo_id +
                        ": SHA-256 mismatch, expected " + lower(etag) + ", got " + digest +
                        " (corrupt transfer; the file was removed, run again)");
        }
      }
      fs::rename(incomplete, blob, ec);
      if (ec)
        throw IoError("cannot move '" + incomplete.string() + "' to '" + blob.string() +
                      "': " + ec.message());
    }
  }

  // Snapshot entry: a relative symlink ../../(../)*blobs/<etag>, exactly as huggingface_hub makes.
  fs::create_directories(snapshot_file.parent_path(), ec);
  if (ec)
    throw IoError("cannot create '" + snapshot_file.parent_path().string() + "': " + ec.message());
  std::string target;
  const fs::path file_path(file);
  const auto depth = std::distance(file_path.begin(), file_path.end());
  for (long i = 0; i < depth + 1; ++i) target += "../";
  target += "blobs/" + etag;
  const fs::path tmp_link = snapshot_file.parent_path() / ("." + snapshot_file.filename().string() +
                                                           ".link." + std::to_string(::getpid()));
  fs::remove(tmp_link, ec);
  fs::create_symlink(target, tmp_link, ec);
  if (!ec) fs::rename(tmp_link, snapshot_file, ec);
  if (ec) {
    fs::remove(tmp_link, ec);
    std::error_code ec2;
    fs::copy_file(blob, snapshot_file, fs::copy_options::overwrite_existing, ec2);
    if (ec2) throw IoError("cannot create '" + snapshot_file.string() + "': " + ec2.message());
  }
  return snapshot_file;
}

bool is_shard_index(const std::string& file) {
  const std::string name = fs::path(file).filename().string();
  return name.size() > 5 && name.compare(name.size() - 5, 5, ".json") == 0 &&
         name.find(".safetensors.") != std::string::npos &&
         name.find(".index") != std::string::npos;
}

std::vector<std::string> parse_shard_index(std::string_view json_text, const std::string& source) {
  json index;
  try {
    index = parse_json_text(json_text, "shard index '" + source + "'");
  } catch (const ConfigError& e) {
    throw CheckpointError(e.what());
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object() ||
      index["weight_map"].empty())
    throw CheckpointError("shard index '" + source + "': expected a non-empty 'weight_map' object");
  std::set<std::string> shards;
  for (const auto& [key, shard] : index["weight_map"].items()) {
    if (!shard.is_string())
      throw CheckpointError("shard index '" + source + "': weight_map[" + json(key).dump() +
                            "]: expected a file name, got " + shard.type_name());
    const std::string s = shard.get<std::string>();
    if (s.empty() || s.find_first_of(std::string("/\\\0", 3)) != std::string::npos || s == "." ||
        s == "..")
      // dump() escapes the name: an embedded NUL would otherwise cut the message short.
      throw CheckpointError("shard index '" + source + "': weight_map[" + json(key).dump() +
                            "] = " + json(s).dump() + " is not a file name in the same folder");
    shards.insert(s);
  }
  return {shards.begin(), shards.end()};
}

std::vector<std::string> read_shard_index(const fs::path& path) {
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  if (ec)
    throw CheckpointError("shard index '" + path.string() + "' cannot be read: " + ec.message());
  if (size > kMaxJsonFileBytes)
    throw CheckpointError("shard index '" + path.string() + "' is " + std::to_string(size) +
                          " bytes, more than the " + std::to_string(kMaxJsonFileBytes >> 20) +
                          " MiB limit for a JSON file");
  std::ifstream in(path, std::ios::binary);
  std::string text(static_cast<size_t>(size), '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  return parse_shard_index(text, path.string());
}

fs::path HubClient::download_files(const std::string& repo_id, const std::string& commit,
                                   const std::vector<std::string>& files) const {
  const fs::path snapshot = repo_cache_folder(options_.cache, repo_id) / "snapshots" / commit;
  std::set<std::string> done;
  auto get = [&](const std::string& f) {
    if (done.insert(f).second) download_file(repo_id, commit, f);
  };
  for (const auto& f : files) get(f);
  // Sharded checkpoints: the index names the shard files.
  for (const auto& f : files) {
    if (!is_shard_index(f)) continue;
    const std::string dir = fs::path(f).parent_path().string();
    for (const auto& shard : read_shard_index(snapshot / f))
      get(dir.empty() ? shard : dir + "/" + shard);
  }
  return snapshot;
}

}  // namespace amused::io::hub
