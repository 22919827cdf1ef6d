// Diffusers folder loader: the golden tiny models, variants, sharded checkpoints, every error case,
// inspect_model and the `amused inspect` CLI (including PNG text metadata).
#include <gtest/gtest.h>
#include <png.h>

#include <cstdio>
#include <fstream>

#include "amused/error.h"
#include "amused/png_text.h"
#include "amused/repo.h"
#include "core/config.h"
#include "io/diffusers_repo.h"
#include "io/safetensors.h"
#include "support/golden.h"
#include "support/scoped_env.h"

namespace fs = std::filesystem;
using amused::CheckpointError;
using amused::ConfigError;
using amused::io::DiffusersRepo;
using amused::testing::golden_path;
using amused::testing::ScopedEnv;
using amused::testing::TempDir;
using nlohmann::json;

namespace {

const std::vector<std::string> kComponents = {"scheduler", "text_encoder", "tokenizer",
                                              "transformer", "vqvae"};

// A writable copy of a golden model (symlinks to the files, so tests can replace them freely).
fs::path copy_model(const TempDir& tmp, const std::string& name, const std::string& to = "model") {
  const fs::path src = golden_path("models/" + name);
  const fs::path dst = tmp / to;
  for (const auto& e : fs::recursive_directory_iterator(src)) {
    const fs::path rel = fs::relative(e.path(), src);
    if (e.is_directory()) {
      fs::create_directories(dst / rel);
    } else {
      fs::create_directories((dst / rel).parent_path());
      fs::create_symlink(e.path(), dst / rel);
    }
  }
  return dst;
}

void write_text(const fs::path& p, const std::string& s) {
  fs::remove(p);
  std::ofstream out(p, std::ios::binary);
  out << s;
}

// Expects `f` to throw E with every needle in its message.
template <typename E, typename F>
void expect_error(F&& f, std::vector<std::string> needles) {
  try {
    f();
    FAIL() << "expected an exception containing '" << needles.front() << "'";
  } catch (const E& e) {
    const std::string msg = e.what();
    for (const auto& n : needles)
      EXPECT_NE(msg.find(n), std::string::npos) << "missing '" << n << "' in: " << msg;
  }
}

void expect_same_tensors(const amused::io::StateDict& a, const amused::io::StateDict& b) {
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [k, v] : b) {
    ASSERT_TRUE(a.count(k)) << k;
    EXPECT_TRUE(a.at(k).equal(v)) << k;
  }
}

}  // namespace

TEST(DiffusersRepo, OpensGoldenModelsAndReadsEveryComponent) {
  AMUSED_REQUIRE_GOLDEN();
  for (const std::string name : {"tiny-a", "tiny-b"}) {
    SCOPED_TRACE(name);
    const fs::path root = golden_path("models/" + name);
    const auto repo = DiffusersRepo::open(root.string());
    EXPECT_EQ(repo.root(), root);
    EXPECT_FALSE(repo.from_hub_cache());
    EXPECT_EQ(repo.model_index()["_class_name"], "AmusedPipeline");
    EXPECT_EQ(repo.component_names(), kComponents);
    for (const auto& c : kComponents) {
      EXPECT_TRUE(repo.has_component(c));
      EXPECT_EQ(repo.component_dir(c), root / c);
      EXPECT_TRUE(repo.component_config(c).is_object());
    }
    EXPECT_FALSE(repo.has_component("unet"));
    EXPECT_FALSE(repo.has_component("_class_name"));
    EXPECT_EQ(repo.component_class("transformer"),
              std::make_pair(std::string("diffusers"), std::string("UVit2DModel")));
    EXPECT_EQ(repo.component_config_path("scheduler"),
              root / "scheduler" / "scheduler_config.json");
    EXPECT_EQ(repo.component_config("scheduler")["_class_name"], "AmusedScheduler");
    EXPECT_EQ(repo.component_config_path("tokenizer"),
              root / "tokenizer" / "tokenizer_config.json");
    EXPECT_EQ(repo.component_config_path("transformer"), root / "transformer" / "config.json");
    EXPECT_EQ(repo.weight_files("text_encoder"),
              std::vector<fs::path>{root / "text_encoder" / "model.safetensors"});
    for (const std::string c : {"transformer", "vqvae"}) {
      const fs::path file = root / c / "diffusion_pytorch_model.safetensors";
      EXPECT_EQ(repo.weight_files(c), std::vector<fs::path>{file});
      const auto sd = repo.component_weights(c);
      EXPECT_FALSE(sd.empty());
      expect_same_tensors(sd, amused::io::load_safetensors(file));
    }
    EXPECT_FALSE(repo.component_weights("text_encoder").empty());
  }
}

