// Streaming tar reader for WebDataset shards, see tar_reader.h.
#include "training/tar_reader.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <functional>
#include <optional>

#include "amused/error.h"

namespace amused::training {
namespace {

constexpr size_t kBlock = 512;
// Long-name and pax header members hold metadata only; anything bigger is not a sane archive.
constexpr uint64_t kMaxMetaBytes = 1u << 20;

uint64_t padded(uint64_t n) { return (n + kBlock - 1) / kBlock * kBlock; }

std::string field_string(const char* p, size_t n) { return std::string(p, strnlen(p, n)); }

// An octal field (optionally space/NUL padded) or GNU base-256 (high bit of the first byte set).
std::optional<uint64_t> parse_number(const char* p, size_t n) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  if (u[0] & 0x80) {
    if (u[0] == 0xFF) return std::nullopt;  // negative
    uint64_t v = u[0] & 0x7F;
    for (size_t i = 1; i < n; ++i) {
      if (v >> 56) return std::nullopt;
      v = (v << 8) | u[i];
    }
    return v;
  }
  size_t i = 0;
  while (i < n && (p[i] == ' ' || p[i] == '\0')) ++i;
  if (i == n) return 0;
  uint64_t v = 0;
  bool any = false;
  for (; i < n && p[i] != ' ' && p[i] != '\0'; ++i) {
    if (p[i] < '0' || p[i] > '7' || (v >> 60)) return std::nullopt;
    v = v * 8 + static_cast<uint64_t>(p[i] - '0');
    any = true;
  }
  for (; i < n; ++i)
    if (p[i] != ' ' && p[i] != '\0') return std::nullopt;
  if (!any) return std::nullopt;
  return v;
}

std::string strip_dot_slash(std::string name) {
  while (name.size() >= 2 && name[0] == '.' && name[1] == '/') name.erase(0, 2);
  return name;
}

// Pax extended header records: "<len> <key>=<value>\n".
void parse_pax(const std::string& data, std::optional<std::string>& path,
               std::optional<uint64_t>& size, const std::function<void(const std::string&)>& fail) {
  size_t pos = 0;
  while (pos < data.size()) {
    if (data[pos] == '\0') break;  // padding
    size_t sp = data.find(' ', pos);
    if (sp == std::string::npos) fail("malformed pax record (no length)");
    uint64_t len = 0;
    for (size_t i = pos; i < sp; ++i) {
      if (data[i] < '0' || data[i] > '9' || len > data.size()) fail("malformed pax record length");
      len = len * 10 + static_cast<uint64_t>(data[i] - '0');
    }
    if (len <= sp - pos + 1 || pos + len > data.size() || data[pos + len - 1] != '\n')
      fail("malformed pax record (length " + std::to_string(len) + ")");
    const std::string record = data.substr(sp + 1, pos + len - 1 - (sp + 1));
    const size_t eq = record.find('=');
    if (eq == std::string::npos) fail("malformed pax record (no '=')");
    const std::string key = record.substr(0, eq), value = record.substr(eq + 1);
    if (key == "path") path = value;
    if (key == "size") {
      uint64_t d = 0;  // decimal, unlike the header's octal fields
      for (char c : value) {
        if (c < '0' || c > '9' || d > (uint64_t{1} << 58))
          fail("malformed pax size '" + value + "'");
        d = d * 10 + static_cast<uint64_t>(c - '0');
      }
      if (value.empty()) fail("malformed pax size (empty)");
      size = d;
    }
    pos += len;
  }
}

}  // namespace

TarReader::TarReader(const std::filesystem::path& path, uint64_t max_member_bytes)
    : source_(path.string()), max_member_bytes_(max_member_bytes) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    throw IoError("tar archive '" + source_ + "' " +
                  (std::filesystem::exists(path, ec) ? "is not a regular file" : "does not exist"));
  file_ = std::make_unique<std::ifstream>(path, std::ios::binary);
  if (!*file_) throw IoError("cannot open tar archive '" + source_ + "'");
  in_ = file_.get();
}

TarReader::TarReader(std::istream& in, std::string source, uint64_t max_member_bytes)
    : in_(&in), source_(std::move(source)), max_member_bytes_(max_member_bytes) {}

void TarReader::fail(const std::string& message) const {
  std::string where = "tar archive '" + source_ + "'";
  if (!last_name_.empty()) where += " (after member '" + last_name_ + "')";
  throw IoError(where + ": " + message);
}

bool TarReader::read_block(char* block, const std::string& context) {
  in_->read(block, kBlock);
  const auto got = static_cast<size_t>(in_->gcount());
  if (got == 0 && in_->eof()) return false;
  if (got != kBlock)
    fail("truncated " + context + " at byte " + std::to_string(offset_) + " (got " +
         std::to_string(got) + " of 512 bytes)");
  offset_ += kBlock;
  return true;
}

void TarReader::read_exact(std::string& out, uint64_t n, const std::string& context) {
  out.resize(n);
  in_->read(out.data(), static_cast<std::streamsize>(n));
  const auto got = static_cast<uint64_t>(in_->gcount());
  if (got != n)
    fail("truncated " + context + " at byte " + std::to_string(offset_) + " (expected " +
         std::to_string(n) + " bytes, got " + std::to_string(got) + ")");
  offset_ += n;
}

