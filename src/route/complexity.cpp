#include "route/complexity.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <limits>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>

namespace foreshore::route {
namespace {

using json = nlohmann::ordered_json;

constexpr std::array<std::string_view, kDenseFeatureCount> kDenseNames = {
    "log_chars",       "log_words",      "log_tokens_est",     "log_sentences",   "log_lines",
    "question_marks",  "code_fences",    "code_punct_density", "code_keywords",   "digit_share",
    "math_ops",        "latex",          "equations",          "multi_step_cues", "numbered_items",
    "law_terms",       "medicine_terms", "finance_terms",      "science_terms",   "math_terms",
    "non_ascii_share", "answer_options", "mean_word_len",      "long_word_share", "upper_share",
    "negation_cues",   "stem_log_chars", "option_log_chars",   "numbers",         "numeric_options",
    "pipes",           "has_perplexity", "log_perplexity",
};

constexpr std::string_view kFileFormat = "foreshore.complexity-model";
constexpr int kFileVersion = 1;

// ---- hashing -----------------------------------------------------------------

constexpr uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

// Order matters: "by step" and "step by" are different n-grams.
constexpr uint64_t combine(uint64_t a, uint64_t b) {
  return mix64(a * 0x9e3779b97f4a7c15ull + b + 0x632be59bd9b4e019ull);
}

// Word hashing: bytes are shifted into a 64-bit lane and folded in once per
// eight bytes, so the per-byte work is a shift and an or, not a multiply
// chain. WordHasher and word_hash() must agree; the keyword table is built
// with the latter and looked up with the former.
struct WordHasher {
  uint64_t h = 0x243f6a8885a308d3ull;
  uint64_t lane = 0;
  uint32_t len = 0;

  void add(unsigned char lower) {
    lane = (lane << 8) | lower;
    if ((++len & 7) == 0) {
      h = (h ^ lane) * 0x9e3779b97f4a7c15ull;
      h ^= h >> 29;
      lane = 0;
    }
  }
  uint64_t finish() const { return mix64(h ^ lane ^ (uint64_t{len} << 56)); }
};

constexpr unsigned char to_lower(char ch) {
  const auto c = static_cast<unsigned char>(ch);
  return c >= 'A' && c <= 'Z' ? static_cast<unsigned char>(c + 32) : c;
}

uint64_t word_hash(std::string_view word) {
  WordHasher w;
  for (char ch : word) w.add(to_lower(ch));
  return w.finish();
}

// Numbers hash by shape (digit count, capped) so that "1914" and "1789" share
// weights: the value rarely says anything about difficulty, the shape might.
constexpr uint64_t number_hash(size_t digits) {
  return mix64(0x6e756d626572ull + std::min<size_t>(digits, 5));
}

// ---- keyword table -------------------------------------------------------------

enum KeywordBit : uint16_t {
  kCode = 1 << 0,
  kLaw = 1 << 1,
  kMedicine = 1 << 2,
  kFinance = 1 << 3,
  kScience = 1 << 4,
  kMultiStep = 1 << 5,
  kNegation = 1 << 6,      // counts in any case
  kNegationCaps = 1 << 7,  // counts only when written in capitals ("NOT", "LEAST")
  kMath = 1 << 8,
  kPhraseTail = 1 << 9,  // last word of a phrase: only then are phrases looked up
};

// Open addressing over 64-bit word hashes: a handful of nanoseconds per word,
// where std::unordered_map would dominate the cost of a 64 KiB prompt.
class KeywordTable {
 public:
  KeywordTable() {
    add(kCode,
        {"def",     "elif",       "println",  "printf",    "cout",      "cin",       "namespace",
         "nullptr", "sizeof",     "typedef",  "struct",    "const",     "void",      "int",
         "bool",    "boolean",    "lambda",   "func",      "fn",        "impl",      "var",
         "foreach", "endl",       "stdio",    "iostream",  "malloc",    "argv",      "argc",
         "self",    "html",       "div",      "href",      "json",      "sql",       "regex",
         "python",  "javascript", "java",     "rust",      "golang",    "bash",      "api",
         "http",    "array",      "function", "return",    "import",    "class",     "string",
         "integer", "compile",    "compiler", "runtime",   "recursion", "recursive", "algorithm",
         "pointer", "pointers",   "variable", "variables", "loop",      "code",      "program",
         "script",  "debug",      "bug",      "null",      "async",     "await",     "typescript",
         "kotlin",  "swift"});
    add(kLaw,
        {"law",        "laws",      "legal",        "court",          "courts",       "statute",
         "statutory",  "plaintiff", "defendant",    "contract",       "contracts",    "tort",
         "liability",  "liable",    "jurisdiction", "constitutional", "constitution", "amendment",
         "judge",      "jury",      "attorney",     "lawyer",         "counsel",      "litigation",
         "appeal",     "appellate", "testator",     "easement",       "felony",       "misdemeanor",
         "negligence", "negligent", "damages",      "breach",         "hearsay",      "prosecution",
         "prosecutor", "convicted", "conviction",   "criminal",       "trial",        "verdict",
         "lease",      "tenant",    "landlord",     "deed",           "injunction",   "ordinance",
         "treaty",     "sued",      "suit",         "lawsuit",        "statutes",     "precedent",
         "clause"});
    add(kMedicine,
        {"patient",    "patients", "diagnosis", "clinical",     "symptoms",   "symptom",
         "disease",    "diseases", "treatment", "therapy",      "drug",       "drugs",
         "dose",       "mg",       "blood",     "cardiac",      "heart",      "pulmonary",
         "renal",      "kidney",   "liver",     "hepatic",      "infection",  "virus",
         "viral",      "bacteria", "bacterial", "tumor",        "cancer",     "syndrome",
         "chronic",    "acute",    "pain",      "physician",    "hospital",   "surgery",
         "surgical",   "nerve",    "muscle",    "artery",       "vein",       "antibiotic",
         "insulin",    "glucose",  "pregnancy", "pregnant",     "fever",      "examination",
         "medication", "mmhg",     "pulse",     "respirations", "diagnostic", "lesion",
         "vaccine"});
    add(kFinance,
        {"price",        "prices",    "cost",       "costs",     "market",   "markets",
         "inflation",    "interest",  "gdp",        "tax",       "taxes",    "revenue",
         "profit",       "profits",   "investment", "investor",  "stock",    "stocks",
         "bond",         "bonds",     "bank",       "banks",     "monetary", "fiscal",
         "economy",      "economic",  "economics",  "demand",    "supply",   "equilibrium",
         "elasticity",   "income",    "budget",     "debt",      "deficit",  "loan",
         "capital",      "asset",     "assets",     "dividend",  "equity",   "currency",
         "unemployment", "wage",      "wages",      "firm",      "firms",    "monopoly",
         "consumer",     "consumers", "accounting", "financial", "finance",  "portfolio",
         "dollars"});
    add(kScience,
        {"energy",    "mass",       "velocity",      "acceleration", "force",       "electron",
         "electrons", "proton",     "atom",          "atoms",        "molecule",    "molecules",
         "reaction",  "chemical",   "compound",      "acid",         "ion",         "ions",
         "charge",    "magnetic",   "electric",      "wavelength",   "frequency",   "photon",
         "quantum",   "gravity",    "gravitational", "momentum",     "temperature", "pressure",
         "entropy",   "cell",       "cells",         "dna",          "rna",         "protein",
         "proteins",  "enzyme",     "gene",          "genes",        "genetic",     "species",
         "evolution", "organism",   "membrane",      "oxygen",       "carbon",      "hydrogen",
         "nitrogen",  "molar",      "mol",           "joules",       "kinetic",     "circuit",
         "voltage",   "resistance", "particle",      "particles",    "physics",     "chemistry"});
    add(kMultiStep, {"explain",   "why",       "compare", "contrast",  "analyze",   "analyse",
                     "evaluate",  "derive",    "prove",   "justify",   "calculate", "compute",
                     "solve",     "estimate",  "design",  "implement", "optimize",  "discuss",
                     "elaborate", "reasoning", "proof",   "steps"});
    add_phrases(kMultiStep, {{"step", "by", "step"},
                             {"explain", "why"},
                             {"show", "that"},
                             {"prove", "that"},
                             {"walk", "me", "through"},
                             {"pros", "and", "cons"},
                             {"in", "detail"},
                             {"compare", "and", "contrast"},
                             {"what", "is", "the", "difference"},
                             {"how", "would", "you"},
                             {"trade", "offs"}});
    add(kMath,
        {"equation",     "equations", "integer",    "integers",    "polynomial",   "derivative",
         "integral",     "matrix",    "matrices",   "vector",      "vectors",      "probability",
         "prime",        "primes",    "divisible",  "sum",         "quotient",     "remainder",
         "fraction",     "fractions", "ratio",      "percent",     "percentage",   "average",
         "median",       "variance",  "deviation",  "theorem",     "subgroup",     "isomorphic",
         "homomorphism", "factor",    "factors",    "solve",       "root",         "roots",
         "logarithm",    "exponent",  "sqrt",       "triangle",    "circle",       "angle",
         "radius",       "perimeter", "slope",      "linear",      "quadratic",    "algebra",
         "geometry",     "calculus",  "statistics", "statistical", "distribution", "regression",
         "coefficient",  "estimator", "hypothesis", "infinite",    "finite",       "modulo",
         "arithmetic",   "multiply",  "divided",    "dimension",   "eigenvalue"});
    add(kNegation, {"except"});
    add(kNegationCaps, {"not", "least", "false", "incorrect", "never", "cannot", "no", "only"});
  }

