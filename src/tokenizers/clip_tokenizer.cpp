// CLIP byte-level BPE tokenizer (transformers' slow CLIPTokenizer without ftfy) and the parts of
// PreTrainedTokenizer it relies on: added/special tokens split out of the raw text first, ids with
// added tokens taking precedence over the vocab, BOS/EOS, right truncation and padding.
//
// Ref: transformers/models/clip/tokenization_clip.py, transformers/tokenization_utils.py,
//      transformers/tokenization_utils_base.py (truncation/padding, clean_up_tokenization)
#include <algorithm>
#include <array>
#include <fstream>
#include <limits>
#include <mutex>
#include <queue>
#include <sstream>
#include <unordered_map>

#include "amused/error.h"
#include "core/files.h"
#include "amused/tokenizer.h"
#include "core/config.h"
#include "core/log.h"
#include "tokenizers/clip_pretokenizer.h"

namespace amused {

namespace fs = std::filesystem;
using json = nlohmann::json;
using tokenizers::append_utf8;
using tokenizers::byte_encoder;
using tokenizers::decode_utf8;
using tokenizers::encode_utf8;

namespace {

const std::unordered_map<char32_t, unsigned char>& byte_decoder() {
  static const auto dec = [] {
    std::unordered_map<char32_t, unsigned char> d;
    for (int b = 0; b < 256; ++b)
      d[decode_utf8(byte_encoder()[b])[0]] = static_cast<unsigned char>(b);
    return d;
  }();
  return dec;
}

// Token ids are kept far from int64 overflow (new ids are allocated after the largest one).
constexpr int64_t kMaxTokenId = std::numeric_limits<int32_t>::max();

bool is_ascii_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

std::string read_text_file(const fs::path& path) {
  if (const std::string problem = input_file_problem(path); !problem.empty())
    throw ConfigError("tokenizer file '" + path.string() + "' " + problem);
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError("tokenizer file '" + path.string() + "' cannot be read");
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

void require_file(const fs::path& dir, const char* name) {
  const std::string problem = input_file_problem(dir / name);
  if (!problem.empty() && !is_absent_problem(problem))
    throw ConfigError("tokenizer file '" + (dir / name).string() + "' " + problem);
  if (!problem.empty())
    throw ConfigError(
        "tokenizer file '" + (dir / name).string() +
        "' is missing: expected vocab.json, merges.txt and tokenizer_config.json in '" +
        dir.string() + "' (the tokenizer/ folder of a diffusers model)");
}

// A special-token entry is either "content" or {"content": ..., "lstrip": ..., ...}.
struct TokenSpec {
  std::string content;
  bool lstrip = false, rstrip = false, single_word = false, special = true;
};

TokenSpec token_spec(const json& v, const std::string& source, const std::string& key) {
  TokenSpec t;
  if (v.is_string()) {
    t.content = v.get<std::string>();
    return t;
  }
  if (v.is_object() && v.contains("content") && v["content"].is_string()) {
    t.content = v["content"].get<std::string>();
    auto flag = [&](const char* k, bool& out) {
      if (v.contains(k) && v[k].is_boolean()) out = v[k].get<bool>();
    };
    flag("lstrip", t.lstrip);
    flag("rstrip", t.rstrip);
    flag("single_word", t.single_word);
    flag("special", t.special);
    return t;
  }
  throw ConfigError(source + ": key '" + key +
                    "': expected a token string or {\"content\": ...}, got " + v.dump());
}

std::u32string rstrip_py(std::u32string s) {
  while (!s.empty() && tokenizers::is_python_space(s.back())) s.pop_back();
  return s;
}
std::u32string lstrip_py(std::u32string s) {
  size_t i = 0;
  while (i < s.size() && tokenizers::is_python_space(s[i])) ++i;
  return s.substr(i);
}

void replace_all(std::string& s, const std::string& from, const std::string& to) {
  for (size_t p = 0; (p = s.find(from, p)) != std::string::npos; p += to.size())
    s.replace(p, from.size(), to);
}

}  // namespace

struct ClipTokenizer::Impl {
  fs::path dir;
  std::unordered_map<std::string, int64_t> encoder;  // vocab.json
  std::unordered_map<int64_t, std::string> decoder;
  std::unordered_map<std::string, int64_t> bpe_ranks;  // "first second" -> rank

