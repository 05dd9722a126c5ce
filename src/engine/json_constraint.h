// JSON mode for the embedded engine: a byte-level recognizer of the prefixes
// of one JSON object (RFC 8259), used to keep generation on output that can
// still become valid JSON. OpenAI's response_format {"type": "json_object"}
// asks for exactly this: an object at the top level, and nothing after it.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

namespace foreshore::engine {

class JsonObjectPrefix {
 public:
  // Consumes bytes; false when they cannot continue a JSON object, including
  // anything after the object has closed. A recognizer that said false is
  // spent: test a candidate on a copy (copying reuses the copy's memory).
  bool feed(std::string_view bytes);
  // The object has closed: the text so far is one complete JSON object.
  bool complete() const { return mode_ == Mode::kDone; }

 private:
  enum class Mode : uint8_t {
    kStart,          // before the top-level '{'
    kKeyOrEnd,       // after '{'
    kKey,            // after ',' in an object
    kColon,          // after a key
    kValue,          // after ':' or ',' in an array
    kValueOrEnd,     // after '['
    kCommaOrEnd,     // after a value inside a container
    kString,         // inside a string
    kEscape,         // after '\' in a string
    kUnicode,        // in the 4 hex digits of \uXXXX
    kNumberSign,     // after '-': a digit must follow
    kNumberZero,     // a leading 0: no more integer digits
    kNumberInt,      // integer digits
    kNumberDot,      // after '.': a digit must follow
    kNumberFrac,     // fraction digits
    kNumberExp,      // after e/E: sign or digit
    kNumberExpSign,  // after the exponent's sign: a digit must follow
    kNumberExpInt,   // exponent digits
    kLiteral,        // inside true, false or null
    kDone,           // the top-level object has closed
  };

  bool step(uint8_t c);
  bool begin_value(uint8_t c);
  bool begin_utf8(uint8_t lead);
  bool close(uint8_t c);
  void value_done();

  Mode mode_ = Mode::kStart;
  bool string_is_key_ = false;
  uint8_t hex_left_ = 0;
  uint16_t code_unit_ = 0;                      // of the \u escape being read
  bool low_surrogate_due_ = false;              // a \uD800-\uDBFF escape awaits its pair
  uint8_t digits_ = 0;                          // in the number's integer part or exponent so far
  uint8_t utf8_left_ = 0;                       // continuation bytes still due in a string
  uint8_t utf8_low_ = 0x80, utf8_high_ = 0xBF;  // the range of the next one
  const char* literal_ = nullptr;               // the rest of the literal being read
  uint8_t whitespace_run_ = 0;
  bool line_break_in_run_ = false;
  std::vector<char> open_;  // '{' and '[' not yet closed, at most kMaxDepth
};

}  // namespace foreshore::engine
