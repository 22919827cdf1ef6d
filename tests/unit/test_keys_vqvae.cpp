// Key compatibility: the full-size VQModel built from amused's vqvae/config.json has exactly the
// parameter names and shapes of the official checkpoint (../shared/docs/keys/keys_vqvae.txt).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "core/config.h"
#include "models/vq_model.h"
#include "support/golden.h"

namespace {
namespace fs = std::filesystem;

// "name [d0, d1, ...]" per line.
std::map<std::string, std::vector<int64_t>> read_key_list(const fs::path& path) {
  std::map<std::string, std::vector<int64_t>> keys;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const auto space = line.find(' ');
    std::vector<int64_t> shape;
    std::string dims = line.substr(space + 1);
    for (char& ch : dims)
      if (ch == '[' || ch == ']' || ch == ',') ch = ' ';
    std::istringstream is(dims);
    for (int64_t d; is >> d;) shape.push_back(d);
    keys[line.substr(0, space)] = shape;
  }
  return keys;
}

TEST(VQModelKeys, FullSizeMatchesKeyList) {
  AMUSED_REQUIRE_GOLDEN();
  const fs::path keys_path = amused::testing::keys_dir() / "keys_vqvae.txt";
  if (!fs::exists(keys_path)) {
    if (amused::testing::running_in_ci()) FAIL() << keys_path << " not found (CI=true)";
    GTEST_SKIP() << keys_path << " not found";
  }
  const auto expected = read_key_list(keys_path);
  ASSERT_EQ(expected.size(), 277u);

  const auto config_path =
      amused::testing::golden_path("full-configs/amused-256/vqvae/config.json");
  const auto config = amused::models::VQModelConfig::from_json(amused::read_json_file(config_path),
                                                               config_path.string());
  EXPECT_EQ(config.scale_factor(), 16);
  EXPECT_EQ(config.embed_dim(), 64);
  amused::models::VQModel vq(config);  // uninitialised: no forward

  std::map<std::string, std::vector<int64_t>> actual;
  int64_t total = 0;
  for (const auto& p : vq->named_parameters()) {
    actual[p.key()] = p.value().sizes().vec();
    total += p.value().numel();
  }
  EXPECT_TRUE(vq->named_buffers().is_empty());
  // The size bound (see UVit2DKeys): at most the real count, and most of it.
  EXPECT_LE(config.min_parameters().parameters, static_cast<double>(total));
  EXPECT_GE(config.min_parameters().parameters, 0.5 * static_cast<double>(total));
  for (const auto& [name, shape] : expected) {
    auto it = actual.find(name);
    if (it == actual.end()) {
      ADD_FAILURE() << "missing parameter " << name;
    } else {
      EXPECT_EQ(it->second, shape) << name;
    }
  }
  for (const auto& [name, shape] : actual)
    EXPECT_TRUE(expected.count(name)) << "unexpected parameter " << name;
  EXPECT_EQ(total, 146244675);
}

}  // namespace
