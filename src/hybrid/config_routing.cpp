// The routing: and privacy: sections of the gateway YAML, read into the
// router's typed configuration (route::RouterConfig, route::SensitivityConfig):
// src/route takes typed configurations only and links no YAML library.
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "hybrid/config.h"
#include "hybrid/yaml_reader.h"
#include "route/router.h"
#include "route/sensitivity.h"

namespace foreshore::config {

using route::BuiltinDetectorInfo;
using route::DataClass;
using route::KeywordRule;
using route::parse_data_class;
using route::parse_policy;
using route::PatternRule;
using route::RouterConfig;
using route::SensitivityConfig;
using route::SensitivityDetector;

namespace {

// The keys routing: accepts. The parser refuses any key not listed here, so a
// key handled below but missing from these lists fails its own test, and
// router_config_keys() (what docs/CONFIG.md is checked against) is complete.
constexpr std::array<std::string_view, 10> kRoutingKeys{
    "policy",  "edge_tier",   "cloud_tier", "complexity_model", "threshold", "default_max_tokens",
    "cascade", "consistency", "optimize",   "learning"};
constexpr std::array<std::string_view, 4> kCascadeKeys{"min_mean_logprob", "min_token_logprob",
                                                       "max_mean_entropy", "hold_back_tokens"};
constexpr std::array<std::string_view, 1> kConsistencyKeys{"min_similarity"};
constexpr std::array<std::string_view, 2> kOptimizeKeys{"cost_weight", "latency_weight"};
constexpr std::array<std::string_view, 9> kLearningKeys{
    "enabled",     "state",           "target_cloud_share", "save_every_labels", "neighbours",
    "neighbour_k", "neighbour_gamma", "neighbour_prior",    "form_features"};

std::string key_list(std::span<const std::string_view> keys) {
  std::string out;
  for (std::string_view k : keys) out += (out.empty() ? "" : ", ") + std::string(k);
  return out;
}

bool listed(std::span<const std::string_view> keys, std::string_view key) {
  return std::find(keys.begin(), keys.end(), key) != keys.end();
}

}  // namespace

std::vector<std::string> router_config_keys() {
  std::vector<std::string> keys;
  for (std::string_view k : kRoutingKeys) keys.emplace_back(k);
  for (std::string_view k : kCascadeKeys) keys.push_back("cascade." + std::string(k));
  for (std::string_view k : kConsistencyKeys) keys.push_back("consistency." + std::string(k));
  for (std::string_view k : kOptimizeKeys) keys.push_back("optimize." + std::string(k));
  for (std::string_view k : kLearningKeys) keys.push_back("learning." + std::string(k));
  return keys;
}

Result<RouterConfig> router_config_from_yaml(const YAML::Node& node, std::string_view source) {
  RouterConfig c;
  if (!node || node.IsNull()) return c;
  const std::string at = std::string(source) + ": routing";
  if (!node.IsMap()) return make_error(ErrorKind::kInvalidArgument, at + ": must be a mapping");
  std::string problems;
  auto problem = [&](const std::string& key, const std::string& what) {
    problems += (problems.empty() ? "" : "\n") + at + "." + key + ": " + what;
  };
  auto number = [&](const YAML::Node& n, const std::string& key, double lo, double hi,
                    double& out) {
    try {
      const double v = n.as<double>();
      if (v < lo || v > hi) {
        problem(key, "must be between " + std::to_string(lo) + " and " + std::to_string(hi));
      } else {
        out = v;
      }
    } catch (const YAML::Exception&) {
      problem(key, "must be a number");
    }
  };
  for (const auto& kv : node) {
    const std::string key = kv.first.as<std::string>();
    const YAML::Node& v = kv.second;
    if (!listed(kRoutingKeys, key)) {
      problem(key, "unknown key; known: " + key_list(kRoutingKeys));
    } else if (key == "policy") {
      auto p = parse_policy(v.as<std::string>(""));
      if (!p) {
        problem(key, "'" + v.as<std::string>("") +
                         "' is not a policy; use threshold, cascade, consistency, optimize, edge "
                         "or cloud");
      } else {
        c.default_policy = *p;
      }
    } else if (key == "edge_tier") {
      c.edge_tier = v.as<std::string>("");
    } else if (key == "cloud_tier") {
      c.cloud_tier = v.as<std::string>("");
    } else if (key == "complexity_model") {
      c.complexity_model = v.as<std::string>("");
    } else if (key == "threshold") {
      double t = 0;
      number(v, key, 0.0, 1.0, t);
      c.threshold = t;
    } else if (key == "default_max_tokens") {
      double t = 0;
      number(v, key, 1, 1 << 20, t);
      c.default_max_tokens = static_cast<int32_t>(t);
    } else if (key == "cascade" && v.IsMap()) {
      for (const auto& ck : v) {
        const std::string k = ck.first.as<std::string>();
        const std::string path = "cascade." + k;
        if (!listed(kCascadeKeys, k)) {
          problem(path, "unknown key; known: " + key_list(kCascadeKeys));
        } else if (k == "min_mean_logprob") {
          number(ck.second, path, -100, 0, c.cascade.min_mean_logprob);
        } else if (k == "min_token_logprob") {
          number(ck.second, path, -100, 0, c.cascade.min_token_logprob);
        } else if (k == "max_mean_entropy") {
          number(ck.second, path, 0, 100, c.cascade.max_mean_entropy);
        } else if (k == "hold_back_tokens") {
          double t = 0;
          number(ck.second, path, 0, 4096, t);
          c.cascade.hold_back_tokens = static_cast<int32_t>(t);
        } else {
          problem(path, "listed but not read here; foreshore bug");
        }
      }
    } else if (key == "consistency" && v.IsMap()) {
      for (const auto& ck : v) {
        const std::string k = ck.first.as<std::string>();
        if (k == "min_similarity") {
          number(ck.second, "consistency." + k, 0, 1, c.consistency_min_similarity);
        } else {
          problem("consistency." + k, "unknown key; known: " + key_list(kConsistencyKeys));
        }
      }
    } else if (key == "optimize" && v.IsMap()) {
      for (const auto& ck : v) {
        const std::string k = ck.first.as<std::string>();
        if (k == "cost_weight") {
          number(ck.second, "optimize." + k, 0, 1e12, c.optimize_cost_weight);
        } else if (k == "latency_weight") {
          number(ck.second, "optimize." + k, 0, 1e6, c.optimize_latency_weight);
        } else {
          problem("optimize." + k, "unknown key; known: " + key_list(kOptimizeKeys));
        }
      }
    } else if (key == "learning" && v.IsMap()) {
      for (const auto& ck : v) {
        const std::string k = ck.first.as<std::string>();
        const std::string path = "learning." + k;
        if (k == "enabled" || k == "neighbours" || k == "form_features") {
          bool& flag = k == "enabled"      ? c.learning.enabled
                       : k == "neighbours" ? c.learning.neighbours
                                           : c.learning.form_features;
          try {
            flag = ck.second.as<bool>();
          } catch (const YAML::Exception&) {
            problem(path, "must be true or false");
          }
        } else if (k == "state") {
          c.learning.state = ck.second.as<std::string>("");
        } else if (k == "target_cloud_share") {
          double t = 0;
          number(ck.second, path, 0, 1, t);
          c.learning.target_cloud_share = t;
        } else if (k == "save_every_labels") {
          double t = 0;
          number(ck.second, path, 1, 1e9, t);
          c.learning.save_every_labels = static_cast<int64_t>(t);
        } else if (k == "neighbour_k") {
          double t = static_cast<double>(c.learning.neighbour_k);
          number(ck.second, path, 1, 100000, t);
          c.learning.neighbour_k = static_cast<size_t>(t);
        } else if (k == "neighbour_gamma") {
          number(ck.second, path, 0, 100, c.learning.neighbour_gamma);
        } else if (k == "neighbour_prior") {
          number(ck.second, path, 0, 1e6, c.learning.neighbour_prior);
        } else {
          problem(path, "unknown key; known: " + key_list(kLearningKeys));
        }
      }
    } else {
      problem(key, "must be a map of its own keys");
    }
  }
  if (!problems.empty()) return make_error(ErrorKind::kInvalidArgument, problems);
  return c;
}

namespace {

std::string known_detector_list() {
  std::string list;
  for (const auto& b : route::builtin_detectors()) {
    list += (list.empty() ? "" : ", ") + std::string(b.name);
  }
  return list;
}

// The data class at `path`.class; nullopt (and a problem) when it names none.
std::optional<DataClass> read_data_class(YamlReader& r, const YAML::Node& map,
                                         const std::string& path) {
  const auto text = r.scalar(map, "class", path, true);
  if (!text) return std::nullopt;
  auto cls = parse_data_class(*text);
  if (!cls.ok()) {
    r.fail(path + ".class", cls.error().message);
    return std::nullopt;
  }
  return *cls;
}

// The keys privacy: accepts; the parser checks against these lists and
// sensitivity_config_keys() reports them, so the two cannot differ.
constexpr std::array<std::string_view, 3> kPrivacyKeys{"detectors", "patterns", "keywords"};
constexpr std::array<std::string_view, 3> kPatternKeys{"name", "regex", "class"};
constexpr std::array<std::string_view, 3> kKeywordKeys{"name", "words", "class"};

}  // namespace

std::vector<std::string> sensitivity_config_keys() {
  std::vector<std::string> keys;
  for (std::string_view k : kPrivacyKeys) keys.emplace_back(k);
  keys.emplace_back("detectors.NAME");
  for (std::string_view k : kPatternKeys) keys.push_back("patterns[]." + std::string(k));
  for (std::string_view k : kKeywordKeys) keys.push_back("keywords[]." + std::string(k));
  return keys;
}

Result<SensitivityConfig> sensitivity_config_from_yaml(const YAML::Node& privacy,
                                                       std::string_view source,
                                                       std::string_view path_view) {
  SensitivityConfig config;
  YamlReader r(source);
  const std::string path(path_view);
  if (!privacy || privacy.IsNull()) return config;
  if (!privacy.IsMap()) {
    r.fail(path, "expected a map with detectors, patterns and keywords");
    return make_error(ErrorKind::kInvalidArgument, r.error_lines());
  }
  r.check_keys(privacy, path, kPrivacyKeys);

  if (const YAML::Node detectors = privacy["detectors"]) {
    if (!detectors.IsMap()) {
      r.fail(path + ".detectors", "expected a map of detector name to class");
    } else {
      for (const auto& kv : detectors) {
        const std::string name = kv.first.Scalar();
        const std::string where = path + ".detectors." + name;
        const auto builtins = route::builtin_detectors();
        if (std::none_of(builtins.begin(), builtins.end(),
                         [&](const BuiltinDetectorInfo& b) { return b.name == name; })) {
          r.fail(where, "unknown detector (known: " + known_detector_list() + ")");
          continue;
        }
        if (!kv.second.IsScalar()) {
          r.fail(where, "expected a class (device-only, contractual, prefer-local, public) or off");
          continue;
        }
        if (kv.second.Scalar() == "off") {
          config.detectors[name] = std::nullopt;
          continue;
        }
        auto cls = parse_data_class(kv.second.Scalar());
        if (!cls.ok()) {
          r.fail(where, cls.error().message + ", or off to disable the detector");
          continue;
        }
        config.detectors[name] = *cls;
      }
    }
  }

  const auto list = [&](const char* key) -> YAML::Node {
    const YAML::Node node = privacy[key];
    if (node && !node.IsSequence()) {
      r.fail(path + "." + key, "expected a list");
      return YAML::Node();
    }
    return node;
  };
  if (const YAML::Node patterns = list("patterns")) {
    for (size_t i = 0; i < patterns.size(); ++i) {
      const YAML::Node item = patterns[i];
      const std::string where = path + ".patterns[" + std::to_string(i) + "]";
      if (!item.IsMap()) {
        r.fail(where, "expected a map with name, regex and class");
        continue;
      }
      r.check_keys(item, where, kPatternKeys);
      const auto name = r.scalar(item, "name", where, true);
      const auto regex = r.scalar(item, "regex", where, true);
      const auto cls = read_data_class(r, item, where);
      if (name && regex && cls) config.patterns.push_back({*name, *regex, *cls});
    }
  }
  if (const YAML::Node keywords = list("keywords")) {
    for (size_t i = 0; i < keywords.size(); ++i) {
      const YAML::Node item = keywords[i];
      const std::string where = path + ".keywords[" + std::to_string(i) + "]";
      if (!item.IsMap()) {
        r.fail(where, "expected a map with words, class and optionally name");
        continue;
      }
      r.check_keys(item, where, kKeywordKeys);
      const auto name = r.scalar(item, "name", where, false);
      const auto cls = read_data_class(r, item, where);
      const YAML::Node words = item["words"];
      std::vector<std::string> list_words;
      if (!words || !words.IsSequence()) {
        r.fail(where + ".words", "expected a list of words");
      } else {
        for (size_t w = 0; w < words.size(); ++w) {
          if (!words[w].IsScalar()) {
            r.fail(where + ".words[" + std::to_string(w) + "]", "expected a string");
            continue;
          }
          list_words.push_back(words[w].Scalar());
        }
      }
      if (cls && words && words.IsSequence()) {
        config.keywords.push_back(
            {name.value_or("keywords_" + std::to_string(i)), std::move(list_words), *cls});
      }
    }
  }
  if (!r.error_lines().empty()) return make_error(ErrorKind::kInvalidArgument, r.error_lines());
  // Names, expressions and keywords are checked by compiling them once here,
  // so that a bad pattern is reported with the file name at load.
  auto compiled = SensitivityDetector::create(config);
  if (!compiled.ok()) {
    std::string message;
    std::string_view rest = compiled.error().message;
    while (!rest.empty()) {
      const size_t nl = rest.find('\n');
      std::string line(rest.substr(0, nl));
      if (line.starts_with("privacy") && path != "privacy") line = path + line.substr(7);
      message += (message.empty() ? "" : "\n") + std::string(source) + ": " + line;
      rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
    }
    return make_error(compiled.error().kind, message);
  }
  return config;
}

}  // namespace foreshore::config
