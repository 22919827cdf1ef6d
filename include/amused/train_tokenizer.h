// Learning a tokenizer for a small text encoder trained from scratch: a byte-level BPE vocabulary
// in CLIP's format (vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json; what
// transformers' CLIPTokenizer and amused::ClipTokenizer read), learned from a dataset's captions.
// CLIP's own 49408 entries would be most of a small model's weights; a vocabulary learned from the
// captions is a few thousand entries, tokenizes them as whole words or a few pieces, and still
// tokenizes any text (every byte has a symbol).
//
//   amused::TokenizerTrainOptions o;
//   o.data = "data/emoji64";          // metadata.jsonl captions
//   o.caption_key = "captions";       // a string or a list of strings per row
//   o.split = "train";
//   o.output = "model/tokenizer";
//   amused::TokenizerTrainSummary s = amused::train_tokenizer(o);
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "amused/error.h"

namespace amused {

struct TokenizerTrainOptions {
  std::string data;                 // a folder with metadata.jsonl (or the file itself)
  std::vector<std::string> text_files;  // and/or text files, one caption per line
  std::string caption_key = "text"; // metadata.jsonl key: a string or a list of strings
  std::string split;                // "": every row; else the rows whose "split" is this (none: "train")
  int64_t vocab_size = 4096;        // in all: 512 byte symbols + merges + 2 special tokens
  int64_t min_frequency = 2;        // a pair is merged only when it occurs this often
  int64_t model_max_length = 77;
  std::string output;               // the tokenizer folder (created; files written all or nothing)
};

struct TokenizerTrainSummary {
  int64_t captions = 0;
  int64_t words = 0, distinct_words = 0;
  int64_t merges = 0, vocab_size = 0;
  int64_t whole_words = 0;          // distinct words that became one token
  double tokens_per_word = 0;       // over all words (1.0: each word one token)
};

// Throws IoError (unreadable or malformed metadata, naming file and line) or InvalidArgument.
TokenizerTrainSummary train_tokenizer(const TokenizerTrainOptions& options);

}  // namespace amused