  struct Added {
    TokenSpec spec;
    std::u32string content32;
    int64_t id = 0;
  };
  std::vector<Added> added;  // added tokens (incl. special tokens), split out of the raw text
  std::unordered_map<std::string, int64_t> added_encoder;
  std::unordered_map<int64_t, size_t> added_by_id;

  bool added_token_with_space = false;  // disables the prefix shortcut of encode_truncatable
  int64_t bos_id = 0, eos_id = 0, pad_id = 0, unk_id = 0;
  int64_t max_length = 77;
  bool clean_up_spaces = true;

  static constexpr size_t kMaxCacheEntries = 200000;
  static constexpr size_t kMaxCachedPieceBytes = 256;
  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<std::string>> cache;

  // CLIPTokenizer.bpe on one pre-token (raw UTF-8 bytes); returns its BPE symbols.
  std::vector<std::string> bpe(const std::string& piece) const;
  // PreTrainedTokenizer.tokenize
  std::vector<std::string> tokenize(const std::string& text) const;
  int64_t token_id(const std::string& token) const;
};

std::vector<std::string> ClipTokenizer::Impl::bpe(const std::string& piece) const {
  // Long pieces are not cached: the cache is bounded in entries, and its memory should be too.
  const bool cacheable = piece.size() <= kMaxCachedPieceBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex);
    if (auto it = cache.find(piece); it != cache.end()) return it->second;
  }
  // CLIPTokenizer.bpe repeats: take the adjacent pair with the lowest merge rank, merge all its
  // non-overlapping occurrences left to right. Done with a rescan per merge that is quadratic in
  // the piece's length; here each rank's occurrences come from a heap in O(n log n) instead, with
  // the same result: the symbols are a linked list keeping their first byte's index, so heap
  // entries of one rank pop in left-to-right order, an entry whose symbols changed is stale, and
  // the pairs a merge creates (never of the rank being merged: the merged symbol is longer than
  // either half) are pushed only after every occurrence of that rank is merged.
  const size_t n = piece.size();
  if (n == 0) return {};
  std::vector<std::string> sym(n);
  for (size_t i = 0; i < n; ++i) sym[i] = byte_encoder()[static_cast<unsigned char>(piece[i])];
  sym[n - 1] += "</w>";
  std::vector<int64_t> prev(n), next(n);
  std::vector<uint32_t> version(n, 0);
  std::vector<bool> alive(n, true);
  for (size_t i = 0; i < n; ++i) {
    prev[i] = static_cast<int64_t>(i) - 1;
    next[i] = i + 1 < n ? static_cast<int64_t>(i) + 1 : -1;
  }
  struct Entry {
    int64_t rank;
    int64_t left;
    uint32_t left_version, right_version;
    bool operator>(const Entry& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> heap;
  std::string key;
  const auto push_pair = [&](int64_t left) {
    if (left < 0 || next[left] < 0) return;
    const int64_t right = next[left];
    key.assign(sym[left]).append(" ").append(sym[right]);
    if (auto it = bpe_ranks.find(key); it != bpe_ranks.end())
      heap.push({it->second, left, version[left], version[right]});
  };
  for (size_t i = 0; i + 1 < n; ++i) push_pair(static_cast<int64_t>(i));
  const auto valid = [&](const Entry& e) {
    return alive[e.left] && version[e.left] == e.left_version && next[e.left] >= 0 &&
           version[next[e.left]] == e.right_version;
  };
  std::vector<int64_t> merged_at;
  while (!heap.empty()) {
    const int64_t rank = heap.top().rank;
    merged_at.clear();
    while (!heap.empty() && heap.top().rank == rank) {
      const Entry e = heap.top();
      heap.pop();
      if (!valid(e)) continue;
      const int64_t right = next[e.left];
      sym[e.left] += sym[right];
      ++version[e.left];
      alive[right] = false;
      next[e.left] = next[right];
      if (next[right] >= 0) prev[next[right]] = e.left;
      merged_at.push_back(e.left);
    }
    for (int64_t at : merged_at) {
      if (!alive[at]) continue;
      push_pair(prev[at]);
      push_pair(at);
    }
  }
  std::vector<std::string> word;
  for (int64_t i = 0; i >= 0; i = next[i]) word.push_back(std::move(sym[i]));
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex);
    // Bounded so that a long-running server fed arbitrary text does not grow without limit.
    if (cache.size() >= kMaxCacheEntries) cache.clear();
    cache.emplace(piece, word);
  }
  return word;
}

