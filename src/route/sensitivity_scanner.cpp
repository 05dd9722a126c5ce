// The scanner: builds one Hyperscan database of every detector, pattern and
// keyword a configuration turns on, and scans text with it, confirming each
// candidate with its validator (sensitivity_validators.h).
#include <hs/hs.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <limits>

#include "route/sensitivity.h"
#include "route/sensitivity_detectors.h"
#include "route/sensitivity_validators.h"
#include "route/text_normalize.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

namespace foreshore::route {

using namespace detection;

namespace {

// ---------------------------------------------------------------------------
// Compiled state.

struct RuleInfo {
  std::string name;
  RuleKind kind;
  DataClass data_class;
  // Weak detectors give way to a specific one on the same span: an SSN or an
  // IPv4 address is not also a phone number; OPENAI_API_KEY=sk-... is an
  // OpenAI key, not a generic secret.
  bool yields;
  // Reads digit runs joined from a spelling (join_spelled_digits): the
  // detectors of numbers that check digits or a context word confirm.
  bool reads_joined_digits = false;
};

constexpr uint32_t kNoRule = std::numeric_limits<uint32_t>::max();

struct Entry {
  uint32_t rule;  // index into rules; kNoRule when the detector is off
  Check check;
};

struct Pcre2Code {
  pcre2_code* code = nullptr;
  ~Pcre2Code() { pcre2_code_free(code); }
};

std::atomic<uint64_t> g_next_detector_id{1};

struct Candidate {
  uint32_t rule;
  Span span;
};

// Per-thread scan state: a Hyperscan scratch and the work buffers, reused so
// that a scan allocates nothing once a thread has warmed up.
struct ThreadState {
  hs_scratch_t* scratch = nullptr;
  uint64_t sized_for = 0;  // id of the detector the scratch was last checked against
  std::vector<Candidate> hits;
  std::vector<uint32_t> prefiltered;  // rules whose Hyperscan approximation fired
  bool number_words = false;          // the last text scanned reads out a number in words
  pcre2_match_data* match_data = nullptr;

  ThreadState() = default;
  ThreadState(const ThreadState&) = delete;
  ThreadState& operator=(const ThreadState&) = delete;
  ~ThreadState() {
    hs_free_scratch(scratch);
    pcre2_match_data_free(match_data);
  }
};

thread_local ThreadState t_state;

std::string hs_message(hs_compile_error_t* error) {
  std::string message = error != nullptr && error->message != nullptr ? error->message : "unknown";
  hs_free_compile_error(error);
  return message;
}

bool valid_rule_name(std::string_view name) {
  return !name.empty() && name.size() <= 64 && std::all_of(name.begin(), name.end(), [](char c) {
    return is_alnum(c) || c == '_' || c == '-' || c == '.';
  });
}

// Escapes a keyword for Hyperscan; whitespace inside matches any run of it,
// and word boundaries apply where the keyword starts or ends with a word character.
std::string keyword_regex(std::string_view word) {
  std::string out;
  bool space = false;
  for (char c : word) {
    if (std::isspace(static_cast<unsigned char>(c))) {
      space = true;
      continue;
    }
    if (space && !out.empty()) out += "\\s+";
    space = false;
    if (is_alnum(c) || static_cast<unsigned char>(c) >= 0x80) {
      out += c;
    } else {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", static_cast<unsigned char>(c));
      out += hex;
    }
  }
  const auto first = word.find_first_not_of(" \t\r\n");
  const auto last = word.find_last_not_of(" \t\r\n");
  if (first == std::string_view::npos) return {};
  return (is_word(word[first]) ? "\\b" : "") + out + (is_word(word[last]) ? "\\b" : "");
}

}  // namespace

struct SensitivityDetector::Impl {
  uint64_t id = g_next_detector_id.fetch_add(1);
  hs_database_t* db = nullptr;
  std::vector<RuleInfo> rules;
  std::vector<Entry> entries;      // by Hyperscan expression id
  std::vector<Pcre2Code> confirm;  // by rule; set for prefiltered configured patterns
  uint32_t max_listed_hits = 256;
  uint32_t itin_rule = kNoRule;  // ITINs are found by the SSN expression

  ~Impl() { hs_free_database(db); }

