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

// What a text needs before the detectors read it, found in one pass with no
// allocation (the common case, ASCII prose with plain numbers, needs neither).
struct SpellingCheck {
  bool fold = false;  // fold_for_detection() would change it
  // join_spelled_digits() may join a run of it. When `fold` is set, the
  // folded text is the one to try (digits of other scripts fold first).
  bool join = false;
};
SpellingCheck check_spelling(std::string_view text);

// Folds, character by character:
//  - compatibility forms as NFKC folds them: full-width ASCII (U+FF01..FF5E),
//    the ideographic space; and every script's decimal digits (Arabic-Indic,
//    Devanagari, Thai, mathematical, ...: Unicode's Nd), superscript,
//    subscript and circled digits to ASCII digits;
//  - escapes and spelled-out characters: percent-encoding of printable ASCII
//    (%40), HTML character references (&#52; &#x34; &commat; &nbsp;), and
//    "[at]" / "(dot)" in any bracket and case, " AT " / " DOT " in capitals,
//    to '@' and '.';
//  - every dash and hyphen (U+2010..2015, U+2043, U+2212, U+FE58, U+FE63) to '-';
//  - one-dot leaders and full-width stops to '.';
//  - no-break and other Unicode spaces to ' '; zero-width characters and soft
//    hyphens are dropped;
//  - a run of whitespace (line breaks, tabs, double spaces) between two digits
//    to one space, so grouped numbers read as the detectors expect;
//  - with `number_words`, the words zero/oh, one ... nine (any case, whole
//    words) to digits, a run of them with the spaces, commas, dots or dashes
//    between them to one number ("four one one one, one ..." to "41111...").
//    Only where the scanner saw nine of them in a row: "one" is a word too.
void fold_for_detection(std::string_view text, NormalizedText& out, bool number_words = false);

// Digit runs spelled so that no number pattern sees them, joined into one
// number: digit by digit ("4 1 1 1 ...", nine groups or more of one digit),
// or grouped with separators no number format uses ('/', '_', '\', '|',
// '*', '~', or a separator between spaces). Meant for the
// number detectors alone (cards, SSNs, IBANs, national ids): joined, a date
// or a path is just a longer number, which they still confirm by check
// digits or a context word. Each joined digit maps back to its own byte and
// the separator before it. Returns false, leaving `out` unspecified, when no
// run was joined.
bool join_spelled_digits(std::string_view text, NormalizedText& out);

}  // namespace foreshore::route
