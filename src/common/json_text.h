// JSON string literals written by hand, where the writers build answers
// without a DOM (the gateway's responses, the embedded tier's passed-through
// fields).
#pragma once

#include <string>
#include <string_view>

#include "common/utf8.h"

namespace foreshore {

// Writes valid JSON with valid UTF-8 whatever `text` holds: a model that
// emits byte tokens can produce malformed sequences, which strict clients
// refuse to parse; each malformed byte becomes U+FFFD.
inline void append_json_string(std::string& out, std::string_view text) {
  static constexpr char kHex[] = "0123456789abcdef";
  out += '"';
  size_t run = 0;  // start of the pending run of characters that need no escape
  for (size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x80) {
      const Utf8Char ch = decode_utf8(text, i);
      if (ch.valid) {
        i += ch.len - 1;
        continue;
      }
      out.append(text.data() + run, i - run);
      out += "\xEF\xBF\xBD";
      run = i + 1;
      continue;
    }
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    out.append(text.data() + run, i - run);
    run = i + 1;
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        out += "\\u00";
        out += kHex[c >> 4];
        out += kHex[c & 15];
    }
  }
  out.append(text.data() + run, text.size() - run);
  out += '"';
}

}  // namespace foreshore
