// What the sensitivity detectors read: text with the spellings that hide a
// number or a key folded to the one form the detectors know. A hostile or
// merely international writer groups digits with en dashes, no-break or
// zero-width spaces, line breaks, or writes them full-width; each of those
// would otherwise slip past a pattern that expects ASCII.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace foreshore::route {

// The normalised text and, per byte of it, the byte range of the original
// character it came from, so that hits point into what the client sent.
struct NormalizedText {
  std::string text;
  std::vector<uint32_t> begin_of;
  std::vector<uint32_t> end_of;
};

// Folds, character by character:
//  - compatibility forms as NFKC folds them: full-width ASCII (U+FF01..FF5E),
//    the ideographic space, mathematical digits (U+1D7CE..1D7FF);
//  - every dash and hyphen (U+2010..2015, U+2043, U+2212, U+FE58, U+FE63) to '-';
//  - one-dot leaders and full-width stops to '.';
//  - no-break and other Unicode spaces to ' '; zero-width characters and soft
//    hyphens are dropped;
//  - a run of whitespace (line breaks, tabs, double spaces) between two digits
//    to one space, so grouped numbers read as the detectors expect.
// Returns false, leaving `out` unspecified, when nothing would change (the
// common case: ASCII text with single spaces), so callers scan the original.
bool normalize_for_detection(std::string_view text, NormalizedText& out);

}  // namespace foreshore::route