  uint16_t find(uint64_t key) const {
    for (size_t i = slot(key);; i = (i + 1) & (kSlots - 1)) {
      if (keys_[i] == key) return bits_[i];
      if (keys_[i] == 0) return 0;
    }
  }

  // Phrases are matched on the running n-gram hash of their words; at most
  // four words are tracked.
  static uint64_t phrase_mix(uint64_t ngram) { return mix64(ngram ^ 0x7068726173650000ull); }
  static uint64_t phrase_key(std::initializer_list<std::string_view> words) {
    uint64_t h = 0;
    bool first = true;
    for (std::string_view w : words) {
      h = first ? word_hash(w) : combine(h, word_hash(w));
      first = false;
    }
    return phrase_mix(h);
  }

 private:
  static constexpr size_t kSlots = 2048;
  static size_t slot(uint64_t key) { return mix64(key) & (kSlots - 1); }

  void insert(uint64_t key, uint16_t bit) {
    for (size_t i = slot(key);; i = (i + 1) & (kSlots - 1)) {
      if (keys_[i] == key || keys_[i] == 0) {
        keys_[i] = key;
        bits_[i] |= bit;
        return;
      }
    }
  }
  void add(uint16_t bit, std::initializer_list<std::string_view> words) {
    for (std::string_view w : words) insert(word_hash(w), bit);
  }
  void add_phrases(uint16_t bit,
                   std::initializer_list<std::initializer_list<std::string_view>> phrases) {
    for (const auto& p : phrases) {
      insert(phrase_key(p), bit);
      insert(word_hash(*(p.end() - 1)), kPhraseTail);
    }
  }