std::vector<std::string> ClipTokenizer::Impl::tokenize(const std::string& text) const {
  const std::u32string text32 = decode_utf8(text);
  // tokens_trie.split: added tokens (longest match at the leftmost position) are cut out of the
  // raw text before any normalisation, so e.g. a pad token "!" never reaches the BPE.
  struct Piece {
    std::u32string text;
    const Added* added = nullptr;
  };
  std::vector<Piece> pieces;
  size_t start = 0, pos = 0;
  while (pos < text32.size()) {
    const Added* hit = nullptr;
    for (const auto& a : added) {
      const auto& c = a.content32;
      if (!c.empty() && text32.compare(pos, c.size(), c) == 0 &&
          (!hit || c.size() > hit->content32.size()))
        hit = &a;
    }
    if (!hit) {
      ++pos;
      continue;
    }
    if (pos > start) pieces.push_back({text32.substr(start, pos - start), nullptr});
    pieces.push_back({hit->content32, hit});
    pos += hit->content32.size();
    start = pos;
  }
  if (start < text32.size()) pieces.push_back({text32.substr(start), nullptr});
  for (size_t i = 0; i < pieces.size(); ++i) {
    const Added* a = pieces[i].added;
    if (!a) continue;
    if (a->spec.rstrip && i + 1 < pieces.size() && !pieces[i + 1].added)
      pieces[i + 1].text = lstrip_py(pieces[i + 1].text);
    if (a->spec.lstrip && i > 0 && !pieces[i - 1].added)
      pieces[i - 1].text = rstrip_py(pieces[i - 1].text);
  }

  std::vector<std::string> tokens;
  for (const auto& p : pieces) {
    if (p.added) {
      tokens.push_back(p.added->spec.content);
      continue;
    }
    // CLIPTokenizer._tokenize
    const std::u32string normalized = tokenizers::basic_normalize(p.text);
    for (std::u32string_view pre : tokenizers::clip_split(normalized)) {
      const std::string piece = encode_utf8(pre);
      // The pattern keeps literal <|startoftext|> / <|endoftext|> (e.g. written in upper case,
      // which the added-token split misses) whole, and bpe()'s seeded cache maps them to
      // themselves.
      if (piece == "<|startoftext|>" || piece == "<|endoftext|>") {
        tokens.push_back(piece);
        continue;
      }
      for (auto& s : bpe(piece)) tokens.push_back(std::move(s));
    }
  }
  return tokens;
}

int64_t ClipTokenizer::Impl::token_id(const std::string& token) const {
  if (auto it = added_encoder.find(token); it != added_encoder.end()) return it->second;
  if (auto it = encoder.find(token); it != encoder.end()) return it->second;
  return unk_id;
}

// ------------------------------------------------------------------------------------- loading

