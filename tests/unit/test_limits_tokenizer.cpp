// Tokenizer limits: long prompts (bounded prefix with identical ids, megabyte prompts), token id
// ranges. See docs/RELIABILITY.md.
#include <gtest/gtest.h>

#include <fstream>
#include <memory>
#include <string>

#include "amused/error.h"
#include "amused/tokenizer.h"
#include "core/config.h"
#include "support/golden.h"
#include "unit/limits_support.h"

using amused::testing::expect_error;
using amused::testing::golden_path;
using amused::testing::sparse_file;
using amused::testing::TempDir;
using nlohmann::json;
namespace fs = std::filesystem;

class TokenizerLimits : public ::testing::Test {
 protected:
  void SetUp() override {
    AMUSED_REQUIRE_GOLDEN();
    tok = amused::ClipTokenizer::from_folder(golden_path("models/tiny-a/tokenizer"));
  }
  std::vector<int64_t> truncated(const std::string& text) const {
    auto ids = tok->encode(text);
    if (ids.size() > 77) {
      ids.resize(76);
      ids.push_back(tok->eos_token_id());
    }
    ids.resize(77, tok->pad_token_id());
    return ids;
  }
  std::shared_ptr<amused::ClipTokenizer> tok;
};

TEST_F(TokenizerLimits, LongPromptsUseAPrefixWithIdenticalIds) {
  // Texts over kPrefixBytes take the prefix path; each must equal the full encoding truncated.
  std::vector<std::string> texts;
  std::string words;
  for (int i = 0; words.size() < 20000; ++i)
    words += "word" + std::to_string(i) + (i % 7 ? " " : ",\t");
  texts.push_back(words);
  texts.push_back(std::string(9000, 'x') + " a photo");  // one long word first
  texts.push_back(std::string(9000, ' ') + "a cat");     // only spaces in the prefix
  texts.push_back(std::string(8190, 'a') + " <|endoftext|>b " + words);  // added token near the cut
  std::string cjk;
  while (cjk.size() < 12000) cjk += "\xe6\x9d\xb1\xe4\xba\xac caf\xc3\xa9\n";
  texts.push_back(cjk);
  for (const auto& t : texts) {
    ASSERT_GT(t.size(), amused::ClipTokenizer::kPrefixBytes);
    EXPECT_EQ(tok->encode_padded(t), truncated(t)) << t.substr(0, 40);
    const auto batch = tok->encode_batch({t});
    EXPECT_EQ(batch.input_ids, truncated(t));
  }
}

TEST_F(TokenizerLimits, MegabytePromptsAreBoundedOrRefused) {
  std::string words;
  while (words.size() < 3u << 20) words += "a red fox jumps over the lazy dog ";
  // 3 MiB of words: encode_padded reads only a prefix, so it works and matches a short version.
  EXPECT_EQ(tok->encode_padded(words), truncated(words.substr(0, 4096)));
  // The untruncated encodings refuse it up front.
  expect_error<amused::InvalidArgument>([&] { tok->encode(words); }, "KiB limit");
  expect_error<amused::InvalidArgument>([&] { tok->tokenize(words); }, "KiB limit");
  // 2 MiB without whitespace cannot be cut: refused, not tokenized.
  const std::string blob(2u << 20, 'z');
  expect_error<amused::InvalidArgument>([&] { tok->encode_padded(blob); }, "KiB limit");
}

// Found by reading for fuzz_tokenizer: a huge added-token id made `id + 1` overflow int64.
TEST(ResourceLimits, TokenizerIdsAreRangeChecked) {
  AMUSED_REQUIRE_GOLDEN();
  TempDir tmp;
  const fs::path src = golden_path("models/tiny-a/tokenizer");
  for (const auto& e : fs::directory_iterator(src)) fs::copy(e.path(), tmp / e.path().filename());
  const std::string cfg = (tmp / "tokenizer_config.json").string();
  json c = amused::read_json_file(cfg);
  c["added_tokens_decoder"] = {{"9223372036854775807", {{"content", "<big>"}}}};
  { std::ofstream(cfg) << c.dump(); }
  expect_error<amused::ConfigError>([&] { amused::ClipTokenizer::from_folder(tmp.path()); },
                                    "added_tokens_decoder");
  c.erase("added_tokens_decoder");
  { std::ofstream(cfg) << c.dump(); }
  { std::ofstream(tmp / "vocab.json") << R"({"a": 0, "b": 9223372036854775807})"; }
  expect_error<amused::ConfigError>([&] { amused::ClipTokenizer::from_folder(tmp.path()); },
                                    "integer id in");
  { std::ofstream(tmp / "vocab.json") << R"({"a": 0, "b": -1})"; }
  expect_error<amused::ConfigError>([&] { amused::ClipTokenizer::from_folder(tmp.path()); },
                                    "integer id in");
}
