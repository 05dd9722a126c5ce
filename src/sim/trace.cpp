// Trace files (JSONL) and the synthetic workload generator.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "sim/random.h"
#include "sim/sim.h"

namespace foreshore::sim {
namespace {

using nlohmann::json;

constexpr std::string_view kKnownFields =
    "id, t, prompt, prompt_tokens, output_tokens, data_class, latency_budget_ms, "
    "cost_ceiling_usd, scores";

std::string where(std::string_view source, int64_t line) {
  return std::string(source) + ":" + std::to_string(line);
}

Result<double> number_field(const json& v, const std::string& at, const char* name, double lo,
                            double hi) {
  if (!v.is_number()) {
    return make_error(ErrorKind::kInvalidArgument,
                      at + ": '" + name + "' must be a number, got " + v.dump());
  }
  const double x = v.get<double>();
  if (!std::isfinite(x) || x < lo || x > hi) {
    std::ostringstream s;
    s << at << ": '" << name << "' is " << x << "; it must be between " << lo << " and " << hi;
    return make_error(ErrorKind::kInvalidArgument, s.str());
  }
  return x;
}

Result<int32_t> token_field(const json& v, const std::string& at, const char* name) {
  if (!v.is_number_integer() || v.get<int64_t>() < 1 || v.get<int64_t>() > (1 << 24)) {
    return make_error(ErrorKind::kInvalidArgument,
                      at + ": '" + name + "' must be a whole number of tokens from 1 to " +
                          std::to_string(1 << 24) + ", got " + v.dump());
  }
  return static_cast<int32_t>(v.get<int64_t>());
}

}  // namespace

Result<TraceRecord> parse_trace_line(std::string_view line, int64_t line_number,
                                     std::string_view source) {
  const std::string at = where(source, line_number);
  json j = json::parse(line, nullptr, false);
  if (j.is_discarded()) {
    return make_error(ErrorKind::kInvalidArgument,
                      at + ": not valid JSON; each line must be one JSON object (JSONL)");
  }
  if (!j.is_object()) {
    return make_error(ErrorKind::kInvalidArgument,
                      at + ": expected a JSON object, got " + std::string(j.type_name()));
  }
  TraceRecord r;
  r.line = line_number;
  r.id = "line-" + std::to_string(line_number);
  for (const auto& [key, v] : j.items()) {
    if (key == "id") {
      if (!v.is_string() && !v.is_number_integer()) {
        return make_error(ErrorKind::kInvalidArgument,
                          at + ": 'id' must be a string or an integer, got " + v.dump());
      }
      r.id = v.is_string() ? v.get<std::string>() : v.dump();
    } else if (key == "t") {
      FSH_ASSIGN_OR_RETURN(r.arrival_s, number_field(v, at, "t", 0.0, 1e12));
    } else if (key == "prompt") {
      if (!v.is_string()) {
        return make_error(ErrorKind::kInvalidArgument,
                          at + ": 'prompt' must be a string, got " + std::string(v.type_name()));
      }
      r.prompt = v.get<std::string>();
    } else if (key == "prompt_tokens") {
      FSH_ASSIGN_OR_RETURN(r.prompt_tokens, token_field(v, at, "prompt_tokens"));
    } else if (key == "output_tokens") {
      FSH_ASSIGN_OR_RETURN(r.output_tokens, token_field(v, at, "output_tokens"));
    } else if (key == "data_class") {
      if (!v.is_string()) {
        return make_error(ErrorKind::kInvalidArgument,
                          at + ": 'data_class' must be a string, got " + v.dump());
      }
      auto c = route::parse_data_class(v.get<std::string>());
      if (!c.ok()) return make_error(ErrorKind::kInvalidArgument, at + ": " + c.error().message);
      r.data_class = *c;
    } else if (key == "latency_budget_ms") {
      FSH_ASSIGN_OR_RETURN(r.latency_budget_ms, number_field(v, at, "latency_budget_ms", 0, 1e9));
    } else if (key == "cost_ceiling_usd") {
      FSH_ASSIGN_OR_RETURN(r.cost_ceiling_usd, number_field(v, at, "cost_ceiling_usd", 0, 1e9));
    } else if (key == "scores") {
      if (!v.is_object()) {
        return make_error(ErrorKind::kInvalidArgument,
                          at + ": 'scores' must be an object like {\"edge\": 0.7, \"cloud\": 0.9}");
      }
      for (const auto& [tier, s] : v.items()) {
        if (tier != "edge" && tier != "cloud") {
          return make_error(ErrorKind::kInvalidArgument,
                            at + ": scores." + tier + ": unknown; scores has 'edge' and 'cloud'");
        }
        const std::string name = "scores." + tier;
        FSH_ASSIGN_OR_RETURN(double q, number_field(s, at, name.c_str(), 0.0, 1.0));
        (tier == "edge" ? r.edge_quality : r.cloud_quality) = q;
      }
      // Quality is compared between the tiers: one score alone would be
      // read as the other tier scoring nothing.
      if (!v.contains("edge") || !v.contains("cloud")) {
        return make_error(ErrorKind::kInvalidArgument,
                          at + ": 'scores' needs both 'edge' and 'cloud', like {\"edge\": 0.7, "
                               "\"cloud\": 0.9}");
      }
    } else {
      return make_error(ErrorKind::kInvalidArgument,
                        at + ": unknown field '" + key + "'; known: " + std::string(kKnownFields));
    }
  }
  if (r.prompt.empty() && !r.prompt_tokens) {
    return make_error(ErrorKind::kInvalidArgument,
                      at + ": needs 'prompt' (text) or 'prompt_tokens' (a count), or both");
  }
  return r;
}

Result<std::vector<TraceRecord>> parse_trace(std::string_view text, std::string_view source) {
  std::vector<TraceRecord> out;
  int64_t line_number = 0;
  while (!text.empty()) {
    const size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.find_first_not_of(" \t") == std::string_view::npos) continue;
    FSH_ASSIGN_OR_RETURN(TraceRecord r, parse_trace_line(line, line_number, source));
    out.push_back(std::move(r));
  }
  if (out.empty()) {
    return make_error(ErrorKind::kInvalidArgument,
                      std::string(source) + ": the trace has no requests (one JSON object a line)");
  }
  return out;
}

