#include "route/text_normalize.h"

#include <algorithm>
#include <array>
#include <iterator>
#include <utility>

#include "common/utf8.h"

namespace foreshore::route {
namespace {

constexpr uint32_t kDrop = 0xFFFFFFFF;
constexpr uint32_t kKeep = 0xFFFFFFFE;

// The first code point of each run of ten decimal digits (Unicode category
// Nd, 15.0) outside ASCII: Arabic-Indic, Devanagari, Bengali, Thai, ...,
// mathematical and full-width. A card number written in any script's digits
// is still a card number.
constexpr uint32_t kDigitZeros[] = {
    0x0660,  0x06F0,  0x07C0,  0x0966,  0x09E6,  0x0A66,  0x0AE6,  0x0B66,  0x0BE6,  0x0C66,
    0x0CE6,  0x0D66,  0x0DE6,  0x0E50,  0x0ED0,  0x0F20,  0x1040,  0x1090,  0x17E0,  0x1810,
    0x1946,  0x19D0,  0x1A80,  0x1A90,  0x1B50,  0x1BB0,  0x1C40,  0x1C50,  0xA620,  0xA8D0,
    0xA900,  0xA9D0,  0xA9F0,  0xAA50,  0xABF0,  0xFF10,  0x104A0, 0x10D30, 0x11066, 0x110F0,
    0x11136, 0x111D0, 0x112F0, 0x11450, 0x114D0, 0x11650, 0x116C0, 0x11730, 0x118E0, 0x11950,
    0x11C50, 0x11D50, 0x11DA0, 0x11F50, 0x16A60, 0x16AC0, 0x16B50, 0x1D7CE, 0x1D7D8, 0x1D7E2,
    0x1D7EC, 0x1D7F6, 0x1E140, 0x1E2F0, 0x1E4F0, 0x1E950, 0x1FBF0};

// The digit a code point stands for, or -1: any script's decimal digits,
// superscripts and subscripts, and circled digits (NFKC folds most of these;
// the dingbat ones it leaves, a reader does not).
int digit_value(uint32_t cp) {
  const auto* z = std::upper_bound(std::begin(kDigitZeros), std::end(kDigitZeros), cp);
  if (z != std::begin(kDigitZeros) && cp - *(z - 1) < 10) return static_cast<int>(cp - *(z - 1));
  if (cp == 0xB9) return 1;
  if (cp == 0xB2 || cp == 0xB3) return static_cast<int>(cp - 0xB0);
  if (cp == 0x2070 || cp == 0x2080 || cp == 0x24EA || cp == 0x24FF) return 0;
  if (cp >= 0x2074 && cp <= 0x2079) return static_cast<int>(cp - 0x2070);
  if (cp >= 0x2081 && cp <= 0x2089) return static_cast<int>(cp - 0x2080);
  // Circled, negative circled, parenthesized and full-stop digits one to nine.
  for (const uint32_t one : {0x2460u, 0x2776u, 0x2780u, 0x278Au, 0x24F5u, 0x2474u, 0x2488u}) {
    if (cp >= one && cp < one + 9) return static_cast<int>(cp - one + 1);
  }
  if (cp == 0x1F100) return 0;  // digit zero full stop
  if (cp >= 0x1F101 && cp <= 0x1F10A) return static_cast<int>(cp - 0x1F101);  // digit comma
  return -1;
}

// Characters that show nothing where they stand: format controls (bidi
// marks and isolates, which copying a number out of an Arabic or Hebrew
// interface inserts; zero-width spaces and joiners; the soft hyphen;
// invisible operators; tags), variation selectors, fillers, and combining
// marks (a keycap's U+20E3, a tilde over a digit). The detectors read past
// them.
bool is_invisible(uint32_t cp) {
  static constexpr std::pair<uint32_t, uint32_t> kRanges[] = {
      {0x00AD, 0x00AD},   {0x0300, 0x036F},  {0x061C, 0x061C}, {0x115F, 0x1160}, {0x17B4, 0x17B5},
      {0x180B, 0x180F},   {0x1AB0, 0x1AFF},  {0x1DC0, 0x1DFF}, {0x200B, 0x200F}, {0x202A, 0x202E},
      {0x2060, 0x206F},   {0x20D0, 0x20FF},  {0x2800, 0x2800}, {0x3164, 0x3164}, {0xFE00, 0xFE0F},
      {0xFE20, 0xFE2F},   {0xFEFF, 0xFEFF},  {0xFFA0, 0xFFA0}, {0xFFF0, 0xFFFB}, {0x1BCA0, 0x1BCA3},
      {0x1D173, 0x1D17A}, {0xE0000, 0xE0FFF}};
  const auto* r = std::upper_bound(std::begin(kRanges), std::end(kRanges), cp,
                                   [](uint32_t c, const auto& range) { return c < range.first; });
  return r != std::begin(kRanges) && cp <= (r - 1)->second;
}

// Control characters other than the usual whitespace: C0, DEL and C1 (NEL
// among them). Between digit groups they separate as a space does.
constexpr bool is_control(uint32_t cp) {
  return (cp < 0x20 && cp != '\t' && cp != '\n' && cp != '\r' && cp != '\f' && cp != '\v') ||
         (cp >= 0x7F && cp <= 0x9F);
}

// The ASCII character a code point folds to, kDrop for invisible ones, kKeep
// for those left as they are.
uint32_t fold(uint32_t cp) {
  if (is_control(cp)) return ' ';
  if (cp < 0x80) return cp;
  if (cp >= 0xFF01 && cp <= 0xFF5E) return cp - 0xFEE0;  // full-width ASCII
  if (const int d = digit_value(cp); d >= 0) return '0' + static_cast<uint32_t>(d);
  // Dashes and minus signs of every kind: hyphens, the Hebrew maqaf, the
  // modifier minus, the katakana prolonged sound mark, two- and three-em dashes.
  if ((cp >= 0x2010 && cp <= 0x2015) || cp == 0x2043 || cp == 0x2212 || cp == 0xFE58 ||
      cp == 0xFE63 || cp == 0x05BE || cp == 0x02D7 || cp == 0x30FC || cp == 0x2E3A ||
      cp == 0x2E3B || cp == 0xFE31 || cp == 0xFE32) {
    return '-';
  }
  // Dots: one-dot leader, small full stop, middle dots, bullets.
  if (cp == 0x2024 || cp == 0xFE52 || cp == 0x00B7 || cp == 0x2022 || cp == 0x2027 ||
      cp == 0x2219 || cp == 0x22C5 || cp == 0x30FB || cp == 0xFF65) {
    return '.';
  }
  if (cp == 0x00A0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x202F ||
      cp == 0x205F || cp == 0x3000 || cp == 0x2028 || cp == 0x2029) {
    return ' ';
  }
  if (is_invisible(cp)) return kDrop;
  return kKeep;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool starts_with_caseless(std::string_view t, size_t i, std::string_view word) {
  if (t.size() - i < word.size()) return false;
  for (size_t k = 0; k < word.size(); ++k) {
    if ((t[i + k] | 0x20) != word[k]) return false;
  }
  return true;
}

// One character written as an escape or spelled out, as a writer hides an
// address or a number from a pattern: percent-encoding (%34, %40), HTML
// character references (&#52; &#x34; &commat;), string escapes (\u0034,
// \x34), "[at]" / "(dot)" in any
// bracket and case with the spaces around them, " AT " and " DOT " in capitals.
struct Spelled {
  uint32_t cp = 0;
  size_t len = 0;  // 0: nothing spelled at this byte
};

Spelled spelled_at(std::string_view t, size_t i) {
  const size_t n = t.size();
  const char c = t[i];
  if (c == '\\') {
    // A string escape left in text that is not parsed as a string: a log
    // line, a Python repr, JavaScript source ("4111\u00a01111", "\x34").
    const char kind = i + 1 < n ? t[i + 1] : '\0';
    const size_t digits = kind == 'u' ? 4 : kind == 'x' ? 2 : 0;
    if (digits == 0 || n - i < 2 + digits) return {};
    uint32_t v = 0;
    for (size_t k = 0; k < digits; ++k) {
      const int h = hex_value(t[i + 2 + k]);
      if (h < 0) return {};
      v = v * 16 + static_cast<uint32_t>(h);
    }
    if (v < 0x20 || (v >= 0xD800 && v <= 0xDFFF)) return {};
    return {v, 2 + digits};
  }
  if (c == '%') {
    if (n - i < 3 || hex_value(t[i + 1]) < 0 || hex_value(t[i + 2]) < 0) return {};
    const auto v = static_cast<uint32_t>(hex_value(t[i + 1]) * 16 + hex_value(t[i + 2]));
    return v >= 0x20 && v < 0x7F ? Spelled{v, 3} : Spelled{};
  }
  if (c == '&') {
    if (i + 1 < n && t[i + 1] == '#') {
      const bool hex = i + 2 < n && (t[i + 2] | 0x20) == 'x';
      size_t j = i + (hex ? 3 : 2);
      uint32_t v = 0;
      const size_t first = j;
      while (j < n && j - first < 7) {
        const int d = hex ? hex_value(t[j]) : (t[j] >= '0' && t[j] <= '9' ? t[j] - '0' : -1);
        if (d < 0) break;
        v = v * (hex ? 16 : 10) + static_cast<uint32_t>(d);
        ++j;
      }
      if (j == first || v == 0 || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return {};
      if (j < n && t[j] == ';') ++j;
      return {v, j - i};
    }
    static constexpr std::pair<std::string_view, char> kNamed[] = {
        {"&nbsp;", ' '},   {"&commat;", '@'}, {"&period;", '.'}, {"&hyphen;", '-'},
        {"&dash;", '-'},   {"&minus;", '-'},  {"&ndash;", '-'},  {"&mdash;", '-'},
        {"&lowbar;", '_'}, {"&sol;", '/'},    {"&amp;", '&'}};
    for (const auto& [name, folded] : kNamed) {
      if (t.substr(i, name.size()) == name) return {static_cast<uint32_t>(folded), name.size()};
    }
    return {};
  }
  if (c != ' ' && c != '[' && c != '(' && c != '{' && c != '<') return {};
  if (c == ' ') {
    // Most spaces: a word follows.
    const char next = i + 1 < n ? t[i + 1] : '\0';
    if (next != ' ' && next != 'A' && next != 'D' && next != '[' && next != '(' && next != '{' &&
        next != '<') {
      return {};
    }
    if (t.substr(i, 4) == " AT ") return {'@', 4};
    if (t.substr(i, 5) == " DOT ") return {'.', 5};
  }
  size_t j = i;
  while (j < n && j - i < 2 && t[j] == ' ') ++j;
  if (j >= n) return {};
  static constexpr std::string_view kOpen = "[({<", kClose = "])}>";
  const size_t bracket = kOpen.find(t[j]);
  if (bracket == std::string_view::npos) return {};
  size_t k = j + 1;
  if (k < n && t[k] == ' ') ++k;
  uint32_t cp = 0;
  if (starts_with_caseless(t, k, "at")) {
    cp = '@';
    k += 2;
  } else if (starts_with_caseless(t, k, "dot")) {
    cp = '.';
    k += 3;
  } else {
    return {};
  }
  if (k < n && t[k] == ' ') ++k;
  if (k >= n || t[k] != kClose[bracket]) return {};
  ++k;
  for (size_t spaces = 0; k < n && spaces < 2 && t[k] == ' '; ++spaces) ++k;
  return {cp, k - i};
}

// The character at byte i as the detectors read it, and its length in bytes.
struct Read {
  uint32_t folded;  // an ASCII character, kDrop or kKeep
  uint32_t cp;      // what kKeep writes
  size_t len;
};

Read read_at(std::string_view t, size_t i) {
  if (const Spelled s = spelled_at(t, i); s.len > 0) return {fold(s.cp), s.cp, s.len};
  const Utf8Char p = decode_utf8(t, i);
  return {fold(p.cp), p.cp, p.len};
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
    const Read r = read_at(t, i);
    if (r.folded != kDrop) return r.folded;
    i += r.len;
  }
  return 0;
}

bool is_word_byte(char c) {
  const auto u = static_cast<unsigned char>(c);
  return (u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z') || (u >= '0' && u <= '9') || u == '_' ||
         u >= 0x80;
}

// A number word (zero or oh, one ... nine, any case) at byte i, ending at a
// word boundary: its digit and length (0: none).
struct NumberWord {
  int digit = 0;
  size_t len = 0;
};

NumberWord number_word_at(std::string_view t, size_t i) {
  static constexpr std::pair<std::string_view, int> kWords[] = {
      {"zero", 0}, {"oh", 0},  {"one", 1},   {"two", 2},   {"three", 3}, {"four", 4},
      {"five", 5}, {"six", 6}, {"seven", 7}, {"eight", 8}, {"nine", 9}};
  for (const auto& [word, digit] : kWords) {
    if (starts_with_caseless(t, i, word) &&
        (i + word.size() == t.size() || !is_word_byte(t[i + word.size()]))) {
      return {digit, word.size()};
    }
  }
  return {};
}

// Separators between digit groups that a run of digits may be spelled with.
// Not ':' or '=': a time of day ("10:30") or a sum ("2+2=4") in a prompt
// would have it read a third time, doubling the cost of scanning it.
bool is_ascii_alnum(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

bool is_digit_separator(char c) {
  return c == ' ' || c == '-' || c == '.' || c == '/' || c == '_' || c == '\\' || c == '|' ||
         c == '*' || c == '~' || c == '#' || c == '\'';
}

// Markup between two digit groups, up to 24 bytes: emphasis and code marks
// with the spaces and group separators around them ("**4111** **1111**",
// "`4111` `1111`", "**078**-**05**") or HTML tags ("4111</td><td>1111",
// "4111<br>1111"). Its length, 0 if none.
size_t markup_at(std::string_view t, size_t j) {
  const size_t n = t.size();
  size_t k = j;
  bool marked = false;
  while (k < n && k - j < 24) {
    const char c = t[k];
    if (c == '*' || c == '_' || c == '`' || c == '~') {
      marked = true;
      ++k;
    } else if (c == ' ' || c == '-' || c == '.' || c == '/') {
      ++k;
    } else if (c == '<') {
      size_t close = k + 1;
      while (close < n && close - k <= 12 && (is_ascii_alnum(t[close]) || t[close] == '/')) {
        ++close;
      }
      if (close >= n || t[close] != '>' || close == k + 1) return 0;
      marked = true;
      k = close + 1;
    } else {
      break;
    }
  }
  return marked && k < n && k - j <= 24 && is_digit(static_cast<unsigned char>(t[k])) ? k - j : 0;
}

// The separator after the digit group ending at byte j: its length (1, or 3
// for one between spaces, " - ", or the markup's), 0 when the run ends there.
size_t separator_at(std::string_view t, size_t j) {
  const size_t n = t.size();
  if (j + 1 < n && is_digit_separator(t[j]) && is_digit(static_cast<unsigned char>(t[j + 1]))) {
    return 1;
  }
  if (j + 3 < n && t[j] == ' ' && t[j + 1] != ' ' && is_digit_separator(t[j + 1]) &&
      t[j + 2] == ' ' && is_digit(static_cast<unsigned char>(t[j + 3]))) {
    return 3;
  }
  return j < n && (t[j] == ' ' || t[j] == '*' || t[j] == '_' || t[j] == '`' || t[j] == '~' ||
                   t[j] == '<')
             ? markup_at(t, j)
             : 0;
}

// Whether the separator of length `sep` at byte j is one no number format
// groups with: number formats use spaces, dashes or dots; slashes,
// underscores and the like, a dash between spaces, or markup are a spelling.
bool unusual_separator(std::string_view t, size_t j, size_t sep) {
  const char kind = sep == 3 ? t[j + 1] : t[j];
  return sep >= 2 || (sep == 1 && kind != ' ' && kind != '-' && kind != '.');
}

// Nine single digits in a row from byte i, one separator between each: a
// number spelled digit by digit (join_spelled_digits needs nine groups).
bool digit_by_digit_at(std::string_view t, size_t i) {
  if (t.size() - i < 17) return false;
  for (size_t k = 0; k < 17; ++k) {
    const auto c = static_cast<unsigned char>(t[i + k]);
    if (k % 2 == 0 ? !is_digit(c) : !is_digit_separator(t[i + k])) return false;
  }
  return t.size() == i + 17 || !is_digit(static_cast<unsigned char>(t[i + 17]));
}

// What may be spelled at byte i, a digit: a whitespace run to another digit
// that is not one plain space (fold), an unusual separator or a separator
// between spaces before another digit, or a digit-by-digit run (join).
void check_after_digit(std::string_view t, size_t i, SpellingCheck& check) {
  const size_t n = t.size();
  if (i + 1 >= n) return;
  const auto next = static_cast<unsigned char>(t[i + 1]);
  if (is_digit(next)) return;
  if (is_space(next)) {
    size_t j = i + 1;
    while (j < n && is_space(static_cast<unsigned char>(t[j]))) ++j;
    if (j < n && is_digit(static_cast<unsigned char>(t[j])) && !(j == i + 2 && next == ' ')) {
      check.fold = true;
      return;
    }
  }
  if (unusual_separator(t, i + 1, separator_at(t, i + 1)) ||
      ((i == 0 || !is_digit(static_cast<unsigned char>(t[i - 1]))) && digit_by_digit_at(t, i))) {
    check.join = true;
  }
}

// Bytes that may start a spelling: 1 non-ASCII or a control character, 2 a digit, 3 the letter
// after the space of " AT " or " DOT ", 4 the start of an escape or of a
// bracketed "at"/"dot". Everything else, spaces included, is passed over
// without a branch that could go either way.
constexpr std::array<uint8_t, 256> kSpellingStart = [] {
  std::array<uint8_t, 256> table{};
  for (int c = 0x80; c < 0x100; ++c) table[c] = 1;
  for (int c = 0; c < 0x80; ++c) {
    if (is_control(static_cast<uint32_t>(c))) table[c] = 1;
  }
  for (int c = '0'; c <= '9'; ++c) table[c] = 2;
  table['A'] = 3;
  table['D'] = 3;
  for (const char c : {'%', '&', '[', '(', '{', '<', '\\'}) {
    table[static_cast<unsigned char>(c)] = 4;
  }
  return table;
}();

}  // namespace

SpellingCheck check_spelling(std::string_view t) {
  SpellingCheck check;
  for (size_t i = 0; i < t.size(); ++i) {
    const uint8_t start = kSpellingStart[static_cast<unsigned char>(t[i])];
    if (start == 0) continue;
    switch (start) {
      case 1:
        check.fold = true;
        return check;
      case 2:
        check_after_digit(t, i, check);
        if (check.fold) return check;
        break;
      case 3:
        // " AT " and " DOT " are read from their space; spaces themselves
        // are too common to stop at.
        if (i > 0 && t[i - 1] == ' ' && spelled_at(t, i - 1).len > 0) {
          check.fold = true;
          return check;
        }
        break;
      default:
        if (spelled_at(t, i).len > 0) {
          check.fold = true;
          return check;
        }
    }
  }
  return check;
}

void fold_for_detection(std::string_view t, NormalizedText& out, bool number_words) {
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
    if (number_words && (i == 0 || !is_word_byte(t[i - 1]))) {
      if (const NumberWord w = number_word_at(t, i); w.len > 0) {
        emit(static_cast<char>('0' + w.digit), i, i + w.len);
        last = '0' + static_cast<uint32_t>(w.digit);
        i += w.len;
        // The separators up to the next number word are dropped: the run
        // reads as one number.
        size_t j = i;
        while (j < t.size() && (is_space(static_cast<unsigned char>(t[j])) || t[j] == ',' ||
                                t[j] == '.' || t[j] == '-')) {
          ++j;
        }
        if (j > i && number_word_at(t, j).len > 0) i = j;
        continue;
      }
    }
    const Read p = read_at(t, i);
    const uint32_t f = p.folded;
    if (f == kDrop) {
      i += p.len;
      continue;
    }
    if (f != kKeep && is_space(f) && is_digit(last)) {
      // Gather the whole run (invisible characters included).
      size_t j = i;
      while (j < t.size()) {
        const Read q = read_at(t, j);
        if (q.folded != kDrop && !(q.folded != kKeep && is_space(q.folded))) break;
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
      std::string bytes;
      append_utf8(bytes, p.cp);
      for (char b : bytes) emit(b, i, i + p.len);
      last = p.cp;
    } else {
      emit(static_cast<char>(f), i, i + p.len);
      last = f;
    }
    i += p.len;
  }
}

bool join_spelled_digits(std::string_view t, NormalizedText& out) {
  out.text.clear();
  out.begin_of.clear();
  out.end_of.clear();
  bool joined_any = false;
  size_t copied = 0;  // bytes of t before this are in out
  const auto copy_to = [&](size_t end) {
    for (; copied < end; ++copied) {
      out.text.push_back(t[copied]);
      out.begin_of.push_back(static_cast<uint32_t>(copied));
      out.end_of.push_back(static_cast<uint32_t>(copied + 1));
    }
  };
  size_t i = 0;
  while (i < t.size()) {
    if (!is_digit(static_cast<unsigned char>(t[i])) ||
        (i > 0 && is_digit(static_cast<unsigned char>(t[i - 1])))) {
      ++i;
      continue;
    }
    // One run: digit groups and the separators between them.
    size_t groups = 0, single_digit_groups = 0, j = i;
    bool unusual = false;
    while (true) {
      const size_t group = j;
      while (j < t.size() && is_digit(static_cast<unsigned char>(t[j]))) ++j;
      ++groups;
      if (j - group == 1) ++single_digit_groups;
      const size_t sep = separator_at(t, j);
      if (sep == 0) break;
      // Kinds mixed are not a spelling: "Tanzania 53144\n06-10446904" is two numbers.
      unusual = unusual || unusual_separator(t, j, sep);
      j += sep;
    }
    const bool digit_by_digit = groups >= 9 && single_digit_groups == groups;
    if (groups >= 2 && (unusual || digit_by_digit)) {
      copy_to(i);
      for (size_t k = i; k < j; ++k) {
        if (!is_digit(static_cast<unsigned char>(t[k]))) continue;
        out.text.push_back(t[k]);
        // A digit takes the separator before it, so that a hit's span
        // covers every byte of the run it was read from.
        out.begin_of.push_back(static_cast<uint32_t>(
            k > i && !is_digit(static_cast<unsigned char>(t[k - 1])) ? copied : k));
        out.end_of.push_back(static_cast<uint32_t>(k + 1));
        copied = k + 1;
      }
      joined_any = true;
    }
    i = j;
  }
  if (!joined_any) return false;
  copy_to(t.size());
  return true;
}

}  // namespace foreshore::route