std::shared_ptr<ClipTokenizer> ClipTokenizer::from_folder(const fs::path& tokenizer_dir) {
  if (!fs::is_directory(tokenizer_dir))
    throw ConfigError("tokenizer folder '" + tokenizer_dir.string() +
                      "' does not exist (expected a folder with vocab.json, merges.txt and "
                      "tokenizer_config.json, e.g. <model>/tokenizer)");
  for (const char* name : {"vocab.json", "merges.txt", "tokenizer_config.json"})
    require_file(tokenizer_dir, name);
  auto impl = std::make_unique<Impl>();
  impl->dir = tokenizer_dir;

  // vocab.json: {"token": id, ...}
  const fs::path vocab_path = tokenizer_dir / "vocab.json";
  const json vocab = read_json_file(vocab_path);
  if (!vocab.is_object() || vocab.empty())
    throw ConfigError("tokenizer file '" + vocab_path.string() +
                      "': expected a JSON object mapping token strings to ids, got " +
                      vocab.type_name());
  impl->encoder.reserve(vocab.size());
  for (const auto& [token, id] : vocab.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > kMaxTokenId)
      throw ConfigError("tokenizer file '" + vocab_path.string() + "': token '" + token +
                        "': expected an integer id in [0, " + std::to_string(kMaxTokenId) +
                        "], got " + id.dump());
    impl->encoder[token] = id.get<int64_t>();
    impl->decoder[id.get<int64_t>()] = token;
  }

  // merges.txt: read().strip().split("\n")[1 : 49152 - 256 - 2 + 1]; the first line is the
  // "#version" header, and only the first 48894 merges are used (as in the reference).
  const fs::path merges_path = tokenizer_dir / "merges.txt";
  const std::string merges = read_text_file(merges_path);
  {
    std::istringstream lines(merges);
    std::string line;
    int64_t index = -1;
    constexpr int64_t kMaxMerges = 49152 - 256 - 2;
    while (std::getline(lines, line) && index < kMaxMerges) {
      if (index < 0 && line.find_first_not_of(" \t\r") == std::string::npos) continue;  // strip()
      if (index >= 0) {
        std::istringstream parts(line);
        std::string a, b, extra;
        parts >> a >> b;
        if (!a.empty() && !b.empty() && !(parts >> extra)) impl->bpe_ranks[a + " " + b] = index;
      }
      ++index;
    }
    if (impl->bpe_ranks.empty())
      throw ConfigError("tokenizer file '" + merges_path.string() +
                        "': expected a '#version' line followed by merges 'a b', found no merges");
  }

  // tokenizer_config.json (+ special_tokens_map.json, whose entries win, as in from_pretrained).
  const fs::path config_path = tokenizer_dir / "tokenizer_config.json";
  const json config = read_json_file(config_path);
  if (!config.is_object())
    throw ConfigError("tokenizer file '" + config_path.string() +
                      "': expected a JSON object, got " + config.type_name());
  json special_map = json::object();
  const fs::path map_path = tokenizer_dir / "special_tokens_map.json";
  std::error_code map_ec;  // anything at that name (even a broken link) is read, and refused if unreadable
  if (fs::symlink_status(map_path, map_ec).type() != fs::file_type::not_found) {
    special_map = read_json_file(map_path);
    if (!special_map.is_object())
      throw ConfigError("tokenizer file '" + map_path.string() + "': expected a JSON object, got " +
                        special_map.type_name());
  }
  if (config.contains("tokenizer_class") && config["tokenizer_class"].is_string()) {
    const auto cls = config["tokenizer_class"].get<std::string>();
    if (cls != "CLIPTokenizer" && cls != "CLIPTokenizerFast")
      log::warn(config_path.string() + ": tokenizer_class is '" + cls +
                "', expected 'CLIPTokenizer'; tokenizing as CLIP anyway");
  }
  if (config.contains("model_max_length")) {
    const auto& m = config["model_max_length"];
    // transformers writes a huge float (1e30) when there is no limit; keep CLIP's 77 then.
    if (m.is_number_integer() && m.get<int64_t>() > 0)
      impl->max_length = m.get<int64_t>();
    else if (!m.is_number())
      throw ConfigError(config_path.string() +
                        ": key 'model_max_length': expected an integer, got " + m.dump());
  }
  if (config.contains("clean_up_tokenization_spaces") &&
      config["clean_up_tokenization_spaces"].is_boolean())
    impl->clean_up_spaces = config["clean_up_tokenization_spaces"].get<bool>();

  // added_tokens_decoder: {"id": {"content": ..., "special": ...}}
  auto add_token = [&](const TokenSpec& spec, int64_t id) {
    if (impl->added_encoder.count(spec.content)) return;
    if (spec.single_word)
      log::warn(config_path.string() + ": added token '" + spec.content +
                "' has single_word=true, which is not implemented; treated as a plain added token");
    impl->added_by_id[id] = impl->added.size();
    impl->added.push_back({spec, decode_utf8(spec.content), id});
    impl->added_encoder[spec.content] = id;
    for (char ch : spec.content)
      if (is_ascii_space(ch)) impl->added_token_with_space = true;
  };
  if (config.contains("added_tokens_decoder")) {
    const auto& dec = config["added_tokens_decoder"];
    if (!dec.is_object())
      throw ConfigError(config_path.string() +
                        ": key 'added_tokens_decoder': expected an object, got " + dec.type_name());
    for (const auto& [id_str, v] : dec.items()) {
      int64_t id = 0;
      try {
        size_t used = 0;
        id = std::stoll(id_str, &used);
        if (used != id_str.size() || id < 0 || id > kMaxTokenId)
          throw std::invalid_argument(id_str);
      } catch (const std::exception&) {
        throw ConfigError(config_path.string() +
                          ": key 'added_tokens_decoder': expected integer ids in [0, " +
                          std::to_string(kMaxTokenId) + "] as keys, got '" + id_str + "'");
      }
      add_token(token_spec(v, config_path.string(), "added_tokens_decoder." + id_str), id);
    }
  }
  // Special tokens: special_tokens_map.json, else tokenizer_config.json, else CLIPTokenizer's
  // defaults.
  auto special = [&](const char* key, const char* fallback) {
    if (special_map.contains(key) && !special_map[key].is_null())
      return token_spec(special_map[key], map_path.string(), key);
    if (config.contains(key) && !config[key].is_null())
      return token_spec(config[key], config_path.string(), key);
    TokenSpec t;
    t.content = fallback;
    return t;
  };
  const TokenSpec bos = special("bos_token", "<|startoftext|>");
  const TokenSpec eos = special("eos_token", "<|endoftext|>");
  const TokenSpec unk = special("unk_token", "<|endoftext|>");
  const TokenSpec pad = special("pad_token", "<|endoftext|>");
  std::vector<TokenSpec> specials{bos, eos, unk, pad};
  for (const json* src : std::initializer_list<const json*>{&special_map, &config}) {
    if (src->contains("additional_special_tokens") &&
        (*src)["additional_special_tokens"].is_array()) {
      for (const auto& v : (*src)["additional_special_tokens"])
        specials.push_back(token_spec(v, "additional_special_tokens", "additional_special_tokens"));
      break;
    }
  }
  // Special tokens that are not added tokens yet become added tokens
  // (PreTrainedTokenizer.__init__), with their vocab id, or a new id after the vocab when the vocab
  // lacks them.
  int64_t next_id = static_cast<int64_t>(impl->encoder.size());
  for (const auto& [id, idx] : impl->added_by_id) next_id = std::max(next_id, id + 1);
  for (const auto& s : specials) {
    if (impl->added_encoder.count(s.content)) continue;
    auto it = impl->encoder.find(s.content);
    add_token(s, it != impl->encoder.end() ? it->second : next_id++);
  }
  impl->bos_id = impl->added_encoder.at(bos.content);
  impl->eos_id = impl->added_encoder.at(eos.content);
  impl->unk_id = impl->added_encoder.at(unk.content);
  impl->pad_id = impl->added_encoder.at(pad.content);
  return std::shared_ptr<ClipTokenizer>(new ClipTokenizer(std::move(impl)));
}