Result<std::vector<TraceRecord>> read_trace(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return make_error(ErrorKind::kNotFound,
                      "cannot open trace " + path +
                          "; give a JSONL file, or make one with "
                          "`foreshore simulate --generate 1000 --out trace.jsonl`");
  }
  std::ostringstream buf;
  buf << in.rdbuf();
  return parse_trace(buf.str(), path);
}

std::string trace_record_to_json_line(const TraceRecord& r) {
  nlohmann::ordered_json j;
  j["id"] = r.id;
  j["t"] = std::round(r.arrival_s * 1000.0) / 1000.0;
  if (!r.prompt.empty()) j["prompt"] = r.prompt;
  if (r.prompt_tokens) j["prompt_tokens"] = *r.prompt_tokens;
  if (r.output_tokens) j["output_tokens"] = *r.output_tokens;
  if (r.data_class) j["data_class"] = route::to_string(*r.data_class);
  if (r.latency_budget_ms) j["latency_budget_ms"] = *r.latency_budget_ms;
  if (r.cost_ceiling_usd) j["cost_ceiling_usd"] = *r.cost_ceiling_usd;
  if (r.edge_quality || r.cloud_quality) {
    nlohmann::ordered_json s = nlohmann::ordered_json::object();
    if (r.edge_quality) s["edge"] = *r.edge_quality;
    if (r.cloud_quality) s["cloud"] = *r.cloud_quality;
    j["scores"] = std::move(s);
  }
  return j.dump();
}

Status write_trace(const std::string& path, std::span<const TraceRecord> records) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) {
    return make_error(ErrorKind::kIo,
                      "cannot write " + path + "; check that the folder exists and is writable");
  }
  for (const auto& r : records) out << trace_record_to_json_line(r) << '\n';
  out.flush();
  if (!out) return make_error(ErrorKind::kIo, "writing " + path + " failed (disk full?)");
  return Status::Ok();
}

// ---- generator ------------------------------------------------------------------

