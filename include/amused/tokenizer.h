// CLIP byte-level BPE tokenizer, identical in output to transformers' slow `CLIPTokenizer` when
// ftfy is not installed (the reference configuration): BasicTokenizer pre-normalisation, CLIP split
// pattern, BPE with `</w>` word ends, added/special tokens split out of the text first.
//
// Basic usage:
//   auto tok = amused::ClipTokenizer::from_folder("amused-256/tokenizer");
//   std::vector<int64_t> ids = tok->encode_padded("a photo of a cat");  // 77 ids: BOS ... EOS
//   pad...
//
// Ref: transformers/models/clip/tokenization_clip.py, transformers/tokenization_utils.py
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace amused {

// Padded ids and attention masks of several texts, row-major [batch_size, max_length].
struct TokenizedBatch {
  int64_t batch_size = 0;
  int64_t max_length = 0;
  std::vector<int64_t> input_ids;       // [batch_size * max_length]
  std::vector<int64_t> attention_mask;  // 1 for BOS/text/EOS, 0 for padding
};

class ClipTokenizer {
 public:
  // Reads vocab.json, merges.txt, tokenizer_config.json and (if present) special_tokens_map.json.
  // Throws ConfigError naming the file when one is missing or malformed.
  static std::shared_ptr<ClipTokenizer> from_folder(const std::filesystem::path& tokenizer_dir);

  ~ClipTokenizer();
  ClipTokenizer(const ClipTokenizer&) = delete;
  ClipTokenizer& operator=(const ClipTokenizer&) = delete;

  // Longest text tokenize()/encode() accept (an InvalidArgument beyond): CLIP reads 77 tokens.
  // (BPE takes O(n log n) in the length of a word, so one 1 MiB word takes well under a second.)
  static constexpr size_t kMaxTextBytes = 1u << 20;
  // encode_padded/encode_batch tokenize only about this many leading bytes of a longer text (cut
  // at whitespace) when that already yields max_length tokens; the ids are identical.
  static constexpr size_t kPrefixBytes = 8u << 10;

  // BPE token strings ("cat</w>"), added tokens as their content ("!", "<|endoftext|>").
  // Invalid UTF-8 bytes are decoded as U+FFFD (as Python's errors="replace"), which the
  // pre-normalisation then drops.
  std::vector<std::string> tokenize(const std::string& text) const;
  // BOS + ids + EOS, untruncated.
  std::vector<int64_t> encode(const std::string& text) const;
  // What the pipelines feed the text encoder: tokenizer(text, padding="max_length",
  // truncation=True, max_length=max_length).input_ids, i.e. BOS + at most max_length-2 ids + EOS +
  // pad ids.
  std::vector<int64_t> encode_padded(const std::string& text, int64_t max_length = 77) const;
  // encode_padded for several texts, with the attention masks.
  TokenizedBatch encode_batch(const std::vector<std::string>& texts, int64_t max_length = 77) const;

  int64_t pad_token_id() const;
  int64_t bos_token_id() const;
  int64_t eos_token_id() const;
  int64_t unk_token_id() const;
  int64_t model_max_length() const;
  int64_t vocab_size() const;  // entries of vocab.json (added tokens outside it not counted)

  // Ids back to text (bytes decoded with U+FFFD replacement, `</w>` -> space); special tokens
  // (BOS/EOS/PAD/UNK and other added special tokens) are skipped unless asked for.
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = true) const;

  // Id of a token string (vocab or added token); -1 when unknown.
  int64_t token_to_id(const std::string& token) const;

  struct Impl;

 private:
  // encode(), or the encoding of a bounded prefix when that gives the same first max_length ids.
  std::vector<int64_t> encode_truncatable(const std::string& text, int64_t max_length) const;
  explicit ClipTokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace amused