  std::array<uint64_t, kSlots> keys_{};
  std::array<uint16_t, kSlots> bits_{};
};

const KeywordTable& keywords() {
  static const KeywordTable table;
  return table;
}

// ---- the scanner -----------------------------------------------------------------

struct Counts {
  size_t bytes = 0, ascii_bytes = 0, non_ascii = 0, letters = 0, upper = 0, digits = 0;
  size_t words = 0, word_chars = 0, long_words = 0, numbers = 0;
  size_t sentences = 0, lines = 0, question_marks = 0;
  size_t code_fences = 0, code_punct = 0, code_keywords = 0;
  size_t math_ops = 0, latex = 0, equations = 0;
  size_t multi_step = 0, numbered_items = 0;
  size_t law = 0, medicine = 0, finance = 0, science = 0;
  size_t math = 0;
  size_t numeric_options = 0, pipes = 0;
  size_t options = 0, option_chars = 0, stem_chars = 0, negation = 0;
  bool stem_done = false;
};

// Byte classes, one table lookup per byte instead of a chain of compares.
enum ByteClass : uint8_t {
  kWordByte = 1,  // letters, digits and every byte of a multi-byte UTF-8 character
  kUpperByte = 2,
  kLowerByte = 4,
  kDigitByte = 8,
  kHighByte = 16,  // >= 0x80
  kSpaceByte = 32,
  kSpecialByte = 64,  // punctuation some feature looks at
};

constexpr std::array<uint8_t, 256> make_byte_classes() {
  std::array<uint8_t, 256> t{};
  for (int c = 0; c < 256; ++c) {
    uint8_t v = 0;
    if (c >= 'A' && c <= 'Z') v = kWordByte | kUpperByte;
    if (c >= 'a' && c <= 'z') v = kWordByte | kLowerByte;
    if (c >= '0' && c <= '9') v = kWordByte | kDigitByte;
    if (c >= 0x80) v = kWordByte | kHighByte;
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n') v = kSpaceByte;
    for (char p : std::string_view("\n?{};[]$\\(|.!+-*/^=<>")) {
      if (c == static_cast<unsigned char>(p)) v |= kSpecialByte;
    }
    t[c] = v;
  }
  return t;
}
constexpr std::array<uint8_t, 256> kByteClass = make_byte_classes();

bool is_word_byte(unsigned char c) {
  return kByteClass[c] & kWordByte;
}
bool is_digit(unsigned char c) {
  return kByteClass[c] & kDigitByte;
}
bool is_space(unsigned char c) {
  return kByteClass[c] & kSpaceByte;
}

// Line-start patterns, looked at once per line with bounded lookahead.
struct LineStart {
  bool fence = false;
  bool numbered = false;
  bool option = false;
  bool numeric_option = false;  // the option's text starts with a number
};

LineStart classify_line(std::string_view s, size_t pos) {
  LineStart r;
  size_t i = pos;
  while (i < s.size() && (s[i] == ' ' || s[i] == '\t') && i - pos < 8) ++i;
  if (s.substr(i, 3) == "```" || s.substr(i, 3) == "~~~") {
    r.fence = true;
    return r;
  }
  auto followed_by_space = [&](size_t j) { return j >= s.size() || is_space(s[j]); };
  if (i < s.size() && is_digit(s[i])) {
    size_t j = i;
    while (j < s.size() && is_digit(s[j]) && j - i < 3) ++j;
    if (j < s.size() && (s[j] == '.' || s[j] == ')') && followed_by_space(j + 1)) r.numbered = true;
    return r;
  }
  // "A." / "A)" / "(A)" with A..J: multiple-choice answer options.
  size_t j = i;
  const bool paren = j < s.size() && s[j] == '(';
  if (paren) ++j;
  if (j < s.size() && s[j] >= 'A' && s[j] <= 'J') {
    ++j;
    if (j < s.size() && ((paren && s[j] == ')') || (!paren && (s[j] == '.' || s[j] == ')'))) &&
        followed_by_space(j + 1)) {
      r.option = true;
      size_t k = j + 1;
      while (k < s.size() && (s[k] == ' ' || s[k] == '\t')) ++k;
      if (k < s.size() && (is_digit(s[k]) || s[k] == '$' || s[k] == '-' || s[k] == '.')) {
        r.numeric_option = true;
      }
    }
  }
  return r;
}

// An arithmetic operator counts when it stands between operands: "3x^2 + 1",
// "x = -5", "(a+b)*c". '-' and '/' need a digit or bracket beside them, so
// "well-known" and "and/or" are not arithmetic.
void count_operator(std::string_view s, size_t i, Counts& c) {
  const char op = s[i];
  size_t j = i;
  int skipped = 0;
  while (j > 0 && skipped < 4 && (s[j - 1] == ' ' || s[j - 1] == '\t')) --j, ++skipped;
  if (j == 0) return;
  const unsigned char left = static_cast<unsigned char>(s[j - 1]);
  const bool wordy_ok = op != '-' && op != '/';
  if (!(is_digit(left) || left == ')' || (wordy_ok && is_word_byte(left)))) return;
  size_t k = i + 1;
  skipped = 0;
  while (k < s.size() && skipped < 4 && (s[k] == ' ' || s[k] == '\t')) ++k, ++skipped;
  if (k < s.size() && (s[k] == '-' || s[k] == '+') && k + 1 < s.size() && is_digit(s[k + 1])) ++k;
  if (k >= s.size()) return;
  const unsigned char right = static_cast<unsigned char>(s[k]);
  if (is_digit(right) || right == '(' || (wordy_ok && is_word_byte(right))) {
    ++c.math_ops;
    if (op == '=') ++c.equations;
  }
}

// Calls sink(bucket, sign) for every hashed n-gram and returns how many.
template <typename Sink>
size_t scan(std::string_view s, const HashingSpec& hashing, Counts& c, Sink&& sink) {
  const KeywordTable& table = keywords();
  const uint64_t mask = (uint64_t{1} << hashing.bits) - 1;
  size_t emitted = 0;
  auto emit = [&](uint64_t h) {
    const uint64_t m = mix64(h ^ hashing.seed);
    sink(static_cast<uint32_t>(m & mask), (m >> 63) ? -1.0f : 1.0f);
    ++emitted;
  };

  // Word state.
  WordHasher word;
  uint8_t word_classes = 0;                  // OR of the word's byte classes
  uint64_t prev1 = 0, prev2 = 0, prev3 = 0;  // previous word hashes, 0 = none
  bool code_fence_open = false;

  // Per-byte counts live in registers, not in `c`, which the word lambda
  // writes through a reference.
  size_t upper = 0, letters = 0, digits = 0, non_ascii = 0;

  // Line state.
  bool at_line_start = true;
  bool in_option_line = false;
  size_t line_begin = 0;

  auto end_word = [&]() {
    const size_t len = word.len;
    ++c.words;
    c.word_chars += len;
    if (len >= 10) ++c.long_words;
    uint64_t wh = word.finish();
    if (word_classes == (kWordByte | kDigitByte)) {
      ++c.numbers;
      wh = number_hash(len);
    } else {
      const uint16_t bits = table.find(wh);
      if (bits != 0) {
        if (bits & kCode) ++c.code_keywords;
        if (bits & kLaw) ++c.law;
        if (bits & kMedicine) ++c.medicine;
        if (bits & kFinance) ++c.finance;
        if (bits & kScience) ++c.science;
        if (bits & kMath) ++c.math;
        if (bits & kMultiStep) ++c.multi_step;
        const bool capitals = (word_classes & kUpperByte) && !(word_classes & kLowerByte) &&
                              !(word_classes & kHighByte) && len >= 2;
        if ((bits & kNegation) || ((bits & kNegationCaps) && capitals)) ++c.negation;
        if ((bits & kPhraseTail) && prev1 != 0) {
          const uint64_t two = combine(prev1, wh);
          if (table.find(KeywordTable::phrase_mix(two)) & kMultiStep) ++c.multi_step;
          if (prev2 != 0) {
            const uint64_t three = combine(combine(prev2, prev1), wh);
            if (table.find(KeywordTable::phrase_mix(three)) & kMultiStep) ++c.multi_step;
            if (prev3 != 0) {
              const uint64_t four = combine(combine(combine(prev3, prev2), prev1), wh);
              if (table.find(KeywordTable::phrase_mix(four)) & kMultiStep) ++c.multi_step;
            }
          }
        }
      }
    }
    emit(wh);
    if (hashing.bigrams && prev1 != 0) emit(combine(prev1, wh) ^ 0xb16a4au);
    prev3 = prev2;
    prev2 = prev1;
    prev1 = wh;
    word = WordHasher{};
    word_classes = 0;
  };

  for (size_t i = 0; i < s.size(); ++i) {
    if (at_line_start) {
      at_line_start = false;
      ++c.lines;
      line_begin = i;
      const LineStart ls = classify_line(s, i);
      if (ls.fence) {
        ++c.code_fences;
        code_fence_open = !code_fence_open;
      }
      if (ls.numbered) ++c.numbered_items;
      in_option_line = ls.option && !code_fence_open;
      if (in_option_line) {
        ++c.options;
        if (ls.numeric_option) ++c.numeric_options;
        if (!c.stem_done) {
          c.stem_chars = i;
          c.stem_done = true;
        }
      }
    }
    const unsigned char ch = static_cast<unsigned char>(s[i]);
    const uint8_t cls = kByteClass[ch];
    if (cls & kWordByte) {
      // The whole run of word bytes at once: no line or punctuation checks.
      size_t j = i;
      uint8_t k = cls;
      do {
        word_classes |= k;
        upper += (k & kUpperByte) != 0;
        letters += (k & (kUpperByte | kLowerByte)) != 0;
        digits += (k & kDigitByte) != 0;
        non_ascii += (k & kHighByte) != 0;
        // kUpperByte << 4 == 0x20: the ASCII lower-case offset.
        word.add(
            static_cast<unsigned char>(static_cast<unsigned char>(s[j]) + ((k & kUpperByte) << 4)));
        ++j;
      } while (j < s.size() && ((k = kByteClass[static_cast<unsigned char>(s[j])]) & kWordByte));
      end_word();
      i = j - 1;
      continue;
    }
    if (!(cls & kSpecialByte)) continue;
    switch (ch) {
      case '\n':
        if (in_option_line) c.option_chars += i - line_begin;
        in_option_line = false;
        at_line_start = true;
        break;
      case '?':
      case '.':
      case '!':
        if (ch == '?') ++c.question_marks;
        if (i + 1 == s.size() || is_space(static_cast<unsigned char>(s[i + 1]))) ++c.sentences;
        break;
      case '{':
      case '}':
      case ';':
      case '[':
      case ']':
        ++c.code_punct;
        break;
      case '$':
        ++c.latex;
        break;
      case '|':
        ++c.pipes;
        break;
      case '\\':
        if (i + 1 < s.size() &&
            (kByteClass[static_cast<unsigned char>(s[i + 1])] & (kUpperByte | kLowerByte))) {
          ++c.latex;
        }
        break;
      case '(':
        // Inline options: "... (A) 0.05 Hz (B) 21 Hz". On an option line the
        // line-start check has counted it already.
        if (!in_option_line && i + 2 < s.size() && s[i + 1] >= 'A' && s[i + 1] <= 'E' &&
            s[i + 2] == ')' && (i == 0 || is_space(static_cast<unsigned char>(s[i - 1])))) {
          ++c.options;
          if (!c.stem_done) {
            c.stem_chars = i;
            c.stem_done = true;
          }
        }
        break;
      default:  // + - * / ^ = < >
        count_operator(s, i, c);
        break;
    }
  }
  if (in_option_line) c.option_chars += s.size() - line_begin;
  c.upper = upper;
  c.letters = letters;
  c.digits = digits;
  c.non_ascii = non_ascii;
  c.bytes = s.size();
  c.ascii_bytes = s.size() - non_ascii;
  if (!c.stem_done) c.stem_chars = s.size();
  return emitted;
}

DenseVector finish_dense(const Counts& c, std::optional<double> ppl) {
  DenseVector d{};
  auto set = [&](DenseFeature f, double v) { d[static_cast<int>(f)] = v; };
  auto log1 = [](size_t n) { return std::log1p(static_cast<double>(n)); };
  const double bytes = std::max<size_t>(c.bytes, 1);
  const double words = std::max<size_t>(c.words, 1);
  // About 4 bytes per token for English, 2 for multi-byte scripts.
  const double tokens = c.ascii_bytes / 4.0 + c.non_ascii / 2.0;
  set(DenseFeature::kLogChars, log1(c.bytes));
  set(DenseFeature::kLogWords, log1(c.words));
  set(DenseFeature::kLogTokensEst, std::log1p(tokens));
  set(DenseFeature::kLogSentences, log1(c.sentences));
  set(DenseFeature::kLogLines, log1(c.lines));
  set(DenseFeature::kQuestionMarks, log1(c.question_marks));
  set(DenseFeature::kCodeFences, log1(c.code_fences));
  set(DenseFeature::kCodePunctDensity, c.code_punct / bytes);
  set(DenseFeature::kCodeKeywords, log1(c.code_keywords));
  set(DenseFeature::kDigitShare, c.digits / bytes);
  set(DenseFeature::kMathOps, log1(c.math_ops));
  set(DenseFeature::kLatex, log1(c.latex));
  set(DenseFeature::kEquations, log1(c.equations));
  set(DenseFeature::kMultiStepCues, log1(c.multi_step));
  set(DenseFeature::kNumberedItems, log1(c.numbered_items));
  set(DenseFeature::kLawTerms, log1(c.law));
  set(DenseFeature::kMedicineTerms, log1(c.medicine));
  set(DenseFeature::kFinanceTerms, log1(c.finance));
  set(DenseFeature::kScienceTerms, log1(c.science));
  set(DenseFeature::kMathTerms, log1(c.math));
  set(DenseFeature::kNonAsciiShare, c.non_ascii / bytes);
  set(DenseFeature::kAnswerOptions, log1(c.options));
  set(DenseFeature::kMeanWordLen, c.words ? c.word_chars / words : 0.0);
  set(DenseFeature::kLongWordShare, c.words ? c.long_words / words : 0.0);
  set(DenseFeature::kUpperShare, c.letters ? static_cast<double>(c.upper) / c.letters : 0.0);
  set(DenseFeature::kNegationCues, log1(c.negation));
  set(DenseFeature::kStemLogChars, log1(c.stem_chars));
  set(DenseFeature::kOptionLogChars,
      c.options ? std::log1p(static_cast<double>(c.option_chars) / c.options) : 0.0);
  set(DenseFeature::kNumbers, log1(c.numbers));
  set(DenseFeature::kNumericOptions,
      c.options ? static_cast<double>(c.numeric_options) / c.options : 0.0);
  set(DenseFeature::kPipes, log1(c.pipes));
  if (ppl && std::isfinite(*ppl)) {
    set(DenseFeature::kHasPerplexity, 1.0);
    set(DenseFeature::kLogPerplexity, std::log(std::max(1.0, *ppl)));
  }
  return d;
}

double sigmoid(double z) {
  if (z >= 0) return 1.0 / (1.0 + std::exp(-z));
  const double e = std::exp(z);
  return e / (1.0 + e);
}

// Six significant digits: what the file keeps, so the model in memory after
// training scores exactly like the same model loaded back.
double round6(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return std::strtod(buf, nullptr);
}

Error corrupt(std::string_view source, const std::string& what) {
  return make_error(ErrorKind::kCorrupt,
                    std::string(source) + ": " + what +
                        "; retrain with `foreshore router train` or restore the original file");
}

}  // namespace

std::string_view dense_feature_name(int index) {
  return index >= 0 && index < kDenseFeatureCount ? kDenseNames[index] : std::string_view("?");
}

ComplexityFeatures extract_complexity_features(std::string_view prompt, const HashingSpec& hashing,
                                               std::optional<double> edge_perplexity) {
  ComplexityFeatures f;
  Counts c;
  std::vector<std::pair<uint32_t, float>> raw;
  const size_t n = scan(prompt, hashing, c,
                        [&](uint32_t bucket, float sign) { raw.emplace_back(bucket, sign); });
  f.dense = finish_dense(c, edge_perplexity);
  std::sort(raw.begin(), raw.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  const float scale = n ? 1.0f / std::sqrt(static_cast<float>(n)) : 0.0f;
  for (const auto& [bucket, sign] : raw) {
    if (!f.hashed.empty() && f.hashed.back().first == bucket) {
      f.hashed.back().second += sign * scale;
    } else {
      f.hashed.emplace_back(bucket, sign * scale);
    }
  }
  std::erase_if(f.hashed, [](const auto& e) { return e.second == 0.0f; });
  return f;
}

Result<ComplexityModel> ComplexityModel::create(HashingSpec hashing, double bias,
                                                DenseVector dense_weights, DenseVector dense_mean,
                                                DenseVector dense_scale, std::vector<float> hashed,
                                                double threshold, ComplexityModelInfo info) {
  if (hashing.bits < kMinHashBits || hashing.bits > kMaxHashBits) {
    return make_error(ErrorKind::kInvalidArgument, "hash bits " + std::to_string(hashing.bits) +
                                                       " outside [" + std::to_string(kMinHashBits) +
                                                       ", " + std::to_string(kMaxHashBits) + "]");
  }
  if (hashed.size() != (size_t{1} << hashing.bits)) {
    return make_error(ErrorKind::kInvalidArgument,
                      "hashed weights: " + std::to_string(hashed.size()) + " entries for " +
                          std::to_string(hashing.bits) + " hash bits");
  }
  if (!(threshold >= 0.0 && threshold <= 1.0)) {
    return make_error(ErrorKind::kInvalidArgument,
                      "threshold " + std::to_string(threshold) + " is not a probability in [0, 1]");
  }
  ComplexityModel m;
  m.hashing_ = hashing;
  m.bias_ = round6(bias);
  m.threshold_ = round6(threshold);
  m.info_ = std::move(info);
  m.raw_bias_ = m.bias_;
  for (int i = 0; i < kDenseFeatureCount; ++i) {
    m.dense_weights_[i] = round6(dense_weights[i]);
    m.dense_mean_[i] = round6(dense_mean[i]);
    m.dense_scale_[i] = round6(dense_scale[i]);
    if (!(m.dense_scale_[i] > 0.0) || !std::isfinite(m.dense_scale_[i]) ||
        !std::isfinite(m.dense_weights_[i]) || !std::isfinite(m.dense_mean_[i])) {
      return make_error(ErrorKind::kInvalidArgument,
                        "dense feature '" + std::string(kDenseNames[i]) +
                            "': weight, mean and scale must be finite and scale > 0");
    }
    m.raw_dense_weights_[i] = m.dense_weights_[i] / m.dense_scale_[i];
    m.raw_bias_ -= m.raw_dense_weights_[i] * m.dense_mean_[i];
  }
  if (!std::isfinite(m.bias_)) return make_error(ErrorKind::kInvalidArgument, "bias is not finite");
  for (float& w : hashed) {
    if (!std::isfinite(w)) {
      return make_error(ErrorKind::kInvalidArgument, "a hashed weight is not finite");
    }
    w = static_cast<float>(round6(w));
  }
  m.hashed_ = std::move(hashed);
  return m;
}

Status ComplexityModel::set_threshold(double threshold) {
  if (!(threshold >= 0.0 && threshold <= 1.0)) {
    return make_error(ErrorKind::kInvalidArgument,
                      "threshold " + std::to_string(threshold) + " is not a probability in [0, 1]");
  }
  threshold_ = round6(threshold);
  return Status::Ok();
}

double ComplexityModel::score(std::string_view prompt,
                              std::optional<double> edge_perplexity) const {
  Counts c;
  double acc = 0.0;
  const float* w = hashed_.data();
  const size_t n =
      scan(prompt, hashing_, c, [&](uint32_t bucket, float sign) { acc += sign * w[bucket]; });
  const DenseVector d = finish_dense(c, edge_perplexity);
  double z = raw_bias_;
  for (int i = 0; i < kDenseFeatureCount; ++i) z += raw_dense_weights_[i] * d[i];
  if (n) z += acc / std::sqrt(static_cast<double>(n));
  return sigmoid(z);
}

double ComplexityModel::score(const ComplexityFeatures& f) const {
  double z = raw_bias_;
  for (int i = 0; i < kDenseFeatureCount; ++i) z += raw_dense_weights_[i] * f.dense[i];
  for (const auto& [bucket, value] : f.hashed) {
    if (bucket < hashed_.size()) z += value * hashed_[bucket];
  }
  return sigmoid(z);
}

DenseVector ComplexityModel::standardized(const DenseVector& dense) const {
  DenseVector z{};
  for (int i = 0; i < kDenseFeatureCount; ++i) {
    z[i] = std::clamp((dense[i] - dense_mean_[i]) / dense_scale_[i], -kStandardizedBound,
                      kStandardizedBound);
  }
  return z;
}

ComplexityExplanation ComplexityModel::explain(std::string_view prompt,
                                               std::optional<double> edge_perplexity) const {
  const ComplexityFeatures f = extract_complexity_features(prompt, hashing_, edge_perplexity);
  ComplexityExplanation e;
  e.threshold = threshold_;
  e.dense = f.dense;
  e.bias = bias_;
  double z = bias_;
  for (int i = 0; i < kDenseFeatureCount; ++i) {
    e.dense_contribution[i] = dense_weights_[i] * (f.dense[i] - dense_mean_[i]) / dense_scale_[i];
    z += e.dense_contribution[i];
  }
  for (const auto& [bucket, value] : f.hashed) e.hashed_contribution += value * hashed_[bucket];
  z += e.hashed_contribution;
  e.probability = sigmoid(z);
  e.prefers_cloud = prefers_cloud(e.probability);
  return e;
}

std::string ComplexityModel::to_json() const {
  json dense = json::array();
  for (int i = 0; i < kDenseFeatureCount; ++i) {
    dense.push_back({{"name", kDenseNames[i]},
                     {"weight", dense_weights_[i]},
                     {"mean", dense_mean_[i]},
                     {"scale", dense_scale_[i]}});
  }
  json index = json::array();
  json weight = json::array();
  for (size_t i = 0; i < hashed_.size(); ++i) {
    if (hashed_[i] != 0.0f) {
      index.push_back(i);
      weight.push_back(round6(hashed_[i]));
    }
  }
  json doc;
  doc["format"] = kFileFormat;
  doc["version"] = kFileVersion;
  doc["model"] = "logistic";
  doc["feature_spec"] = {{"version", kComplexityFeatureVersion},
                         {"hash_bits", hashing_.bits},
                         {"hash_seed", hashing_.seed},
                         {"bigrams", hashing_.bigrams},
                         {"hashed_value", "signed count / sqrt(n-grams)"}};
  doc["threshold"] = threshold_;
  doc["bias"] = bias_;
  doc["dense"] = std::move(dense);
  doc["hashed"] = {{"index", std::move(index)}, {"weight", std::move(weight)}};
  doc["training"] = {{"label_rule", info_.label_rule},
                     {"data", info_.data},
                     {"training_subjects", info_.training_subjects},
                     {"holdout_subjects", info_.holdout_subjects},
                     {"rows", info_.rows},
                     {"excluded_contaminated", info_.excluded_contaminated},
                     {"mean_label", round6(info_.mean_label)},
                     {"l2_dense", info_.l2_dense},
                     {"l2_hashed", info_.l2_hashed},
                     {"target_cloud_share", info_.target_cloud_share},
                     {"command", info_.command}};
  return doc.dump(1) + "\n";
}

Status ComplexityModel::save(const std::string& path) const {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) {
    return make_error(ErrorKind::kIo, "cannot write model file " + path +
                                          ": check that its folder exists and is writable");
  }
  out << to_json();
  out.close();
  if (!out) return make_error(ErrorKind::kIo, "writing model file " + path + " failed");
  return Status::Ok();
}

Result<ComplexityModel> ComplexityModel::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return make_error(ErrorKind::kNotFound,
                      "complexity model " + path +
                          " cannot be opened; pass a file made by `foreshore router train` (the "
                          "default is data/router/complexity-default.json)");
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  return parse(ss.str(), path);
}