namespace {

// Three levels of difficulty for a small edge model; each template is
// filled from the word lists below.
struct PromptTemplate {
  int level;  // 0 simple, 1 medium, 2 complex
  std::string_view text;
};

constexpr PromptTemplate kTemplates[] = {
    {0, "What is the capital of {country}?"},
    {0, "Translate 'good morning, see you at {hour}' into {language}."},
    {0, "Give me a synonym for the word '{word}'."},
    {0, "Rewrite this to sound friendlier: send me the {thing} by {hour}."},
    {0, "Write a one-line reminder to buy {thing} tomorrow."},
    {0, "Hi! How do you say thank you in {language}?"},
    {1,
     "Summarize these meeting notes in three bullet points: the team discussed the {thing} "
     "launch, the budget for {country}, and hiring two engineers before {hour} next month."},
    {1, "Explain the difference between {concept} and {concept2} in simple terms."},
    {1,
     "Write a short, polite email to my landlord about the broken {thing}; keep it under 100 "
     "words."},
    {1, "What are the pros and cons of moving to {country} for a software engineer?"},
    {1, "Suggest a weekly plan for learning {language}, with 30 minutes a day."},
    {2,
     "Prove that the sum of the first n odd numbers equals n^2 by induction, then show that "
     "for every integer n > 1, n^3 - n is divisible by 6. Justify each step."},
    {2,
     "Write a C++ function that parses an ISO 8601 timestamp with a time zone offset into "
     "std::chrono::sys_seconds. Explain its complexity, the edge cases (leap years, "
     "offsets like +05:45), and include unit tests."},
    {2,
     "A firm's revenue of $1.2M grows 7% per year while its costs of $1.5M grow 4% per "
     "year. In which year does it first make a profit, and what is the profit then? Show "
     "the equation and solve it step by step."},
    {2,
     "Compare and contrast {concept} and {concept2}, derive the asymptotic running time of "
     "each, and explain which one to choose for a dataset of 10^9 records that does not "
     "fit in memory."},
    {2,
     "Statement 1 | Every group of order {hour} is abelian. Statement 2 | If H is a normal "
     "subgroup of G, then G/H is abelian. (A) True, True (B) False, False (C) True, False "
     "(D) False, True. Explain why."},
    {2,
     "Analyze the liability of a landlord under the implied warranty of habitability when "
     "the {thing} breaks and the tenant withholds rent; cite the doctrine and the "
     "exceptions."},
};

constexpr std::string_view kCountries[] = {"France", "Japan",  "Brazil", "Kenya",
                                           "Canada", "Norway", "India",  "Chile"};
constexpr std::string_view kLanguages[] = {"Spanish", "German", "Japanese",
                                           "Swahili", "Hindi",  "Portuguese"};
constexpr std::string_view kWords[] = {"happy", "quick", "bright", "calm", "large", "brave"};
constexpr std::string_view kThings[] = {"heater",  "report", "dishwasher",
                                        "invoice", "laptop", "coffee"};
constexpr std::string_view kConcepts[] = {
    "a hash table", "a binary search tree", "TCP",      "UDP",        "merge sort", "quicksort",
    "a mutex",      "a semaphore",          "a B-tree", "an LSM tree"};
constexpr std::string_view kNames[] = {"alice", "bob", "chen", "dana", "emeka", "farah"};

// Mean and spread of each tier's score per level (edge, cloud).
constexpr double kEdgeMean[] = {0.90, 0.72, 0.42}, kEdgeSd[] = {0.08, 0.14, 0.18};
constexpr double kCloudMean[] = {0.93, 0.90, 0.84}, kCloudSd[] = {0.05, 0.07, 0.09};
constexpr double kLevelShare[] = {0.55, 0.30, 0.15};
// Tokens of attached context (documents, history) and of the answer, log-normal medians.
constexpr double kContextMedian[] = {15, 120, 300}, kOutputMedian[] = {30, 180, 450};

template <typename T, size_t N>
const T& pick(const T (&list)[N], SplitMix64& rng) {
  return list[rng.below(N)];
}

// A Visa-like number with a valid Luhn check digit, grouped in fours: the
// scanner's credit_card detector classes it device-only.
std::string card_number(SplitMix64& rng) {
  int digits[16];
  digits[0] = 4;
  for (int i = 1; i < 15; ++i) digits[i] = static_cast<int>(rng.below(10));
  int sum = 0;
  for (int i = 14, k = 0; i >= 0; --i, ++k) {
    int d = digits[i];
    if (k % 2 == 0) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
  }
  digits[15] = (10 - sum % 10) % 10;
  std::string s;
  for (int i = 0; i < 16; ++i) {
    if (i > 0 && i % 4 == 0) s += ' ';
    s += static_cast<char>('0' + digits[i]);
  }
  return s;
}

std::string fill(std::string_view text, SplitMix64& rng) {
  std::string out;
  const std::string_view concept1 = pick(kConcepts, rng);
  std::string_view concept2 = pick(kConcepts, rng);
  if (concept2 == concept1) concept2 = concept1 == kConcepts[0] ? kConcepts[1] : kConcepts[0];
  while (!text.empty()) {
    const size_t open = text.find('{');
    out += text.substr(0, open);
    if (open == std::string_view::npos) break;
    const size_t close = text.find('}', open);
    const std::string_view slot = text.substr(open + 1, close - open - 1);
    if (slot == "country") out += pick(kCountries, rng);
    if (slot == "language") out += pick(kLanguages, rng);
    if (slot == "word") out += pick(kWords, rng);
    if (slot == "thing") out += pick(kThings, rng);
    if (slot == "concept") out += concept1;
    if (slot == "concept2") out += concept2;
    if (slot == "hour") out += std::to_string(4 + rng.below(8));
    text = text.substr(close + 1);
  }
  return out;
}

double clamp01(double x) {
  return std::round(std::clamp(x, 0.0, 1.0) * 100.0) / 100.0;
}

}  // namespace

