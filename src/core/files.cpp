#include "core/files.h"

#include <cerrno>
#include <system_error>

namespace amused {

std::string input_file_problem(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);  // follows symbolic links
  if (ec) {
    const int err = ec.value();
    if (err == ELOOP) return "is a symbolic-link loop";
    if (err == ENOENT || err == ENOTDIR) {
      std::error_code lec;
      if (fs::is_symlink(fs::symlink_status(path, lec))) return "is a symbolic link to nothing";
      return "does not exist";
    }
    if (err == EACCES) return "cannot be reached (permission denied)";
    return "cannot be read (" + ec.message() + ")";
  }
  switch (st.type()) {
    case fs::file_type::regular:
      return "";
    case fs::file_type::not_found:
      return "does not exist";
    case fs::file_type::directory:
      return "is a folder, expected a file";
    case fs::file_type::fifo:
      return "is a FIFO (named pipe), expected a regular file";
    case fs::file_type::socket:
      return "is a socket, expected a regular file";
    case fs::file_type::character:
    case fs::file_type::block:
      return "is a device, expected a regular file";
    default:
      return "is not a regular file";
  }
}

}  // namespace amused
