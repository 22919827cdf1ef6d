// Standard base64 (RFC 4648 section 4, with padding) for the server's b64_json images and base64
// image uploads. Decoding is strict: only the standard alphabet, length a multiple of 4, padding
// only at the end, and the unused bits of the last group zero (one canonical encoding per input).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace amused::server {

inline std::string base64_encode(std::string_view data) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((data.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= data.size(); i += 3) {
    const uint32_t v = static_cast<uint8_t>(data[i]) << 16 |
                       static_cast<uint8_t>(data[i + 1]) << 8 | static_cast<uint8_t>(data[i + 2]);
    out += kAlphabet[v >> 18 & 63];
    out += kAlphabet[v >> 12 & 63];
    out += kAlphabet[v >> 6 & 63];
    out += kAlphabet[v & 63];
  }
  const size_t rest = data.size() - i;
  if (rest > 0) {
    uint32_t v = static_cast<uint8_t>(data[i]) << 16;
    if (rest == 2) v |= static_cast<uint8_t>(data[i + 1]) << 8;
    out += kAlphabet[v >> 18 & 63];
    out += kAlphabet[v >> 12 & 63];
    out += rest == 2 ? kAlphabet[v >> 6 & 63] : '=';
    out += '=';
  }
  return out;
}

// The decoded bytes, or nullopt when `text` is not canonical padded base64 (whitespace included).
inline std::optional<std::string> base64_decode(std::string_view text) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  if (text.size() % 4 != 0) return std::nullopt;
  std::string out;
  out.reserve(text.size() / 4 * 3);
  for (size_t i = 0; i < text.size(); i += 4) {
    const bool last = i + 4 == text.size();
    int v[4];
    int pad = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = text[i + k];
      if (c == '=') {
        // Padding only in the last group, only in its last two places, and only at the end.
        if (!last || k < 2) return std::nullopt;
        ++pad;
        v[k] = 0;
      } else {
        if (pad > 0) return std::nullopt;
        v[k] = value(c);
        if (v[k] < 0) return std::nullopt;
      }
    }
    const uint32_t bits = static_cast<uint32_t>(v[0]) << 18 | static_cast<uint32_t>(v[1]) << 12 |
                          static_cast<uint32_t>(v[2]) << 6 | static_cast<uint32_t>(v[3]);
    // Non-zero unused bits would make two encodings of the same bytes: refused.
    if (pad == 1 && (bits & 0xFF) != 0) return std::nullopt;
    if (pad == 2 && (bits & 0xFFFF) != 0) return std::nullopt;
    out += static_cast<char>(bits >> 16 & 0xFF);
    if (pad < 2) out += static_cast<char>(bits >> 8 & 0xFF);
    if (pad < 1) out += static_cast<char>(bits & 0xFF);
  }
  return out;
}

}  // namespace amused::server