std::vector<TraceRecord> generate_trace(const TraceGeneratorOptions& o) {
  SplitMix64 rng(o.seed);
  std::vector<TraceRecord> out;
  out.reserve(static_cast<size_t>(std::max<int64_t>(o.requests, 0)));
  const double mean = std::max(o.mean_rate_per_s, 1e-9);
  const double amplitude = std::clamp(o.diurnal_amplitude, 0.0, 1.0);
  const double peak = mean * (1 + amplitude);
  constexpr double kDay = 86400.0, kPeakAt = 14 * 3600.0;
  double t = 0.0;
  for (int64_t i = 0; i < o.requests; ++i) {
    // Thinning: candidates at the peak rate, kept in proportion to the rate at their time.
    do {
      t += rng.exponential(peak);
    } while (rng.uniform() * peak >
             mean * (1 + amplitude * std::cos(2 * M_PI * (t - kPeakAt) / kDay)));

    TraceRecord r;
    r.id = "r" + std::to_string(i + 1);
    r.arrival_s = t;
    const double u = rng.uniform();
    const int level = u < kLevelShare[0] ? 0 : u < kLevelShare[0] + kLevelShare[1] ? 1 : 2;
    std::vector<const PromptTemplate*> choices;
    for (const auto& tpl : kTemplates) {
      if (tpl.level == level) choices.push_back(&tpl);
    }
    r.prompt = fill(choices[rng.below(choices.size())]->text, rng);

    const double pii = rng.uniform();
    if (pii < 0.03) {
      r.prompt += " My card number is " + card_number(rng) + "; was I charged twice?";
    } else if (pii < 0.08) {
      r.prompt += " Reply to " + std::string(pick(kNames, rng)) + "." +
                  std::string(pick(kNames, rng)) + "@example.com when done.";
    }
    const double cls = rng.uniform();
    if (cls < 0.04) {
      r.data_class = route::DataClass::kDeviceOnly;
    } else if (cls < 0.07) {
      r.data_class = route::DataClass::kContractual;
    } else if (cls < 0.12) {
      r.data_class = route::DataClass::kPreferLocal;
    } else if (cls < 0.45) {
      r.data_class = route::DataClass::kPublic;
    }

    const double text_tokens = static_cast<double>(r.prompt.size()) / 4.0;
    r.prompt_tokens =
        static_cast<int32_t>(std::ceil(text_tokens + rng.log_normal(kContextMedian[level], 0.9)));
    r.output_tokens = static_cast<int32_t>(
        std::clamp(std::round(rng.log_normal(kOutputMedian[level], 0.6)), 1.0, 4096.0));

    const double budget = rng.uniform();
    if (budget < 0.2) {
      r.latency_budget_ms = 150;
    } else if (budget < 0.65) {
      r.latency_budget_ms = 1500;
    }
    r.edge_quality = clamp01(rng.normal(kEdgeMean[level], kEdgeSd[level]));
    r.cloud_quality = clamp01(rng.normal(kCloudMean[level], kCloudSd[level]));
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace foreshore::sim
