// Helpers of the resource-limit tests (tests/unit/test_limits_*.cpp).
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

namespace amused::testing {

template <typename E, typename F>
void expect_error(F&& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no exception; expected one containing '" << needle << "'";
  } catch (const E& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

// A sparse file of `size` bytes starting with `head`: big on paper, nothing on disk.
inline void sparse_file(const std::filesystem::path& p, const std::string& head, uint64_t size) {
  { std::ofstream(p, std::ios::binary) << head; }
  std::filesystem::resize_file(p, size);
}

}  // namespace amused::testing
