// Strict load_state_dict and ConfigReader: the errors a user sees for mismatched weights or configs.
#include <gtest/gtest.h>

#include "amused/error.h"
#include "core/config.h"
#include "io/state_dict.h"
#include "nn/layers.h"

namespace {
struct TwoLayers : torch::nn::Module {
  TwoLayers() {
    a = register_module("a", amused::nn::Linear(3, 4, true));
    b = register_module("b", amused::nn::Linear(4, 2, false));
  }
  amused::nn::Linear a{nullptr}, b{nullptr};
};
}  // namespace

TEST(LoadStateDict, LoadsZeroCopyAndConverts) {
  TwoLayers m;
  amused::io::StateDict sd{{"a.weight", torch::randn({4, 3})},
                           {"a.bias", torch::randn({4}, torch::kFloat64)},
                           {"b.weight", torch::randn({2, 4})},
                           {"text_model.embeddings.position_ids", torch::arange(4)}};
  amused::io::load_state_dict(m, sd, "x.safetensors");
  EXPECT_EQ(m.a->weight.data_ptr(), sd["a.weight"].data_ptr());
  EXPECT_EQ(m.a->bias.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::allclose(m.a->bias, sd["a.bias"].to(torch::kFloat32)));
}

TEST(LoadStateDict, ReportsMissingUnexpectedAndWrongShapes) {
  TwoLayers m;
  amused::io::StateDict sd{{"a.weight", torch::randn({4, 5})}, {"b.weight", torch::randn({2, 4})},
                           {"c.weight", torch::randn({1})}};
  try {
    amused::io::load_state_dict(m, sd, "/models/x.safetensors");
    FAIL() << "expected CheckpointError";
  } catch (const amused::CheckpointError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("/models/x.safetensors"), std::string::npos) << msg;
    EXPECT_NE(msg.find("a.weight: checkpoint [4, 5], model [4, 3]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("missing keys (1):\n  a.bias"), std::string::npos) << msg;
    EXPECT_NE(msg.find("unexpected keys (1):\n  c.weight"), std::string::npos) << msg;
  }
}

TEST(LoadStateDict, DeferredKeysAreCheckedNowAndLoadedLater) {
  auto is_b = [](const std::string& key) { return key.rfind("b.", 0) == 0; };
  amused::io::StateDict sd{{"a.weight", torch::randn({4, 3})},
                           {"a.bias", torch::randn({4})},
                           {"b.weight", torch::randn({2, 4})}};
  amused::io::LoadOptions first;
  first.defer = is_b;
  first.dtype = torch::kBFloat16;
  {
    // A deferred key is still checked: wrong shape or absent fails at the first load.
    TwoLayers m;
    amused::io::StateDict bad = sd;
    bad["b.weight"] = torch::randn({2, 5});
    EXPECT_THROW(amused::io::load_state_dict(m, bad, "x", first), amused::CheckpointError);
    bad.erase("b.weight");
    EXPECT_THROW(amused::io::load_state_dict(m, bad, "x", first), amused::CheckpointError);
  }
  TwoLayers m;
  const auto b_before = m.b->weight.data_ptr();
  amused::io::load_state_dict(m, sd, "x", first);
  EXPECT_EQ(m.a->weight.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(m.b->weight.scalar_type(), torch::kFloat32);  // untouched: neither loaded nor converted
  EXPECT_EQ(m.b->weight.data_ptr(), b_before);
  amused::io::convert_parameters(m, first);  // convert_parameters honours defer too
  EXPECT_EQ(m.b->weight.scalar_type(), torch::kFloat32);
  // The later, partial load: just the deferred keys; the others are neither required nor touched.
  amused::io::LoadOptions later;
  later.partial = true;
  later.dtype = torch::kBFloat16;
  const auto a_before = m.a->weight.data_ptr();
  amused::io::load_state_dict(m, {{"b.weight", sd["b.weight"]}}, "x", later);
  EXPECT_EQ(m.b->weight.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(m.b->weight, sd["b.weight"].to(torch::kBFloat16)));
  EXPECT_EQ(m.a->weight.data_ptr(), a_before);
  // partial still refuses unknown keys and wrong shapes.
  EXPECT_THROW(amused::io::load_state_dict(m, {{"c.weight", torch::randn({1})}}, "x", later),
               amused::CheckpointError);
  EXPECT_THROW(amused::io::load_state_dict(m, {{"b.weight", torch::randn({3, 4})}}, "x", later),
               amused::CheckpointError);
}

TEST(ConfigReader, ReadsTypedFieldsAndChecksClass) {
  auto j = nlohmann::json::parse(R"({"_class_name":"UVit2DModel","hidden_size":32,"eps":1e-6,"name":"x",
                                    "down":true,"list":[1,2],"opt":null,"extra":1})");
  int64_t hidden = 0;
  double eps = 0;
  std::string name;
  bool down = false;
  std::vector<int64_t> list;
  std::optional<int64_t> opt = 5;
  amused::ConfigReader r(j, "transformer/config.json", "UVit2DModel");
  r.field("hidden_size", hidden);
  r.field("eps", eps);
  r.field("name", name);
  r.field("down", down);
  r.field("list", list);
  r.field("opt", opt);
  r.finish();
  EXPECT_EQ(hidden, 32);
  EXPECT_DOUBLE_EQ(eps, 1e-6);
  EXPECT_EQ(name, "x");
  EXPECT_TRUE(down);
  EXPECT_EQ(list, (std::vector<int64_t>{1, 2}));
  EXPECT_FALSE(opt.has_value());
  EXPECT_THROW(amused::ConfigReader(j, "c.json", "VQModel"), amused::ConfigError);
}

TEST(ConfigReader, WrongTypeNamesFileKeyAndValue) {
  auto j = nlohmann::json::parse(R"({"hidden_size":"big"})");
  amused::ConfigReader r(j, "transformer/config.json");
  int64_t hidden = 0;
  try {
    r.field("hidden_size", hidden);
    FAIL();
  } catch (const amused::ConfigError& e) {
    EXPECT_STREQ(e.what(), "transformer/config.json: key 'hidden_size': expected an integer, got string \"big\"");
  }
}
