// libFuzzer target: the CLIP tokenizer.
//   First byte even: the rest is a prompt for the golden tokenizer (tiny-a's CLIP vocabulary):
//     tokenize, encode, encode_padded, decode; every 4th input is also repeated past
//     ClipTokenizer::kPrefixBytes to check that the bounded-prefix shortcut of encode_padded
//     gives exactly the truncated ids of the full encoding.
//   First byte odd: the rest is a tokenizer folder, its files separated by the line "#~~~#":
//     vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json; the folder is
//     loaded and used on a fixed prompt.
// Only amused::Error may be thrown.
#include <algorithm>

#include "amused/error.h"
#include "amused/tokenizer.h"
#include "fuzz_common.h"

namespace {

const amused::ClipTokenizer& golden_tokenizer() {
  static const auto tok =
      amused::ClipTokenizer::from_folder(amused::fuzz::golden_dir() / "models/tiny-a/tokenizer");
  return *tok;
}

void check_prompt(const amused::ClipTokenizer& tok, const std::string& text, bool long_check) {
  (void)tok.tokenize(text);
  const auto ids = tok.encode(text);
  const auto padded = tok.encode_padded(text);
  if (padded.size() != 77) __builtin_trap();
  (void)tok.decode(ids, /*skip_special_tokens=*/false);
  (void)tok.decode(padded);
  if (!long_check || text.empty()) return;
  std::string long_text;
  while (long_text.size() <= amused::ClipTokenizer::kPrefixBytes + 64) long_text += text + " ";
  if (long_text.size() > amused::ClipTokenizer::kMaxTextBytes) return;
  auto full = tok.encode(long_text);  // BOS + ids + EOS, then truncation=True, padding to 77
  if (full.size() > 77) {
    full.resize(76);
    full.push_back(tok.eos_token_id());
  }
  full.resize(77, tok.pad_token_id());
  if (tok.encode_padded(long_text) != full) __builtin_trap();
  const auto batch = tok.encode_batch({long_text, text});
  if (!std::equal(full.begin(), full.end(), batch.input_ids.begin())) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  amused::fuzz::quiet_logs();
  if (size == 0) return 0;
  const std::string rest(reinterpret_cast<const char*>(data + 1), size - 1);
  try {
    if (data[0] % 2 == 0) {
      check_prompt(golden_tokenizer(), rest, data[0] % 4 == 0);
      return 0;
    }
    static const char* kFiles[] = {"vocab.json", "merges.txt", "tokenizer_config.json",
                                   "special_tokens_map.json"};
    const auto dir = amused::fuzz::scratch_dir() / "tokenizer";
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    const std::string sep = "\n#~~~#\n";
    size_t pos = 0;
    for (const char* name : kFiles) {
      if (pos > rest.size()) break;
      size_t end = rest.find(sep, pos);
      if (end == std::string::npos) end = rest.size();
      amused::fuzz::write_scratch(std::string("tokenizer/") + name,
                                  std::string_view(rest).substr(pos, end - pos));
      pos = end + sep.size();
    }
    const auto tok = amused::ClipTokenizer::from_folder(dir);
    check_prompt(*tok, "a photo of an astronaut riding a horse <|endoftext|>!", false);
    (void)tok->decode({0, 1, 2, tok->vocab_size() - 1}, false);
  } catch (const amused::Error&) {
  }
  return 0;
}
