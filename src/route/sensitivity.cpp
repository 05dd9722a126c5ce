#include "route/sensitivity.h"

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
// JSON.

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

}  // namespace foreshore::route
