// Our own pieces of the CLIP tokenizer: file loading and its errors, BPE on a hand-made vocabulary,
// truncation/padding, invalid UTF-8, Python-compatible UTF-8 decoding and lower-casing.
#include <gtest/gtest.h>

#include <fstream>
#include <random>
#include <unordered_map>

#include "amused/error.h"
#include "amused/tokenizer.h"
#include "support/golden.h"
#include "tokenizers/clip_pretokenizer.h"

namespace {

using amused::ClipTokenizer;
namespace fs = std::filesystem;

void write(const fs::path& p, const std::string& text) {
  std::ofstream f(p, std::ios::binary);
  f << text;
}

// A toy CLIP tokenizer folder: symbols c, a, t, the merges "c a" and "ca t</w>", pad "!" as an
// added special token (like tiny-a / amused).
void write_toy_tokenizer(const fs::path& dir, const std::string& pad = "\"!\"") {
  write(dir / "vocab.json",
        R"({"!": 0, "a": 1, "c": 2, "t": 3, "!</w>": 4, "a</w>": 5, "c</w>": 6, "t</w>": 7, "ca": 8,
            "cat</w>": 9, "<|startoftext|>": 10, "<|endoftext|>": 11})");
  write(dir / "merges.txt", "#version: 0.2\nc a\nca t</w>\n");
  write(dir / "tokenizer_config.json",
        R"({"added_tokens_decoder": {"0": {"content": "!", "special": true},
            "10": {"content": "<|startoftext|>", "special": true},
            "11": {"content": "<|endoftext|>", "special": true}},
            "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
            "pad_token": )" +
            pad + R"(, "model_max_length": 8, "tokenizer_class": "CLIPTokenizer"})");
  write(dir / "special_tokens_map.json", R"({"pad_token": )" + pad + "}");
}

TEST(ClipTokenizer, ToyVocabularyBpeAndIds) {
  amused::testing::TempDir tmp;
  write_toy_tokenizer(tmp.path());
  const auto tok = ClipTokenizer::from_folder(tmp.path());
  EXPECT_EQ(tok->bos_token_id(), 10);
  EXPECT_EQ(tok->eos_token_id(), 11);
  EXPECT_EQ(tok->unk_token_id(), 11);
  EXPECT_EQ(tok->pad_token_id(), 0);
  EXPECT_EQ(tok->model_max_length(), 8);
  EXPECT_EQ(tok->vocab_size(), 12);
  EXPECT_EQ(tok->tokenize("CAT"), (std::vector<std::string>{"cat</w>"}));
  EXPECT_EQ(tok->tokenize("act"), (std::vector<std::string>{"a", "c", "t</w>"}));
  // "!" is the added pad token: split out before BPE, id 0; "ca" has no merge "c a</w>".
  EXPECT_EQ(tok->tokenize("cat!ca"), (std::vector<std::string>{"cat</w>", "!", "c", "a</w>"}));
  // "d</w>" is not in the vocab -> unk (= EOS here).
  EXPECT_EQ(tok->encode("cat!ca d"), (std::vector<int64_t>{10, 9, 0, 2, 5, 11, 11}));
  EXPECT_EQ(tok->token_to_id("cat</w>"), 9);
  EXPECT_EQ(tok->token_to_id("dog</w>"), -1);
}

TEST(ClipTokenizer, TruncatesAndPadsLikeTheReferenceCall) {
  amused::testing::TempDir tmp;
  write_toy_tokenizer(tmp.path(), R"("<|endoftext|>")");
  const auto tok = ClipTokenizer::from_folder(tmp.path());
  EXPECT_EQ(tok->pad_token_id(), 11);
  EXPECT_EQ(tok->encode_padded("cat cat", 6), (std::vector<int64_t>{10, 9, 9, 11, 11, 11}));
  EXPECT_EQ(tok->encode_padded("cat cat cat cat cat", 4), (std::vector<int64_t>{10, 9, 9, 11}));
  EXPECT_EQ(tok->encode_padded("", 3), (std::vector<int64_t>{10, 11, 11}));
  EXPECT_THROW(tok->encode_padded("cat", 1), amused::InvalidArgument);
  const auto b = tok->encode_batch({"cat", "cat cat cat"}, 4);
  EXPECT_EQ(b.batch_size, 2);
  EXPECT_EQ(b.input_ids, (std::vector<int64_t>{10, 9, 11, 11, 10, 9, 9, 11}));
  EXPECT_EQ(b.attention_mask, (std::vector<int64_t>{1, 1, 1, 0, 1, 1, 1, 1}));
}

