// Atomic file output: write to a temporary file beside the target, fsync, then rename over it.
// A failure never leaves a half-written file and never replaces a good one.
#pragma once

#include <filesystem>
#include <functional>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace amused::io {

// Calls `writer` with a binary stream on a temporary file in the target's folder, then renames it
// to `path`. Throws amused::IoError (naming the path) if the folder is missing or any step fails;
// the temporary file is removed on failure, including when `writer` throws.
void write_file_atomic(const std::filesystem::path& path,
                       const std::function<void(std::ostream&)>& writer);

void write_file_atomic(const std::filesystem::path& path, std::string_view bytes);

// Several files, all or nothing: each is written and synced to a temporary file beside its target
// first (where a full disk or a missing folder fails, before anything is replaced), and only then
// are they all renamed into place. Throws amused::IoError naming the file; on failure no target
// is touched and every temporary file is removed.
void write_files_atomic(const std::vector<std::pair<std::filesystem::path, std::string>>& files);

// The same with each file's bytes streamed by a writer (large files never held in memory).
using FileWriter = std::function<void(std::ostream&)>;
void write_files_atomic(const std::vector<std::pair<std::filesystem::path, FileWriter>>& files);

}  // namespace amused::io
