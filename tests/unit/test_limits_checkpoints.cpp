// Shard indexes (their file names never leave the folder) and safetensors headers that claim
// absurd sizes or nest deeply. See docs/RELIABILITY.md.
#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include "amused/error.h"
#include "io/hf_hub.h"
#include "io/safetensors.h"
#include "support/golden.h"
#include "unit/limits_support.h"

using amused::testing::expect_error;
using amused::testing::golden_path;
using amused::testing::sparse_file;
using amused::testing::TempDir;
using nlohmann::json;
namespace fs = std::filesystem;

TEST(ResourceLimits, ShardIndexNamesStayInTheirFolder) {
  using amused::io::hub::parse_shard_index;
  const auto ok = parse_shard_index(
      R"({"weight_map": {"a": "m-2.safetensors", "b": "m-1.safetensors", "c": "m-1.safetensors"}})",
      "i.json");
  EXPECT_EQ(ok, (std::vector<std::string>{"m-1.safetensors", "m-2.safetensors"}));
  for (const char* bad :
       {R"("../x")", R"("/etc/passwd")", R"("a\\b")", R"("..")", R"("")", R"("a\u0000b")"}) {
    const std::string text = std::string(R"({"weight_map": {"k": )") + bad + "}}";
    expect_error<amused::CheckpointError>([&] { parse_shard_index(text, "i.json"); },
                                          "not a file name");
  }
  expect_error<amused::CheckpointError>(
      [&] { parse_shard_index("{\"weight_map\": {\"k\": 3}}", "i.json"); }, "expected a file name");
  expect_error<amused::CheckpointError>([&] { parse_shard_index("{", "i.json"); },
                                        "not valid JSON");
  expect_error<amused::CheckpointError>([&] { parse_shard_index("{}", "i.json"); }, "weight_map");
}

TEST(ResourceLimits, SafetensorsHeaderClaimsAndNesting) {
  TempDir tmp;
  // A header that claims 2^62 bytes: refused from the 8-byte prefix alone.
  {
    std::ofstream(tmp / "a.safetensors", std::ios::binary)
        << std::string("\0\0\0\0\0\0\0\x40{}", 10);
  }
  expect_error<amused::CheckpointError>(
      [&] { amused::io::SafeTensorsFile::open(tmp / "a.safetensors"); }, "exceeds");
  // A header of nested arrays.
  std::string h = "{\"__metadata__\":" + std::string(100, '[') + std::string(100, ']') + "}";
  while (h.size() % 8) h += ' ';
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((h.size() >> (8 * i)) & 0xff);
  { std::ofstream(tmp / "b.safetensors", std::ios::binary) << bytes + h; }
  expect_error<amused::CheckpointError>(
      [&] { amused::io::SafeTensorsFile::open(tmp / "b.safetensors"); }, "deeper than");
}

// Issue 20: a header of 40k zero-size entries took 22 s and 500k (33 MB) did not finish in 300 s.
// Now a linear pass: 500k entries open (no timing asserted), and duplicates are still found.
TEST(ResourceLimits, WideSafetensorsHeadersOpenInLinearTime) {
  TempDir tmp;
  const auto write_header = [&](const fs::path& path, const std::string& body) {
    std::string h = body;
    while (h.size() % 8) h += ' ';
    std::string bytes(8, '\0');
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((h.size() >> (8 * i)) & 0xff);
    std::ofstream(path, std::ios::binary) << bytes + h;
  };
  std::string h = "{";
  for (int i = 0; i < 500000; ++i)
    h += (i ? ",\"t" : "\"t") + std::to_string(i) + "\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}";
  h += "}";
  write_header(tmp / "wide.safetensors", h);
  const auto f = amused::io::SafeTensorsFile::open(tmp / "wide.safetensors");
  EXPECT_EQ(f->keys().size(), 500000u);
  write_header(tmp / "dup.safetensors",
               "{\"x\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},"
               "\"x\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}");
  expect_error<amused::CheckpointError>([&] { amused::io::SafeTensorsFile::open(tmp / "dup.safetensors"); },
                                        "appears twice");
}
