// Text handling in front of CLIP's BPE (see clip_pretokenizer.h).
// Ref: transformers/models/clip/tokenization_clip.py, transformers/tokenization_utils.py
#include "tokenizers/clip_pretokenizer.h"

#include <utf8proc.h>

#include <cstdlib>
#include <memory>

namespace amused::tokenizers {

namespace {
bool byte_is_printable(int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); }
}  // namespace

const std::array<std::string, 256>& byte_encoder() {
  static const auto enc = [] {
    std::array<std::string, 256> e;
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) append_utf8(e[b], byte_is_printable(b) ? static_cast<char32_t>(b) : next++);
    return e;
  }();
  return enc;
}

std::array<unsigned char, 256> byte_vocab_order() {
  std::array<unsigned char, 256> order{};
  size_t k = 0;
  for (int pass = 0; pass < 2; ++pass)
    for (int b = 0; b < 256; ++b)
      if (byte_is_printable(b) == (pass == 0)) order[k++] = static_cast<unsigned char>(b);
  return order;
}

namespace {

utf8proc_category_t category(char32_t cp) {
  return utf8proc_category(static_cast<utf8proc_int32_t>(cp));
}

bool is_letter(char32_t cp) {  // \p{L}
  switch (category(cp)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
      return true;
    default:
      return false;
  }
}

bool is_number(char32_t cp) {  // \p{N}
  switch (category(cp)) {
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_NO:
      return true;
    default:
      return false;
  }
}

// \s of the `regex` module on str patterns: the Unicode White_Space property.
bool is_regex_space(char32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

// tokenization_utils._is_whitespace
bool is_bert_whitespace(char32_t cp) {
  return cp == ' ' || cp == '\t' || cp == '\n' || cp == '\r' ||
         category(cp) == UTF8PROC_CATEGORY_ZS;
}

// The code points Unicode 15.0 assigned. utf8proc 2.8 knows them, but the reference's Python 3.11
// (unicodedata 14.0.0) sees them as unassigned (Cn), so its _clean_text drops them (e.g. U+1FAE8).
bool assigned_after_unicode14(char32_t cp) {
  static constexpr char32_t kRanges[][2] = {
      {0xCF3, 0xCF3},     {0xECE, 0xECE},     {0x10EFD, 0x10EFF}, {0x1123F, 0x11241},
      {0x11B00, 0x11B09}, {0x11F00, 0x11F10}, {0x11F12, 0x11F3A}, {0x11F3E, 0x11F59},
      {0x1342F, 0x1342F}, {0x13439, 0x13455}, {0x1B132, 0x1B132}, {0x1B155, 0x1B155},
      {0x1D2C0, 0x1D2D3}, {0x1DF25, 0x1DF2A}, {0x1E030, 0x1E06D}, {0x1E08F, 0x1E08F},
      {0x1E4D0, 0x1E4F9}, {0x1F6DC, 0x1F6DC}, {0x1F774, 0x1F776}, {0x1F77B, 0x1F77F},
      {0x1F7D9, 0x1F7D9}, {0x1FA75, 0x1FA77}, {0x1FA87, 0x1FA88}, {0x1FAAD, 0x1FAAF},
      {0x1FABB, 0x1FABD}, {0x1FABF, 0x1FABF}, {0x1FACE, 0x1FACF}, {0x1FADA, 0x1FADB},
      {0x1FAE8, 0x1FAE8}, {0x1FAF7, 0x1FAF8}, {0x2B739, 0x2B739}, {0x31350, 0x323AF}};
  if (cp < 0xCF3) return false;
  for (const auto& r : kRanges)
    if (cp >= r[0] && cp <= r[1]) return true;
  return false;
}

// tokenization_utils._is_control: every "C*" category (Cc, Cf, Cs, Co, Cn) except \t \n \r.
// Note that this removes format characters such as ZERO WIDTH SPACE / JOINER on purpose.
bool is_bert_control(char32_t cp) {
  if (cp == '\t' || cp == '\n' || cp == '\r') return false;
  if (assigned_after_unicode14(cp)) return true;
  switch (category(cp)) {
    case UTF8PROC_CATEGORY_CN:
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO:
      return true;
    default:
      return false;
  }
}

// BasicTokenizer._is_chinese_char: the CJK ideograph blocks only (not kana, not Hangul).
bool is_cjk_ideograph(char32_t cp) {
  return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) ||
         (cp >= 0x20000 && cp <= 0x2A6DF) || (cp >= 0x2A700 && cp <= 0x2B73F) ||
         (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B820 && cp <= 0x2CEAF) ||
         (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

// Unicode "Cased" (Lowercase | Uppercase | Lt), as used by Python's final-sigma rule.
bool is_cased(char32_t cp) {
  const auto c = category(cp);
  if (c == UTF8PROC_CATEGORY_LU || c == UTF8PROC_CATEGORY_LL || c == UTF8PROC_CATEGORY_LT)
    return true;
  const auto i = static_cast<utf8proc_int32_t>(cp);
  return utf8proc_tolower(i) != i || utf8proc_toupper(i) != i;
}

// Unicode "Case_Ignorable": Mn, Me, Cf, Lm, Sk and the word-break MidLetter/MidNumLet/Single_Quote
// set.
bool is_case_ignorable(char32_t cp) {
  switch (category(cp)) {
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_SK:
      return true;
    default:
      break;
  }
  switch (cp) {
    case 0x27:
    case 0x2E:
    case 0x3A:
    case 0xB7:
    case 0x387:
    case 0x55F:
    case 0x5F4:
    case 0x2018:
    case 0x2019:
    case 0x2024:
    case 0x2027:
    case 0xFE13:
    case 0xFE52:
    case 0xFE55:
    case 0xFF07:
    case 0xFF0E:
    case 0xFF1A:
      return true;
    default:
      return false;
  }
}

// Under re.IGNORECASE the `regex` module matches U+0345 COMBINING GREEK YPOGEGRAMMENI (Mn, whose
// case variants are the letter iota) with neither [\p{L}] nor [^\s\p{L}\p{N}], so the CLIP pattern
// skips it like whitespace (checked with regex 2022.10.31, Debian 12's, and 2026.5.9). It is the
// only code point whose matching changes under IGNORECASE apart from the literal alternatives
// below.
bool is_unmatched_under_ignorecase(char32_t cp) { return cp == 0x345; }

// Simple case folding for the pattern's literal alternatives (re.IGNORECASE).
char32_t fold(char32_t cp) {
  if (cp == 0x17F) return 's';   // LATIN SMALL LETTER LONG S folds to 's'
  if (cp == 0x212A) return 'k';  // KELVIN SIGN
  if (cp < 0x80) return (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
  return cp;
}

// Length of `lit` matched case-insensitively at text[pos], or 0.
size_t match_literal(std::u32string_view text, size_t pos, std::u32string_view lit) {
  if (text.size() - pos < lit.size()) return 0;
  for (size_t k = 0; k < lit.size(); ++k)
    if (fold(text[pos + k]) != lit[k]) return 0;
  return lit.size();
}

std::u32string nfc(std::u32string_view text) {
  const std::string utf8 = encode_utf8(text);
  std::unique_ptr<utf8proc_uint8_t, decltype(&std::free)> out(
      utf8proc_NFC(reinterpret_cast<const utf8proc_uint8_t*>(utf8.c_str())), &std::free);
  if (!out) return std::u32string(text);  // cannot happen for well-formed input; keep the text
  return decode_utf8(reinterpret_cast<const char*>(out.get()));
}

}  // namespace

std::u32string decode_utf8(std::string_view bytes) {
  std::u32string out;
  out.reserve(bytes.size());
  const auto* s = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char b0 = s[i];
    if (b0 < 0x80) {
      out.push_back(b0);
      ++i;
      continue;
    }
    size_t len = 0;
    unsigned char lo = 0x80, hi = 0xBF;  // valid range of the second byte
    char32_t cp = 0;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
      len = 2, cp = b0 & 0x1F;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      len = 3, cp = b0 & 0x0F;
      if (b0 == 0xE0) lo = 0xA0;
      if (b0 == 0xED) hi = 0x9F;  // no surrogates
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      len = 4, cp = b0 & 0x07;
      if (b0 == 0xF0) lo = 0x90;
      if (b0 == 0xF4) hi = 0x8F;
    }
    if (len == 0) {  // C0, C1, F5..FF or a stray continuation byte
      out.push_back(0xFFFD);
      ++i;
      continue;
    }
    // Consume the longest valid prefix; an incomplete one is a single U+FFFD ("maximal subpart").
    size_t k = 1;
    for (; k < len && i + k < n; ++k) {
      const unsigned char b = s[i + k];
      const bool ok = (k == 1) ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
      if (!ok) break;
      cp = (cp << 6) | (b & 0x3F);
    }
    if (k == len) {
      out.push_back(cp);
    } else {
      out.push_back(0xFFFD);
    }
    i += k;
  }
  return out;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string encode_utf8(std::u32string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char32_t cp : text) append_utf8(out, cp);
  return out;
}

bool is_python_space(char32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

std::u32string python_lower(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const char32_t cp = text[i];
    if (cp < 0x80) {
      out.push_back((cp >= 'A' && cp <= 'Z') ? cp + 32 : cp);
    } else if (cp == 0x130) {
      // The only unconditional multi-character lower-case mapping (SpecialCasing.txt).
      out.push_back('i');
      out.push_back(0x307);
    } else if (cp == 0x3A3) {
      // Final sigma: preceded by a cased letter and not followed by one (case-ignorables skipped).
      size_t j = i;
      while (j > 0 && is_case_ignorable(text[j - 1])) --j;
      bool final_sigma = j > 0 && is_cased(text[j - 1]);
      if (final_sigma) {
        size_t k = i + 1;
        while (k < text.size() && is_case_ignorable(text[k])) ++k;
        final_sigma = k == text.size() || !is_cased(text[k]);
      }
      out.push_back(final_sigma ? 0x3C2 : 0x3C3);
    } else {
      out.push_back(static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(cp))));
    }
  }
  return out;
}