ClipTokenizer::ClipTokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ClipTokenizer::~ClipTokenizer() = default;

// ------------------------------------------------------------------------------------ encoding

namespace {
void check_text_size(const std::string& text) {
  if (text.size() > ClipTokenizer::kMaxTextBytes)
    throw InvalidArgument("prompt is " + std::to_string(text.size()) + " bytes, more than the " +
                          std::to_string(ClipTokenizer::kMaxTextBytes >> 10) +
                          " KiB limit (CLIP reads only the first 77 tokens; shorten the prompt)");
}
}  // namespace

std::vector<std::string> ClipTokenizer::tokenize(const std::string& text) const {
  check_text_size(text);
  return impl_->tokenize(text);
}

std::vector<int64_t> ClipTokenizer::encode(const std::string& text) const {
  check_text_size(text);
  const auto tokens = impl_->tokenize(text);
  std::vector<int64_t> ids;
  ids.reserve(tokens.size() + 2);
  ids.push_back(impl_->bos_id);
  for (const auto& t : tokens) ids.push_back(impl_->token_id(t));
  ids.push_back(impl_->eos_id);
  return ids;
}

namespace {
// truncation=True, padding="max_length" on BOS + ids + EOS: text ids are dropped from the right so
// that BOS + ids + EOS fit, then pad ids are appended. Returns the number of non-pad positions.
int64_t truncate_and_pad(std::vector<int64_t>& ids, int64_t max_length, int64_t eos_id,
                         int64_t pad_id) {
  if (max_length < 2)
    throw InvalidArgument("max_length = " + std::to_string(max_length) +
                          " is too small: expected at least 2 (BOS and EOS)");
  if (static_cast<int64_t>(ids.size()) > max_length) {
    ids.resize(max_length - 1);
    ids.push_back(eos_id);
  }
  const auto used = static_cast<int64_t>(ids.size());
  ids.resize(max_length, pad_id);
  return used;
}
}  // namespace

