// Hugging Face hub conventions: the cache folder layout huggingface_hub writes, and a libcurl
// downloader that fills it.
//
// Cache layout (shared with Python's huggingface_hub / diffusers):
//   <cache>/models--<org>--<name>/refs/<revision>          text file holding the commit hash
//   <cache>/models--<org>--<name>/blobs/<etag>             file contents, named by ETag
//   <cache>/models--<org>--<name>/snapshots/<commit>/<path> relative symlink into ../blobs
//
// Downloads: GET {endpoint}/api/models/{repo}/revision/{revision} (sha + siblings), then per file
// HEAD {endpoint}/{repo}/resolve/{commit}/{path} (ETag / X-Linked-Etag, size) and GET with
// redirects, into blobs/<etag>.incomplete (resumed with a Range request), verified (size, and
// SHA-256 when the ETag is one), renamed into place, then linked from the snapshot.
// Ref: huggingface_hub/file_download.py (hf_hub_download), huggingface_hub/constants.py.
#pragma once

#include "io/sha256.h"  // Sha256, sha256_file (checksums of downloads)

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace amused::io::hub {

using Progress = std::function<void(const std::string& file, uint64_t done, uint64_t total)>;

// $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub (XDG_CACHE_HOME honoured).
std::filesystem::path cache_dir();
// $HF_ENDPOINT without a trailing '/', else https://huggingface.co.
std::string endpoint();
// HF_HUB_OFFLINE set to 1/ON/YES/TRUE (case-insensitive).
bool offline_from_env();
// $HF_TOKEN, else $HUGGING_FACE_HUB_TOKEN, else the token file `huggingface-cli login` writes
// ("" when none).
std::string token_from_env();

// "org/name" (or "name"): letters, digits, '-', '_', '.'; no "..", no leading/trailing '/'.
bool is_repo_id(const std::string& s);
// <cache>/models--org--name
std::filesystem::path repo_cache_folder(const std::filesystem::path& cache,
                                        const std::string& repo_id);
// The commit a revision points at in the cache (refs/<revision>, or the revision itself when it is
// a commit hash with a snapshot folder); nullopt when unknown.
std::optional<std::string> cached_commit(const std::filesystem::path& cache,
                                         const std::string& repo_id, const std::string& revision);

// The API's answer for one revision.
struct RepoRevision {
  std::string commit;              // "sha"
  std::vector<std::string> files;  // siblings[].rfilename
};

struct DownloadOptions {
  std::string endpoint;         // defaults to endpoint()
  std::string token;            // defaults to token_from_env()
  std::filesystem::path cache;  // defaults to cache_dir()
  Progress progress;
  int max_attempts = 3;  // attempts per file; each resumes what the previous one wrote
  long connect_timeout_s = 30;
};

class HubClient {
 public:
  explicit HubClient(DownloadOptions options = {});
  const DownloadOptions& options() const { return options_; }

  // GET /api/models/{repo}/revision/{revision}. Throws IoError (network, HTTP status with a hint
  // for 401/403/404).
  RepoRevision revision_info(const std::string& repo_id, const std::string& revision) const;

  // Ensures snapshots/<commit>/<file> exists (downloading its blob unless already cached) and
  // returns its path. Throws IoError; a blob failing its checksum is deleted.
  std::filesystem::path download_file(const std::string& repo_id, const std::string& commit,
                                      const std::string& file) const;

  // Writes refs/<revision> = commit (atomically) unless revision is the commit itself.
  void write_ref(const std::string& repo_id, const std::string& revision,
                 const std::string& commit) const;

  // Downloads `files` (those already in the snapshot are skipped), then the shards named by the
  // weight_map of any `*.safetensors.index*.json` among them. Returns the snapshot folder.
  std::filesystem::path download_files(const std::string& repo_id, const std::string& commit,
                                       const std::vector<std::string>& files) const;

 private:
  DownloadOptions options_;
};

// True for shard index files: `<base>.safetensors.index.json`, `.index.<variant>.json`, ...
bool is_shard_index(const std::string& file);

// The shard files a shard index lists (the values of its `weight_map`), sorted and unique. Each
// must be a plain file name in the index's own folder (no '/', '\\', "." or ".."): the index may
// come from the network, so it must never name a path outside the snapshot. A missing or empty
// weight_map or a non-string value is a CheckpointError naming `source`.
std::vector<std::string> parse_shard_index(std::string_view json_text, const std::string& source);
// Reads the file (size limits of read_json_file) and parses it as above.
std::vector<std::string> read_shard_index(const std::filesystem::path& path);

}  // namespace amused::io::hub
