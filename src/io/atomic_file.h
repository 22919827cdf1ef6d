// Atomic file output: write to a temporary file beside the target, fsync, then rename over it.
// A failure never leaves a half-written file and never replaces a good one.
#pragma once

#include <filesystem>
#include <functional>
#include <ostream>
#include <string_view>

namespace amused::io {

// Calls `writer` with a binary stream on a temporary file in the target's folder, then renames it
// to `path`. Throws amused::IoError (naming the path) if the folder is missing or any step fails;
// the temporary file is removed on failure, including when `writer` throws.
void write_file_atomic(const std::filesystem::path& path,
                       const std::function<void(std::ostream&)>& writer);

void write_file_atomic(const std::filesystem::path& path, std::string_view bytes);

}  // namespace amused::io
