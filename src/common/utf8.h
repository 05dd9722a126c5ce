// UTF-8 as RFC 3629 defines it, for the places that read or write it by hand
// (tokenizers, JSON output, the privacy scanners).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace foreshore {

inline void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// One character: its code point and byte length; {U+FFFD, 1} when the bytes
// at `i` are not well-formed UTF-8 (no overlongs, no surrogates, nothing
// above U+10FFFF), so a reader can step past one bad byte at a time.
struct Utf8Char {
  uint32_t cp;
  uint32_t len;
  bool valid;
};

inline Utf8Char decode_utf8(std::string_view text, size_t i) {
  const auto b = [&](size_t k) {
    return k < text.size() ? static_cast<unsigned char>(text[k]) : 0u;
  };
  const unsigned c = b(i);
  const auto cont = [&](size_t k) { return (b(k) & 0xC0u) == 0x80u; };
  constexpr Utf8Char kBad{0xFFFD, 1, false};
  if (c < 0x80) return {c, 1, true};
  if (c >= 0xC2 && c <= 0xDF) {
    return cont(i + 1) ? Utf8Char{((c & 0x1Fu) << 6) | (b(i + 1) & 0x3Fu), 2, true} : kBad;
  }
  if (c >= 0xE0 && c <= 0xEF) {
    const unsigned c1 = b(i + 1);
    const bool ok1 = c == 0xE0   ? (c1 >= 0xA0 && c1 <= 0xBF)
                     : c == 0xED ? (c1 >= 0x80 && c1 <= 0x9F)
                                 : cont(i + 1);
    if (!ok1 || !cont(i + 2)) return kBad;
    return {((c & 0x0Fu) << 12) | ((c1 & 0x3Fu) << 6) | (b(i + 2) & 0x3Fu), 3, true};
  }
  if (c >= 0xF0 && c <= 0xF4) {
    const unsigned c1 = b(i + 1);
    const bool ok1 = c == 0xF0   ? (c1 >= 0x90 && c1 <= 0xBF)
                     : c == 0xF4 ? (c1 >= 0x80 && c1 <= 0x8F)
                                 : cont(i + 1);
    if (!ok1 || !cont(i + 2) || !cont(i + 3)) return kBad;
    return {
        ((c & 0x07u) << 18) | ((c1 & 0x3Fu) << 12) | ((b(i + 2) & 0x3Fu) << 6) | (b(i + 3) & 0x3Fu),
        4, true};
  }
  return kBad;
}

inline bool is_valid_utf8(std::string_view text) {
  for (size_t i = 0; i < text.size();) {
    if (static_cast<unsigned char>(text[i]) < 0x80) {
      ++i;
      continue;
    }
    const Utf8Char ch = decode_utf8(text, i);
    if (!ch.valid) return false;
    i += ch.len;
  }
  return true;
}

}  // namespace foreshore
