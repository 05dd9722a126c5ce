// National ids of countries beyond the US, UK, Spain, Italy and France, each
// confirmed by the check digits its issuer defines. The expressions
// (sensitivity_detectors.h) find most of them after their name ("BSN",
// "Aadhaar", "social insurance number"): bare, nine to twelve digits that
// pass a mod-10 or mod-11 test are too common. The formats that carry their
// own shape (the CPF's 123.456.789-09, an NRIC's S1234567D, a date of birth
// before a serial) are found anywhere.
#include <array>
#include <cstdint>
#include <string_view>

#include "route/sensitivity_validators.h"

namespace foreshore::route::detection {
namespace {

using Digits = std::array<int, 16>;

// The last n digits before `end`, single separators (space, '-', '.')
// allowed between them; their values in order. False when fewer are there.
bool digits_back(std::string_view t, Span& s, int n, Digits& d) {
  uint32_t i = s.end;
  int got = 0;
  while (got < n && i > 0) {
    const char c = t[i - 1];
    if (is_digit(c)) {
      d[static_cast<size_t>(n - 1 - got)] = c - '0';
      ++got;
    } else if (!(got > 0 && (c == ' ' || c == '-' || c == '.') && i >= 2 && is_digit(t[i - 2]))) {
      return false;
    }
    --i;
  }
  s.begin = i;
  return got == n;
}

bool all_same(const Digits& d, int n) {
  for (int i = 1; i < n; ++i) {
    if (d[static_cast<size_t>(i)] != d[0]) return false;
  }
  return true;
}

int weighted(const Digits& d, std::initializer_list<int> weights) {
  int sum = 0;
  size_t i = 0;
  for (const int w : weights) sum += d[i++] * w;
  return sum;
}

bool nhs_ok(const Digits& d) {
  const int check = 11 - weighted(d, {10, 9, 8, 7, 6, 5, 4, 3, 2}) % 11;
  if (check == 10) return false;
  return (check == 11 ? 0 : check) == d[9];
}

bool sin_ok(const Digits& d) {
  char ascii[9];
  for (size_t i = 0; i < 9; ++i) ascii[i] = static_cast<char>('0' + d[i]);
  return luhn_ok(ascii, 9);
}

bool verhoeff_ok(const Digits& d, int n) {
  static constexpr uint8_t kMultiply[10][10] = {
      {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, {1, 2, 3, 4, 0, 6, 7, 8, 9, 5},
      {2, 3, 4, 0, 1, 7, 8, 9, 5, 6}, {3, 4, 0, 1, 2, 8, 9, 5, 6, 7},
      {4, 0, 1, 2, 3, 9, 5, 6, 7, 8}, {5, 9, 8, 7, 6, 0, 4, 3, 2, 1},
      {6, 5, 9, 8, 7, 1, 0, 4, 3, 2}, {7, 6, 5, 9, 8, 2, 1, 0, 4, 3},
      {8, 7, 6, 5, 9, 3, 2, 1, 0, 4}, {9, 8, 7, 6, 5, 4, 3, 2, 1, 0}};
  static constexpr uint8_t kPermute[8][10] = {
      {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, {1, 5, 7, 6, 2, 8, 3, 0, 9, 4},
      {5, 8, 0, 3, 7, 9, 6, 1, 4, 2}, {8, 9, 1, 6, 0, 4, 3, 5, 2, 7},
      {9, 4, 5, 3, 1, 2, 6, 8, 7, 0}, {4, 2, 8, 6, 5, 7, 3, 9, 0, 1},
      {2, 7, 9, 3, 8, 0, 6, 4, 1, 5}, {7, 0, 4, 6, 9, 1, 3, 2, 5, 8}};
  int c = 0;
  for (int i = 0; i < n; ++i) {
    const int digit = d[static_cast<size_t>(n - 1 - i)];
    c = kMultiply[c][kPermute[i % 8][digit]];
  }
  return c == 0;
}

bool aadhaar_ok(const Digits& d) {
  return d[0] >= 2 && verhoeff_ok(d, 12);
}

bool bsn_ok(const Digits& d) {
  const int sum = weighted(d, {9, 8, 7, 6, 5, 4, 3, 2}) - d[8];
  return sum % 11 == 0 && !all_same(d, 9);
}

bool cpf_ok(const Digits& d) {
  if (all_same(d, 11)) return false;
  const int first = weighted(d, {10, 9, 8, 7, 6, 5, 4, 3, 2}) * 10 % 11 % 10;
  const int second = weighted(d, {11, 10, 9, 8, 7, 6, 5, 4, 3, 2}) * 10 % 11 % 10;
  return first == d[9] && second == d[10];
}

// ISO 7064 MOD 11,10, and the issuer's rule that one digit of the first ten
// appears twice or three times and every other at most once.
bool german_tax_id_ok(const Digits& d) {
  if (d[0] == 0) return false;
  std::array<int, 10> count{};
  for (size_t i = 0; i < 10; ++i) ++count[static_cast<size_t>(d[i])];
  int repeated = 0;
  for (const int k : count) {
    if (k > 3) return false;
    if (k > 1) ++repeated;
  }
  if (repeated != 1) return false;
  int product = 10;
  for (size_t i = 0; i < 10; ++i) {
    int sum = (d[i] + product) % 10;
    if (sum == 0) sum = 10;
    product = sum * 2 % 11;
  }
  const int check = 11 - product;
  return (check == 10 ? 0 : check) == d[10];
}

bool valid_day_month(int day, int month) {
  return month >= 1 && month <= 12 && day >= 1 && day <= 31;
}

bool pesel_ok(const Digits& d) {
  const int month = (d[2] * 10 + d[3]) % 20;  // +20 per century after 1900
  const int day = d[4] * 10 + d[5];
  const int check = (10 - weighted(d, {1, 3, 7, 9, 1, 3, 7, 9, 1, 3}) % 10) % 10;
  return valid_day_month(day, month) && check == d[10];
}

bool tfn_ok(const Digits& d) {
  return weighted(d, {1, 4, 3, 7, 5, 8, 6, 9, 10}) % 11 == 0 && !all_same(d, 9);
}

// S1234567D: weights over the seven digits, an offset for the T and G series,
// the letter table of the S/T or F/G series.
Verdict check_nric(std::string_view t, Span& s) {
  if (s.end < 9) return Verdict::kReject;
  s.begin = s.end - 9;
  const char series = t[s.begin];
  static constexpr int kWeights[] = {2, 7, 6, 5, 4, 3, 2};
  int sum = 0;
  for (uint32_t i = 0; i < 7; ++i) sum += (t[s.begin + 1 + i] - '0') * kWeights[i];
  if (series == 'T' || series == 'G') sum += 4;
  const std::string_view letters = series == 'S' || series == 'T' ? "JZIHGFEDCBA" : "XWUTRQPNMLK";
  return letters[static_cast<size_t>(sum % 11)] == t[s.end - 1] ? Verdict::kAccept
                                                                : Verdict::kReject;
}

int two_digits(std::string_view t, uint32_t i) {
  return (t[i] - '0') * 10 + (t[i + 1] - '0');
}

// YYMMDD-GNNNNNN: a real birth date (the check digit was dropped in 2020).
Verdict check_korea_rrn(std::string_view t, Span& s) {
  if (s.end < 14) return Verdict::kReject;
  s.begin = s.end - 14;
  return valid_day_month(two_digits(t, s.begin + 4), two_digits(t, s.begin + 2)) ? Verdict::kAccept
                                                                                 : Verdict::kReject;
}

// DDMMYYCNNNX: a real birth date, and X the 31-character table's entry for
// DDMMYYNNN mod 31.
Verdict check_finland_hetu(std::string_view t, Span& s) {
  if (s.end < 11) return Verdict::kReject;
  s.begin = s.end - 11;
  if (!valid_day_month(two_digits(t, s.begin), two_digits(t, s.begin + 2))) {
    return Verdict::kReject;
  }
  uint32_t value = 0;
  for (uint32_t i = 0; i < 10; ++i) {
    if (i == 6) continue;  // the century sign
    value = value * 10 + static_cast<uint32_t>(t[s.begin + i] - '0');
  }
  static constexpr std::string_view kTable = "0123456789ABCDEFHJKLMNPRSTUVWXY";
  return kTable[value % 31] == t[s.end - 1] ? Verdict::kAccept : Verdict::kReject;
}

// The expression matched a PAN's ten characters of fixed shape.
Verdict check_india_pan(Span& s) {
  if (s.end < 10) return Verdict::kReject;
  s.begin = s.end - 10;
  return Verdict::kAccept;
}

// Ids of digits alone: how many, and their check.
struct DigitId {
  Check check;
  int digits;
  bool (*ok)(const Digits&);
};
constexpr DigitId kDigitIds[] = {
    {Check::kNhsNumber, 10, nhs_ok},   {Check::kCanadaSin, 9, sin_ok},
    {Check::kAadhaar, 12, aadhaar_ok}, {Check::kDutchBsn, 9, bsn_ok},
    {Check::kBrazilCpf, 11, cpf_ok},   {Check::kGermanTaxId, 11, german_tax_id_ok},
    {Check::kPesel, 11, pesel_ok},     {Check::kAustraliaTfn, 9, tfn_ok},
};

}  // namespace

Verdict check_national_id(Check check, std::string_view t, Span& s) {
  if (check == Check::kSingaporeNric) return check_nric(t, s);
  if (check == Check::kKoreaRrn) return check_korea_rrn(t, s);
  if (check == Check::kFinlandHetu) return check_finland_hetu(t, s);
  if (check == Check::kIndiaPan) return check_india_pan(s);
  if (is_alnum(at(t, s.end))) return Verdict::kReject;
  for (const DigitId& id : kDigitIds) {
    if (id.check != check) continue;
    Digits d{};
    return digits_back(t, s, id.digits, d) && id.ok(d) ? Verdict::kAccept : Verdict::kReject;
  }
  return Verdict::kReject;
}

}  // namespace foreshore::route::detection
