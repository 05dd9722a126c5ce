#include "engine/json_constraint.h"

namespace foreshore::engine {
namespace {

// Deeper nesting is refused, which keeps the state small and copies cheap.
constexpr size_t kMaxDepth = 64;
// Numbers stay within what a double holds (up to ~1e115), since JSON
// readers that parse into doubles (nlohmann's among them) refuse the rest.
constexpr uint8_t kMaxIntegerDigits = 16;
constexpr uint8_t kMaxExponentDigits = 2;
// A model can fall into emitting whitespace forever. As llama.cpp's JSON
// grammar does, a run between tokens holds at most one line break and 20
// bytes, and the object starts at once.
constexpr uint8_t kMaxWhitespaceRun = 20;

bool is_space(uint8_t c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}
bool is_digit(uint8_t c) {
  return c >= '0' && c <= '9';
}
bool is_hex(uint8_t c) {
  return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

}  // namespace

bool JsonObjectPrefix::feed(std::string_view bytes) {
  for (const char c : bytes) {
    if (!step(static_cast<uint8_t>(c))) return false;
  }
  return true;
}

void JsonObjectPrefix::value_done() {
  mode_ = Mode::kCommaOrEnd;
}

bool JsonObjectPrefix::close(uint8_t c) {
  if (open_.empty() || open_.back() != (c == '}' ? '{' : '[')) return false;
  open_.pop_back();
  if (open_.empty()) {
    mode_ = Mode::kDone;
  } else {
    value_done();
  }
  return true;
}

bool JsonObjectPrefix::begin_value(uint8_t c) {
  switch (c) {
    case '{':
    case '[':
      if (open_.size() >= kMaxDepth) return false;
      open_.push_back(static_cast<char>(c));
      mode_ = c == '{' ? Mode::kKeyOrEnd : Mode::kValueOrEnd;
      return true;
    case '"':
      mode_ = Mode::kString;
      string_is_key_ = false;
      return true;
    case '-':
      mode_ = Mode::kNumberSign;
      return true;
    case 't':
      literal_ = "rue";
      mode_ = Mode::kLiteral;
      return true;
    case 'f':
      literal_ = "alse";
      mode_ = Mode::kLiteral;
      return true;
    case 'n':
      literal_ = "ull";
      mode_ = Mode::kLiteral;
      return true;
    default:
      if (!is_digit(c)) return false;
      mode_ = c == '0' ? Mode::kNumberZero : Mode::kNumberInt;
      digits_ = 1;
      return true;
  }
}

bool JsonObjectPrefix::begin_utf8(uint8_t c) {
  utf8_low_ = 0x80;
  utf8_high_ = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    utf8_left_ = 1;
  } else if (c >= 0xE0 && c <= 0xEF) {
    utf8_left_ = 2;
    if (c == 0xE0) utf8_low_ = 0xA0;   // overlong
    if (c == 0xED) utf8_high_ = 0x9F;  // surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    utf8_left_ = 3;
    if (c == 0xF0) utf8_low_ = 0x90;   // overlong
    if (c == 0xF4) utf8_high_ = 0x8F;  // past U+10FFFF
  } else {
    return false;
  }
  return true;
}

bool JsonObjectPrefix::step(uint8_t c) {
  // Whitespace between tokens, in bounded runs.
  switch (mode_) {
    case Mode::kKeyOrEnd:
    case Mode::kKey:
    case Mode::kColon:
    case Mode::kValue:
    case Mode::kValueOrEnd:
    case Mode::kCommaOrEnd:
      if (is_space(c)) {
        if (c == '\n' || c == '\r') {
          if (line_break_in_run_) return false;
          line_break_in_run_ = true;
        }
        return ++whitespace_run_ <= kMaxWhitespaceRun;
      }
      whitespace_run_ = 0;
      line_break_in_run_ = false;
      break;
    default:
      break;
  }
  switch (mode_) {
    case Mode::kStart:
      if (c != '{') return false;
      open_.push_back('{');
      mode_ = Mode::kKeyOrEnd;
      return true;
    case Mode::kKeyOrEnd:
      if (c == '}') return close(c);
      [[fallthrough]];
    case Mode::kKey:
      if (c != '"') return false;
      mode_ = Mode::kString;
      string_is_key_ = true;
      return true;
    case Mode::kColon:
      if (c != ':') return false;
      mode_ = Mode::kValue;
      return true;
    case Mode::kValueOrEnd:
      if (c == ']') return close(c);
      return begin_value(c);
    case Mode::kValue:
      return begin_value(c);
    case Mode::kCommaOrEnd:
      if (c == '}' || c == ']') return close(c);
      if (c != ',') return false;
      mode_ = open_.back() == '{' ? Mode::kKey : Mode::kValue;
      return true;
    case Mode::kString:
      // JSON text is UTF-8: a multi-byte character must be well formed
      // (no overlong forms, surrogates or code points past U+10FFFF).
      if (utf8_left_ > 0) {
        if (c < utf8_low_ || c > utf8_high_) return false;
        --utf8_left_;
        utf8_low_ = 0x80;
        utf8_high_ = 0xBF;
        return true;
      }
      // A high surrogate escape must be followed by a low one at once.
      if (low_surrogate_due_) {
        if (c != '\\') return false;
        mode_ = Mode::kEscape;
        return true;
      }
      if (c >= 0x80) return begin_utf8(c);
      if (c == '"') {
        if (string_is_key_) {
          mode_ = Mode::kColon;
        } else {
          value_done();
        }
        return true;
      }
      if (c == '\\') {
        mode_ = Mode::kEscape;
        return true;
      }
      return c >= 0x20;
    case Mode::kEscape:
      if (c == 'u') {
        mode_ = Mode::kUnicode;
        hex_left_ = 4;
        code_unit_ = 0;
        return true;
      }
      if (low_surrogate_due_) return false;
      if (c != '"' && c != '\\' && c != '/' && c != 'b' && c != 'f' && c != 'n' && c != 'r' &&
          c != 't') {
        return false;
      }
      mode_ = Mode::kString;
      return true;
    case Mode::kUnicode: {
      if (!is_hex(c)) return false;
      const int digit = is_digit(c) ? c - '0' : (c | 0x20) - 'a' + 10;
      code_unit_ = static_cast<uint16_t>(code_unit_ << 4 | digit);
      if (--hex_left_ > 0) return true;
      const bool high = code_unit_ >= 0xD800 && code_unit_ <= 0xDBFF;
      const bool low = code_unit_ >= 0xDC00 && code_unit_ <= 0xDFFF;
      // Parsers refuse unpaired surrogates (nlohmann among them).
      if (low != low_surrogate_due_) return false;
      low_surrogate_due_ = high;
      mode_ = Mode::kString;
      return true;
    }
    case Mode::kNumberSign:
      if (!is_digit(c)) return false;
      mode_ = c == '0' ? Mode::kNumberZero : Mode::kNumberInt;
      digits_ = 1;
      return true;
    case Mode::kNumberInt:
      if (is_digit(c)) return ++digits_ <= kMaxIntegerDigits;
      [[fallthrough]];
    case Mode::kNumberZero:
      if (c == '.') {
        mode_ = Mode::kNumberDot;
        return true;
      }
      [[fallthrough]];
    case Mode::kNumberFrac:
      if (mode_ == Mode::kNumberFrac && is_digit(c)) return true;
      if (c == 'e' || c == 'E') {
        mode_ = Mode::kNumberExp;
        return true;
      }
      // Anything else ends the number and is read after it.
      value_done();
      return step(c);
    case Mode::kNumberDot:
      if (!is_digit(c)) return false;
      mode_ = Mode::kNumberFrac;
      return true;
    case Mode::kNumberExp:
      if (c == '+' || c == '-') {
        mode_ = Mode::kNumberExpSign;
        return true;
      }
      [[fallthrough]];
    case Mode::kNumberExpSign:
      if (!is_digit(c)) return false;
      mode_ = Mode::kNumberExpInt;
      digits_ = 1;
      return true;
    case Mode::kNumberExpInt:
      if (is_digit(c)) return ++digits_ <= kMaxExponentDigits;
      value_done();
      return step(c);
    case Mode::kLiteral:
      if (c != static_cast<uint8_t>(*literal_)) return false;
      if (*++literal_ == '\0') value_done();
      return true;
    case Mode::kDone:
      return false;
  }
  return false;
}

}  // namespace foreshore::engine
