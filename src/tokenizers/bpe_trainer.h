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
//   amused::TokenizerTrainOptions o;
//   o.vocab_size = 4096;
//   amused::TokenizerTrainSummary s = tokenizers::train_clip_bpe(captions, o, "out/tokenizer");
//
// Ref: Sennrich et al. 2016 (BPE); transformers/models/clip/tokenization_clip.py (file layout, bpe())
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "amused/train_tokenizer.h"

namespace amused::tokenizers {

// Learns merges (most frequent adjacent pair first; ties to the smaller pair in byte order, so the
// result is the same on every machine) until the vocabulary has `vocab_size` entries or no pair
// occurs `min_frequency` times, and writes the four files into `out_dir` (created if missing;
// written all or nothing). Throws InvalidArgument for a vocab_size below 514 or no text.
// Uses options.vocab_size, min_frequency and model_max_length (the data fields are ignored).
TokenizerTrainSummary train_clip_bpe(const std::vector<std::string>& texts, const TokenizerTrainOptions& options,
                                     const std::filesystem::path& out_dir);

}  // namespace amused::tokenizers