TEST(DiffusersRepo, Fp16VariantSelection) {
  AMUSED_REQUIRE_GOLDEN();
  TempDir tmp;
  const fs::path root = copy_model(tmp, "tiny-a");
  const auto full =
      amused::io::load_safetensors(root / "transformer" / "diffusion_pytorch_model.safetensors");
  amused::io::StateDict half;
  for (const auto& [k, v] : full) half[k] = v.is_floating_point() ? v.to(torch::kFloat16) : v;
  amused::io::save_safetensors(root / "transformer" / "diffusion_pytorch_model.fp16.safetensors",
                               half);

  amused::RepoOptions fp16;
  fp16.variant = "fp16";
  const auto repo16 = DiffusersRepo::open(root.string(), fp16);
  EXPECT_EQ(
      repo16.weight_files("transformer"),
      std::vector<fs::path>{root / "transformer" / "diffusion_pytorch_model.fp16.safetensors"});
  expect_same_tensors(repo16.component_weights("transformer"), half);
  // The default is still the plain file.
  EXPECT_EQ(DiffusersRepo::open(root.string()).weight_files("transformer"),
            std::vector<fs::path>{root / "transformer" / "diffusion_pytorch_model.safetensors"});
  // A component without that variant: a clear error listing what exists.
  expect_error<CheckpointError>([&] { repo16.weight_files("vqvae"); },
                                {(root / "vqvae").string(), "'fp16'", "variants present: default"});
  amused::RepoOptions bf16;
  bf16.variant = "bf16";
  expect_error<CheckpointError>(
      [&] { DiffusersRepo::open(root.string(), bf16).weight_files("transformer"); },
      {"'bf16'", "variants present: default, fp16"});
  // Only the variant present: asking for the default says which variant to pass.
  fs::remove(root / "transformer" / "diffusion_pytorch_model.safetensors");
  expect_error<CheckpointError>(
      [&] { DiffusersRepo::open(root.string()).weight_files("transformer"); },
      {"no default weights", "--variant fp16"});
  amused::RepoOptions bad;
  bad.variant = "../x";
  EXPECT_THROW(DiffusersRepo::open(root.string(), bad), amused::InvalidArgument);
}

TEST(DiffusersRepo, ShardedCheckpoints) {
  AMUSED_REQUIRE_GOLDEN();
  TempDir tmp;
  const fs::path root = copy_model(tmp, "tiny-b");
  const fs::path dir = root / "transformer";
  const auto full = amused::io::load_safetensors(dir / "diffusion_pytorch_model.safetensors");
  fs::remove(dir / "diffusion_pytorch_model.safetensors");
  // Split the tensors into two shards, as save_pretrained(max_shard_size=...) does.
  auto write_shards = [&](const std::string& stem, const std::string& index_name) {
    amused::io::StateDict a, b;
    json weight_map = json::object();
    int i = 0;
    for (const auto& [k, v] : full) {
      const bool first = i++ % 2 == 0;
      (first ? a : b)[k] = v;
      weight_map[k] =
          stem + (first ? "-00001-of-00002.safetensors" : "-00002-of-00002.safetensors");
    }
    amused::io::save_safetensors(dir / (stem + "-00001-of-00002.safetensors"), a);
    amused::io::save_safetensors(dir / (stem + "-00002-of-00002.safetensors"), b);
    write_text(dir / index_name,
               json{{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}}.dump());
  };
  write_shards("diffusion_pytorch_model", "diffusion_pytorch_model.safetensors.index.json");
  const auto repo = DiffusersRepo::open(root.string());
  EXPECT_EQ(repo.weight_files("transformer"),
            (std::vector<fs::path>{dir / "diffusion_pytorch_model-00001-of-00002.safetensors",
                                   dir / "diffusion_pytorch_model-00002-of-00002.safetensors"}));
  expect_same_tensors(repo.component_weights("transformer"), full);

  // fp16 variant of a sharded checkpoint: `<name>.safetensors.index.fp16.json` (diffusers' naming).
  write_shards("diffusion_pytorch_model.fp16",
               "diffusion_pytorch_model.safetensors.index.fp16.json");
  amused::RepoOptions fp16;
  fp16.variant = "fp16";
  const auto repo16 = DiffusersRepo::open(root.string(), fp16);
  EXPECT_EQ(repo16.weight_files("transformer").front().filename(),
            "diffusion_pytorch_model.fp16-00001-of-00002.safetensors");
  expect_same_tensors(repo16.component_weights("transformer"), full);

  // A key in two shards.
  amused::io::save_safetensors(dir / "diffusion_pytorch_model-00002-of-00002.safetensors", full);
  expect_error<CheckpointError>([&] { repo.component_weights("transformer"); },
                                {"appears in both", "-00001-of-00002"});
  // A missing shard.
  fs::remove(dir / "diffusion_pytorch_model-00002-of-00002.safetensors");
  expect_error<CheckpointError>(
      [&] { repo.weight_files("transformer"); },
      {(dir / "diffusion_pytorch_model-00002-of-00002.safetensors").string(), "missing"});
  // A corrupt index.
  write_text(dir / "diffusion_pytorch_model.safetensors.index.json", "{\"weight_map\": ");
  expect_error<CheckpointError>(
      [&] { repo.weight_files("transformer"); },
      {(dir / "diffusion_pytorch_model.safetensors.index.json").string(), "not valid JSON"});
  write_text(dir / "diffusion_pytorch_model.safetensors.index.json",
             "{\"weight_map\": {\"a\": \"../x\"}}");
  expect_error<CheckpointError>([&] { repo.weight_files("transformer"); }, {"not a file name"});
}

