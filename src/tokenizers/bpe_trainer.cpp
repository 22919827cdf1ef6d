// Byte-level BPE learning in CLIP's file format. See bpe_trainer.h.
#include "tokenizers/bpe_trainer.h"

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <unordered_map>

#include "amused/error.h"
#include "amused/train_tokenizer.h"
#include "io/atomic_file.h"
#include "tokenizers/clip_pretokenizer.h"

namespace amused::tokenizers {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr const char* kBos = "<|startoftext|>";
constexpr const char* kEos = "<|endoftext|>";

struct Word {
  std::vector<std::string> symbols;
  int64_t count = 0;
};
using Pair = std::pair<std::string, std::string>;

// Adds `sign` x count to every adjacent pair of `w`.
void count_pairs(const Word& w, int64_t sign, std::map<Pair, int64_t>& pairs) {
  for (size_t i = 0; i + 1 < w.symbols.size(); ++i) {
    auto it = pairs.try_emplace({w.symbols[i], w.symbols[i + 1]}, 0).first;
    it->second += sign * w.count;
    if (it->second == 0) pairs.erase(it);
  }
}

// CLIPTokenizer.bpe's merge of one pair: left to right, non-overlapping.
bool merge_pair(Word& w, const Pair& p) {
  bool changed = false;
  std::vector<std::string> out;
  out.reserve(w.symbols.size());
  for (size_t i = 0; i < w.symbols.size(); ++i) {
    if (i + 1 < w.symbols.size() && w.symbols[i] == p.first && w.symbols[i + 1] == p.second) {
      out.push_back(p.first + p.second);
      ++i;
      changed = true;
    } else {
      out.push_back(w.symbols[i]);
    }
  }
  if (changed) w.symbols = std::move(out);
  return changed;
}

json special_token(const char* content) {
  return {{"content", content}, {"lstrip", false}, {"normalized", true}, {"rstrip", false}, {"single_word", false}};
}

}  // namespace

TokenizerTrainSummary train_clip_bpe(const std::vector<std::string>& texts, const TokenizerTrainOptions& o,
                                     const fs::path& out_dir) {
  if (o.vocab_size < 514)
    throw InvalidArgument("vocab size " + std::to_string(o.vocab_size) +
                          " is below 514 (256 byte symbols, the same with </w>, and 2 special tokens)");
  if (o.min_frequency < 1) throw InvalidArgument("min frequency must be at least 1");
  if (o.model_max_length < 3) throw InvalidArgument("model max length must be at least 3 (BOS, a token, EOS)");
  TokenizerTrainSummary stats;
  stats.captions = static_cast<int64_t>(texts.size());

  // ---- the words, as the tokenizer pre-tokenizes them
  std::map<std::string, int64_t> counts;
  for (const auto& text : texts) {
    const std::u32string normalized = basic_normalize(decode_utf8(text));
    for (std::u32string_view piece : clip_split(normalized)) {
      std::string bytes = encode_utf8(piece);
      if (bytes == kBos || bytes == kEos) continue;
      ++counts[bytes];
      ++stats.words;
    }
  }
  if (counts.empty()) throw InvalidArgument("no text to learn a vocabulary from (every caption is empty)");
  stats.distinct_words = static_cast<int64_t>(counts.size());
  const auto& enc = byte_encoder();
  std::vector<Word> words;
  words.reserve(counts.size());
  for (const auto& [bytes, n] : counts) {
    Word w;
    w.count = n;
    for (unsigned char b : bytes) w.symbols.push_back(enc[b]);
    w.symbols.back() += "</w>";
    words.push_back(std::move(w));
  }

  // ---- the vocabulary: bytes, bytes</w>, merges, specials
  std::vector<std::string> vocab;
  std::set<std::string> known;
  for (unsigned char b : byte_vocab_order()) vocab.push_back(enc[b]);
  for (unsigned char b : byte_vocab_order()) vocab.push_back(enc[b] + "</w>");
  known.insert(vocab.begin(), vocab.end());

  std::map<Pair, int64_t> pairs;
  for (const auto& w : words) count_pairs(w, +1, pairs);
  std::vector<Pair> merges;
  while (static_cast<int64_t>(vocab.size()) + 2 < o.vocab_size && !pairs.empty()) {
    auto best = pairs.begin();
    for (auto it = pairs.begin(); it != pairs.end(); ++it)
      if (it->second > best->second) best = it;
    if (best->second < o.min_frequency) break;
    const Pair p = best->first;
    merges.push_back(p);
    const std::string joined = p.first + p.second;
    if (known.insert(joined).second) vocab.push_back(joined);
    for (auto& w : words) {
      bool has = false;
      for (size_t i = 0; i + 1 < w.symbols.size() && !has; ++i)
        has = w.symbols[i] == p.first && w.symbols[i + 1] == p.second;
      if (!has) continue;
      count_pairs(w, -1, pairs);
      merge_pair(w, p);
      count_pairs(w, +1, pairs);
    }
  }
  vocab.push_back(kBos);
  vocab.push_back(kEos);
  stats.merges = static_cast<int64_t>(merges.size());
  stats.vocab_size = static_cast<int64_t>(vocab.size());
  int64_t symbols = 0;
  for (const auto& w : words) {
    symbols += w.count * static_cast<int64_t>(w.symbols.size());
    if (w.symbols.size() == 1) ++stats.whole_words;
  }
  stats.tokens_per_word = static_cast<double>(symbols) / static_cast<double>(stats.words);

  // ---- the files
  json vj = json::object();
  for (size_t i = 0; i < vocab.size(); ++i) vj[vocab[i]] = static_cast<int64_t>(i);
  std::string merges_txt = "#version: 0.2\n";
  for (const auto& [a, b] : merges) merges_txt += a + " " + b + "\n";
  const int64_t bos_id = stats.vocab_size - 2, eos_id = stats.vocab_size - 1;
  auto added = [](const char* content, bool normalized) {
    return json{{"content", content}, {"lstrip", false}, {"normalized", normalized},
                {"rstrip", false}, {"single_word", false}, {"special", true}};
  };
  json config = {{"added_tokens_decoder",
                  {{"0", added("!", false)}, {std::to_string(bos_id), added(kBos, true)},
                   {std::to_string(eos_id), added(kEos, true)}}},
                 {"bos_token", kBos},
                 {"clean_up_tokenization_spaces", true},
                 {"eos_token", kEos},
                 {"errors", "replace"},
                 {"model_max_length", o.model_max_length},
                 {"pad_token", "!"},
                 {"tokenizer_class", "CLIPTokenizer"},
                 {"unk_token", kEos}};
  json special = {{"bos_token", special_token(kBos)},
                  {"eos_token", special_token(kEos)},
                  {"pad_token", "!"},
                  {"unk_token", special_token(kEos)}};
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) throw IoError("cannot create '" + out_dir.string() + "': " + ec.message());
  io::write_files_atomic({{out_dir / "vocab.json", vj.dump() + "\n"},
                          {out_dir / "merges.txt", merges_txt},
                          {out_dir / "tokenizer_config.json", config.dump(2) + "\n"},
                          {out_dir / "special_tokens_map.json", special.dump(2) + "\n"}});
  return stats;
}

}  // namespace amused::tokenizers

