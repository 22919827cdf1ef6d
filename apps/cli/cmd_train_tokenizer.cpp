// amused train-tokenizer: a byte-level BPE vocabulary in CLIP's format learned from captions, for a
// text encoder trained from scratch (see include/amused/train_tokenizer.h).
#include <cstdio>
#include <memory>
#include <string>

#include "amused/train_tokenizer.h"
#include "command.h"

namespace {

amused::cli::Registrar reg(
    "train-tokenizer", "Learn a CLIP-format BPE tokenizer from a dataset's captions",
    [](CLI::App& sub) {
      auto o = std::make_shared<amused::TokenizerTrainOptions>();
      auto quiet = std::make_shared<bool>(false);
      sub.add_option("--data", o->data, "Dataset folder with metadata.jsonl");
      sub.add_option("-f,--file", o->text_files, "Text file with one caption per line (repeatable)");
      sub.add_option("--caption-key", o->caption_key, "metadata.jsonl key: a string or a list of strings")
          ->capture_default_str();
      sub.add_option("--split", o->split, "Only rows of this split (e.g. train; \"\": all)");
      sub.add_option("--vocab-size", o->vocab_size, "Entries in all (512 byte symbols + merges + 2 specials)")
          ->capture_default_str()
          ->check(CLI::Range(int64_t{514}, int64_t{1} << 20));
      sub.add_option("--min-frequency", o->min_frequency, "Merge a pair only when it occurs this often")
          ->capture_default_str()
          ->check(CLI::PositiveNumber);
      sub.add_option("--model-max-length", o->model_max_length, "Token positions of the text encoder")
          ->capture_default_str()
          ->check(CLI::Range(int64_t{3}, int64_t{4096}));
      sub.add_option("-o,--output", o->output, "Tokenizer folder to write")->required();
      sub.add_flag("-q,--quiet", *quiet, "Print nothing on success");
      return std::function<int()>([o, quiet] {
        const auto s = amused::train_tokenizer(*o);
        if (!*quiet)
          std::printf("%s: %lld entries (%lld merges) from %lld captions, %lld distinct words; "
                      "%lld words are one token, %.2f tokens per word\n",
                      o->output.c_str(), static_cast<long long>(s.vocab_size), static_cast<long long>(s.merges),
                      static_cast<long long>(s.captions), static_cast<long long>(s.distinct_words),
                      static_cast<long long>(s.whole_words), s.tokens_per_word);
        return 0;
      });
    });

}  // namespace
