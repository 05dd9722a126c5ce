// Internal to src/route's sensitivity detector: the validators that confirm
// a candidate a detector's expression found, where a regular expression
// cannot decide (checksums, ranges, context words). sensitivity.h is the
// module's interface; this header serves its parts (the scanner).
#pragma once

#include <cstdint>
#include <string_view>

namespace foreshore::route::detection {

// Validators that confirm a candidate the expression found.
enum class Check : uint8_t {
  kAccept,  // the expression is specific enough
  kEmail,
  kPhone,
  kCard,
  kCardAfterWord,  // a card number glued to the word before it ("VISA4111...")
  kIban,
  kSsn,
  kNino,
  kDni,
  kFiscalCode,
  kNir,
  kIpv4,
  kIpv6,
  kMac,
  kPrivateKey,
  kOpenAi,
  kTokenWithDigit,
  kTokenExact,
  kJwt,
  kBearer,
  kBasic,
  kUrlCredentials,
  kGenericSecret,
  kPasswordPhrase,   // "the password for X is VALUE": the value must look like one
  kCommandPassword,  // mysql -pVALUE, curl -u user:VALUE: any value that is not a placeholder
  kNamedKey,         // "api key 9f8e...": a value that looks random
  kDockerAuth,       // "auth": "<base64 of user:password>"
  kAbaRouting,       // a US routing number: the last 9 digits pass the ABA checksum
  kNamedValue,       // the id after its name ("MRN: A1234567"): read back from the end, has a digit
  kNamedDate,        // the date after "DOB", "born on": read back from the end
  // National ids of other countries, each by its own check digits
  // (sensitivity_national_ids.cpp): read back from the end of the match.
  kNhsNumber,        // UK NHS number: 10 digits, mod 11
  kCanadaSin,        // Canadian social insurance number: 9 digits, Luhn
  kAadhaar,          // Indian Aadhaar: 12 digits, Verhoeff
  kDutchBsn,         // Dutch BSN: 9 digits, the 11-test
  kBrazilCpf,        // Brazilian CPF: 11 digits, two mod-11 check digits
  kGermanTaxId,      // German Steuer-ID: 11 digits, ISO 7064 MOD 11,10
  kPesel,            // Polish PESEL: 11 digits, weighted mod 10
  kAustraliaTfn,     // Australian tax file number: 9 digits, weighted mod 11
  kSingaporeNric,    // Singapore NRIC/FIN: letter, 7 digits, check letter
  kKoreaRrn,         // Korean resident registration number: birth date, then 7 digits
  kFinlandHetu,      // Finnish personal identity code: birth date, century, check character
  kIndiaPan,         // Indian PAN: its shape alone
  kCustom,           // configured pattern, exact in Hyperscan
  kCustomPrefilter,  // configured pattern Hyperscan only approximates; PCRE2 confirms
  // Nine or more number words in a row ("four one one one ..."): no hit of
  // its own; the text is read again with the words as digits.
  kNumberWords,
};

// ---------------------------------------------------------------------------
// Character helpers. at() reads past either end as '\0', which no check accepts.

inline char at(std::string_view t, size_t i) {
  return i < t.size() ? t[i] : '\0';
}
inline char before(std::string_view t, uint32_t i, uint32_t back = 1) {
  return i >= back ? t[i - back] : '\0';
}
inline bool is_digit(char c) {
  return c >= '0' && c <= '9';
}
inline bool is_upper(char c) {
  return c >= 'A' && c <= 'Z';
}
inline bool is_lower(char c) {
  return c >= 'a' && c <= 'z';
}
inline bool is_alpha(char c) {
  return is_upper(c) || is_lower(c);
}
inline bool is_alnum(char c) {
  return is_digit(c) || is_alpha(c);
}
inline bool is_word(char c) {
  return is_alnum(c) || c == '_';
}
inline bool is_hex(char c) {
  return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}
inline bool is_token(char c) {
  return is_word(c) || c == '-';
}
inline char upper(char c) {
  return is_lower(c) ? static_cast<char>(c - 'a' + 'A') : c;
}

struct Span {
  uint32_t begin;
  uint32_t end;
};

// Each validator returns kReject, kAccept, or kNeedsContext (accepted only if
// a context word is near).
enum class Verdict : uint8_t { kReject, kAccept, kNeedsContext };

// Runs the validator `check` names on the candidate at `span`, which it may
// narrow or widen. Sets `itin` when the SSN validator finds an ITIN. Configured
// patterns (kCustom) are accepted; kCustomPrefilter is confirmed elsewhere
// (PCRE2) and rejected here.
Verdict validate(Check check, std::string_view text, Span& span, bool& itin);

// The Luhn check over n ASCII digits (cards; the Canadian SIN).
bool luhn_ok(const char* digits, int n);

// The national id checks above (kNhsNumber ... kIndiaPan).
Verdict check_national_id(Check check, std::string_view text, Span& span);

// Whether a context word for a phone number (`phone`) or an SSN/ITIN is within
// reach of the candidate.
bool has_context(std::string_view text, Span span, bool phone);

}  // namespace foreshore::route::detection
