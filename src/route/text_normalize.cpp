#include "route/text_normalize.h"

#include "common/utf8.h"

namespace foreshore::route {
namespace {

constexpr uint32_t kDrop = 0xFFFFFFFF;
constexpr uint32_t kKeep = 0xFFFFFFFE;

// The ASCII character a code point folds to, kDrop for invisible ones, kKeep
// for those left as they are.
uint32_t fold(uint32_t cp) {
  if (cp < 0x80) return cp;
  if (cp >= 0xFF01 && cp <= 0xFF5E) return cp - 0xFEE0;  // full-width ASCII
  if (cp >= 0x1D7CE && cp <= 0x1D7FF) return '0' + (cp - 0x1D7CE) % 10;
  if ((cp >= 0x2010 && cp <= 0x2015) || cp == 0x2043 || cp == 0x2212 || cp == 0xFE58 ||
      cp == 0xFE63) {
    return '-';
  }
  if (cp == 0x2024 || cp == 0xFE52) return '.';
  if (cp == 0x00A0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x202F ||
      cp == 0x205F || cp == 0x3000) {
    return ' ';
  }
  if ((cp >= 0x200B && cp <= 0x200D) || cp == 0x2060 || cp == 0xFEFF || cp == 0x00AD) {
    return kDrop;
  }
  return kKeep;
}

bool is_space(uint32_t c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}
bool is_digit(uint32_t c) {
  return c >= '0' && c <= '9';
}

// The first folded character at or after byte i that is not dropped.
uint32_t next_visible(std::string_view t, size_t i) {
  while (i < t.size()) {
    const Utf8Char p = decode_utf8(t, i);
    const uint32_t f = fold(p.cp);
    if (f != kDrop) return f;
    i += p.len;
  }
  return 0;
}

bool needs_folding(std::string_view t) {
  for (size_t i = 0; i < t.size(); ++i) {
    const auto c = static_cast<unsigned char>(t[i]);
    if (c >= 0x80) return true;
    // A whitespace run between digits other than one plain space.
    if (is_digit(c) && i + 1 < t.size() && is_space(static_cast<unsigned char>(t[i + 1]))) {
      size_t j = i + 1;
      while (j < t.size() && is_space(static_cast<unsigned char>(t[j]))) ++j;
      if (j < t.size() && is_digit(static_cast<unsigned char>(t[j])) &&
          !(j == i + 2 && t[i + 1] == ' ')) {
        return true;
      }
    }
  }
  return false;
}

}  // namespace

bool normalize_for_detection(std::string_view t, NormalizedText& out) {
  if (!needs_folding(t)) return false;
  out.text.clear();
  out.begin_of.clear();
  out.end_of.clear();
  const auto emit = [&](char c, size_t from, size_t to) {
    out.text.push_back(c);
    out.begin_of.push_back(static_cast<uint32_t>(from));
    out.end_of.push_back(static_cast<uint32_t>(to));
  };
  uint32_t last = 0;  // the last folded character written
  size_t i = 0;
  while (i < t.size()) {
    const Utf8Char p = decode_utf8(t, i);
    const uint32_t f = fold(p.cp);
    if (f == kDrop) {
      i += p.len;
      continue;
    }
    if (f != kKeep && is_space(f) && is_digit(last)) {
      // Gather the whole run (invisible characters included).
      size_t j = i;
      while (j < t.size()) {
        const Utf8Char q = decode_utf8(t, j);
        const uint32_t g = fold(q.cp);
        if (g != kDrop && !(g != kKeep && is_space(g))) break;
        j += q.len;
      }
      if (is_digit(next_visible(t, j))) {
        emit(' ', i, j);
        last = ' ';
        i = j;
        continue;
      }
    }
    if (f == kKeep) {
      for (uint32_t k = 0; k < p.len; ++k) emit(t[i + k], i, i + p.len);
      last = p.cp;
    } else {
      emit(static_cast<char>(f), i, i + p.len);
      last = f;
    }
    i += p.len;
  }
  return true;
}

}  // namespace foreshore::route
