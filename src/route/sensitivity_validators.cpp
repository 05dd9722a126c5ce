#include "route/sensitivity_validators.h"

#include <arpa/inet.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <string_view>

namespace foreshore::route::detection {

bool luhn_ok(const char* digits, int n) {
  int sum = 0;
  for (int i = 0; i < n; ++i) {
    int d = digits[n - 1 - i] - '0';
    if (i % 2 == 1) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
  }
  return sum % 10 == 0;
}

namespace {

// Words that make an ambiguous digit group a phone number or an SSN. They are
// looked for only around such a candidate: as Hyperscan expressions, short
// common words ("tel", "call", "text") would cost more than all detectors.
constexpr std::string_view kPhoneWords[] = {"phone",
                                            "phones",
                                            "telephone",
                                            "tel",
                                            "mobile",
                                            "mob",
                                            "cell",
                                            "cellphone",
                                            "call",
                                            "calls",
                                            "calling",
                                            "called",
                                            "fax",
                                            "dial",
                                            "sms",
                                            "text",
                                            "whatsapp",
                                            "contact",
                                            "reach",
                                            "office",
                                            "desk",
                                            "landline",
                                            "hotline",
                                            "telefon",
                                            "telefono",
                                            "handy",
                                            "natel",
                                            "portable",
                                            "cellulare",
                                            "t\xc3\xa9l\xc3\xa9phone",
                                            "tel\xc3\xa9"
                                            "fono",
                                            "m\xc3\xb3vil"};
constexpr std::string_view kSsnWords[] = {"ssn",
                                          "ssns",
                                          "ssno",
                                          "ssan",
                                          "itin",
                                          "itins",
                                          "taxpayer",
                                          "social",
                                          "socialsecurity",
                                          "socialsecuritynumber",
                                          "socialsecurityno"};
// How far a context word may be from the number it qualifies.
constexpr uint32_t kContextBefore = 64;
constexpr uint32_t kContextAfter = 32;

// True when the number at [b, e) continues to the left or right with a digit
// or a separator from `seps` followed by a digit: then it is part of a longer
// number, not one on its own.
bool continues_left(std::string_view t, uint32_t b, std::string_view seps) {
  const char c = before(t, b);
  if (is_digit(c)) return true;
  return c != '\0' && seps.find(c) != std::string_view::npos && is_digit(before(t, b, 2));
}
bool continues_right(std::string_view t, uint32_t e, std::string_view seps) {
  const char c = at(t, e);
  if (is_digit(c)) return true;
  return c != '\0' && seps.find(c) != std::string_view::npos && is_digit(at(t, e + 1));
}

// ---------------------------------------------------------------------------
// Validators. Some narrow or widen the span.

int number(const char* digits, int n) {
  int v = 0;
  for (int i = 0; i < n; ++i) v = v * 10 + (digits[i] - '0');
  return v;
}

// Issuer prefixes of payment cards (ISO/IEC 7812 major industry 1-6). Twelve
// digits are accepted only for Maestro, whose short numbers start 50, 56-69
// or 0604; longer numbers starting 0, 7, 8 or 9 are not payment cards.
bool plausible_issuer(const char* d, int n) {
  const int p2 = number(d, 2);
  const int p4 = number(d, 4);
  if (n == 12) return p2 == 50 || (p2 >= 56 && p2 <= 69) || p4 == 604;
  switch (d[0]) {
    case '1':
      return p4 == 1800;
    case '2':
      return p4 == 2131 || (p4 >= 2200 && p4 <= 2720);
    case '3':
      // Fifteen digits starting with 3 are American Express (34, 37) only;
      // an IMEI ("35 693803 564380 9") is fifteen Luhn-valid digits too.
      return n != 15 || p2 == 34 || p2 == 37;
    case '4':
      // Visa has no 14- or 15-digit numbers; IMEIs starting 49 do.
      return n != 14 && n != 15;
    case '5':
    case '6':
      return true;
    default:
      return false;
  }
}

Verdict check_card(std::string_view t, Span s) {
  char d[19];
  int n = 0;
  int groups = 1;
  char sep = '\0';
  for (uint32_t i = s.begin; i < s.end; ++i) {
    if (is_digit(t[i])) {
      if (n == 19) return Verdict::kReject;
      d[n++] = t[i];
    } else {
      sep = t[i];
      ++groups;
    }
  }
  if (n < 12) return Verdict::kReject;
  const std::string_view seps = sep == '\0' ? std::string_view() : std::string_view(&sep, 1);
  if (continues_left(t, s.begin, seps)) return Verdict::kReject;
  if (continues_right(t, s.end, seps)) {
    // A 4-4-4-4 card followed by a short number ("... 1111 12 items") is still
    // a card; any other continuation makes it part of a longer number.
    uint32_t k = s.end + 1;
    while (is_digit(at(t, k)) && k - s.end <= 4) ++k;
    const bool short_tail = k - s.end - 1 <= 3 && !continues_right(t, k, seps);
    if (!(n == 16 && groups == 4 && short_tail)) return Verdict::kReject;
  }
  if (!plausible_issuer(d, n)) return Verdict::kReject;
  if (std::all_of(d + 1, d + n, [&](char c) { return c == d[0]; })) return Verdict::kReject;
  return luhn_ok(d, n) ? Verdict::kAccept : Verdict::kReject;
}

struct IbanCountry {
  char code[3];
  uint8_t length;
};
// IBAN registry (SWIFT), country code and total length.
constexpr IbanCountry kIbanCountries[] = {
    {"AD", 24}, {"AE", 23}, {"AL", 28}, {"AT", 20}, {"AZ", 28}, {"BA", 20}, {"BE", 16}, {"BG", 22},
    {"BH", 22}, {"BI", 27}, {"BR", 29}, {"BY", 28}, {"CH", 21}, {"CR", 22}, {"CY", 28}, {"CZ", 24},
    {"DE", 22}, {"DJ", 27}, {"DK", 18}, {"DO", 28}, {"EE", 20}, {"EG", 29}, {"ES", 24}, {"FI", 18},
    {"FK", 18}, {"FO", 18}, {"FR", 27}, {"GB", 22}, {"GE", 22}, {"GI", 23}, {"GL", 18}, {"GR", 27},
    {"GT", 28}, {"HR", 21}, {"HU", 28}, {"IE", 22}, {"IL", 23}, {"IQ", 23}, {"IS", 26}, {"IT", 27},
    {"JO", 30}, {"KW", 30}, {"KZ", 20}, {"LB", 28}, {"LC", 32}, {"LI", 21}, {"LT", 20}, {"LU", 20},
    {"LV", 21}, {"LY", 25}, {"MC", 27}, {"MD", 24}, {"ME", 22}, {"MK", 19}, {"MN", 20}, {"MR", 27},
    {"MT", 31}, {"MU", 30}, {"NI", 28}, {"NL", 18}, {"NO", 15}, {"OM", 23}, {"PK", 24}, {"PL", 28},
    {"PS", 29}, {"PT", 25}, {"QA", 29}, {"RO", 24}, {"RS", 22}, {"RU", 33}, {"SA", 24}, {"SC", 31},
    {"SD", 18}, {"SE", 24}, {"SI", 19}, {"SK", 24}, {"SM", 27}, {"SO", 23}, {"ST", 25}, {"SV", 28},
    {"TL", 23}, {"TN", 24}, {"TR", 26}, {"UA", 29}, {"VA", 22}, {"VG", 24}, {"XK", 20}, {"YE", 30},
};

// Reads exactly the country's IBAN length from the start, allowing single
// spaces or dashes between characters, so "GB82 WEST 1234 5698 7654 32 EUR" stops
// before "EUR".
Verdict check_iban(std::string_view t, Span& s) {
  const char c0 = upper(t[s.begin]);
  const char c1 = upper(t[s.begin + 1]);
  const auto* country =
      std::find_if(std::begin(kIbanCountries), std::end(kIbanCountries),
                   [&](const IbanCountry& k) { return k.code[0] == c0 && k.code[1] == c1; });
  if (country == std::end(kIbanCountries)) return Verdict::kReject;
  char c[34];
  int n = 0;
  uint32_t i = s.begin;
  while (n < country->length) {
    // One space, dash or dot between any two characters: "DE89 3704 ...",
    // "DE 89 3704 ...", "DE89.3704.0044...".
    const char sep = at(t, i);
    if ((sep == ' ' || sep == '-' || sep == '.') && is_alnum(at(t, i + 1)) && n > 0) ++i;
    if (!is_alnum(at(t, i))) return Verdict::kReject;
    c[n++] = upper(t[i++]);
  }
  if (is_alnum(at(t, i))) return Verdict::kReject;
  s.end = i;
  // mod 97 of the number formed by the BBAN, then country and check digits,
  // letters counting as 10..35.
  int r = 0;
  for (int k = 0; k < n; ++k) {
    const char ch = c[(k + 4) % n];
    r = is_digit(ch) ? (r * 10 + (ch - '0')) % 97 : (r * 100 + (ch - 'A' + 10)) % 97;
  }
  return r == 1 ? Verdict::kAccept : Verdict::kReject;
}

// Shared by SSN and ITIN: dashed numbers stand alone, spaced or bare nine
// digits need a context word ("SSN", "social security").
Verdict check_ssn_shape(std::string_view t, Span s, char d[9]) {
  int n = 0;
  for (uint32_t i = s.begin; i < s.end && n < 9; ++i) {
    if (is_digit(t[i])) d[n++] = t[i];
  }
  const char sep = s.end - s.begin == 11 ? t[s.begin + 3] : '\0';
  const std::string_view seps = sep == '\0' ? std::string_view() : std::string_view(&sep, 1);
  if (continues_left(t, s.begin, seps) || continues_right(t, s.end, seps)) return Verdict::kReject;
  // Dashes (every dash reads as '-' after normalisation) and dots group an
  // SSN the way nothing else is grouped; spaces and bare digits need context.
  return sep == '-' || sep == '.' ? Verdict::kAccept : Verdict::kNeedsContext;
}

// SSNs never have area 000, 666 or 9xx, group 00 or serial 0000. Area 9xx
// with groups 50-65, 70-88, 90-92, 94-99 is an ITIN (`itin` is set).
Verdict check_ssn(std::string_view t, Span s, bool& itin) {
  char d[9];
  const Verdict shape = check_ssn_shape(t, s, d);
  const int area = number(d, 3);
  const int group = number(d + 3, 2);
  itin = area >= 900;
  if (itin) {
    const bool valid_group = (group >= 50 && group <= 65) || (group >= 70 && group <= 88) ||
                             (group >= 90 && group <= 92) || group >= 94;
    return valid_group ? shape : Verdict::kReject;
  }
  if (area == 0 || area == 666 || group == 0 || number(d + 5, 4) == 0) return Verdict::kReject;
  return shape;
}

Verdict check_nino(std::string_view t, Span s) {
  const char a = upper(t[s.begin]);
  const char b = upper(t[s.begin + 1]);
  static constexpr std::string_view kNotIssued[] = {"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"};
  for (std::string_view p : kNotIssued) {
    if (p[0] == a && p[1] == b) return Verdict::kReject;
  }
  return Verdict::kAccept;
}

Verdict check_dni(std::string_view t, Span s) {
  int value = 0;
  char letter = '\0';
  for (uint32_t i = s.begin; i < s.end; ++i) {
    const char c = upper(t[i]);
    if (is_digit(c)) {
      value = value * 10 + (c - '0');
    } else if (i == s.begin) {
      value = c - 'X';  // NIE: X, Y, Z stand for 0, 1, 2
    } else if (c != '-') {
      letter = c;
    }
  }
  static constexpr std::string_view kLetters = "TRWAGMYFPDXBNJZSQVHLCKE";
  return letter == kLetters[value % 23] ? Verdict::kAccept : Verdict::kReject;
}

Verdict check_fiscal_code(std::string_view t, Span s) {
  // Values of characters in odd (1st, 3rd, ...) positions; digits map like A-J.
  static constexpr int kOdd[26] = {1,  0,  5, 7, 9, 13, 15, 17, 19, 21, 2,  4,  18,
                                   20, 11, 3, 6, 8, 12, 14, 16, 10, 22, 25, 24, 23};
  int sum = 0;
  for (int i = 0; i < 15; ++i) {
    const char c = upper(t[s.begin + i]);
    const int v = is_digit(c) ? c - '0' : c - 'A';
    sum += i % 2 == 0 ? kOdd[v] : v;
  }
  return upper(t[s.begin + 15]) == 'A' + sum % 26 ? Verdict::kAccept : Verdict::kReject;
}

Verdict check_nir(std::string_view t, Span s) {
  char c[15];
  int n = 0;
  for (uint32_t i = s.begin; i < s.end; ++i) {
    if (t[i] == ' ') continue;
    if (n == 15) return Verdict::kReject;
    c[n++] = upper(t[i]);
  }
  if (n != 15) return Verdict::kReject;
  // Corsica's departments 2A and 2B count as 19 and 18 in the key.
  if (c[6] == 'A' || c[6] == 'B') {
    c[6] = c[6] == 'A' ? '9' : '8';
    c[5] = '1';
  }
  uint64_t v = 0;
  for (int i = 0; i < 13; ++i) v = v * 10 + static_cast<uint64_t>(c[i] - '0');
  return static_cast<int>(97 - v % 97) == number(c + 13, 2) ? Verdict::kAccept : Verdict::kReject;
}

Verdict check_ipv4(std::string_view t, Span s) {
  if (continues_left(t, s.begin, ".") || continues_right(t, s.end, ".")) return Verdict::kReject;
  int octet = 0;
  for (uint32_t i = s.begin; i <= s.end; ++i) {
    if (i == s.end || t[i] == '.') {
      if (octet > 255) return Verdict::kReject;
      octet = 0;
    } else {
      octet = octet * 10 + (t[i] - '0');
    }
  }
  return Verdict::kAccept;
}

// The match is ":x:"; the address is read outwards from it. Each pair of
// colons of an address reports the same span, which the merge folds into one.
Verdict check_ipv6(std::string_view t, Span& s) {
  constexpr uint32_t kMax = 45;
  const uint32_t colon = s.end - 1;
  s.begin = colon;
  while (s.begin > 0 && colon - s.begin <= kMax &&
         (is_hex(t[s.begin - 1]) || t[s.begin - 1] == ':')) {
    --s.begin;
  }
  s.end = colon;
  while (s.end < t.size() && s.end - colon <= kMax &&
         (is_hex(t[s.end]) || t[s.end] == ':' || (t[s.end] == '.' && is_digit(at(t, s.end + 1))))) {
    ++s.end;
  }
  if (is_word(before(t, s.begin)) || is_word(at(t, s.end))) return Verdict::kReject;
  const uint32_t n = s.end - s.begin;
  if (n > 45) return Verdict::kReject;
  char buf[46];
  std::copy(t.begin() + s.begin, t.begin() + s.end, buf);
  buf[n] = '\0';
  in6_addr addr;
  if (inet_pton(AF_INET6, buf, &addr) != 1) return Verdict::kReject;
  // "::1", "fe80::1" and C++'s "a::b" carry nothing identifying.
  int groups = 0;
  for (uint32_t i = 0; i < n; ++i) {
    if (buf[i] != ':' && (i == 0 || buf[i - 1] == ':')) ++groups;
  }
  return groups >= 3 ? Verdict::kAccept : Verdict::kReject;
}

Verdict check_mac(std::string_view t, Span s) {
  const char sep = t[s.begin + 2];
  for (uint32_t i = s.begin + 2; i < s.end; i += 3) {
    if (t[i] != sep) return Verdict::kReject;
  }
  const char l = before(t, s.begin);
  const char r = at(t, s.end);
  if ((l == sep && is_hex(before(t, s.begin, 2))) || (r == sep && is_hex(at(t, s.end + 1)))) {
    return Verdict::kReject;
  }
  return Verdict::kAccept;
}

// Widens the hit to the end of the key block so that the whole key is marked.
Verdict check_private_key(std::string_view t, Span& s) {
  constexpr size_t kMaxKeyBytes = 16384;  // a 4096-bit RSA key in PEM is about 3.3 KiB
  const std::string_view rest = t.substr(s.end, kMaxKeyBytes);
  const size_t end_marker = rest.find("-----END ");
  if (end_marker != std::string_view::npos) {
    const size_t close = rest.find("-----", end_marker + 9);
    if (close != std::string_view::npos) s.end += static_cast<uint32_t>(close + 5);
  }
  return Verdict::kAccept;
}

// A token ends where token characters end; a candidate that stops inside one
// is a prefix of a longer token and is dropped (the longest is reported too).
bool token_ends(std::string_view t, uint32_t e) {
  return !is_token(at(t, e));
}

Verdict check_openai(std::string_view t, Span s) {
  if (!token_ends(t, s.end)) return Verdict::kReject;
  const std::string_view body = t.substr(s.begin + 3, s.end - s.begin - 3);
  if (body.starts_with("ant-")) return Verdict::kReject;  // Anthropic's detector reports it
  // Random keys mix all three classes; English words joined by dashes do not.
  const bool digit = std::any_of(body.begin(), body.end(), is_digit);
  const bool up = std::any_of(body.begin(), body.end(), is_upper);
  const bool low = std::any_of(body.begin(), body.end(), is_lower);
  return digit && up && low ? Verdict::kAccept : Verdict::kReject;
}

Verdict check_token_with_digit(std::string_view t, Span s) {
  if (!token_ends(t, s.end)) return Verdict::kReject;
  const std::string_view v = t.substr(s.begin, s.end - s.begin);
  return std::any_of(v.begin(), v.end(), is_digit) ? Verdict::kAccept : Verdict::kReject;
}

Verdict check_token_exact(std::string_view t, Span s) {
  return token_ends(t, s.end) ? Verdict::kAccept : Verdict::kReject;
}

int base64url_value(char c) {
  if (is_upper(c)) return c - 'A';
  if (is_lower(c)) return c - 'a' + 26;
  if (is_digit(c)) return c - '0' + 52;
  if (c == '-' || c == '+') return 62;
  if (c == '_' || c == '/') return 63;
  return -1;
}

// Decodes base64 or base64url (padding ends it) into out, at most cap
// bytes; the decoded length, or -1 on a character of neither alphabet.
int base64_decode(std::string_view in, char* out, size_t cap) {
  size_t n = 0;
  uint32_t bits = 0;
  int nbits = 0;
  for (char c : in) {
    if (c == '=') break;
    const int v = base64url_value(c);
    if (v < 0) return -1;
    bits = (bits << 6) | static_cast<uint32_t>(v);
    nbits += 6;
    if (nbits >= 8) {
      nbits -= 8;
      if (n == cap) break;
      out[n++] = static_cast<char>((bits >> nbits) & 0xff);
    }
  }
  return static_cast<int>(n);
}

// A JWT's first part is base64url JSON naming the algorithm.
Verdict check_jwt(std::string_view t, Span s) {
  if (!token_ends(t, s.end) || at(t, s.end) == '.') return Verdict::kReject;
  const std::string_view token = t.substr(s.begin, s.end - s.begin);
  const std::string_view header = token.substr(0, std::min<size_t>(token.find('.'), 128));
  char json[96];
  const int n = base64_decode(header, json, sizeof json);
  if (n < 0) return Verdict::kReject;
  const std::string_view decoded(json, static_cast<size_t>(n));
  return decoded.find("\"alg\"") != std::string_view::npos ||
                 decoded.find("\"typ\"") != std::string_view::npos
             ? Verdict::kAccept
             : Verdict::kReject;
}

bool is_bearer_char(char c) {
  return is_word(c) || c == '-' || c == '.' || c == '~' || c == '+' || c == '/' || c == '=';
}

Verdict check_bearer(std::string_view t, Span s) {
  if (is_bearer_char(at(t, s.end))) return Verdict::kReject;
  std::string_view v = t.substr(s.begin + 6, s.end - s.begin - 6);
  // "Bearer YOUR_TOKEN_HERE" and other placeholders have no digits.
  const bool digit = std::any_of(v.begin(), v.end(), is_digit);
  const bool alpha = std::any_of(v.begin(), v.end(), is_alpha);
  return digit && alpha ? Verdict::kAccept : Verdict::kReject;
}

Verdict check_basic(std::string_view t, Span s) {
  return is_bearer_char(at(t, s.end)) ? Verdict::kReject : Verdict::kAccept;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(),
                                            [](char x, char y) { return upper(x) == upper(y); });
}

// Documentation examples ("user:password@", "user:<pass>@", "${PASSWORD}")
// are not credentials.
bool placeholder(std::string_view v) {
  if (v.empty()) return true;
  const char c = v.front();
  if (c == '<' || c == '{' || c == '[') return true;
  // "${DB_PASSWORD}", "$PW": a reference to a variable, not its value;
  // "$(cat FILE)", "`cat FILE`": a command's output.
  if (c == '`' || (c == '$' && at(v, 1) == '(')) return true;
  if (c == '$') {
    return std::all_of(v.begin() + 1, v.end(),
                       [](char ch) { return is_word(ch) || ch == '{' || ch == '}'; });
  }
  // "your_password", "YourPassword", "your-api-token": the reader's own.
  if (v.size() > 4 && iequals(v.substr(0, 4), "your") &&
      std::none_of(v.begin(), v.end(), is_digit)) {
    return true;
  }
  // "%s", "%(pw)s": a format string; a long value that happens to start
  // with '%' is a secret like any other.
  if (c == '%') return v.size() <= 8;
  if (c == '*') return std::all_of(v.begin(), v.end(), [](char ch) { return ch == '*'; });
  // YOUR_PASSWORD, API_KEY: a name standing in for the value.
  if (std::all_of(v.begin(), v.end(), [](char ch) { return is_upper(ch) || ch == '_'; })) {
    return true;
  }
  static constexpr std::string_view kWords[] = {"password", "pass",     "passwd", "pwd",
                                                "secret",   "changeme", "xxx",    "xxxx"};
  return std::any_of(std::begin(kWords), std::end(kWords),
                     [&](std::string_view w) { return iequals(v, w); });
}

// The match ends "://user:password@"; neither part holds a '/', so the
// nearest '/' before the '@' ends the "://", and the scheme precedes it.
Verdict check_url_credentials(std::string_view t, Span& s) {
  uint32_t b = s.end - 1;
  while (b > 0 && s.end - b < 260 && t[b - 1] != '/') --b;
  if (b < 3 || t.substr(b - 3, 3) != "://") return Verdict::kReject;
  const std::string_view v = t.substr(b, s.end - b);
  const size_t colon = v.find(':');
  const std::string_view password = v.substr(colon + 1, v.size() - colon - 2);
  s.begin = b - 3;
  while (s.begin > 0 && s.end - s.begin < 280 &&
         (is_alnum(t[s.begin - 1]) || t[s.begin - 1] == '+' || t[s.begin - 1] == '.' ||
          t[s.begin - 1] == '-')) {
    --s.begin;
  }
  return placeholder(password) ? Verdict::kReject : Verdict::kAccept;
}

bool is_secret_char(char c) {
  return is_word(c) || std::string_view("-+/=.~!@#$%^&*").find(c) != std::string_view::npos;
}

// Shannon entropy in bits per byte.
double entropy(std::string_view v) {
  std::array<int, 256> count{};
  for (unsigned char c : v) ++count[c];
  double h = 0;
  for (int k : count) {
    if (k == 0) continue;
    const double p = static_cast<double>(k) / static_cast<double>(v.size());
    h -= p * std::log2(p);
  }
  return h;
}

// "api_key = 'a8f...'", "password: Summer2024!", "token is ab12...",
// "password - Summer2024!" (a dash of any kind, folded), "clientSecret:",
// "<password>...</password>", "Passwort: ...", "密码：...": the value must look
// random (letters and digits, entropy >= 2.5 bits per byte) so that "token =
// None" or "password: YOUR_PASSWORD" do not count; a value under a name that
// says password may be short. The expression stops after eight characters of
// the value; the rest is read here.
// Key names whose values are secrets, by how they end (lower case, '-' and a
// camel-case boundary as '_').
constexpr std::string_view kSecretKeySuffixes[] = {
    "api_key",    "apikey",        "api_secret",  "secret",      "secret_key",
    "access_key", "access_key_id", "private_key", "signing_key", "encryption_key",
    "master_key", "account_key",   "shared_key",  "token"};

// Names that say password, in English and other languages. ASCII ones end
// the name after '_' or a camel-case boundary ("DB_PASS", "dbPassword");
// non-ASCII ones end it anywhere ("我的密码").
constexpr std::string_view kPasswordNames[] = {
    "password", "passwd",     "pwd",   "passphrase", "pass",  "pw",       "passwort",
    "kennwort", "contrasena", "senha", "wachtwoord", "haslo", "losenord", "parola"};
constexpr std::string_view kPasswordNamesUtf8[] = {
    "contrase\xc3\xb1"
    "a",                                                             // contraseña
    "has\xc5\x82o",                                                  // hasło
    "l\xc3\xb6senord",                                               // lösenord
    "\xd0\xbf\xd0\xb0\xd1\x80\xd0\xbe\xd0\xbb\xd1\x8c",              // пароль
    "\xd0\x9f\xd0\xb0\xd1\x80\xd0\xbe\xd0\xbb\xd1\x8c",              // Пароль
    "\xd0\x9f\xd0\x90\xd0\xa0\xd0\x9e\xd0\x9b\xd0\xac",              // ПАРОЛЬ
    "\xe5\xaf\x86\xe7\xa0\x81",                                      // 密码
    "\xe5\xaf\x86\xe7\xa2\xbc",                                      // 密碼
    "\xe3\x83\x91\xe3\x82\xb9\xe3\x83\xaf\xe3\x83\xbc\xe3\x83\x89",  // パスワード
    "\xeb\xb9\x84\xeb\xb0\x80\xeb\xb2\x88\xed\x98\xb8"};             // 비밀번호

enum class SecretName { kNone, kSecret, kPassword, kPin };

// What a key's name says its value is.
SecretName secret_name(std::string_view name) {
  for (const std::string_view utf8 : kPasswordNamesUtf8) {
    if (name.ends_with(utf8)) return SecretName::kPassword;
  }
  char buf[80];
  size_t n = 0;
  if (name.size() > 60) name = name.substr(name.size() - 60);
  for (size_t i = 0; i < name.size() && n + 1 < sizeof buf; ++i) {
    const char c = name[i];
    if (is_upper(c) && i > 0 && (is_lower(name[i - 1]) || is_digit(name[i - 1]))) buf[n++] = '_';
    buf[n++] = c == '-' ? '_' : static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  const std::string_view lower(buf, n);
  const auto ends_name = [&](std::string_view suffix) {
    return lower.ends_with(suffix) &&
           (lower.size() == suffix.size() || lower[lower.size() - suffix.size() - 1] == '_');
  };
  if (lower == "pin") return SecretName::kPin;
  if (std::any_of(std::begin(kPasswordNames), std::end(kPasswordNames), ends_name)) {
    return SecretName::kPassword;
  }
  // PGPASSWORD, rootpassword: a password however the name is glued.
  if (lower.ends_with("password") || lower.ends_with("passwort")) return SecretName::kPassword;
  if (lower == "key" || lower.ends_with("apikey") || lower.ends_with("passwd")) {
    return SecretName::kSecret;
  }
  return std::any_of(std::begin(kSecretKeySuffixes), std::end(kSecretKeySuffixes), ends_name)
             ? SecretName::kSecret
             : SecretName::kNone;
}

// Words that describe a password field rather than fill it.
bool describes_field(std::string_view v) {
  static constexpr std::string_view kWords[] = {
      "string", "required", "optional", "none",   "null",  "nil",    "undefined", "example",
      "hidden", "redacted", "masked",   "empty",  "true",  "false",  "text",      "secret",
      "unset",  "default",  "changeit", "sample", "dummy", "invalid"};
  return std::any_of(std::begin(kWords), std::end(kWords),
                     [&](std::string_view w) { return iequals(v, w); });
}

// Code, not a value: a name ("curses.KEY_RIGHT", "settings.DB_PASSWORD":
// identifiers joined by dots, no digit) or a call ("validateEmail(...)",
// "hashlib.sha256(raw)"). `next` is the character after the value.
bool looks_like_code(std::string_view v, char next) {
  if (v.empty()) return false;
  const auto path_char = [](char c) { return is_word(c) || c == '.'; };
  const size_t paren = v.find('(');
  if (next == '(' || (paren != std::string_view::npos && paren > 0 && is_alpha(v.front()) &&
                      std::all_of(v.begin(), v.begin() + static_cast<long>(paren), path_char))) {
    return true;
  }
  return v.find('.') != std::string_view::npos && is_alpha(v.front()) && is_alpha(v.back()) &&
         std::all_of(v.begin(), v.end(),
                     [](char c) { return is_alpha(c) || c == '_' || c == '.'; });
}

bool is_name_char(char c) {
  return is_token(c) || static_cast<unsigned char>(c) >= 0x80;
}

Verdict check_generic_secret(std::string_view t, Span& s) {
  constexpr uint32_t kMaxValue = 256;
  const uint32_t value_begin = s.end - 1;
  const uint32_t limit = s.end + kMaxValue;
  while (s.end < limit && is_secret_char(at(t, s.end))) ++s.end;
  if (is_secret_char(at(t, s.end))) return Verdict::kReject;
  // Back over quote, blanks, separator (":", "=", "=>", ">", "is", " - "),
  // blanks, quote and the key's name, to mark the whole assignment.
  uint32_t b = value_begin;
  const auto skip_back = [&](auto pred) {
    while (b > 0 && pred(t[b - 1])) --b;
  };
  const auto blank = [](char c) { return c == ' ' || c == '\t'; };
  const auto quote = [](char c) { return c == '"' || c == '\''; };
  const bool quoted = b > 0 && quote(t[b - 1]);
  if (quoted) --b;
  const uint32_t before_blanks = b;
  skip_back(blank);
  bool tagged = false;  // <password>value, with nothing between ("<password> https://" is prose)
  if (b > 0 && t[b - 1] == '>') {
    tagged = b < 2 || t[b - 2] != '=';
    if (tagged && b != before_blanks) return Verdict::kReject;
    b -= tagged ? 1 : 2;
  } else if (b > 0 && (t[b - 1] == ':' || t[b - 1] == '=' || t[b - 1] == '-')) {
    --b;
  } else if (b >= 2) {
    b -= 2;  // "is"
  }
  const bool is_separator = t.substr(b, 2) == "is";
  skip_back(blank);
  if (b > 0 && quote(t[b - 1])) --b;
  const uint32_t name_end = b;
  skip_back(is_name_char);
  if (tagged && (b == 0 || t[b - 1] != '<')) return Verdict::kReject;
  const std::string_view key = t.substr(b, name_end - b);
  const bool mot_de_passe =
      iequals(key, "passe") && b >= 7 && iequals(t.substr(b - 7, 7), "mot de ");
  const SecretName name = mot_de_passe ? SecretName::kPassword : secret_name(key);
  if (name == SecretName::kNone) return Verdict::kReject;
  s.begin = mot_de_passe ? b - 7 : b;
  std::string_view value = t.substr(value_begin, s.end - value_begin);
  if (tagged && value.find('<') != std::string_view::npos) value = value.substr(0, value.find('<'));
  if (placeholder(value)) return Verdict::kReject;
  // Code, not a value: a call ("PASS: validateEmail(...)") or a name
  // ("key = curses.KEY_RIGHT", "password = settings.DB_PASSWORD").
  if (looks_like_code(value, at(t, s.end))) return Verdict::kReject;
  const bool digit = std::any_of(value.begin(), value.end(), is_digit);
  const bool alpha = std::any_of(value.begin(), value.end(), is_alpha);
  const bool upper = std::any_of(value.begin(), value.end(), is_upper);
  const bool lower = std::any_of(value.begin(), value.end(), is_lower);
  const bool symbol = std::any_of(value.begin(), value.end(), [](char c) { return !is_alnum(c); });
  const double bits = entropy(value);
  if (name == SecretName::kPin) {
    return value.size() >= 4 && value.size() <= 8 &&
                   std::all_of(value.begin(), value.end(), is_digit)
               ? Verdict::kAccept
               : Verdict::kReject;
  }
  if (name == SecretName::kPassword && !describes_field(value)) {
    // Under a name that says password, the value is one: short ones
    // ("hunter2") when they hold a digit or a symbol, or when the text
    // quotes them as a value ("password": "letmein"); a long run of
    // letters ("correcthorsebatterystaple") too. "password is
    // incorrect" is prose.
    if (value.size() >= 4 && (digit || (symbol && upper && lower) || (quoted && !is_separator))) {
      return Verdict::kAccept;
    }
    // "pw: correct-horse": words joined by a symbol, assigned, not prose.
    if (value.size() >= 8 && symbol && !is_separator) return Verdict::kAccept;
    if (value.size() >= 16 && alpha) return Verdict::kAccept;
  }
  if (value.size() < 8) return Verdict::kReject;
  // "password is case-sensitive": after "is", a value in one case without
  // digits is a word of the sentence.
  if (is_separator && !digit && !(upper && lower)) return Verdict::kReject;
  if (digit && alpha && bits >= 2.5) return Verdict::kAccept;
  // A password need not hold a digit: a long value mixing upper and lower
  // case with symbols, named by its key, is one too (prose values are words).
  const int kinds = int{digit} + int{upper} + int{lower} + int{symbol};
  const bool mixed = kinds >= 3 && value.size() >= 10 && bits >= 3.0;
  const bool long_random = kinds >= 2 && value.size() >= 12 && bits >= 3.0;
  return mixed || long_random ? Verdict::kAccept : Verdict::kReject;
}

// Phone numbers. The expression finds runs of digits and phone punctuation;
// the run is split into digit groups and classified:
//   +CC ...            8-15 digits                       accepted
//   00CC ...           10-17 digits                      accepted
//   (NPA) NXX-XXXX, NPA-NXX-XXXX, 1-NPA-NXX-XXXX          accepted
//   0... national trunk prefix, >= 2 groups, 9-12 digits   accepted
//   >= 3 groups of >= 2 digits, 8-12 digits              accepted
//   anything else of 7-12 digits (e.g. "467 3395", "4258829090", "699 956 915")
//                                                          needs a context word
// Runs that are SSN-shaped (3-2-4), IPv4-shaped, dates or thousands-grouped
// numbers ("1 234 567") are not accepted without context.
struct PhoneShape {
  std::array<uint8_t, 12> size{};  // digits per group
  std::array<uint16_t, 12> value{};
  int groups = 0;
  int digits = 0;
  bool plus = false;
  bool two_seps = false;  // more than one kind of separator between groups
  char sep = '\0';
};

bool looks_like_date(const PhoneShape& p) {
  for (int g = 0; g + 2 < p.groups; ++g) {
    const int a = p.value[g], b = p.value[g + 1], c = p.value[g + 2];
    if (p.size[g] == 4 && p.size[g + 1] == 2 && p.size[g + 2] == 2 && a >= 1900 && a <= 2099 &&
        b >= 1 && b <= 12 && c >= 1 && c <= 31) {
      return true;
    }
    if (p.size[g] <= 2 && p.size[g + 1] <= 2 && p.size[g + 2] == 4 && c >= 1900 && c <= 2099 &&
        a >= 1 && b >= 1 && std::min(a, b) <= 12 && std::max(a, b) <= 31) {
      return true;
    }
  }
  return false;
}

bool is_phone_char(char c) {
  return is_digit(c) || c == ' ' || c == '(' || c == ')' || c == '.' || c == '-' || c == '+';
}

// Where the number proper ends when the match ends in an extension ("x123",
// "ext. 12", "extension 4"), or `end` when it does not.
uint32_t before_extension(std::string_view t, uint32_t end) {
  uint32_t k = end;
  while (k > 0 && end - k < 6 && is_digit(t[k - 1])) --k;
  if (k > 0 && t[k - 1] == ' ') --k;
  for (std::string_view word : {"extension", "ext.", "ext", "x"}) {
    if (k < word.size() || !iequals(t.substr(k - word.size(), word.size()), word)) continue;
    uint32_t m = k - static_cast<uint32_t>(word.size());
    if (m > 0 && t[m - 1] == ' ') --m;
    return m > 0 && is_digit(t[m - 1]) ? m : end;
  }
  return end;
}

// The expression has no start of match (tracking it over a run of digits and
// separators is slow on digit-heavy text); the run is read back from the end.
Verdict check_phone(std::string_view t, Span& s) {
  // Most reports end inside a longer run of digits and separators; drop them first.
  if (continues_right(t, s.end, " -.")) return Verdict::kReject;
  const uint32_t main_end = before_extension(t, s.end);
  constexpr uint32_t kMaxRun = 40;
  s.begin = main_end;
  while (s.begin > 0 && main_end - s.begin < kMaxRun && is_phone_char(t[s.begin - 1])) --s.begin;
  while (s.begin < main_end && !is_digit(t[s.begin]) && t[s.begin] != '+' && t[s.begin] != '(') {
    ++s.begin;
  }
  // Split at separator runs no phone number has (" - ", "..", ") ("): only the
  // last piece ends at this end offset; earlier ones are reported at theirs.
  uint32_t start = s.begin;
  for (uint32_t i = s.begin; i < main_end;) {
    if (is_digit(t[i])) {
      ++i;
      continue;
    }
    uint32_t j = i;
    while (j < main_end && !is_digit(t[j])) ++j;
    const std::string_view run = t.substr(i, j - i);
    static constexpr std::string_view kJoins[] = {" ", "-", ".", ")", ") ", ")-", " (", "("};
    const bool leading = i == s.begin && (run == "+" || run == "(" || run == "+(");
    if (!leading && std::find(std::begin(kJoins), std::end(kJoins), run) == std::end(kJoins)) {
      start = t[j - 1] == '(' || t[j - 1] == '+' ? j - 1 : j;
    }
    i = j;
  }
  if (start == main_end) return Verdict::kReject;

  const char l = before(t, start);
  if (is_word(l) || continues_left(t, start, " -.")) return Verdict::kReject;

  PhoneShape p;
  p.plus = t[start] == '+';
  bool in_group = false;
  bool paren_open = false;
  bool trunk_zero = false;  // "+44 (0)20 ...": the (0) is dialled only nationally
  for (uint32_t i = start; i < main_end; ++i) {
    const char c = t[i];
    if (is_digit(c)) {
      if (!in_group) {
        if (p.groups == static_cast<int>(p.size.size())) return Verdict::kReject;
        ++p.groups;
        in_group = true;
      }
      auto& size = p.size[p.groups - 1];
      auto& value = p.value[p.groups - 1];
      ++size;
      if (size <= 4) value = static_cast<uint16_t>(value * 10 + (c - '0'));
      ++p.digits;
      continue;
    }
    in_group = false;
    if (c == '(') {
      if (paren_open) return Verdict::kReject;
      paren_open = true;
    } else if (c == ')') {
      if (!paren_open) return Verdict::kReject;
      paren_open = false;
      if (p.plus && p.groups == 2 && p.size[1] == 1 && p.value[1] == 0) trunk_zero = true;
    } else if (c != '+' && t[i - 1] != ')' && at(t, i + 1) != '(') {
      if (p.sep != '\0' && p.sep != c) p.two_seps = true;
      p.sep = c;
    }
  }
  if (paren_open || p.two_seps) return Verdict::kReject;
  const int digits = p.digits - (trunk_zero ? 1 : 0);
  const char first = t[start] == '+' || t[start] == '(' ? at(t, start + 1) : t[start];
  if (p.plus) return digits >= 8 && digits <= 15 ? Verdict::kAccept : Verdict::kReject;
  if (digits < 7) return Verdict::kReject;
  if (first == '0' && at(t, start + 1) == '0' && p.size[0] >= 3) {
    return digits >= 10 && digits <= 17 && t[start + 2] != '0' ? Verdict::kAccept
                                                               : Verdict::kReject;
  }
  if (digits > 12) return Verdict::kReject;
  const auto& z = p.size;
  const bool ssn_shape = p.groups == 3 && z[0] == 3 && z[1] == 2 && z[2] == 4 && p.sep != '.';
  const bool ipv4_shape =
      p.groups == 4 && p.sep == '.' && z[0] <= 3 && z[1] <= 3 && z[2] <= 3 && z[3] <= 3;
  if (ssn_shape || ipv4_shape || looks_like_date(p)) return Verdict::kReject;
  const bool nanp =
      (p.groups == 3 && z[0] == 3 && z[1] == 3 && z[2] == 4) ||
      (p.groups == 4 && z[0] == 1 && p.value[0] == 1 && z[1] == 3 && z[2] == 3 && z[3] == 4);
  if (nanp) return Verdict::kAccept;
  const bool groups_of_two =
      std::all_of(z.begin(), z.begin() + p.groups, [](uint8_t n) { return n >= 2; });
  if (first == '0' && p.groups >= 2 && z[0] >= 2 && groups_of_two && digits >= 9) {
    return Verdict::kAccept;
  }
  const bool thousands =
      (p.sep == ' ' || p.sep == '.') && z[0] <= 3 &&
      std::all_of(z.begin() + 1, z.begin() + p.groups, [](uint8_t n) { return n == 3; });
  if (p.groups >= 3 && groups_of_two && digits >= 8 && !thousands) return Verdict::kAccept;
  if (p.groups == 1 || groups_of_two) {
    s.begin = start;
    s.end = main_end;
    return Verdict::kNeedsContext;
  }
  return Verdict::kReject;
}

bool is_local_part_char(char c) {
  return is_alnum(c) || c == '.' || c == '_' || c == '%' || c == '+' || c == '-';
}

// The match is "x@y"; the address is read outwards from the '@': a local part
// of up to 64 characters, a domain of dot-separated labels ending in a
// 2-24 letter top-level domain.
Verdict check_email(std::string_view t, Span& s) {
  const uint32_t atsign = s.begin + 1;
  uint32_t b = atsign;
  while (b > 0 && atsign - b < 64 && is_local_part_char(t[b - 1])) --b;
  // Leading dots and dashes are punctuation around the address.
  while (b < atsign && !is_alnum(t[b])) ++b;
  uint32_t e = atsign + 1;
  while (e < t.size() && e - atsign <= 253 && (is_alnum(t[e]) || t[e] == '.' || t[e] == '-')) ++e;
  while (e > atsign + 1 && (t[e - 1] == '.' || t[e - 1] == '-')) --e;
  if (b == atsign || t[atsign - 1] == '.' || is_word(at(t, e))) return Verdict::kReject;
  const std::string_view local = t.substr(b, atsign - b);
  const std::string_view domain = t.substr(atsign + 1, e - atsign - 1);
  if (local.find("..") != std::string_view::npos || domain.find("..") != std::string_view::npos ||
      domain.find(".-") != std::string_view::npos || domain.find("-.") != std::string_view::npos ||
      domain.front() == '-') {
    return Verdict::kReject;
  }
  const size_t dot = domain.rfind('.');
  if (dot == std::string_view::npos) return Verdict::kReject;
  const std::string_view tld = domain.substr(dot + 1);
  if (tld.size() < 2 || tld.size() > 24 || !std::all_of(tld.begin(), tld.end(), is_alpha)) {
    return Verdict::kReject;
  }
  s = {b, e};
  return Verdict::kAccept;
}

}  // namespace

// Whether a context word for a phone number (`phone`) or an SSN/ITIN is within
// reach of the candidate. Words are runs of ASCII letters and non-ASCII bytes,
// compared in ASCII lower case; "soc sec", "S.S.N." and "ss#" are
// two-token forms ("social" alone counts: "my social is ...").
bool has_context(std::string_view t, Span s, bool phone) {
  const uint32_t lo = s.begin > kContextBefore ? s.begin - kContextBefore : 0;
  const auto hi =
      static_cast<uint32_t>(std::min<uint64_t>(t.size(), uint64_t{s.end} + kContextAfter));
  const auto in_word = [&](uint32_t k) {
    const auto c = static_cast<unsigned char>(at(t, k));
    return std::isalpha(c) || c >= 0x80;
  };
  char word[24];
  char prev[24] = {};
  uint32_t i = lo;
  while (i < hi) {
    if (!in_word(i)) {
      ++i;
      continue;
    }
    const bool cut = i > 0 && in_word(i - 1);
    uint32_t n = 0;
    while (i < hi && in_word(i)) {
      if (n < sizeof word)
        word[n] = static_cast<char>(std::tolower(static_cast<unsigned char>(t[i])));
      ++n;
      ++i;
    }
    // Words cut by the window's edge or longer than any context word do not count.
    if (cut || in_word(i) || n >= sizeof word) {
      prev[0] = '\0';
      continue;
    }
    const std::string_view w(word, n);
    if (phone) {
      if (std::find(std::begin(kPhoneWords), std::end(kPhoneWords), w) != std::end(kPhoneWords)) {
        return true;
      }
    } else {
      const std::string_view p(prev);
      if (std::find(std::begin(kSsnWords), std::end(kSsnWords), w) != std::end(kSsnWords) ||
          (w == "sec" && p == "soc") || (w == "n" && p == "s") || (w == "ss" && at(t, i) == '#')) {
        return true;
      }
    }
    std::copy(word, word + n, prev);
    prev[n] = '\0';
  }
  return false;
}

// The value whose first character is at `b`: quoted, it runs to the closing
// quote, spaces and all; otherwise to the next blank or quote, less the
// punctuation that ends a sentence.
Span value_at(std::string_view t, uint32_t b) {
  const char quote = before(t, b) == '"' || before(t, b) == '\'' ? before(t, b) : '\0';
  uint32_t e = b;
  while (e < t.size() && e - b < 128 && t[e] != '"' && t[e] != '\'' && t[e] != '\n' &&
         (quote != '\0' || !std::isspace(static_cast<unsigned char>(t[e])))) {
    ++e;
  }
  while (e > b && std::string_view(".,;!?)").find(t[e - 1]) != std::string_view::npos) --e;
  return {b, e};
}

// The value after "the password for X is": a word a person chose, so not
// one of the words that describe a field, and with a digit, a symbol, or
// both cases in 8 letters or more ("case-sensitive", "required" are not).
Verdict check_password_phrase(std::string_view t, Span& s) {
  const Span value = value_at(t, s.end - 1);
  const std::string_view v = t.substr(value.begin, value.end - value.begin);
  if (v.size() < 4 || v.size() > 64 || describes_field(v) || placeholder(v) ||
      looks_like_code(v, at(t, value.end))) {
    return Verdict::kReject;
  }
  const bool digit = std::any_of(v.begin(), v.end(), is_digit);
  const bool symbol = v.find_first_of("!@#$%^&*_+=~<>?/|") != std::string_view::npos;
  const bool mixed = std::any_of(v.begin(), v.end(), is_upper) &&
                     std::any_of(v.begin(), v.end(), is_lower) && v.size() >= 8 && !is_upper(v[0]);
  if (!digit && !symbol && !mixed) return Verdict::kReject;
  s = value;
  return Verdict::kAccept;
}

// The value a command takes as a password (mysql -pVALUE, sshpass -p VALUE,
// curl -u user:VALUE): the option says what it is, so any value counts but
// a placeholder or a variable ("-p$MYSQL_PWD", "-u user:<password>").
Verdict check_command_password(std::string_view t, Span& s) {
  const Span value = value_at(t, s.end - 1);
  const std::string_view v = t.substr(value.begin, value.end - value.begin);
  if (v.size() < 3 || v.size() > 64 || describes_field(v) || placeholder(v)) {
    return Verdict::kReject;
  }
  s = value;
  return Verdict::kAccept;
}

// The value after a key's name and a blank ("api key 9f8e7d6c..."): with no
// ':' or '=' to say it is one, only a value that looks random counts.
Verdict check_named_key(std::string_view t, Span& s) {
  const uint32_t b = s.end - 1;
  uint32_t e = b;
  while (e < t.size() && e - b < 256 && is_secret_char(t[e])) ++e;
  while (e > b && std::string_view(".,;!?").find(t[e - 1]) != std::string_view::npos) --e;
  const std::string_view v = t.substr(b, e - b);
  const bool digit = std::any_of(v.begin(), v.end(), is_digit);
  const bool alpha = std::any_of(v.begin(), v.end(), is_alpha);
  if (v.size() < 12 || !digit || !alpha || entropy(v) < 3.0 || placeholder(v)) {
    return Verdict::kReject;
  }
  s = {b, e};
  return Verdict::kAccept;
}

// A registry credential in a Docker or Podman config ("auth": "dXNlcjpw..."):
// base64 of "user:password".
Verdict check_docker_auth(std::string_view t, Span& s) {
  const uint32_t b = s.end - 1;
  uint32_t e = b;
  while (e < t.size() && e - b < 1024 &&
         (is_alnum(t[e]) || t[e] == '+' || t[e] == '/' || t[e] == '=')) {
    ++e;
  }
  if (at(t, e) != '"') return Verdict::kReject;
  char buf[192];
  const int n = base64_decode(t.substr(b, e - b), buf, sizeof buf);
  if (n < 3) return Verdict::kReject;
  const std::string_view decoded(buf, static_cast<size_t>(n));
  const size_t colon = decoded.find(':');
  const bool printable = std::all_of(decoded.begin(), decoded.end(), [](char c) {
    return static_cast<unsigned char>(c) >= 0x20 && static_cast<unsigned char>(c) < 0x7f;
  });
  if (!printable || colon == std::string_view::npos || colon == 0 || colon + 1 == decoded.size()) {
    return Verdict::kReject;
  }
  s = {b, e};
  return Verdict::kAccept;
}

// ABA routing numbers: 3, 7, 1 weights over the nine digits, a multiple of 10.
Verdict check_aba_routing(std::string_view t, Span& s) {
  if (s.end < 9) return Verdict::kReject;
  s.begin = s.end - 9;
  int sum = 0;
  static constexpr int kWeights[] = {3, 7, 1, 3, 7, 1, 3, 7, 1};
  for (int i = 0; i < 9; ++i) {
    const char c = t[s.end - 9 + static_cast<uint32_t>(i)];
    if (!is_digit(c)) return Verdict::kReject;
    sum += kWeights[i] * (c - '0');
  }
  return sum % 10 == 0 ? Verdict::kAccept : Verdict::kReject;
}

// The id that ends at s.end (letters, digits, dashes), which must hold a digit.
Verdict check_named_value(std::string_view t, Span& s) {
  uint32_t b = s.end;
  while (b > 0 && s.end - b < 24 && (is_alnum(t[b - 1]) || t[b - 1] == '-')) --b;
  const std::string_view v = t.substr(b, s.end - b);
  if (!std::any_of(v.begin(), v.end(), is_digit)) return Verdict::kReject;
  s.begin = b;
  return Verdict::kAccept;
}

// The date that ends at s.end: back over its digits, month name, separators.
Verdict check_named_date(std::string_view t, Span& s) {
  uint32_t b = s.end;
  while (
      b > 0 && s.end - b < 24 &&
      (is_alnum(t[b - 1]) || std::string_view("/-., ").find(t[b - 1]) != std::string_view::npos)) {
    --b;
  }
  while (b < s.end && !is_digit(t[b]) && !is_alpha(t[b])) ++b;
  s.begin = b;
  return Verdict::kAccept;
}

Verdict validate(Check check, std::string_view t, Span& s, bool& itin) {
  switch (check) {
    case Check::kSsn:
      return check_ssn(t, s, itin);
    case Check::kAccept:
    case Check::kCustom:
      return Verdict::kAccept;
    case Check::kEmail:
      return check_email(t, s);
    case Check::kPhone:
      return check_phone(t, s);
    case Check::kCard:
      return check_card(t, s);
    case Check::kCardAfterWord:
      // The number starts after the word; the hit covers both.
      {
        Span number = s;
        while (number.begin < number.end && !is_digit(t[number.begin])) ++number.begin;
        return check_card(t, number);
      }
    case Check::kIban:
      return check_iban(t, s);
    case Check::kNino:
      return check_nino(t, s);
    case Check::kDni:
      return check_dni(t, s);
    case Check::kFiscalCode:
      return check_fiscal_code(t, s);
    case Check::kNir:
      return check_nir(t, s);
    case Check::kIpv4:
      return check_ipv4(t, s);
    case Check::kIpv6:
      return check_ipv6(t, s);
    case Check::kMac:
      return check_mac(t, s);
    case Check::kPrivateKey:
      return check_private_key(t, s);
    case Check::kOpenAi:
      return check_openai(t, s);
    case Check::kTokenWithDigit:
      return check_token_with_digit(t, s);
    case Check::kTokenExact:
      return check_token_exact(t, s);
    case Check::kJwt:
      return check_jwt(t, s);
    case Check::kBearer:
      return check_bearer(t, s);
    case Check::kBasic:
      return check_basic(t, s);
    case Check::kUrlCredentials:
      return check_url_credentials(t, s);
    case Check::kPasswordPhrase:
      return check_password_phrase(t, s);
    case Check::kCommandPassword:
      return check_command_password(t, s);
    case Check::kNamedKey:
      return check_named_key(t, s);
    case Check::kDockerAuth:
      return check_docker_auth(t, s);
    case Check::kAbaRouting:
      return check_aba_routing(t, s);
    case Check::kNamedValue:
      return check_named_value(t, s);
    case Check::kNamedDate:
      return check_named_date(t, s);
    case Check::kGenericSecret:
      return check_generic_secret(t, s);
    case Check::kNhsNumber:
    case Check::kCanadaSin:
    case Check::kAadhaar:
    case Check::kDutchBsn:
    case Check::kBrazilCpf:
    case Check::kGermanTaxId:
    case Check::kPesel:
    case Check::kAustraliaTfn:
    case Check::kSingaporeNric:
    case Check::kKoreaRrn:
    case Check::kFinlandHetu:
    case Check::kIndiaPan:
      return check_national_id(check, t, s);
    case Check::kCustomPrefilter:
    case Check::kNumberWords:
      break;
  }
  return Verdict::kReject;
}

}  // namespace foreshore::route::detection