void TarReader::skip_exact(uint64_t n, const std::string& context) {
  std::array<char, 65536> buf;
  uint64_t left = n;
  while (left > 0) {
    const auto chunk = static_cast<std::streamsize>(std::min<uint64_t>(left, buf.size()));
    in_->read(buf.data(), chunk);
    const auto got = in_->gcount();
    left -= static_cast<uint64_t>(got);
    offset_ += static_cast<uint64_t>(got);
    if (got != chunk)
      fail("truncated " + context + " at byte " + std::to_string(offset_) + " (expected " +
           std::to_string(n) + " bytes, got " + std::to_string(n - left) + ")");
  }
}

bool TarReader::next(TarMember& member, bool read_data) {
  return next_keeping(member, [read_data](const std::string&) { return read_data; });
}

bool TarReader::next_keeping(TarMember& member,
                             const std::function<bool(const std::string&)>& keep_data) {
  if (done_) return false;
  std::optional<std::string> long_name, pax_path;
  std::optional<uint64_t> pax_size;
  const auto fail_fn = [this](const std::string& m) { fail(m); };
  for (;;) {
    std::array<char, kBlock> h;
    const uint64_t header_offset = offset_;
    if (!read_block(h.data(), "header")) {
      if (long_name || pax_path)
        fail("archive ends after a long-name or pax header, before its member");
      done_ = true;
      return false;
    }
    if (std::all_of(h.begin(), h.end(), [](char c) { return c == '\0'; })) {
      done_ = true;  // end-of-archive marker; the second zero block and any padding are not needed
      return false;
    }
    const auto stored = parse_number(h.data() + 148, 8);
    uint64_t unsigned_sum = 0;
    int64_t signed_sum = 0;
    for (size_t i = 0; i < kBlock; ++i) {
      const char c = (i >= 148 && i < 156) ? ' ' : h[i];
      unsigned_sum += static_cast<unsigned char>(c);
      signed_sum += static_cast<signed char>(c);
    }
    if (!stored || (*stored != unsigned_sum && static_cast<int64_t>(*stored) != signed_sum))
      fail("bad header checksum at byte " + std::to_string(header_offset) + " (stored " +
           (stored ? std::to_string(*stored) : std::string("unreadable")) + ", computed " +
           std::to_string(unsigned_sum) + "): the archive is corrupt or not a tar file");

    const char type = h[156];
    std::string name = field_string(h.data(), 100);
    // POSIX ustar ("ustar\0" + "00") splits long names into prefix + "/" + name; the GNU magic
    // ("ustar  \0") uses those bytes for other fields.
    if (std::memcmp(h.data() + 257, "ustar\0", 6) == 0) {
      const std::string prefix = field_string(h.data() + 345, 155);
      if (!prefix.empty()) name = prefix + "/" + name;
    }
    if (long_name) name = *long_name;
    if (pax_path) name = *pax_path;
    name = strip_dot_slash(name);

    const auto header_size = parse_number(h.data() + 124, 12);
    if (!header_size)
      fail("unreadable size field in the header of '" + name + "' at byte " +
           std::to_string(header_offset));
    const uint64_t size = (pax_size && type != 'x' && type != 'g' && type != 'L' && type != 'K')
                              ? *pax_size
                              : *header_size;

    if (type == 'L' || type == 'K' || type == 'x' || type == 'g') {
      if (size > kMaxMetaBytes)
        fail("metadata header (type '" + std::string(1, type) + "') of " + std::to_string(size) +
             " bytes at byte " + std::to_string(header_offset) + " is over the 1 MiB limit");
      std::string meta;
      read_exact(meta, size, "metadata header data");
      skip_exact(padded(size) - size, "padding");
      if (type == 'L') long_name = field_string(meta.data(), meta.size());
      if (type == 'x') parse_pax(meta, pax_path, pax_size, fail_fn);
      continue;  // 'K' (long link name) and 'g' (global pax) change nothing we use
    }
    last_name_ = name;
    const bool regular = type == '0' || type == '\0' || type == '7';
    // Links, devices, directories and FIFOs carry no data (as Python's tarfile reads them);
    // other types (GNU sparse, volume headers...) are skipped by their size.
    const bool no_data = type >= '1' && type <= '6';
    if (!regular) {
      if (!no_data) skip_exact(padded(size), "data of member '" + name + "'");
      long_name.reset();
      pax_path.reset();
      pax_size.reset();
      continue;
    }
    if (size > max_member_bytes_)
      fail("member '" + name + "' is " + std::to_string(size) + " bytes, over the limit of " +
           std::to_string(max_member_bytes_) + " bytes for one member");
    member.name = name;
    member.size = size;
    member.offset = header_offset;
    member.data.clear();
    if (keep_data(name)) {
      read_exact(member.data, size, "data of member '" + name + "'");
      skip_exact(padded(size) - size, "padding of member '" + name + "'");
    } else {
      skip_exact(padded(size), "data of member '" + name + "'");
    }
    return true;
  }
}

}  // namespace amused::training