std::vector<int64_t> ClipTokenizer::encode_truncatable(const std::string& text,
                                                       int64_t max_length) const {
  // Truncation keeps BOS + the first max_length-2 text ids + EOS, so a long text needs only a
  // prefix tokenized. The prefix ends just before an ASCII whitespace: every step of the
  // tokenization (added-token split, normalisation, the CLIP split pattern, BPE) treats whitespace
  // as a boundary, so the prefix's tokens are the first tokens of the whole text. Added tokens
  // that contain whitespace could span the cut, so they disable the shortcut.
  if (text.size() > kPrefixBytes && max_length >= 2 && !impl_->added_token_with_space) {
    size_t cut = kPrefixBytes;
    while (cut > 0 && !is_ascii_space(text[cut])) --cut;
    if (cut > 0) {
      std::vector<int64_t> ids = encode(text.substr(0, cut));
      // BOS + ids + EOS: enough when the text ids alone reach the truncation length.
      if (static_cast<int64_t>(ids.size()) - 2 >= max_length - 2) return ids;
    }
  }
  return encode(text);
}

std::vector<int64_t> ClipTokenizer::encode_padded(const std::string& text,
                                                  int64_t max_length) const {
  std::vector<int64_t> ids = encode_truncatable(text, max_length);
  truncate_and_pad(ids, max_length, impl_->eos_id, impl_->pad_id);
  return ids;
}

