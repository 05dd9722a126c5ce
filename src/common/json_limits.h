// Bounds on JSON that comes from outside the process. nlohmann's parser is
// iterative, but serialising and walking a document recurse once per level:
// a client's array nested 100,000 deep would exhaust the stack. Text deeper
// than the limit is refused before anything recurses over it.
#pragma once

#include <cstddef>
#include <string_view>

namespace foreshore {

// Deepest nesting a client may send (arrays and objects counted together).
// OpenAI requests need about 10; JSON schemas in tools rarely exceed 20.
inline constexpr int kMaxJsonDepth = 64;

// True when `text` nests arrays/objects deeper than `max_depth`. Brackets
// inside strings do not count; the text need not be valid JSON (the parser
// judges that), and the scan stops at the first level past the limit.
inline bool json_nesting_exceeds(std::string_view text, int max_depth = kMaxJsonDepth) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) return true;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return false;
}

}  // namespace foreshore