TEST(DiffusersRepo, ErrorsNameThePath) {
  AMUSED_REQUIRE_GOLDEN();
  TempDir tmp;
  // Missing folder (an absolute path is never taken for a hub repo id).
  const std::string missing = (tmp / "nope").string();
  expect_error<ConfigError>([&] { DiffusersRepo::open(missing); }, {missing, "does not exist"});
  // A file instead of a folder.
  write_text(tmp / "file.txt", "x");
  expect_error<ConfigError>([&] { DiffusersRepo::open((tmp / "file.txt").string()); },
                            {"is a file"});
  // Missing model_index.json.
  fs::create_directories(tmp / "empty");
  expect_error<ConfigError>([&] { DiffusersRepo::open((tmp / "empty").string()); },
                            {(tmp / "empty").string(), "model_index.json"});
  const fs::path root = copy_model(tmp, "tiny-a");
  // Wrong pipeline class; corrupt model_index.json.
  write_text(root / "model_index.json", R"({"_class_name": "StableDiffusionPipeline"})");
  expect_error<ConfigError>(
      [&] { DiffusersRepo::open(root.string()); },
      {(root / "model_index.json").string(), "StableDiffusionPipeline", "AmusedPipeline"});
  write_text(root / "model_index.json", "{ not json");
  expect_error<ConfigError>([&] { DiffusersRepo::open(root.string()); },
                            {(root / "model_index.json").string(), "JSON"});
  fs::remove(root / "model_index.json");
  fs::create_symlink(golden_path("models/tiny-a/model_index.json"), root / "model_index.json");
  const auto repo = DiffusersRepo::open(root.string());
  // Missing component folder.
  fs::remove_all(root / "vqvae");
  expect_error<ConfigError>([&] { repo.component_dir("vqvae"); },
                            {(root / "vqvae").string(), "missing"});
  expect_error<ConfigError>([&] { repo.component_config("vqvae"); }, {(root / "vqvae").string()});
  // Missing config file.
  fs::remove(root / "transformer" / "config.json");
  expect_error<ConfigError>([&] { repo.component_config("transformer"); },
                            {(root / "transformer").string(), "config.json"});
  // Missing weights.
  fs::remove(root / "text_encoder" / "model.safetensors");
  expect_error<CheckpointError>([&] { repo.weight_files("text_encoder"); },
                                {(root / "text_encoder").string(), "model.safetensors"});
  // Only a PyTorch pickle.
  write_text(root / "text_encoder" / "pytorch_model.bin", "pickle");
  expect_error<amused::Unsupported>(
      [&] { repo.weight_files("text_encoder"); },
      {(root / "text_encoder").string(), "pytorch_model.bin", "safetensors"});
  // Corrupt safetensors.
  const fs::path bad = root / "transformer" / "diffusion_pytorch_model.safetensors";
  fs::remove(bad);
  write_text(bad, std::string("\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":", 13));
  expect_error<CheckpointError>([&] { repo.component_weights("transformer"); }, {bad.string()});
}

TEST(DiffusersRepo, ChooseWeightFiles) {
  using amused::io::choose_weight_files;
  EXPECT_EQ(choose_weight_files({"config.json", "model.safetensors"}, "", "d"),
            std::vector<std::string>{"model.safetensors"});
  EXPECT_EQ(choose_weight_files(
                {"diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"},
                "fp16", "d"),
            std::vector<std::string>{"diffusion_pytorch_model.fp16.safetensors"});
  EXPECT_EQ(choose_weight_files(
                {"model.safetensors.index.fp16.json", "model.fp16-00001-of-00001.safetensors"},
                "fp16", "d"),
            std::vector<std::string>{"model.safetensors.index.fp16.json"});
  EXPECT_EQ(choose_weight_files({"model.safetensors.fp16.index.json"}, "fp16", "d"),
            std::vector<std::string>{"model.safetensors.fp16.index.json"});
  EXPECT_TRUE(choose_weight_files({"scheduler_config.json"}, "", "d").empty());
  EXPECT_TRUE(choose_weight_files({"vocab.json", "merges.txt"}, "fp16", "d").empty());
  EXPECT_THROW(choose_weight_files({"diffusion_pytorch_model.bin", "config.json"}, "", "d"),
               amused::Unsupported);
  EXPECT_THROW(choose_weight_files({"unet.safetensors"}, "", "d"), CheckpointError);
}

TEST(DiffusersRepo, InspectModelFromHeadersOnly) {
  AMUSED_REQUIRE_GOLDEN();
  const fs::path root = golden_path("models/tiny-b");
  const auto info = amused::inspect_model(root.string());
  EXPECT_EQ(info.pipeline_class, "AmusedPipeline");
  EXPECT_EQ(info.path, fs::absolute(root).lexically_normal().string());
  ASSERT_EQ(info.components.size(), kComponents.size());
  const json transformer_config = amused::read_json_file(root / "transformer" / "config.json");
  int64_t total = 0;
  for (const auto& c : info.components) {
    SCOPED_TRACE(c.name);
    if (c.name == "scheduler" || c.name == "tokenizer") {
      EXPECT_TRUE(c.weight_files.empty());
      EXPECT_EQ(c.parameter_count, 0);
      continue;
    }
    ASSERT_EQ(c.weight_files.size(), 1u);
    const auto sd = amused::io::load_safetensors(c.weight_files[0].path);
    int64_t params = 0;
    for (const auto& [k, v] : sd) params += v.numel();
    EXPECT_EQ(c.parameter_count, params);
    EXPECT_EQ(c.tensor_count, static_cast<int64_t>(sd.size()));
    EXPECT_EQ(c.weight_files[0].size_bytes, fs::file_size(c.weight_files[0].path));
    EXPECT_EQ(
        c.dtypes,
        (std::vector<std::pair<std::string, int64_t>>{{"F32", static_cast<int64_t>(sd.size())}}));
    total += params;
  }
  EXPECT_EQ(info.total_parameters, total);
  const auto& t = info.components[3];
  ASSERT_EQ(t.name, "transformer");
  EXPECT_EQ(t.class_name, "UVit2DModel");
  bool saw_hidden = false;
  for (const auto& [k, v] : t.config)
    if (k == "hidden_size") saw_hidden = v == transformer_config["hidden_size"].dump();
  EXPECT_TRUE(saw_hidden);
  const auto& tok = info.components[2];
  EXPECT_EQ(tok.files,
            (std::vector<std::string>{"vocab.json", "merges.txt", "special_tokens_map.json"}));
  const json j = json::parse(amused::model_info_json(info));
  EXPECT_EQ(j["components"].size(), kComponents.size());
  EXPECT_EQ(j["components"][3]["config"]["hidden_size"], transformer_config["hidden_size"]);
}

// ----------------------------------------------------------------------------- CLI

TEST(InspectCli, PrintsComponentsAndJson) {
  AMUSED_REQUIRE_GOLDEN();
  const std::string root = golden_path("models/tiny-a").string();
  const auto r = amused::testing::run_cli("inspect -m '" + root + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* needle : {"AmusedPipeline", "UVit2DModel", "VQModel",
                             "CLIPTextModelWithProjection", "AmusedScheduler", "masking_schedule",
                             "diffusion_pytorch_model.safetensors", "parameters:", "F32 x"})
    EXPECT_NE(r.out.find(needle), std::string::npos) << needle << "\n" << r.out;
  const auto rj = amused::testing::run_cli("inspect '" + root + "' --json --offline");
  ASSERT_EQ(rj.exit_code, 0) << rj.err;
  const json j = json::parse(rj.out);
  EXPECT_EQ(j["pipeline_class"], "AmusedPipeline");
  EXPECT_EQ(j["components"].size(), kComponents.size());
}

TEST(InspectCli, ErrorsAreOneLine) {
  AMUSED_REQUIRE_GOLDEN();
  TempDir tmp;
  auto expect_cli_error = [](const std::string& args, const std::string& needle) {
    const auto r = amused::testing::run_cli(args);
    EXPECT_NE(r.exit_code, 0) << args;
    EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
    EXPECT_TRUE(r.out.empty()) << r.out;
  };
  expect_cli_error("inspect -m '" + (tmp / "missing").string() + "'", (tmp / "missing").string());

  const fs::path root = copy_model(tmp, "tiny-a");
  const fs::path weights = root / "vqvae" / "diffusion_pytorch_model.safetensors";
  fs::remove(weights);
  write_text(weights, "garbage, not safetensors");
  expect_cli_error("inspect -m '" + root.string() + "'", weights.string());
  fs::remove(weights);
  fs::create_symlink(golden_path("models/tiny-a/vqvae/diffusion_pytorch_model.safetensors"),
                     weights);

  const fs::path config = root / "transformer" / "config.json";
  json c = amused::read_json_file(config);
  c["_class_name"] = "UNet2DConditionModel";
  write_text(config, c.dump());
  expect_cli_error("inspect -m '" + root.string() + "'", "UNet2DConditionModel");
  c["_class_name"] = "UVit2DModel";
  c["hidden_size"] = "big";
  write_text(config, c.dump());
  expect_cli_error("inspect -m '" + root.string() + "'", "hidden_size");

  write_text(root / "model_index.json", R"({"_class_name": "StableDiffusionPipeline"})");
  expect_cli_error("inspect -m '" + root.string() + "'", "StableDiffusionPipeline");

  // A hub repo id that is not cached, offline (flag or environment): no network, a hint.
  ScopedEnv cache("HF_HUB_CACHE", (tmp / "hub").string());
  ScopedEnv offline("HF_HUB_OFFLINE", std::nullopt);
  expect_cli_error("inspect -m org/absent --offline", "without --offline");
  ScopedEnv offline_env("HF_HUB_OFFLINE", std::string("1"));
  expect_cli_error("inspect -m org/absent", "org/absent");
}

// ----------------------------------------------------------------------------- PNG text

namespace {
// A 3x2 RGB PNG with a tEXt chunk before the image data and an iTXt chunk after it.
void write_png_with_text(const fs::path& path) {
  FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  png_init_io(png, f);
  png_set_IHDR(png, info, 3, 2, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_text before{};
  before.compression = PNG_TEXT_COMPRESSION_NONE;
  before.key = const_cast<char*>("prompt");
  before.text = const_cast<char*>("a cat");
  png_set_text(png, info, &before, 1);
  png_write_info(png, info);
  std::vector<png_byte> row(9, 7);
  for (int y = 0; y < 2; ++y) png_write_row(png, row.data());
  png_text after{};
  after.compression = PNG_ITXT_COMPRESSION_zTXt;
  after.key = const_cast<char*>("parameters");
  after.text = const_cast<char*>("{\"steps\": 12, \"note\": \"caf\xc3\xa9\"}");
  png_infop end = png_create_info_struct(png);
  png_set_text(png, end, &after, 1);
  png_write_end(png, end);
  png_destroy_info_struct(png, &end);
  png_destroy_write_struct(&png, &info);
  std::fclose(f);
}
}  // namespace

TEST(PngText, ReadsChunksBeforeAndAfterImageData) {
  TempDir tmp;
  write_png_with_text(tmp / "x.png");
  const auto text = amused::read_png_text((tmp / "x.png").string());
  EXPECT_EQ(text, (std::map<std::string, std::string>{
                      {"prompt", "a cat"},
                      {"parameters", "{\"steps\": 12, \"note\": \"caf\xc3\xa9\"}"}}));
  write_text(tmp / "bad.png", "not a png");
  EXPECT_THROW(amused::read_png_text((tmp / "bad.png").string()), amused::IoError);
  EXPECT_THROW(amused::read_png_text((tmp / "none.png").string()), amused::IoError);
  const auto r = amused::testing::run_cli("inspect '" + (tmp / "x.png").string() + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("prompt: a cat"), std::string::npos) << r.out;
  const auto bad = amused::testing::run_cli("inspect '" + (tmp / "bad.png").string() + "'");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("not a PNG"), std::string::npos) << bad.err;
}
