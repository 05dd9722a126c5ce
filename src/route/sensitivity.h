// Sensitivity signal: which data class a request belongs to, decided on the
// device before any byte of it can reach a cloud tier.
//
// All message text goes through one Hyperscan scan of every detector (PII,
// secrets, national ids, configured patterns and keywords). Candidates are
// then confirmed by validators that a regular expression cannot express
// (Luhn, IBAN mod-97, SSN ranges, IP octets, national-id check characters,
// JWT headers, context words for ambiguous phone and SSN forms). Each hit maps
// to a class; the strictest class found, made stricter (never looser) by the
// class the client declares, is the request's class. The detectors, their
// formats and the measured recall/precision are in docs/PRIVACY.md.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace foreshore::route {

// Ordered from least to most strict; "strictest wins" is the larger value.
enum class DataClass : uint8_t {
  kPublic = 0,       // may go to any tier
  kPreferLocal = 1,  // keep on the device unless the edge cannot serve it
  kContractual = 2,  // only tiers covered by a data-processing agreement
  kDeviceOnly = 3,   // never leaves the device, on any path
};

std::string_view to_string(DataClass data_class);
// Accepts the names above ("device-only", "contractual", "prefer-local",
// "public"), case-insensitively, with '_' for '-'. Used for the header
// x-foreshore-data-class and metadata.data_class as well as the config.
Result<DataClass> parse_data_class(std::string_view text);
inline DataClass stricter(DataClass a, DataClass b) {
  return a < b ? b : a;
}

// The built-in detectors, by the names used in config, hits and logs.
struct BuiltinDetectorInfo {
  std::string_view name;
  DataClass default_class;
  std::string_view what;  // one line for docs and error messages
};
std::span<const BuiltinDetectorInfo> builtin_detectors();

struct PatternRule {
  std::string name;
  std::string regex;  // Hyperscan syntax; constructs it lacks (look-arounds) are confirmed by PCRE2
  DataClass data_class = DataClass::kDeviceOnly;
};

struct KeywordRule {
  std::string name;                // defaults to "keywords_<i>" when read from YAML
  std::vector<std::string> words;  // whole words, ASCII-case-insensitive; a space matches any run
  DataClass data_class = DataClass::kDeviceOnly;
};

// Read from the gateway YAML's privacy: section by hybrid/config.h
// (sensitivity_config_from_yaml).
struct SensitivityConfig {
  // Overrides of built-in detectors' classes by name; a detector not listed
  // keeps its default class, std::nullopt turns it off.
  std::map<std::string, std::optional<DataClass>, std::less<>> detectors;
  std::vector<PatternRule> patterns;
  std::vector<KeywordRule> keywords;
  // Hits beyond this are counted in hits_total but not listed, so that a
  // hostile prompt cannot make the decision record grow without bound.
  uint32_t max_listed_hits = 256;
};

enum class RuleKind : uint8_t { kDetector, kPattern, kKeyword };

// Where a detector fired. Spans only: the matched text is never copied, so a
// hit can go to the decision log as it is. A caller that must show the text
// (a local `route --explain`) can cut it from the message it passed in.
struct SensitivityHit {
  std::string detector;  // built-in detector name or configured rule name
  RuleKind kind = RuleKind::kDetector;
  DataClass data_class = DataClass::kPublic;
  uint32_t message = 0;  // index into the texts given to scan()
  uint32_t begin = 0;    // byte offsets in that text, end exclusive
  uint32_t end = 0;
};

struct SensitivityResult {
  DataClass data_class = DataClass::kPublic;  // the decision: stricter of detected and declared
  DataClass detected = DataClass::kPublic;    // from the hits alone
  std::optional<DataClass> declared;          // as the client sent it
  // What decided data_class: "detector:NAME", "pattern:NAME", "keyword:NAME"
  // (the first hit, in text order, of the winning class), "declared" when the
  // declared class is stricter than every hit, or "none".
  std::string rule;
  std::vector<SensitivityHit> hits;  // ordered by message, then begin
  uint32_t hits_total = 0;           // including those beyond max_listed_hits
};

void to_json(nlohmann::json& out, const SensitivityResult& result);

// Compiled detectors. Create once at start (compiling takes a few hundred ms);
// scan() is const, thread-safe and allocates only the result (each thread
// keeps its own Hyperscan scratch and work buffers).
class SensitivityDetector {
 public:
  // Errors name the config key at fault (privacy.patterns[i].regex, ...).
  static Result<std::unique_ptr<SensitivityDetector>> create(const SensitivityConfig& config);
  ~SensitivityDetector();
  SensitivityDetector(const SensitivityDetector&) = delete;
  SensitivityDetector& operator=(const SensitivityDetector&) = delete;

  // Scans each text separately (a match never spans two messages).
  SensitivityResult scan(std::span<const std::string_view> texts,
                         std::optional<DataClass> declared = std::nullopt) const;
  SensitivityResult scan(std::string_view text,
                         std::optional<DataClass> declared = std::nullopt) const {
    return scan(std::span<const std::string_view>(&text, 1), declared);
  }

  struct Impl;

 private:
  explicit SensitivityDetector(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace foreshore::route