Result<ComplexityModel> ComplexityModel::parse(std::string_view text, std::string_view source) {
  const json doc = json::parse(text.begin(), text.end(), nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) return corrupt(source, "not a JSON object");
  auto field = [&](const json& obj, const char* key, json::value_t type,
                   const char* where) -> Result<const json*> {
    auto it = obj.find(key);
    const bool number_ok =
        type == json::value_t::number_float && it != obj.end() && it->is_number();
    const bool uint_ok =
        type == json::value_t::number_integer && it != obj.end() && it->is_number_integer();
    if (it == obj.end() || (!number_ok && !uint_ok && it->type() != type)) {
      return corrupt(source,
                     std::string("field ") + where + key + " is missing or has the wrong type");
    }
    return &*it;
  };
  using vt = json::value_t;

  FSH_ASSIGN_OR_RETURN(const json* format, field(doc, "format", vt::string, ""));
  if (format->get<std::string>() != kFileFormat) {
    return corrupt(source, "format is '" + format->get<std::string>() + "', expected '" +
                               std::string(kFileFormat) + "'");
  }
  FSH_ASSIGN_OR_RETURN(const json* version, field(doc, "version", vt::number_integer, ""));
  if (version->get<int64_t>() != kFileVersion) {
    return corrupt(source, "file version " + version->dump() +
                               " is not supported (this build reads " +
                               std::to_string(kFileVersion) + ")");
  }
  FSH_ASSIGN_OR_RETURN(const json* model, field(doc, "model", vt::string, ""));
  if (model->get<std::string>() != "logistic") {
    return corrupt(source, "model kind '" + model->get<std::string>() +
                               "' is unknown; this build reads 'logistic'");
  }
  FSH_ASSIGN_OR_RETURN(const json* spec, field(doc, "feature_spec", vt::object, ""));
  FSH_ASSIGN_OR_RETURN(const json* fver,
                       field(*spec, "version", vt::number_integer, "feature_spec."));
  if (fver->get<int64_t>() != kComplexityFeatureVersion) {
    return corrupt(source, "feature_spec.version " + fver->dump() +
                               " differs from this build's feature version " +
                               std::to_string(kComplexityFeatureVersion));
  }
  FSH_ASSIGN_OR_RETURN(const json* bits,
                       field(*spec, "hash_bits", vt::number_integer, "feature_spec."));
  FSH_ASSIGN_OR_RETURN(const json* seed,
                       field(*spec, "hash_seed", vt::number_integer, "feature_spec."));
  FSH_ASSIGN_OR_RETURN(const json* bigrams, field(*spec, "bigrams", vt::boolean, "feature_spec."));
  HashingSpec hashing;
  hashing.bits = bits->get<int>();
  hashing.seed = seed->get<uint64_t>();
  hashing.bigrams = bigrams->get<bool>();
  if (hashing.bits < kMinHashBits || hashing.bits > kMaxHashBits) {
    return corrupt(source, "feature_spec.hash_bits " + bits->dump() + " outside [" +
                               std::to_string(kMinHashBits) + ", " + std::to_string(kMaxHashBits) +
                               "]");
  }

  FSH_ASSIGN_OR_RETURN(const json* threshold, field(doc, "threshold", vt::number_float, ""));
  FSH_ASSIGN_OR_RETURN(const json* bias, field(doc, "bias", vt::number_float, ""));
  FSH_ASSIGN_OR_RETURN(const json* dense, field(doc, "dense", vt::array, ""));
  if (dense->size() != static_cast<size_t>(kDenseFeatureCount)) {
    return corrupt(source, "dense has " + std::to_string(dense->size()) + " features, expected " +
                               std::to_string(kDenseFeatureCount));
  }
  DenseVector weights{}, mean{}, scale{};
  for (int i = 0; i < kDenseFeatureCount; ++i) {
    const json& e = (*dense)[i];
    const std::string where = "dense[" + std::to_string(i) + "].";
    if (!e.is_object()) return corrupt(source, "dense[" + std::to_string(i) + "] is not an object");
    FSH_ASSIGN_OR_RETURN(const json* name, field(e, "name", vt::string, where.c_str()));
    if (name->get<std::string>() != kDenseNames[i]) {
      return corrupt(source, where + "name is '" + name->get<std::string>() + "', expected '" +
                                 std::string(kDenseNames[i]) + "'");
    }
    FSH_ASSIGN_OR_RETURN(const json* w, field(e, "weight", vt::number_float, where.c_str()));
    FSH_ASSIGN_OR_RETURN(const json* m, field(e, "mean", vt::number_float, where.c_str()));
    FSH_ASSIGN_OR_RETURN(const json* s, field(e, "scale", vt::number_float, where.c_str()));
    weights[i] = w->get<double>();
    mean[i] = m->get<double>();
    scale[i] = s->get<double>();
  }
  FSH_ASSIGN_OR_RETURN(const json* hashed, field(doc, "hashed", vt::object, ""));
  FSH_ASSIGN_OR_RETURN(const json* index, field(*hashed, "index", vt::array, "hashed."));
  FSH_ASSIGN_OR_RETURN(const json* hweight, field(*hashed, "weight", vt::array, "hashed."));
  if (index->size() != hweight->size()) {
    return corrupt(source, "hashed.index has " + std::to_string(index->size()) +
                               " entries but hashed.weight has " + std::to_string(hweight->size()));
  }
  const size_t buckets = size_t{1} << hashing.bits;
  std::vector<float> table(buckets, 0.0f);
  for (size_t i = 0; i < index->size(); ++i) {
    const json& ix = (*index)[i];
    const json& w = (*hweight)[i];
    if (!ix.is_number_unsigned() || ix.get<uint64_t>() >= buckets) {
      return corrupt(source, "hashed.index[" + std::to_string(i) + "] = " + ix.dump() +
                                 " is not a bucket below " + std::to_string(buckets));
    }
    if (!w.is_number()) {
      return corrupt(source, "hashed.weight[" + std::to_string(i) + "] is not a number");
    }
    table[ix.get<uint64_t>()] = w.get<float>();
  }

  ComplexityModelInfo info;
  if (auto t = doc.find("training"); t != doc.end() && t->is_object()) {
    auto str = [&](const char* k) {
      return t->contains(k) && (*t)[k].is_string() ? (*t)[k].get<std::string>() : std::string();
    };
    auto num = [&](const char* k) {
      return t->contains(k) && (*t)[k].is_number() ? (*t)[k].get<double>() : 0.0;
    };
    auto list = [&](const char* k) {
      std::vector<std::string> v;
      if (t->contains(k) && (*t)[k].is_array()) {
        for (const auto& e : (*t)[k]) {
          if (e.is_string()) v.push_back(e.get<std::string>());
        }
      }
      return v;
    };
    info.label_rule = str("label_rule");
    info.data = list("data");
    info.training_subjects = list("training_subjects");
    info.holdout_subjects = list("holdout_subjects");
    info.rows = static_cast<int64_t>(num("rows"));
    info.excluded_contaminated = static_cast<int64_t>(num("excluded_contaminated"));
    info.mean_label = num("mean_label");
    info.l2_dense = num("l2_dense");
    info.l2_hashed = num("l2_hashed");
    info.target_cloud_share = num("target_cloud_share");
    info.command = str("command");
  }

  auto m = create(hashing, bias->get<double>(), weights, mean, scale, std::move(table),
                  threshold->get<double>(), std::move(info));
  if (!m.ok()) return corrupt(source, m.error().message);
  return m;
}

