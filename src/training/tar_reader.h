// A streaming reader of tar archives (POSIX ustar, pax and GNU formats) for WebDataset shards:
// regular members one after another, read sequentially from a stream, never unpacked to disk.
//
// Handles: ustar name prefixes, GNU long names (`././@LongLink`, type 'L'), pax extended headers
// (type 'x': `path=` and `size=` records; global 'g' headers are read and ignored), base-256 sizes.
// Skips directories, links, devices, FIFOs and unknown types. Verifies every header checksum.
// Errors are amused::IoError naming the archive, the member and the byte offset.
//
// Ref: POSIX.1-2001 pax / ustar format; GNU tar manual, "Basic Tar Format"; Python tarfile.py
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <istream>
#include <memory>
#include <string>

namespace amused::training {

struct TarMember {
  std::string name;     // path inside the archive, without a leading "./"
  uint64_t size = 0;    // bytes of data
  std::string data;     // the data (empty when read with read_data = false)
  uint64_t offset = 0;  // byte offset of the member's header in the archive
};

class TarReader {
 public:
  // Members larger than this are refused (bounded memory): a WebDataset sample file is far smaller.
  static constexpr uint64_t kDefaultMaxMemberBytes = 256ull << 20;

  // Opens a file. Throws IoError if it cannot be opened.
  explicit TarReader(const std::filesystem::path& path,
                     uint64_t max_member_bytes = kDefaultMaxMemberBytes);
  // Reads from `in` (not owned; must outlive the reader); `source` names it in messages.
  TarReader(std::istream& in, std::string source,
            uint64_t max_member_bytes = kDefaultMaxMemberBytes);

  // The next regular file member; false at the end of the archive (two zero blocks, or the end of
  // the stream at a header boundary). With read_data = false its data is skipped, not kept.
  // Throws IoError for a truncated archive, a bad header checksum, an unparsable header or a
  // member over the size limit.
  bool next(TarMember& member, bool read_data = true);
  // The same, keeping the data only of members for which keep_data(name) is true.
  bool next_keeping(TarMember& member, const std::function<bool(const std::string&)>& keep_data);

  const std::string& source() const { return source_; }

 private:
  bool read_block(char* block, const std::string& context);
  void read_exact(std::string& out, uint64_t n, const std::string& context);
  void skip_exact(uint64_t n, const std::string& context);
  [[noreturn]] void fail(const std::string& message) const;

  std::unique_ptr<std::ifstream> file_;
  std::istream* in_ = nullptr;
  std::string source_;
  uint64_t max_member_bytes_;
  uint64_t offset_ = 0;
  std::string last_name_;  // the last member seen, for messages
  bool done_ = false;
};

}  // namespace amused::training