TokenizedBatch ClipTokenizer::encode_batch(const std::vector<std::string>& texts,
                                           int64_t max_length) const {
  TokenizedBatch b;
  b.batch_size = static_cast<int64_t>(texts.size());
  b.max_length = max_length;
  for (const auto& t : texts) {
    std::vector<int64_t> ids = encode_truncatable(t, max_length);
    const int64_t used = truncate_and_pad(ids, max_length, impl_->eos_id, impl_->pad_id);
    b.input_ids.insert(b.input_ids.end(), ids.begin(), ids.end());
    for (int64_t i = 0; i < max_length; ++i) b.attention_mask.push_back(i < used ? 1 : 0);
  }
  return b;
}

int64_t ClipTokenizer::pad_token_id() const { return impl_->pad_id; }
int64_t ClipTokenizer::bos_token_id() const { return impl_->bos_id; }
int64_t ClipTokenizer::eos_token_id() const { return impl_->eos_id; }
int64_t ClipTokenizer::unk_token_id() const { return impl_->unk_id; }
int64_t ClipTokenizer::model_max_length() const { return impl_->max_length; }
int64_t ClipTokenizer::vocab_size() const { return static_cast<int64_t>(impl_->encoder.size()); }

int64_t ClipTokenizer::token_to_id(const std::string& token) const {
  if (auto it = impl_->added_encoder.find(token); it != impl_->added_encoder.end())
    return it->second;
  if (auto it = impl_->encoder.find(token); it != impl_->encoder.end()) return it->second;
  return -1;
}

// ------------------------------------------------------------------------------------ decoding

std::string ClipTokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  // PreTrainedTokenizer._decode: runs of vocab and special tokens go through
  // convert_tokens_to_string (bytes back, "</w>" -> " ", strip), non-special added tokens stay as
  // they are, the parts are joined with spaces, then clean_up_tokenization.
  std::vector<std::string> parts;
  std::string bytes;
  auto flush = [&] {
    if (bytes.empty()) return;
    const std::u32string text32 = decode_utf8(bytes);
    std::string text = encode_utf8(text32);
    replace_all(text, "</w>", " ");
    const size_t b = text.find_first_not_of(' '), e = text.find_last_not_of(' ');
    parts.push_back(b == std::string::npos ? std::string() : text.substr(b, e - b + 1));
    bytes.clear();
  };
  auto append_symbols = [&](const std::string& token) {
    for (char32_t c : decode_utf8(token)) {
      auto b = byte_decoder().find(c);
      if (b != byte_decoder().end()) {
        bytes.push_back(static_cast<char>(b->second));
      } else {
        append_utf8(bytes, c);
      }
    }
  };
  for (int64_t id : ids) {
    if (auto it = impl_->added_by_id.find(id); it != impl_->added_by_id.end()) {
      const auto& a = impl_->added[it->second];
      if (a.spec.special) {
        // Special tokens are decoded like vocab tokens (no surrounding spaces), unless skipped.
        if (!skip_special_tokens) append_symbols(a.spec.content);
        continue;
      }
      flush();
      parts.push_back(a.spec.content);
      continue;
    }
    auto it = impl_->decoder.find(id);
    if (it == impl_->decoder.end())
      throw InvalidArgument("decode: token id " + std::to_string(id) +
                            " is not in the vocabulary of '" + impl_->dir.string() +
                            "' (expected 0.." + std::to_string(impl_->encoder.size() - 1) + ")");
    append_symbols(it->second);
  }
  flush();
  std::string text;
  for (size_t i = 0; i < parts.size(); ++i) text += (i ? " " : "") + parts[i];
  if (impl_->clean_up_spaces) {
    for (const auto& [from, to] : std::vector<std::pair<std::string, std::string>>{{" .", "."},
                                                                                   {" ?", "?"},
                                                                                   {" !", "!"},
                                                                                   {" ,", ","},
                                                                                   {" ' ", "'"},
                                                                                   {" n't", "n't"},
                                                                                   {" 'm", "'m"},
                                                                                   {" 's", "'s"},
                                                                                   {" 've", "'ve"},
                                                                                   {" 're", "'re"}})
      replace_all(text, from, to);
  }
  return text;
}

}  // namespace amused
