// Private to src/hybrid: reads YAML into a typed configuration while
// collecting every problem with its key path ("SOURCE: path.key: problem"),
// so that one run reports all typos at once. The gateway configuration
// (config.cpp) and the privacy section (config_routing.cpp) both read with it.
#pragma once

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace foreshore::config {

// "path.key", or "key" at the top.
inline std::string join_path(const std::string& path, std::string_view key) {
  return path.empty() ? std::string(key) : path + "." + std::string(key);
}

// What a node holds, as a problem names it: 'text', a list, a map, nothing.
inline std::string scalar_text(const YAML::Node& node) {
  if (node.IsScalar()) return "'" + node.Scalar() + "'";
  if (node.IsSequence()) return "a list";
  if (node.IsMap()) return "a map";
  return "nothing";
}

class YamlReader {
 public:
  explicit YamlReader(std::string_view source) : source_(source) {}

  void fail(const std::string& path, const std::string& problem) {
    errors_.push_back(source_ + ": " + path + ": " + problem);
  }
  const std::vector<std::string>& errors() const { return errors_; }
  // Every problem, one per line.
  std::string error_lines() const {
    std::string out;
    for (const auto& e : errors_) out += (out.empty() ? "" : "\n") + e;
    return out;
  }

  bool expect_map(const YAML::Node& node, const std::string& path) {
    if (node.IsMap()) return true;
    fail(path, "expected a map of keys, got " + scalar_text(node));
    return false;
  }

  void check_keys(const YAML::Node& map, const std::string& path,
                  std::span<const std::string_view> allowed) {
    for (const auto& kv : map) {
      const std::string key = kv.first.Scalar();
      if (std::find(allowed.begin(), allowed.end(), key) == allowed.end()) {
        std::string list;
        for (std::string_view a : allowed) list += (list.empty() ? "" : ", ") + std::string(a);
        fail(join_path(path, key), "unknown key (allowed here: " + list + ")");
      }
    }
  }

  template <typename T>
  void get(const YAML::Node& map, std::string_view key, const std::string& path, T& out) {
    const YAML::Node node = map[std::string(key)];
    if (!node) return;
    const std::string where = join_path(path, key);
    if (!node.IsScalar()) {
      fail(where, std::string("expected ") + type_name<T>() + ", got " + scalar_text(node));
      return;
    }
    try {
      if constexpr (std::is_same_v<T, std::string>) {
        out = node.Scalar();
      } else {
        out = node.as<T>();
      }
    } catch (const YAML::Exception&) {
      fail(where, std::string("expected ") + type_name<T>() + ", got " + scalar_text(node));
    }
  }

  void get_string_list(const YAML::Node& map, std::string_view key, const std::string& path,
                       std::vector<std::string>& out) {
    const YAML::Node node = map[std::string(key)];
    if (!node) return;
    const std::string where = join_path(path, key);
    if (!node.IsSequence()) {
      fail(where, "expected a list of strings, got " + scalar_text(node));
      return;
    }
    for (size_t i = 0; i < node.size(); ++i) {
      if (!node[i].IsScalar()) {
        fail(where + "[" + std::to_string(i) + "]",
             "expected a string, got " + scalar_text(node[i]));
        continue;
      }
      out.push_back(node[i].Scalar());
    }
  }

  // The string at `key`; nullopt (a problem when `required`) when it is
  // missing or not a string.
  std::optional<std::string> scalar(const YAML::Node& map, const char* key, const std::string& path,
                                    bool required) {
    const YAML::Node node = map[key];
    if (!node) {
      if (required) fail(join_path(path, key), "missing");
      return std::nullopt;
    }
    if (!node.IsScalar()) {
      fail(join_path(path, key), "expected a string");
      return std::nullopt;
    }
    return node.Scalar();
  }

 private:
  template <typename T>
  static const char* type_name() {
    if constexpr (std::is_same_v<T, bool>) return "true or false";
    if constexpr (std::is_integral_v<T>) return "an integer";
    if constexpr (std::is_floating_point_v<T>) return "a number";
    return "a string";
  }

  std::string source_;
  std::vector<std::string> errors_;
};

}  // namespace foreshore::config