  // May narrow or widen the span and, for the SSN expression, switch the rule.
  Verdict validate(Check check, std::string_view t, Span& s, uint32_t& rule) const;
  // False when Hyperscan failed; the caller then fails closed.
  // `joined_digits`: the text is a join_spelled_digits() copy, and only the
  // rules that read one count.
  bool scan_text(std::string_view text, uint32_t message, SensitivityResult& out,
                 bool joined_digits = false) const;
  // Scans a folded or joined copy of message `message` and adds the hits the
  // original's scan (hits from `own` on) did not have, pointing into the original.
  bool scan_copy(const NormalizedText& copy, uint32_t message, size_t own, bool joined_digits,
                 SensitivityResult& out) const;
  void confirm_with_pcre2(uint32_t rule, std::string_view text, ThreadState& ts) const;
};

Verdict SensitivityDetector::Impl::validate(Check check, std::string_view t, Span& s,
                                            uint32_t& rule) const {
  bool itin = false;
  const Verdict v = detection::validate(check, t, s, itin);
  if (check != Check::kSsn) return v;
  if (itin) rule = itin_rule;
  return rule == kNoRule ? Verdict::kReject : v;
}

namespace {

struct ScanContext {
  const SensitivityDetector::Impl* impl;
  std::string_view text;
  ThreadState* ts;
};

}  // namespace

void SensitivityDetector::Impl::confirm_with_pcre2(uint32_t rule, std::string_view text,
                                                   ThreadState& ts) const {
  const pcre2_code* code = confirm[rule].code;
  if (ts.match_data == nullptr) ts.match_data = pcre2_match_data_create(1, nullptr);
  PCRE2_SIZE offset = 0;
  while (offset <= text.size()) {
    const int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), offset,
                               0, ts.match_data, nullptr);
    if (rc < 0) return;
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(ts.match_data);
    if (ov[1] > ov[0]) {
      ts.hits.push_back({rule, {static_cast<uint32_t>(ov[0]), static_cast<uint32_t>(ov[1])}});
    }
    offset = ov[1] > offset ? ov[1] : offset + 1;
  }
}

bool SensitivityDetector::Impl::scan_text(std::string_view text, uint32_t message,
                                          SensitivityResult& out, bool joined_digits) const {
  ThreadState& ts = t_state;
  ts.hits.clear();
  ts.prefiltered.clear();
  ts.number_words = false;

  ScanContext ctx{this, text, &ts};
  const auto on_match = [](unsigned int id, unsigned long long from, unsigned long long to,
                           unsigned int, void* p) -> int {
    auto& c = *static_cast<ScanContext*>(p);
    const Entry& e = c.impl->entries[id];
    Span s{static_cast<uint32_t>(from), static_cast<uint32_t>(to)};
    if (e.check == Check::kNumberWords) {
      c.ts->number_words = true;
      return 0;
    }
    if (e.check == Check::kCustomPrefilter) {
      if (std::find(c.ts->prefiltered.begin(), c.ts->prefiltered.end(), e.rule) ==
          c.ts->prefiltered.end()) {
        c.ts->prefiltered.push_back(e.rule);
      }
      return 0;
    }
    uint32_t rule = e.rule;
    const Verdict v = c.impl->validate(e.check, c.text, s, rule);
    if (v == Verdict::kAccept ||
        (v == Verdict::kNeedsContext && has_context(c.text, s, e.check == Check::kPhone))) {
      c.ts->hits.push_back({rule, s});
    }
    return 0;
  };
  const hs_error_t rc = hs_scan(db, text.data(), static_cast<unsigned int>(text.size()), 0,
                                ts.scratch, on_match, &ctx);
  if (rc != HS_SUCCESS) return false;
  for (uint32_t rule : ts.prefiltered) confirm_with_pcre2(rule, text, ts);

  // One hit per detector per span: merge overlapping candidates of a rule.
  auto& hits = ts.hits;
  std::sort(hits.begin(), hits.end(), [](const Candidate& a, const Candidate& b) {
    return a.rule != b.rule ? a.rule < b.rule : a.span.begin < b.span.begin;
  });
  size_t kept = 0;
  for (size_t i = 0; i < hits.size(); ++i) {
    if (kept > 0 && hits[kept - 1].rule == hits[i].rule &&
        hits[i].span.begin < hits[kept - 1].span.end) {
      hits[kept - 1].span.end = std::max(hits[kept - 1].span.end, hits[i].span.end);
    } else {
      hits[kept++] = hits[i];
    }
  }
  hits.resize(kept);
  std::sort(hits.begin(), hits.end(), [](const Candidate& a, const Candidate& b) {
    return a.span.begin != b.span.begin ? a.span.begin < b.span.begin : a.rule < b.rule;
  });
  for (size_t i = 0; i < hits.size(); ++i) {
    const RuleInfo& rule = rules[hits[i].rule];
    if (joined_digits && !rule.reads_joined_digits) continue;
    if (rule.yields) {
      bool covered = false;
      for (size_t j = 0; j < hits.size() && !covered; ++j) {
        if (hits[j].span.begin >= hits[i].span.end) break;
        covered = j != i && !rules[hits[j].rule].yields && hits[j].span.end > hits[i].span.begin;
      }
      if (covered) continue;
    }
    ++out.hits_total;
    if (out.rule.empty() || rule.data_class > out.detected) {
      static constexpr std::string_view kPrefix[] = {"detector:", "pattern:", "keyword:"};
      out.rule = std::string(kPrefix[static_cast<int>(rule.kind)]) + rule.name;
      out.detected = rule.data_class;
    }
    if (out.hits.size() < max_listed_hits) {
      out.hits.push_back(
          {rule.name, rule.kind, rule.data_class, message, hits[i].span.begin, hits[i].span.end});
    }
  }
  return true;
}

