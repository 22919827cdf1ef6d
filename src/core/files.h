// Input files as the loaders meet them: one answer to "can this be read as a file?" for every
// loader (configs, weights, tokenizer files, images), so that a FIFO, a device or a symbolic-link
// loop is named as such instead of "missing", and is refused before anything opens it (reading a
// FIFO blocks until a writer comes; /dev/zero never ends).
#pragma once

#include <filesystem>
#include <string>

namespace amused {

// "" when `path` is a regular file (or a symbolic link to one); otherwise what it is, worded to
// follow the quoted path: "does not exist", "is a folder, expected a file", "is a symbolic-link
// loop", "is a symbolic link to nothing", "is a FIFO (named pipe), expected a regular file",
// "is a device, expected a regular file", ...
std::string input_file_problem(const std::filesystem::path& path);

// Whether input_file_problem() said the path does not exist (nothing, not even a broken link).
inline bool is_absent_problem(const std::string& problem) { return problem == "does not exist"; }

}  // namespace amused