double calibrate_threshold(std::vector<double> scores, double share) {
  if (scores.empty()) return 0.5;
  std::sort(scores.begin(), scores.end(), std::greater<>());
  const size_t n = scores.size();
  const double want = std::clamp(share, 0.0, 1.0) * static_cast<double>(n);
  // Candidate cut points sit between distinct scores; pick the one whose
  // cloud count is nearest the target.
  size_t best_k = 0;
  double best_err = want;
  for (size_t k = 1; k <= n; ++k) {
    if (k < n && scores[k] == scores[k - 1]) continue;
    const double err = std::abs(static_cast<double>(k) - want);
    if (err < best_err) {
      best_err = err;
      best_k = k;
    }
  }
  if (best_k == 0) return std::min(1.0, std::nextafter(scores[0], 2.0));
  if (best_k == n) return scores[n - 1];
  return 0.5 * (scores[best_k - 1] + scores[best_k]);
}

std::optional<double> cloud_share_to_recover(const std::vector<CurvePoint>& curve, double edge,
                                             double cloud, double fraction) {
  if (!(cloud > edge) || curve.empty()) return std::nullopt;
  const double target = edge + fraction * (cloud - edge);
  const double eps = 1e-12 * std::max(1.0, std::abs(cloud));
  for (size_t i = 0; i < curve.size(); ++i) {
    if (curve[i].quality + eps >= target) {
      if (i == 0) return curve[0].cloud_share;
      const CurvePoint& a = curve[i - 1];
      const CurvePoint& b = curve[i];
      const double t = (target - a.quality) / (b.quality - a.quality);
      return a.cloud_share + t * (b.cloud_share - a.cloud_share);
    }
  }
  return std::nullopt;
}

