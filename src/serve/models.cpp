#include "serve/models.h"

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "common/json_text.h"
#include "route/router.h"

namespace foreshore::serve {

std::string render_models(const hybrid::Deployment& dep, int64_t created,
                          std::unordered_map<std::string, std::string>& by_id) {
  const std::vector<hybrid::Tier>& loaded = dep.tiers();
  const auto& by_model = dep.by_model();
  const size_t default_tier = dep.default_tier();
  std::vector<std::pair<std::string, size_t>> entries(by_model.begin(), by_model.end());
  std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) {
    return a.second != b.second ? a.second < b.second : a.first < b.first;
  });
  if (!by_model.contains(kRoutedModel))
    entries.insert(entries.begin(), {kRoutedModel, default_tier});
  std::string out = "{\"object\":\"list\",\"data\":[";
  for (size_t i = 0; i < entries.size(); ++i) {
    const hybrid::Tier& t = loaded[entries[i].second];
    const backend::BackendInfo& info = t.backend->info();
    std::string model = "{\"id\":";
    append_json_string(model, entries[i].first);
    model += ",\"object\":\"model\",\"created\":" + std::to_string(created) +
             ",\"owned_by\":\"foreshore\",\"foreshore\":{\"tier\":";
    append_json_string(model, t.config.name);
    model += ",\"kind\":";
    append_json_string(model, backend::kind_name(t.config.kind()));
    model += ",\"placement\":";
    append_json_string(model, backend::placement_name(t.config.placement));
    model += ",\"model\":";
    append_json_string(model, info.model);
    model += ",\"model_version\":";
    append_json_string(model, info.model_version);
    model += ",\"context_length\":" + std::to_string(info.context_length) + "}}";
    if (i > 0) out += ',';
    out += model;
    by_id.emplace(entries[i].first, std::move(model));
  }
  // The names that choose a policy per request ("foreshore/cascade"), so a
  // client that checks its model against this list can send them.
  for (std::string_view policy : route::policy_names()) {
    const std::string id = std::string(kRoutedModel) + "/" + std::string(policy);
    if (by_model.contains(id)) continue;
    std::string model = "{\"id\":";
    append_json_string(model, id);
    model += ",\"object\":\"model\",\"created\":" + std::to_string(created) +
             ",\"owned_by\":\"foreshore\",\"foreshore\":{\"policy\":";
    append_json_string(model, policy);
    model += "}}";
    out += ',';
    out += model;
    by_id.emplace(id, std::move(model));
  }
  out += "]}";
  return out;
}

}  // namespace foreshore::serve