TEST(ClipTokenizer, InvalidUtf8DoesNotCrash) {
  amused::testing::TempDir tmp;
  write_toy_tokenizer(tmp.path());
  const auto tok = ClipTokenizer::from_folder(tmp.path());
  // U+FFFD from the decoder is removed by the pre-normalisation, as in the reference.
  EXPECT_EQ(tok->tokenize("\xff"
                          "cat\xc3 \xed\xa0\x80"
                          "cat\xe2\x82"),
            (std::vector<std::string>{"cat</w>", "cat</w>"}));
  EXPECT_EQ(tok->encode_padded(std::string("\0\x80\xbf", 3), 4),
            (std::vector<int64_t>{10, 11, 0, 0}));
}

TEST(ClipTokenizer, DecodeJoinsBytesAndSkipsSpecialTokens) {
  amused::testing::TempDir tmp;
  write_toy_tokenizer(tmp.path());
  const auto tok = ClipTokenizer::from_folder(tmp.path());
  EXPECT_EQ(tok->decode({10, 9, 8, 7, 11, 0, 0}), "cat cat");
  EXPECT_THROW(tok->decode({12345}), amused::InvalidArgument);
}

// ------------------------------------------------------------------------------------- errors

std::string error_of(const fs::path& dir) {
  try {
    ClipTokenizer::from_folder(dir);
  } catch (const amused::ConfigError& e) {
    return e.what();
  }
  return "(no ConfigError)";
}

TEST(ClipTokenizer, MissingFolderOrFilesNameThePath) {
  amused::testing::TempDir tmp;
  EXPECT_NE(error_of(tmp / "nowhere").find("nowhere"), std::string::npos);
  write_toy_tokenizer(tmp.path());
  fs::remove(tmp / "merges.txt");
  EXPECT_NE(error_of(tmp.path()).find("merges.txt' is missing"), std::string::npos)
      << error_of(tmp.path());
  write_toy_tokenizer(tmp.path());
  fs::remove(tmp / "tokenizer_config.json");
  EXPECT_NE(error_of(tmp.path()).find("tokenizer_config.json"), std::string::npos);
  // special_tokens_map.json is optional (tokenizer_config.json has the same keys).
  write_toy_tokenizer(tmp.path());
  fs::remove(tmp / "special_tokens_map.json");
  EXPECT_EQ(ClipTokenizer::from_folder(tmp.path())->pad_token_id(), 0);
}

TEST(ClipTokenizer, CorruptFilesNameTheFile) {
  amused::testing::TempDir tmp;
  write_toy_tokenizer(tmp.path());
  write(tmp / "vocab.json", "{\"a\": 1, ");
  EXPECT_NE(error_of(tmp.path()).find("vocab.json"), std::string::npos) << error_of(tmp.path());
  write(tmp / "vocab.json", "[1, 2]");
  EXPECT_NE(error_of(tmp.path()).find("vocab.json"), std::string::npos) << error_of(tmp.path());
  write(tmp / "vocab.json", R"({"a": "one"})");
  EXPECT_NE(error_of(tmp.path()).find("expected an integer id"), std::string::npos)
      << error_of(tmp.path());
  write_toy_tokenizer(tmp.path());
  write(tmp / "merges.txt", "#version: 0.2\n");
  EXPECT_NE(error_of(tmp.path()).find("merges.txt"), std::string::npos) << error_of(tmp.path());
  write_toy_tokenizer(tmp.path());
  write(tmp / "tokenizer_config.json", "not json");
  EXPECT_NE(error_of(tmp.path()).find("tokenizer_config.json"), std::string::npos)
      << error_of(tmp.path());
  write_toy_tokenizer(tmp.path());
  write(tmp / "special_tokens_map.json", R"({"pad_token": 5})");
  EXPECT_NE(error_of(tmp.path()).find("special_tokens_map.json"), std::string::npos)
      << error_of(tmp.path());
}

// ------------------------------------------------------------------- Python-compatible helpers

TEST(ClipPretokenizer, DecodesInvalidUtf8LikePython) {
  using amused::tokenizers::decode_utf8;
  // bytes.decode("utf-8", "replace"): one U+FFFD per maximal invalid subpart.
  EXPECT_EQ(decode_utf8("\xed\xa0\x80"
                        "a\xe2\x82"
                        "b"),
            U"\uFFFD\uFFFD\uFFFDa\uFFFDb");
  EXPECT_EQ(decode_utf8("\xf0\x9f\x98\x80\xc0\xaf"), U"\U0001F600\uFFFD\uFFFD");
  EXPECT_EQ(decode_utf8("\xf4\x90\x80\x80"), U"\uFFFD\uFFFD\uFFFD\uFFFD");
  EXPECT_EQ(amused::tokenizers::encode_utf8(decode_utf8("caf\xc3\xa9 \xe6\x9d\xb1")),
            "caf\xc3\xa9 \xe6\x9d\xb1");
}