bool SensitivityDetector::Impl::scan_copy(const NormalizedText& copy, uint32_t message, size_t own,
                                          bool joined_digits, SensitivityResult& out) const {
  // Hits point into the original; one already found there is not listed twice.
  const size_t first = out.hits.size();
  const uint32_t total = out.hits_total;
  if (!scan_text(copy.text, message, out, joined_digits)) return false;
  size_t kept = first;
  for (size_t h = first; h < out.hits.size(); ++h) {
    SensitivityHit hit = out.hits[h];
    hit.begin = copy.begin_of[hit.begin];
    hit.end = copy.end_of[hit.end - 1];
    const bool known = std::any_of(
        out.hits.begin() + static_cast<std::ptrdiff_t>(own),
        out.hits.begin() + static_cast<std::ptrdiff_t>(first), [&](const SensitivityHit& o) {
          return o.detector == hit.detector && o.begin < hit.end && hit.begin < o.end;
        });
    if (!known) out.hits[kept++] = std::move(hit);
  }
  out.hits_total = total + static_cast<uint32_t>(kept - first) +
                   (out.hits_total - total - static_cast<uint32_t>(out.hits.size() - first));
  out.hits.resize(kept);
  std::stable_sort(
      out.hits.begin() + static_cast<std::ptrdiff_t>(own), out.hits.end(),
      [](const SensitivityHit& a, const SensitivityHit& b) { return a.begin < b.begin; });
  return true;
}

