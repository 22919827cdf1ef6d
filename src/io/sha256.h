// SHA-256 (FIPS 180-4), streaming, for checking downloads against the hub's checksums.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>

namespace amused::io::hub {

// SHA-256 (FIPS 180-4), streaming.
class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t size);
  std::string hex_digest();  // finalises; lowercase 64 hex digits

 private:
  void block(const uint8_t* p);
  uint32_t h_[8];
  uint8_t buf_[64];
  size_t buf_len_ = 0;
  uint64_t total_ = 0;
};
std::string sha256_file(const std::filesystem::path& path);

}  // namespace amused::io::hub
