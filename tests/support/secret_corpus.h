// Generated device-only secrets in the categories and spellings a hostile
// tester uses, for the privacy property test and the recall table in
// docs/PRIVACY.md. Every secret is valid for its detector (Luhn-valid cards,
// IBANs with correct check digits, SSNs in assigned ranges), so a miss is the
// detector's, never the generator's.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace foreshore::testing {

// xorshift64: the same cases on every platform for a given seed.
class Rng {
 public:
  explicit Rng(uint64_t seed) : x_(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next();
  int below(int n) { return static_cast<int>(next() % static_cast<uint64_t>(n)); }
  std::string digits(int n);

 private:
  uint64_t x_;
};

struct SecretSample {
  std::string category;  // us_ssn, credit_card, iban, aws_key, keyword, password
  std::string spelling;  // how its digits are grouped or written
  std::string text;
};

// The categories and the spellings each can take.
std::span<const std::string_view> secret_categories();
std::span<const std::string_view> secret_spellings(std::string_view category);

// A secret of `category` written with `spelling`.
SecretSample make_secret(Rng& rng, std::string_view category, std::string_view spelling);
// A secret of a random category and spelling.
SecretSample make_secret(Rng& rng);
// Text that looks like numbers and keys but is none (versions, dates, prices,
// order numbers, Luhn-failing card-like runs, placeholders): what a detector
// must leave alone.
std::string make_lookalike(Rng& rng);

}  // namespace foreshore::testing