SensitivityDetector::SensitivityDetector(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SensitivityDetector::~SensitivityDetector() = default;

Result<std::unique_ptr<SensitivityDetector>> SensitivityDetector::create(
    const SensitivityConfig& config) {
  auto impl = std::make_unique<Impl>();
  impl->max_listed_hits = config.max_listed_hits;
  std::vector<std::string> errors;
  std::vector<std::string> regexes;
  std::vector<unsigned> flags;

  for (const auto& [name, cls] : config.detectors) {
    const auto it = std::find_if(kBuiltins.begin(), kBuiltins.end(),
                                 [&](const BuiltinDetectorInfo& b) { return b.name == name; });
    if (it == kBuiltins.end()) {
      errors.push_back("privacy.detectors." + name +
                       ": unknown detector (known: " + known_detector_list() + ")");
    }
  }
  std::array<uint32_t, kBuiltinCount> rule_of{};
  for (uint32_t b = 0; b < kBuiltinCount; ++b) {
    const auto it = config.detectors.find(kBuiltins[b].name);
    const std::optional<DataClass> cls =
        it == config.detectors.end() ? std::optional(kBuiltins[b].default_class) : it->second;
    rule_of[b] = kNoRule;
    if (!cls) continue;
    rule_of[b] = static_cast<uint32_t>(impl->rules.size());
    impl->rules.push_back(
        {std::string(kBuiltins[b].name), RuleKind::kDetector, *cls,
         b == kPhone || b == kGenericSecret,
         b == kCreditCard || b == kIban || b == kUsSsn || b == kUsItin || b == kFrNir});
  }
  const auto add = [&](const char* regex, unsigned f, Entry entry) {
    regexes.emplace_back(regex);
    flags.push_back(f);
    impl->entries.push_back(entry);
  };
  impl->itin_rule = rule_of[kUsItin];
  if (rule_of[kCreditCard] != kNoRule || rule_of[kUsSsn] != kNoRule ||
      rule_of[kUsItin] != kNoRule || rule_of[kFrNir] != kNoRule) {
    add(kNumberWordsRegex, kCaseless | HS_FLAG_SINGLEMATCH, {kNoRule, Check::kNumberWords});
  }
  for (const BuiltinPattern& p : kBuiltinPatterns) {
    const bool wanted =
        rule_of[p.detector] != kNoRule || (p.detector == kUsSsn && impl->itin_rule != kNoRule);
    if (wanted) {
      add(p.regex, p.flags | (p.som ? HS_FLAG_SOM_LEFTMOST : 0u), {rule_of[p.detector], p.check});
    }
  }

  std::vector<std::string> names;
  for (const auto& r : impl->rules) names.push_back(r.name);
  for (const auto& b : kBuiltins) names.emplace_back(b.name);
  const auto check_name = [&](const std::string& name, const std::string& where) {
    if (!valid_rule_name(name)) {
      errors.push_back(where + ".name: '" + name.substr(0, 64) +
                       "' is not a usable name (1-64 letters, digits, '_', '-', '.')");
    } else if (std::find(names.begin(), names.end(), name) != names.end()) {
      errors.push_back(where + ".name: '" + name +
                       "' is already used by a detector or another rule; names must be unique");
    }
    names.push_back(name);
  };

  impl->confirm.resize(impl->rules.size() + config.patterns.size() + config.keywords.size());
  for (size_t i = 0; i < config.patterns.size(); ++i) {
    const PatternRule& p = config.patterns[i];
    const std::string where = "privacy.patterns[" + std::to_string(i) + "]";
    check_name(p.name, where);
    const uint32_t rule = static_cast<uint32_t>(impl->rules.size());
    impl->rules.push_back({p.name, RuleKind::kPattern, p.data_class, false});
    // PCRE2 gives the precise syntax error and confirms what Hyperscan only approximates.
    int pcre_error = 0;
    PCRE2_SIZE pcre_offset = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(p.regex.data()), p.regex.size(),
                                     0, &pcre_error, &pcre_offset, nullptr);
    if (code == nullptr) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(pcre_error, message, sizeof message);
      errors.push_back(where + ".regex: does not compile at offset " + std::to_string(pcre_offset) +
                       ": " + reinterpret_cast<char*>(message) + "; fix the expression");
      continue;
    }
    impl->confirm[rule].code = code;
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
    hs_expr_info_t* info = nullptr;
    hs_compile_error_t* error = nullptr;
    if (hs_expression_info(p.regex.c_str(), 0, &info, &error) == HS_SUCCESS) {
      const bool empty = info->min_width == 0;
      std::free(info);
      if (empty) {
        errors.push_back(where +
                         ".regex: matches the empty string; require at least one character");
        continue;
      }
    } else {
      hs_free_compile_error(error);
    }
    hs_database_t* probe = nullptr;
    if (hs_compile(p.regex.c_str(), HS_FLAG_SOM_LEFTMOST, HS_MODE_BLOCK, nullptr, &probe, &error) ==
        HS_SUCCESS) {
      hs_free_database(probe);
      regexes.push_back(p.regex);
      flags.push_back(HS_FLAG_SOM_LEFTMOST);
      impl->entries.push_back({rule, Check::kCustom});
      continue;
    }
    const std::string exact_error = hs_message(error);
    if (hs_compile(p.regex.c_str(), HS_FLAG_PREFILTER, HS_MODE_BLOCK, nullptr, &probe, &error) ==
        HS_SUCCESS) {
      hs_free_database(probe);
      regexes.push_back(p.regex);
      flags.push_back(HS_FLAG_PREFILTER);
      impl->entries.push_back({rule, Check::kCustomPrefilter});
      continue;
    }
    hs_free_compile_error(error);
    errors.push_back(where + ".regex: Hyperscan cannot compile it (" + exact_error +
                     "); simplify the expression");
  }
  for (size_t i = 0; i < config.keywords.size(); ++i) {
    const KeywordRule& k = config.keywords[i];
    const std::string where = "privacy.keywords[" + std::to_string(i) + "]";
    check_name(k.name, where);
    std::string alternatives;
    for (size_t w = 0; w < k.words.size(); ++w) {
      const std::string re = keyword_regex(k.words[w]);
      if (re.empty()) {
        errors.push_back(where + ".words[" + std::to_string(w) + "]: empty keyword; remove it");
        continue;
      }
      alternatives += (alternatives.empty() ? "" : "|") + re;
    }
    if (k.words.empty()) errors.push_back(where + ".words: no keywords; list at least one");
    if (alternatives.empty()) continue;
    const uint32_t rule = static_cast<uint32_t>(impl->rules.size());
    impl->rules.push_back({k.name, RuleKind::kKeyword, k.data_class, false});
    regexes.push_back("(?:" + alternatives + ")");
    flags.push_back(HS_FLAG_CASELESS | HS_FLAG_SOM_LEFTMOST);
    impl->entries.push_back({rule, Check::kCustom});
  }
  if (!errors.empty()) {
    std::string message;
    for (const auto& e : errors) message += (message.empty() ? "" : "\n") + e;
    return make_error(ErrorKind::kInvalidArgument, message);
  }
  if (regexes.empty()) {
    // Every detector is off: nothing to compile, every scan finds nothing.
    return std::unique_ptr<SensitivityDetector>(new SensitivityDetector(std::move(impl)));
  }

  std::vector<const char*> c_regexes;
  std::vector<unsigned> ids;
  for (size_t i = 0; i < regexes.size(); ++i) {
    c_regexes.push_back(regexes[i].c_str());
    ids.push_back(static_cast<unsigned>(i));
  }
  hs_compile_error_t* error = nullptr;
  if (hs_compile_multi(c_regexes.data(), flags.data(), ids.data(),
                       static_cast<unsigned>(regexes.size()), HS_MODE_BLOCK, nullptr, &impl->db,
                       &error) != HS_SUCCESS) {
    const int which = error != nullptr ? error->expression : -1;
    const std::string message = hs_message(error);
    return make_error(ErrorKind::kInternal,
                      "privacy: compiling the detectors failed at expression " +
                          std::to_string(which) + ": " + message +
                          "; remove configured patterns one by one to find the culprit");
  }
  return std::unique_ptr<SensitivityDetector>(new SensitivityDetector(std::move(impl)));
}

