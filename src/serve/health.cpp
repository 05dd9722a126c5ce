#include "serve/health.h"

#include <string>

#include "common/json_text.h"

namespace foreshore::serve {

HttpReply readiness(const hybrid::Deployment* dep, bool draining) {
  if (draining) return json_reply("{\"status\":\"draining\"}", 503);
  if (dep == nullptr) return json_reply("{\"status\":\"loading\"}", 503);
  // Each tier's state, so that "ready" never hides a cloud that cannot
  // be reached: the gateway serves (200) but says it is degraded.
  std::string names, unavailable, states;
  bool all_ok = true;
  for (size_t i = 0; i < dep->tiers().size(); ++i) {
    const hybrid::Tier& t = dep->tiers()[i];
    if (i > 0) names += ',', states += ',';
    append_json_string(names, t.config.name);
    const std::string why = t.backend->unavailable_reason();
    const std::string_view breaker = dep->pipeline().breaker_state(t.config.name);
    append_json_string(states, t.config.name);
    states += ":{\"placement\":";
    append_json_string(states, backend::placement_name(t.config.placement));
    states += ",\"breaker\":";
    append_json_string(states, breaker);
    states += ",\"state\":";
    append_json_string(states, !why.empty()          ? "unavailable"
                               : breaker == "closed" ? "ok"
                                                     : "failing");
    states += '}';
    all_ok = all_ok && why.empty() && breaker == "closed";
    if (!why.empty()) {
      unavailable += unavailable.empty() ? "" : ",";
      append_json_string(unavailable, t.config.name);
      unavailable += ':';
      append_json_string(unavailable, why);
    }
  }
  // A replica on its own state (Redis down) serves but enforces limits alone.
  const state::SharedState& shared = dep->pipeline().shared_state();
  all_ok = all_ok && shared.connected();
  std::string body = std::string("{\"status\":") + (all_ok ? "\"ready\"" : "\"degraded\"") +
                     ",\"tiers\":[" + names + "],\"tier_states\":{" + states + "}";
  body += ",\"state\":{\"backend\":";
  append_json_string(body, shared.backend());
  body += std::string(",\"connected\":") + (shared.connected() ? "true" : "false");
  if (const std::string why = shared.last_error(); !why.empty()) {
    body += ",\"error\":";
    append_json_string(body, why);
  }
  body += "}";
  if (!unavailable.empty()) body += ",\"unavailable\":{" + unavailable + "}";
  body += "}";
  return json_reply(std::move(body));
}

}  // namespace foreshore::serve
