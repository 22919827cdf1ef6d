// Learning a byte-level BPE vocabulary in CLIP's format from captions, so that a small text encoder
// trained from scratch gets a vocabulary sized for its data (CLIP's 49408 entries would be most of
// a small model's weights). The files are what transformers' CLIPTokenizer reads: vocab.json (the
// 256 byte symbols, the same with "</w>", one symbol per merge, then <|startoftext|> and
// <|endoftext|> at the two highest ids, so the text encoder's pooling at argmax(input_ids) finds
// the end token as in CLIP), merges.txt, tokenizer_config.json and special_tokens_map.json.
//
// The text goes through the same normalisation and split as the tokenizer (lower case, CLIP's
// split pattern), and every byte has a symbol, so any text tokenizes: unseen words fall back to
// smaller pieces down to single bytes.
//
//   tokenizers::BpeTrainOptions o;
//   o.vocab_size = 4096;
//   auto stats = tokenizers::train_clip_bpe(captions, o, "out/tokenizer");
//
// Ref: Sennrich et al. 2016 (BPE); transformers/models/clip/tokenization_clip.py (file layout, bpe())
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace amused::tokenizers {

struct BpeTrainOptions {
  int64_t vocab_size = 4096;     // in all: 512 byte symbols + merges + 2 special tokens
  int64_t min_frequency = 2;     // a pair is merged only when it occurs at least this often
  int64_t model_max_length = 77; // tokenizer_config.json (the text encoder's positions)
};

struct BpeTrainStats {
  int64_t texts = 0;
  int64_t words = 0;           // pre-tokens in all texts
  int64_t distinct_words = 0;
  int64_t merges = 0;
  int64_t vocab_size = 0;      // entries of vocab.json
  // Distinct words that end as one symbol (whole-word tokens).
  int64_t whole_words = 0;
  // Symbols per word over all words after the merges (1.0: every word is one token).
  double symbols_per_word = 0;
};

// Learns merges (most frequent adjacent pair first; ties to the smaller pair in byte order, so the
// result is the same on every machine) until the vocabulary has `vocab_size` entries or no pair
// occurs `min_frequency` times, and writes the four files into `out_dir` (created if missing;
// written all or nothing). Throws InvalidArgument for a vocab_size below 514 or no text.
BpeTrainStats train_clip_bpe(const std::vector<std::string>& texts, const BpeTrainOptions& options,
                             const std::filesystem::path& out_dir);

}  // namespace amused::tokenizers
