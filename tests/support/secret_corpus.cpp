#include "support/secret_corpus.h"

#include <cctype>
#include <cstdio>
#include <iterator>

namespace foreshore::testing {
namespace {

constexpr std::string_view kCategories[] = {"us_ssn",  "credit_card", "iban",
                                            "aws_key", "keyword",     "password"};

// How digits are written: the separator between groups (or between every
// digit), and each digit's form.
enum class DigitForm { kAscii, kFullWidth, kArabicIndic, kDevanagari, kPercent, kHtml, kWords };
struct Spelling {
  std::string_view name;
  std::string_view separator;
  DigitForm form = DigitForm::kAscii;
  bool each_digit = false;  // the separator between every digit, not every group
};
constexpr Spelling kDigitSpellings[] = {
    {"hyphen", "-"},
    {"en dash", "\u2013"},
    {"em dash", "\u2014"},
    {"minus sign", "\u2212"},
    {"dot", "."},
    {"space", " "},
    {"no-break space", "\u00A0"},
    {"zero-width space", "\u200B"},
    {"double space", "  "},
    {"line break", "\n"},
    {"thin space", "\u2009"},
    {"full-width", "-", DigitForm::kFullWidth},
    {"underscore", "_"},
    {"slash", "/"},
    {"spaced hyphen", " - "},
    {"digit by digit", " ", DigitForm::kAscii, true},
    {"arabic-indic digits", " ", DigitForm::kArabicIndic},
    {"devanagari digits", "-", DigitForm::kDevanagari},
    {"percent-encoded", "%20", DigitForm::kPercent},
    {"html references", " ", DigitForm::kHtml},
    {"number words", ", ", DigitForm::kWords},
    {"markdown bold", "** **"},
    {"table cells", "</td><td>"},
};
constexpr std::string_view kDigitSpellingNames[] = {"hyphen",
                                                    "en dash",
                                                    "em dash",
                                                    "minus sign",
                                                    "dot",
                                                    "space",
                                                    "no-break space",
                                                    "zero-width space",
                                                    "double space",
                                                    "line break",
                                                    "thin space",
                                                    "full-width",
                                                    "underscore",
                                                    "slash",
                                                    "spaced hyphen",
                                                    "digit by digit",
                                                    "arabic-indic digits",
                                                    "devanagari digits",
                                                    "percent-encoded",
                                                    "html references",
                                                    "number words",
                                                    "markdown bold",
                                                    "table cells"};
constexpr std::string_view kIbanSpellings[] = {"space", "hyphen", "no-break space", "none"};
constexpr std::string_view kPlain[] = {"plain"};

const Spelling& digit_spelling(std::string_view name) {
  for (const auto& s : kDigitSpellings) {
    if (s.name == name) return s;
  }
  return kDigitSpellings[0];
}

void append_digit(std::string& out, char c, DigitForm form) {
  const int d = c - '0';
  char buf[16];
  switch (form) {
    case DigitForm::kAscii:
      out += c;
      return;
    case DigitForm::kFullWidth:  // U+FF10..FF19
      out += "\xEF\xBC";
      out += static_cast<char>(0x90 + d);
      return;
    case DigitForm::kArabicIndic:  // U+0660..0669
      out += "\xD9";
      out += static_cast<char>(0xA0 + d);
      return;
    case DigitForm::kDevanagari:  // U+0966..096F
      out += "\xE0\xA5";
      out += static_cast<char>(0xA6 + d);
      return;
    case DigitForm::kPercent:
      std::snprintf(buf, sizeof buf, "%%%02X", c);
      out += buf;
      return;
    case DigitForm::kHtml:
      std::snprintf(buf, sizeof buf, "&#%d;", c);
      out += buf;
      return;
    case DigitForm::kWords: {
      static const char* kWords[] = {"zero", "one", "two",   "three", "four",
                                     "five", "six", "seven", "eight", "nine"};
      out += kWords[d];
      return;
    }
  }
}

std::string join(const std::vector<std::string>& groups, const Spelling& s) {
  std::string out;
  bool first = true;
  for (const std::string& group : groups) {
    if (!first && !s.each_digit) out += s.separator;
    for (size_t k = 0; k < group.size(); ++k) {
      if (!first && s.each_digit) out += s.separator;
      if (k > 0 && s.form == DigitForm::kWords) out += ' ';
      first = false;
      append_digit(out, group[k], s.form);
    }
  }
  return out;
}

std::string luhn_card(Rng& rng) {
  static const char* kPrefixes[] = {"4", "51", "52", "55", "6011"};
  std::string d = kPrefixes[rng.below(static_cast<int>(std::size(kPrefixes)))];
  d += rng.digits(15 - static_cast<int>(d.size()));
  int sum = 0;
  for (int i = 0; i < 15; ++i) {
    int v = d[static_cast<size_t>(14 - i)] - '0';
    if (i % 2 == 0) v = v * 2 > 9 ? v * 2 - 9 : v * 2;
    sum += v;
  }
  return d + static_cast<char>('0' + (10 - sum % 10) % 10);
}

std::string gb_iban(Rng& rng) {
  const std::string bban = "WEST" + rng.digits(14);
  // Check digits: 98 - (BBAN + "GB00") mod 97, letters as 10..35.
  int r = 0;
  for (char c : bban + "GB00") {
    const std::string part = std::isdigit(static_cast<unsigned char>(c))
                                 ? std::string(1, c)
                                 : std::to_string(c - 'A' + 10);
    for (char p : part) r = (r * 10 + (p - '0')) % 97;
  }
  const int check = 98 - r;
  return std::string("GB") + static_cast<char>('0' + check / 10) +
         static_cast<char>('0' + check % 10) + bban;
}

}  // namespace

uint64_t Rng::next() {
  x_ ^= x_ << 13;
  x_ ^= x_ >> 7;
  x_ ^= x_ << 17;
  return x_;
}

std::string Rng::digits(int n) {
  std::string d;
  for (int i = 0; i < n; ++i) d += static_cast<char>('0' + below(10));
  return d;
}

std::span<const std::string_view> secret_categories() {
  return kCategories;
}

std::span<const std::string_view> secret_spellings(std::string_view category) {
  if (category == "us_ssn" || category == "credit_card") return kDigitSpellingNames;
  if (category == "iban") return kIbanSpellings;
  return kPlain;
}

SecretSample make_secret(Rng& rng, std::string_view category, std::string_view spelling) {
  SecretSample s{std::string(category), std::string(spelling), {}};
  if (category == "us_ssn") {
    char area[4];
    int a = 1 + rng.below(665);
    std::snprintf(area, sizeof area, "%03d", a == 666 ? 667 : a);
    std::string group = rng.digits(2), serial = rng.digits(4);
    if (group == "00") group = "12";
    if (serial == "0000") serial = "4321";
    const Spelling& sp = digit_spelling(spelling);
    // Grouped by spaces, or run together, nine digits are an SSN only beside
    // a word that says so, as they are to a person reading them.
    const bool standalone = sp.name == "hyphen" || sp.name == "en dash" || sp.name == "em dash" ||
                            sp.name == "minus sign" || sp.name == "dot";
    const std::string ssn = join({area, group, serial}, sp);
    s.text = standalone && rng.below(2) == 0 ? ssn : "SSN " + ssn;
  } else if (category == "credit_card") {
    const std::string c = luhn_card(rng);
    s.text = join({c.substr(0, 4), c.substr(4, 4), c.substr(8, 4), c.substr(12, 4)},
                  digit_spelling(spelling));
  } else if (category == "iban") {
    const std::string iban = gb_iban(rng);
    const std::string sep = spelling == "space"            ? " "
                            : spelling == "hyphen"         ? "-"
                            : spelling == "no-break space" ? "\u00A0"
                                                           : "";
    for (size_t k = 0; k < iban.size(); k += 4) s.text += (k ? sep : "") + iban.substr(k, 4);
  } else if (category == "aws_key") {
    static const char kAlnum[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    s.text = "AKIA";
    for (int k = 0; k < 16; ++k) s.text += kAlnum[rng.below(32)];
  } else if (category == "keyword") {
    s.text = "the patient " + rng.digits(3) + " reports pain";
  } else {
    static const char kChars[] = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789!#%";
    std::string v;
    for (int k = 0; k < 20; ++k) v += kChars[rng.below(static_cast<int>(sizeof kChars - 1))];
    static const char* kKeys[] = {"password=", "api_key: ", "client_secret = ", "pwd is "};
    s.text = kKeys[rng.below(4)] + v;
  }
  return s;
}

SecretSample make_secret(Rng& rng) {
  const auto categories = secret_categories();
  const std::string_view category =
      categories[static_cast<size_t>(rng.below(static_cast<int>(categories.size())))];
  const auto spellings = secret_spellings(category);
  return make_secret(rng, category,
                     spellings[static_cast<size_t>(rng.below(static_cast<int>(spellings.size())))]);
}

std::string make_lookalike(Rng& rng) {
  switch (rng.below(12)) {
    case 8: {
      // Card-shaped, failing Luhn, spelled the way secrets hide.
      std::string c = luhn_card(rng);
      c.back() = static_cast<char>('0' + (c.back() - '0' + 1) % 10);
      static const char* kSeparators[] = {"_", "/", " - "};
      const std::string sep = kSeparators[rng.below(3)];
      return "ticket " + c.substr(0, 4) + sep + c.substr(4, 4) + sep + c.substr(8, 4) + sep +
             c.substr(12, 4);
    }
    case 9:
      return "on " + std::to_string(1 + rng.below(28)) + "/" + std::to_string(1 + rng.below(12)) +
             "/20" + std::to_string(10 + rng.below(20)) + " at " + std::to_string(rng.below(24)) +
             ":" + rng.digits(2);
    case 10: {
      // Nine or more digits spaced out, with no word saying what they are.
      std::string list = "digits";
      for (int k = 0, n = 9 + rng.below(3); k < n; ++k) list += " " + rng.digits(1);
      return list;
    }
    case 11:
      return "files/20" + std::to_string(10 + rng.below(20)) + "_" + rng.digits(2) + "_" +
             rng.digits(2) + "/build_" + rng.digits(3) + ".log";
    case 0:
      return "version " + std::to_string(rng.below(20)) + "." + std::to_string(rng.below(40)) +
             "." + std::to_string(rng.below(200));
    case 1:
      return "on 20" + std::to_string(10 + rng.below(20)) + "-0" +
             std::to_string(1 + rng.below(9)) + "-1" + std::to_string(rng.below(10));
    case 2:
      return "$" + std::to_string(1 + rng.below(9)) + "," + rng.digits(3) + "." + rng.digits(2);
    case 3:
      return "order #" + rng.digits(6) + " shipped";
    case 4: {
      // Card-shaped but failing Luhn.
      std::string c = luhn_card(rng);
      c.back() = static_cast<char>('0' + (c.back() - '0' + 1) % 10);
      return "ref " + c.substr(0, 4) + "-" + c.substr(4, 4) + "-" + c.substr(8, 4) + "-" +
             c.substr(12, 4);
    }
    case 5:
      return "password: YOUR_PASSWORD";
    case 6:
      return "the password is incorrect";
    default:
      return std::to_string(rng.below(1000)) + " apples and " + std::to_string(rng.below(1000)) +
             " pears";
  }
}

}  // namespace foreshore::testing
