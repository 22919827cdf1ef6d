#include "io/atomic_file.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <mutex>
#include <random>
#include <set>
#include <string>

#include "amused/error.h"

namespace amused::io {
namespace fs = std::filesystem;

namespace {
constexpr const char* kTempPrefix = ".amused-tmp.";

// ".amused-tmp.PID.N.R.NAME" with NAME cut to 32 bytes: short enough for any target name that is
// itself valid (a 250-byte name would otherwise overflow NAME_MAX only in its temporary), and
// recognisable as ours, with the writer's process id, for clean_stale_temporaries.
fs::path temp_path_for(const fs::path& path) {
  static std::atomic<unsigned> counter{0};
  std::random_device rd;
  return path.parent_path() / (kTempPrefix + std::to_string(::getpid()) + "." +
                               std::to_string(counter++) + "." + std::to_string(rd() % 100000) + "." +
                               path.filename().string().substr(0, 32));
}

// Removes temporaries that a killed writer (SIGKILL, power loss) left in `dir`: ours by name, and
// their process no longer running. Once per folder and process (a dataset writes thousands of
// files into one folder). Best effort: nothing here may fail a write.
void clean_stale_temporaries(const fs::path& dir) {
  static std::mutex mu;
  static std::set<fs::path> cleaned;
  {
    std::error_code aec;
    const fs::path key = fs::absolute(dir, aec).lexically_normal();
    std::lock_guard<std::mutex> lock(mu);
    if (!cleaned.insert(key).second) return;
  }
  std::error_code ec;
  const std::string prefix = kTempPrefix;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.compare(0, prefix.size(), prefix) != 0) continue;
    const size_t dot = name.find('.', prefix.size());
    if (dot == std::string::npos) continue;
    long pid = 0;
    try {
      pid = std::stol(name.substr(prefix.size(), dot - prefix.size()));
    } catch (const std::exception&) {
      continue;
    }
    if (pid <= 0 || pid == static_cast<long>(::getpid())) continue;
    if (::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) {
      std::error_code rec;
      fs::remove(e.path(), rec);
    }
  }
}

void fsync_path(const fs::path& p) {
  int fd = ::open(p.c_str(), O_RDONLY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}
}  // namespace

namespace {
// Writes `writer`'s bytes to a synced temporary file beside `path` and returns its name; removes it
// and throws IoError on failure.
fs::path write_temp_beside(const fs::path& path, const std::function<void(std::ostream&)>& writer) {
  const fs::path dir = path.has_parent_path() ? path.parent_path() : fs::path(".");
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    throw IoError("cannot write '" + path.string() + "': folder '" + dir.string() +
                  "' does not exist (create it first)");
  }
  const fs::path tmp = temp_path_for(path.has_parent_path() ? path : fs::path(".") / path);
  try {
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      if (!out) {
        throw IoError("cannot write '" + path.string() + "': " + std::strerror(errno));
      }
      writer(out);
      out.flush();
      if (!out) throw IoError("failed writing '" + path.string() + "' (disk full?)");
    }
    fsync_path(tmp);
  } catch (...) {
    fs::remove(tmp, ec);
    throw;
  }
  return tmp;
}

void move_into_place(const fs::path& tmp, const fs::path& path) {
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) throw IoError("cannot move '" + tmp.string() + "' to '" + path.string() + "': " + ec.message());
  fsync_path(path.has_parent_path() ? path.parent_path() : fs::path("."));
}
}  // namespace

void write_file_atomic(const fs::path& path, const std::function<void(std::ostream&)>& writer) {
  clean_stale_temporaries(path.has_parent_path() ? path.parent_path() : fs::path("."));
  const fs::path tmp = write_temp_beside(path, writer);
  try {
    move_into_place(tmp, path);
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
}

void write_files_atomic(const std::vector<std::pair<fs::path, FileWriter>>& files) {
  // Everything that would make a rename fail is checked before the first file is written, so that
  // no target is replaced unless all are: two outputs for one path, a target that is a folder.
  std::set<fs::path> targets, dirs;
  for (const auto& [path, writer] : files) {
    const fs::path norm = fs::absolute(path).lexically_normal();
    if (!targets.insert(norm).second)
      throw IoError("two outputs would be written to the same file '" + path.string() +
                    "': give them different names");
    std::error_code ec;
    if (fs::is_directory(path, ec))
      throw IoError("cannot write '" + path.string() + "': it is a folder");
    dirs.insert(path.has_parent_path() ? path.parent_path() : fs::path("."));
  }
  for (const auto& d : dirs) clean_stale_temporaries(d);
  std::vector<fs::path> temps;
  temps.reserve(files.size());
  try {
    for (const auto& [path, writer] : files) temps.push_back(write_temp_beside(path, writer));
    // Renames within a folder need no space; they are the only step left that could fail.
    for (size_t i = 0; i < files.size(); ++i) move_into_place(temps[i], files[i].first);
  } catch (...) {
    std::error_code ec;
    for (const auto& t : temps) fs::remove(t, ec);  // those already moved are gone from here
    throw;
  }
}

void write_files_atomic(const std::vector<std::pair<fs::path, std::string>>& files) {
  std::vector<std::pair<fs::path, FileWriter>> writers;
  writers.reserve(files.size());
  for (const auto& [path, bytes] : files)
    writers.emplace_back(path, [&bytes = bytes](std::ostream& out) {
      out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    });
  write_files_atomic(writers);
}

void write_file_atomic(const fs::path& path, std::string_view bytes) {
  write_file_atomic(path, [&](std::ostream& out) { out.write(bytes.data(), static_cast<std::streamsize>(bytes.size())); });
}

}  // namespace amused::io
