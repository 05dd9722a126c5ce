#include "route/sensitivity.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <initializer_list>
#include <nlohmann/json.hpp>

#include "route/sensitivity_detectors.h"

namespace foreshore::route {
namespace detection {

std::string known_detector_list() {
  std::string list;
  for (const auto& b : kBuiltins) list += (list.empty() ? "" : ", ") + std::string(b.name);
  return list;
}

}  // namespace detection

// ---------------------------------------------------------------------------
// Data classes and the built-in detectors.

std::string_view to_string(DataClass data_class) {
  switch (data_class) {
    case DataClass::kPublic:
      return "public";
    case DataClass::kPreferLocal:
      return "prefer-local";
    case DataClass::kContractual:
      return "contractual";
    case DataClass::kDeviceOnly:
      return "device-only";
  }
  return "device-only";
}

Result<DataClass> parse_data_class(std::string_view text) {
  std::string norm;
  for (char c : text)
    norm += c == '_' ? '-' : static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (DataClass c : {DataClass::kPublic, DataClass::kPreferLocal, DataClass::kContractual,
                      DataClass::kDeviceOnly}) {
    if (norm == to_string(c)) return c;
  }
  return make_error(ErrorKind::kInvalidArgument,
                    "unknown data class '" + std::string(text.substr(0, 64)) +
                        "' (expected device-only, contractual, prefer-local or public)");
}

std::span<const BuiltinDetectorInfo> builtin_detectors() {
  return detection::kBuiltins;
}

// ---------------------------------------------------------------------------
// JSON and YAML.

void to_json(nlohmann::json& out, const SensitivityResult& r) {
  static constexpr std::string_view kKinds[] = {"detector", "pattern", "keyword"};
  nlohmann::json hits = nlohmann::json::array();
  for (const SensitivityHit& h : r.hits) {
    hits.push_back({{"detector", h.detector},
                    {"kind", kKinds[static_cast<int>(h.kind)]},
                    {"class", to_string(h.data_class)},
                    {"message", h.message},
                    {"begin", h.begin},
                    {"end", h.end}});
  }
  out = {{"data_class", to_string(r.data_class)},
         {"detected", to_string(r.detected)},
         {"declared", r.declared ? nlohmann::json(to_string(*r.declared)) : nlohmann::json()},
         {"rule", r.rule},
         {"hits", std::move(hits)},
         {"hits_total", r.hits_total}};
}

namespace {

class YamlReader {
 public:
  explicit YamlReader(std::string_view source) : source_(source) {}

  void fail(const std::string& path, const std::string& problem) {
    errors_ += (errors_.empty() ? "" : "\n") + source_ + ": " + path + ": " + problem;
  }
  const std::string& errors() const { return errors_; }

  void check_keys(const YAML::Node& map, const std::string& path,
                  std::span<const std::string_view> allowed) {
    for (const auto& kv : map) {
      const std::string key = kv.first.Scalar();
      if (std::find(allowed.begin(), allowed.end(), key) == allowed.end()) {
        std::string list;
        for (std::string_view a : allowed) list += (list.empty() ? "" : ", ") + std::string(a);
        fail(path + "." + key, "unknown key (allowed here: " + list + ")");
      }
    }
  }

  std::optional<std::string> scalar(const YAML::Node& map, const char* key, const std::string& path,
                                    bool required) {
    const YAML::Node node = map[key];
    if (!node) {
      if (required) fail(path + "." + key, "missing");
      return std::nullopt;
    }
    if (!node.IsScalar()) {
      fail(path + "." + key, "expected a string");
      return std::nullopt;
    }
    return node.Scalar();
  }

  std::optional<DataClass> data_class(const YAML::Node& map, const std::string& path) {
    const auto text = scalar(map, "class", path, true);
    if (!text) return std::nullopt;
    auto cls = parse_data_class(*text);
    if (!cls.ok()) {
      fail(path + ".class", cls.error().message);
      return std::nullopt;
    }
    return *cls;
  }

 private:
  std::string source_;
  std::string errors_;
};

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
    return make_error(ErrorKind::kInvalidArgument, r.errors());
  }
  r.check_keys(privacy, path, kPrivacyKeys);

  if (const YAML::Node detectors = privacy["detectors"]) {
    if (!detectors.IsMap()) {
      r.fail(path + ".detectors", "expected a map of detector name to class");
    } else {
      for (const auto& kv : detectors) {
        const std::string name = kv.first.Scalar();
        const std::string where = path + ".detectors." + name;
        if (std::none_of(detection::kBuiltins.begin(), detection::kBuiltins.end(),
                         [&](const BuiltinDetectorInfo& b) { return b.name == name; })) {
          r.fail(where, "unknown detector (known: " + detection::known_detector_list() + ")");
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
      const auto cls = r.data_class(item, where);
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
      const auto cls = r.data_class(item, where);
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
  if (!r.errors().empty()) return make_error(ErrorKind::kInvalidArgument, r.errors());
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

}  // namespace foreshore::route