TEST(ClipPretokenizer, LowerCasesLikePython) {
  using amused::tokenizers::python_lower;
  EXPECT_EQ(python_lower(U"ΟΔΟΣ ΣΑ Σ"), U"οδος σα σ");  // final sigma only after a cased letter
  EXPECT_EQ(python_lower(U"İ"), U"i\u0307");
  EXPECT_EQ(python_lower(U"ÀÉÎ ＡＢＣ"), U"àéî ａｂｃ");
}

TEST(ClipPretokenizer, SplitsLikeTheClipPattern) {
  using amused::tokenizers::clip_split;
  const std::u32string text = U"it's <|endoftext|>ok 12ab ...!? 'x ͅ";
  std::vector<std::u32string> got;
  for (auto v : clip_split(text)) got.emplace_back(v);
  EXPECT_EQ(got, (std::vector<std::u32string>{U"it", U"'s", U"<|endoftext|>", U"ok", U"1", U"2",
                                              U"ab", U"...!?", U"'", U"x"}));
}

// The BPE merges by rank with a heap; CLIPTokenizer.bpe rescans the word for every merge. Both must
// give the same symbols: checked against that rescanning loop, written here as the Python reads, on
// random words over a few letters (many competing merges) with the real CLIP merges.
std::vector<std::string> rescanning_bpe(const std::string& word_text,
                                        const std::unordered_map<std::string, int64_t>& ranks) {
  std::vector<std::string> word;
  for (char c : word_text) word.emplace_back(1, c);
  word.back() += "</w>";
  while (word.size() > 1) {
    int64_t best = -1;
    size_t at = 0;
    for (size_t i = 0; i + 1 < word.size(); ++i) {
      auto it = ranks.find(word[i] + " " + word[i + 1]);
      if (it != ranks.end() && (best < 0 || it->second < best)) best = it->second, at = i;
    }
    if (best < 0) break;
    const std::string first = word[at], second = word[at + 1];
    std::vector<std::string> merged;
    for (size_t i = 0; i < word.size();) {
      if (i + 1 < word.size() && word[i] == first && word[i + 1] == second) merged.push_back(first + second), i += 2;
      else merged.push_back(word[i]), i += 1;
    }
    word = merged;
  }
  return word;
}

TEST(ClipTokenizer, HeapBpeEqualsTheRescanningLoopAndIsNotQuadratic) {
  AMUSED_REQUIRE_GOLDEN();
  const fs::path dir = amused::testing::golden_dir() / "models" / "tiny-a" / "tokenizer";
  std::unordered_map<std::string, int64_t> ranks;
  std::ifstream merges(dir / "merges.txt");
  std::string line;
  int64_t rank = 0;
  std::getline(merges, line);  // #version
  while (std::getline(merges, line)) ranks[line] = rank++;
  const auto tok = ClipTokenizer::from_folder(dir);
  std::mt19937 rng(7);
  for (const std::string alphabet : {"ab", "aeiou", "estanril", "abcdefghijklmnopqrstuvwxyz"}) {
    for (int trial = 0; trial < 150; ++trial) {
      const size_t len = 1 + rng() % 40;
      std::string w;
      for (size_t i = 0; i < len; ++i) w += alphabet[rng() % alphabet.size()];
      ASSERT_EQ(tok->tokenize(w), rescanning_bpe(w, ranks)) << "word '" << w << "'";
    }
  }
  std::string long_word;
  for (int i = 0; i < 3000; ++i) long_word += "estanril"[rng() % 8];
  EXPECT_EQ(tok->tokenize(long_word), rescanning_bpe(long_word, ranks));
  // One 1 MiB word, the longest text accepted (the rescanning loop needs minutes for it; this is
  // n log n). Its merges are periodic, so its first symbols are those of a short prefix.
  std::string huge;
  while (huge.size() < ClipTokenizer::kMaxTextBytes) huge += "ab";
  const auto symbols = tok->tokenize(huge);
  const auto prefix_symbols = tok->tokenize(huge.substr(0, 4096));
  ASSERT_GT(symbols.size(), 100u);
  EXPECT_EQ(std::vector<std::string>(symbols.begin(), symbols.begin() + 50),
            std::vector<std::string>(prefix_symbols.begin(), prefix_symbols.begin() + 50));
  EXPECT_EQ(tok->encode_padded(huge, 77).size(), 77u);
}

}  // namespace
