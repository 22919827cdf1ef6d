// CLIP tokenizer parity with transformers' slow CLIPTokenizer (golden cases tokenizer/pad_excl with
// pad "!" and tokenizer/pad_eos with pad "<|endoftext|>"), a PartiPrompts smoke test and the
// `amused tokenize` CLI.
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <sstream>

#include "amused/error.h"
#include "amused/tokenizer.h"
#include "support/golden.h"

namespace {

using amused::ClipTokenizer;
using nlohmann::json;
namespace at = amused::testing;

torch::Tensor to_tensor(const std::vector<int64_t>& v) { return torch::tensor(v, torch::kLong); }

torch::Tensor batch_tensor(const std::vector<int64_t>& flat, int64_t rows, int64_t cols) {
  return to_tensor(flat).reshape({rows, cols});  // [rows * cols] -> [rows, cols]
}

std::shared_ptr<ClipTokenizer> tokenizer_of(const json& c) {
  return ClipTokenizer::from_folder(at::golden_path(c["tokenizer_dir"].get<std::string>()));
}

std::vector<std::string> prompts_of(const json& c) {
  std::vector<std::string> out;
  for (const auto& p : c["prompts"]) out.push_back(p["prompt"].get<std::string>());
  return out;
}

void check_case(const std::string& id) {
  const json& c = at::golden_case(id);
  const auto tok = tokenizer_of(c);
  EXPECT_EQ(tok->pad_token_id(), c["pad_token_id"].get<int64_t>());
  EXPECT_EQ(tok->bos_token_id(), c["bos_token_id"].get<int64_t>());
  EXPECT_EQ(tok->eos_token_id(), c["eos_token_id"].get<int64_t>());
  EXPECT_EQ(tok->model_max_length(), 77);

  const auto& prompts = c["prompts"];
  ASSERT_EQ(prompts.size(), 44u);
  const torch::Tensor expected_ids = at::golden_tensor(c["outputs"]["input_ids"]);
  for (const auto& p : prompts) {
    const std::string prompt = p["prompt"].get<std::string>();
    const int64_t index = p["index"].get<int64_t>();
    SCOPED_TRACE(id + " prompt " + std::to_string(index) + ": " + json(prompt).dump());
    EXPECT_EQ(tok->tokenize(prompt), p["bpe_tokens"].get<std::vector<std::string>>());
    const auto ids = tok->encode(prompt);
    EXPECT_EQ(static_cast<int64_t>(ids.size()), p["n_ids_untruncated"].get<int64_t>());
    EXPECT_TRUE(at::matches_descriptor(to_tensor(ids), p["ids_untruncated"], "ids_untruncated"));
    EXPECT_TRUE(at::tensors_equal(to_tensor(tok->encode_padded(prompt)), expected_ids[index],
                                  "input_ids row"));
  }
  const auto batch = tok->encode_batch(prompts_of(c));
  ASSERT_EQ(batch.batch_size, 44);
  ASSERT_EQ(batch.max_length, 77);
  EXPECT_TRUE(at::matches_descriptor(batch_tensor(batch.input_ids, 44, 77),
                                     c["outputs"]["input_ids"], id + " input_ids"));
  EXPECT_TRUE(at::matches_descriptor(batch_tensor(batch.attention_mask, 44, 77),
                                     c["outputs"]["attention_mask"], id + " attention_mask"));
}

TEST(GoldenClipTokenizer, PadExclamationMatchesReference) {
  AMUSED_REQUIRE_GOLDEN();
  check_case("tokenizer/pad_excl");
}

TEST(GoldenClipTokenizer, PadEndOfTextMatchesReference) {
  AMUSED_REQUIRE_GOLDEN();
  check_case("tokenizer/pad_eos");
}

TEST(GoldenClipTokenizer, EveryTokenizerCaseIsCovered) {
  AMUSED_REQUIRE_GOLDEN();
  for (const auto& c : at::golden_cases_of_kind("tokenizer")) {
    const auto id = c["id"].get<std::string>();
    EXPECT_TRUE(id == "tokenizer/pad_excl" || id == "tokenizer/pad_eos")
        << "new tokenizer case " << id;
  }
}

TEST(GoldenClipTokenizer, DecodeRoundTripsPlainPrompts) {
  AMUSED_REQUIRE_GOLDEN();
  const auto tok = tokenizer_of(at::golden_case("tokenizer/pad_eos"));
  EXPECT_EQ(tok->decode(tok->encode("a photo of a cat")), "a photo of a cat");
  EXPECT_EQ(tok->decode(tok->encode_padded("what's up, café?")), "what's up, café?");
  EXPECT_EQ(tok->decode(tok->encode("a cat"), /*skip_special_tokens=*/false),
            "<|startoftext|>a cat <|endoftext|>");
}

// ------------------------------------------------------------------------- PartiPrompts smoke test

std::vector<std::string> parti_prompts() {
  std::ifstream in(at::golden_path("prompts/PartiPrompts.tsv"));
  std::vector<std::string> out;
  std::string line;
  bool header = true;
  while (std::getline(in, line)) {
    if (header) {
      header = false;
      continue;
    }
    out.push_back(line.substr(0, line.find('\t')));  // column 1: Prompt
  }
  return out;
}

TEST(GoldenClipTokenizer, TokenizesAllPartiPrompts) {
  AMUSED_REQUIRE_GOLDEN();
  const auto prompts = parti_prompts();
  ASSERT_EQ(prompts.size(), 1632u);
  for (const char* model : {"models/tiny-a/tokenizer", "models/tiny-b/tokenizer"}) {
    const auto tok = ClipTokenizer::from_folder(at::golden_path(model));
    const auto t0 = std::chrono::steady_clock::now();
    int64_t truncated = 0;
    for (const auto& p : prompts) {
      const auto ids = tok->encode_padded(p);
      ASSERT_EQ(ids.size(), 77u) << p;
      EXPECT_EQ(ids.front(), tok->bos_token_id()) << p;
      EXPECT_NE(std::find(ids.begin() + 1, ids.end(), tok->eos_token_id()), ids.end()) << p;
      truncated += tok->encode(p).size() > 77;
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("[ info     ] %s: %zu PartiPrompts (%lld truncated) in %.3f s\n", model,
                prompts.size(), static_cast<long long>(truncated), s);
  }
}

// ------------------------------------------------------------------------------------ CLI

std::vector<std::string> lines_of(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  std::string line;
  while (std::getline(in, line)) out.push_back(line);
  return out;
}

std::string quote(const std::string& s) {  // single-quoted for the shell
  std::string q = "'";
  for (char ch : s) q += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
  return q + "'";
}

std::vector<int64_t> row(const torch::Tensor& ids, int64_t i) {
  const auto r = ids[i].contiguous();
  return std::vector<int64_t>(r.data_ptr<int64_t>(), r.data_ptr<int64_t>() + r.numel());
}

TEST(GoldenClipTokenizerCli, PrintsPaddedIdsOfPrompts) {
  AMUSED_REQUIRE_GOLDEN();
  const json& c = at::golden_case("tokenizer/pad_excl");
  const auto ids = at::golden_tensor(c["outputs"]["input_ids"]);
  const auto prompts = prompts_of(c);
  const auto r = at::run_cli("tokenize -m " + quote(at::golden_path("models/tiny-a").string()) +
                             " " + quote(prompts[1]) + " " + quote(prompts[3]));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto lines = lines_of(r.out);
  ASSERT_EQ(lines.size(), 2u) << r.out;
  EXPECT_EQ(json::parse(lines[0]).get<std::vector<int64_t>>(), row(ids, 1));
  EXPECT_EQ(json::parse(lines[1]).get<std::vector<int64_t>>(), row(ids, 3));
}

TEST(GoldenClipTokenizerCli, ReadsPromptFileFromTokenizerFolder) {
  AMUSED_REQUIRE_GOLDEN();
  const json& c = at::golden_case("tokenizer/pad_eos");
  const auto ids = at::golden_tensor(c["outputs"]["input_ids"]);
  const auto prompts = prompts_of(c);
  const std::vector<int64_t> picked{1,  0,  8, 14,
                                    28, 38, 40};  // incl. the empty prompt and a truncated one
  at::TempDir tmp;
  {
    std::ofstream f(tmp / "prompts.txt", std::ios::binary);
    for (int64_t i : picked) f << prompts[i] << "\n";
  }
  const auto r =
      at::run_cli("tokenize -m " + quote(at::golden_path("models/tiny-b/tokenizer").string()) +
                  " --file " + quote((tmp / "prompts.txt").string()));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto lines = lines_of(r.out);
  ASSERT_EQ(lines.size(), picked.size()) << r.out;
  for (size_t k = 0; k < picked.size(); ++k)
    EXPECT_EQ(json::parse(lines[k]).get<std::vector<int64_t>>(), row(ids, picked[k]))
        << "prompt " << picked[k];
}

TEST(GoldenClipTokenizerCli, ErrorsAreClearAndNonZero) {
  AMUSED_REQUIRE_GOLDEN();
  const std::string tiny_a = quote(at::golden_path("models/tiny-a").string());
  at::TempDir tmp;
  {
    auto r = at::run_cli("tokenize -m " + quote((tmp / "nope").string()) + " cat");
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.err.find("does not exist"), std::string::npos) << r.err;
    EXPECT_TRUE(r.out.empty()) << r.out;
  }
  {
    auto r = at::run_cli("tokenize -m " + quote(tmp.path().string()) + " cat");
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.err.find("no tokenizer found"), std::string::npos) << r.err;
  }
  {
    auto r = at::run_cli("tokenize -m " + tiny_a);
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.err.find("no prompts"), std::string::npos) << r.err;
  }
  {
    auto r =
        at::run_cli("tokenize -m " + tiny_a + " --file " + quote((tmp / "missing.txt").string()));
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.err.find("missing.txt"), std::string::npos) << r.err;
  }
  {
    auto r = at::run_cli("tokenize cat");
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.err.find("--model"), std::string::npos) << r.err;
  }
}

}  // namespace