// ------------------------------------------------------------------------ amused::train_tokenizer

namespace amused {

namespace {
std::vector<std::string> read_lines(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError("cannot read '" + path.string() + "'");
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(std::move(line));
  }
  return lines;
}
}  // namespace

TokenizerTrainSummary train_tokenizer(const TokenizerTrainOptions& o) {
  namespace fs = std::filesystem;
  if (o.output.empty()) throw InvalidArgument("no output folder for the tokenizer (--output)");
  if (o.data.empty() && o.text_files.empty())
    throw InvalidArgument("no captions: give a dataset folder with metadata.jsonl (--data) or text files");
  std::vector<std::string> texts;
  if (!o.data.empty()) {
    fs::path meta = o.data;
    if (fs::is_directory(meta)) meta /= "metadata.jsonl";
    if (!fs::is_regular_file(meta))
      throw IoError("'" + meta.string() + "' does not exist (a dataset folder needs metadata.jsonl)");
    int64_t line_no = 0;
    for (const auto& line : read_lines(meta)) {
      ++line_no;
      const auto where = [&] { return "'" + meta.string() + "' line " + std::to_string(line_no); };
      if (line.find_first_not_of(" \t") == std::string::npos) continue;
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const nlohmann::json::parse_error& e) {
        throw IoError(where() + " is not valid JSON (" + std::string(e.what()) + ")");
      }
      if (!j.is_object()) throw IoError(where() + ": expected a JSON object");
      if (!o.split.empty()) {
        const auto sp = j.find("split");
        const std::string split = sp != j.end() && sp->is_string() ? sp->get<std::string>() : "train";
        if (split != o.split) continue;
      }
      const auto cap = j.find(o.caption_key);
      if (cap == j.end()) throw IoError(where() + " has no \"" + o.caption_key + "\" (--caption-key names another key)");
      if (cap->is_string()) {
        texts.push_back(cap->get<std::string>());
      } else if (cap->is_array()) {
        for (const auto& c : *cap) {
          if (!c.is_string()) throw IoError(where() + ": \"" + o.caption_key + "\" holds a non-string");
          texts.push_back(c.get<std::string>());
        }
      } else {
        throw IoError(where() + ": \"" + o.caption_key + "\" must be a string or a list of strings");
      }
    }
  }
  for (const auto& f : o.text_files)
    for (auto& line : read_lines(f)) texts.push_back(std::move(line));
  return tokenizers::train_clip_bpe(texts, o, o.output);
}

}  // namespace amused