SensitivityResult SensitivityDetector::scan(std::span<const std::string_view> texts,
                                            std::optional<DataClass> declared) const {
  SensitivityResult out;
  out.declared = declared;
  bool ok = true;
  if (impl_->db != nullptr) {
    ThreadState& ts = t_state;
    if (ts.sized_for != impl_->id) {
      // Grows the thread's scratch to fit this database; it stays valid for
      // the databases it was sized for before.
      ok = hs_alloc_scratch(impl_->db, &ts.scratch) == HS_SUCCESS;
      if (ok) ts.sized_for = impl_->id;
    }
    thread_local NormalizedText folded, joined;
    for (size_t m = 0; m < texts.size() && ok; ++m) {
      if (texts[m].empty()) continue;
      if (texts[m].size() > std::numeric_limits<uint32_t>::max() / 2) {
        ok = false;
        break;
      }
      const size_t own = out.hits.size();
      const auto message = static_cast<uint32_t>(m);
      ok = impl_->scan_text(texts[m], message, out);
      // The folded text too: it finds what odd spellings hid, while the
      // original keeps what folding would join (numbers on separate lines).
      const bool number_words = t_state.number_words;
      const SpellingCheck spelling = ok ? check_spelling(texts[m]) : SpellingCheck{};
      const bool was_folded = ok && (spelling.fold || number_words);
      if (was_folded) {
        fold_for_detection(texts[m], folded, number_words);
        ok = impl_->scan_copy(folded, message, own, false, out);
      }
      if (ok && (was_folded || spelling.join) &&
          join_spelled_digits(was_folded ? folded.text : texts[m], joined)) {
        if (was_folded) {
          // Point the joined copy's bytes into the original, through the folded text.
          for (size_t k = 0; k < joined.text.size(); ++k) {
            joined.end_of[k] = folded.end_of[joined.end_of[k] - 1];
            joined.begin_of[k] = folded.begin_of[joined.begin_of[k]];
          }
        }
        ok = impl_->scan_copy(joined, message, own, true, out);
      }
    }
  }
  if (!ok) {
    // Fail closed: text that could not be scanned is treated as secret.
    out.detected = DataClass::kDeviceOnly;
    out.rule = "scan-error";
  }
  out.data_class = declared ? stricter(out.detected, *declared) : out.detected;
  if (out.data_class != out.detected) out.rule = "declared";
  if (out.rule.empty()) out.rule = "none";
  return out;
}

}  // namespace foreshore::route