std::u32string basic_normalize(std::u32string_view text) {
  // _clean_text + _tokenize_chinese_chars
  std::u32string cleaned;
  cleaned.reserve(text.size());
  for (char32_t cp : text) {
    if (cp == 0 || cp == 0xFFFD || is_bert_control(cp)) continue;
    if (is_bert_whitespace(cp)) {
      cleaned.push_back(' ');
    } else if (is_cjk_ideograph(cp)) {
      cleaned.push_back(' ');
      cleaned.push_back(cp);
      cleaned.push_back(' ');
    } else {
      cleaned.push_back(cp);
    }
  }
  const std::u32string normalized = nfc(cleaned);
  // whitespace_tokenize (str.split()), lower() per piece, " ".join(...)
  std::u32string out;
  out.reserve(normalized.size());
  const std::u32string_view v(normalized);
  size_t i = 0;
  while (i < v.size()) {
    while (i < v.size() && is_python_space(v[i])) ++i;
    size_t j = i;
    while (j < v.size() && !is_python_space(v[j])) ++j;
    if (j > i) {
      if (!out.empty()) out.push_back(' ');
      out += python_lower(v.substr(i, j - i));
    }
    i = j;
  }
  return out;
}

std::vector<std::u32string_view> clip_split(std::u32string_view text) {
  static constexpr std::u32string_view kSpecials[] = {U"<|startoftext|>", U"<|endoftext|>"};
  static constexpr std::u32string_view kContractions[] = {U"'s", U"'t",  U"'re", U"'ve",
                                                          U"'m", U"'ll", U"'d"};
  std::vector<std::u32string_view> pieces;
  size_t pos = 0;
  while (pos < text.size()) {
    // Alternatives in pattern order; the first one that matches at `pos` wins (no backtracking
    // into a shorter alternative is ever needed: each alternative stands alone).
    size_t len = 0;
    for (auto lit : kSpecials)
      if ((len = match_literal(text, pos, lit))) break;
    if (!len && text[pos] == '\'')
      for (auto lit : kContractions)
        if ((len = match_literal(text, pos, lit))) break;
    if (!len) {
      const char32_t cp = text[pos];
      if (is_letter(cp)) {
        len = 1;
        while (pos + len < text.size() && is_letter(text[pos + len])) ++len;
      } else if (is_number(cp)) {
        len = 1;
      } else if (!is_regex_space(cp) && !is_unmatched_under_ignorecase(cp)) {
        len = 1;
        while (pos + len < text.size()) {
          const char32_t c = text[pos + len];
          if (is_regex_space(c) || is_letter(c) || is_number(c) || is_unmatched_under_ignorecase(c))
            break;
          ++len;
        }
      }
    }
    if (len) {
      pieces.push_back(text.substr(pos, len));
      pos += len;
    } else {
      ++pos;  // whitespace (or U+0345): not part of any match
    }
  }
  return pieces;
}

}  // namespace amused::tokenizers
