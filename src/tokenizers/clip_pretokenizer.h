// Text handling in front of CLIP's BPE: a UTF-8 codec that replaces invalid bytes the way Python's
// `bytes.decode("utf-8", errors="replace")` does, transformers' BasicTokenizer as CLIPTokenizer
// uses it without ftfy (`BasicTokenizer(strip_accents=False, do_split_on_punc=False)`), Python's
// `str.lower()`, and the CLIP split pattern (`re.findall(self.pat, text)`) written out by hand.
//
// Ref: transformers/models/clip/tokenization_clip.py (BasicTokenizer, CLIPTokenizer._tokenize),
//      transformers/tokenization_utils.py (_is_whitespace, _is_control)
#pragma once

#include <array>
#include <string>
#include <string_view>
#include <vector>

namespace amused::tokenizers {

// UTF-8 -> code points; each maximal invalid subpart becomes one U+FFFD (as Python's decoder).
std::u32string decode_utf8(std::string_view bytes);
void append_utf8(std::string& out, char32_t cp);
std::string encode_utf8(std::u32string_view text);

// bytes_to_unicode(): each byte's BPE symbol (UTF-8). Printable Latin-1 bytes map to themselves,
// the other 68 bytes to U+0100.. in order, so that no BPE symbol is whitespace or a control character.
const std::array<std::string, 256>& byte_encoder();
// The bytes in the order CLIP's vocab.json lists their symbols (ids 0..255): the printable ones
// first (`bs` in bytes_to_unicode), then the others.
std::array<unsigned char, 256> byte_vocab_order();

// Python's str.isspace().
bool is_python_space(char32_t cp);

// Python's str.lower(): full lower-case mapping (U+0130 -> "i\u0307") with the final-sigma rule.
std::u32string python_lower(std::u32string_view text);

// " ".join(BasicTokenizer(strip_accents=False, do_split_on_punc=False).tokenize(text)): drops NUL,
// U+FFFD and control/format/unassigned characters, maps whitespace to spaces, puts spaces around
// CJK ideographs, NFC-normalises, splits on whitespace and lower-cases each piece.
std::u32string basic_normalize(std::u32string_view text);

// re.findall(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|
// [^\s\p{L}\p{N}]+", text, re.IGNORECASE): the pieces that are BPE-encoded one by one.
std::vector<std::u32string_view> clip_split(std::u32string_view text);

}  // namespace amused::tokenizers