Result<RoutingMetrics> evaluate_routing(std::span<const double> scores,
                                        std::span<const TierQuality> rows) {
  if (scores.size() != rows.size()) {
    return make_error(ErrorKind::kInvalidArgument,
                      "evaluate_routing: " + std::to_string(scores.size()) + " scores for " +
                          std::to_string(rows.size()) + " rows");
  }
  if (rows.empty()) {
    return make_error(ErrorKind::kInvalidArgument,
                      "no rows to evaluate; check --data and the subject filters");
  }
  const size_t n = rows.size();
  RoutingMetrics m;
  m.rows = static_cast<int64_t>(n);
  double edge_sum = 0.0, cloud_sum = 0.0;
  for (const auto& r : rows) {
    edge_sum += r.edge;
    cloud_sum += r.cloud;
  }
  m.edge_quality = edge_sum / static_cast<double>(n);
  m.cloud_quality = cloud_sum / static_cast<double>(n);
  if (std::abs(m.cloud_quality - m.edge_quality) < 1e-12) {
    return make_error(ErrorKind::kInvalidArgument,
                      "edge and cloud have the same mean quality on this data (" +
                          std::to_string(m.edge_quality) +
                          "), so APGR is undefined; evaluate on data where they differ");
  }
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return scores[a] > scores[b]; });
  double sum = edge_sum;
  m.curve.push_back({0.0, m.edge_quality, std::numeric_limits<double>::infinity()});
  for (size_t i = 0; i < n;) {
    const double s = scores[order[i]];
    while (i < n && scores[order[i]] == s) {
      sum += rows[order[i]].cloud - rows[order[i]].edge;
      ++i;
    }
    m.curve.push_back(
        {static_cast<double>(i) / static_cast<double>(n), sum / static_cast<double>(n), s});
  }
  for (size_t i = 1; i < m.curve.size(); ++i) {
    m.auc += 0.5 * (m.curve[i].quality + m.curve[i - 1].quality) *
             (m.curve[i].cloud_share - m.curve[i - 1].cloud_share);
  }
  m.apgr = (m.auc - m.edge_quality) / (m.cloud_quality - m.edge_quality);
  m.cpt50 = cloud_share_to_recover(m.curve, m.edge_quality, m.cloud_quality, 0.5);
  m.cpt80 = cloud_share_to_recover(m.curve, m.edge_quality, m.cloud_quality, 0.8);
  return m;
}

}  // namespace foreshore::route
