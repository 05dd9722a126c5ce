#include "hybrid/virtual_keys.h"

#include <openssl/rand.h>

#include <algorithm>
#include <ctime>
#include <nlohmann/json.hpp>

#include "common/sha256.h"
#include "route/sensitivity.h"

namespace foreshore::hybrid {
namespace {

constexpr char kHex[] = "0123456789abcdef";

std::string hex(const unsigned char* bytes, size_t n) {
  std::string out;
  for (size_t i = 0; i < n; ++i) {
    out += kHex[bytes[i] >> 4];
    out += kHex[bytes[i] & 15];
  }
  return out;
}

std::string record_key(const std::string& hash) {
  return "vkey:" + hash;
}
std::string id_key(const std::string& id) {
  return "vkeyid:" + id;
}

Status check_limits(const VirtualKey& k) {
  if (!(k.limits.budget_usd >= 0) || k.limits.requests_per_minute < 0 ||  // NaN too
      k.limits.tokens_per_minute < 0 || k.expires_at < 0) {
    return make_error(ErrorKind::kInvalidArgument,
                      "virtual key budget_usd, requests_per_minute, tokens_per_minute and expiry "
                      "must be 0 (none) or more");
  }
  return {};
}

// A key made with these settings could be enforced as they say.
Status check_virtual_key(VirtualKey& spec, const std::vector<std::string>& tier_names) {
  if (auto s = check_limits(spec); !s.ok()) return s;
  for (std::string& name : spec.data_classes) {
    auto cls = route::parse_data_class(name);
    if (!cls.ok()) {
      return make_error(ErrorKind::kInvalidArgument,
                        "virtual key data_classes: " + cls.error().message);
    }
    name = std::string(route::to_string(*cls));
  }
  for (const std::string& tier : spec.tiers) {
    if (std::find(tier_names.begin(), tier_names.end(), tier) != tier_names.end()) continue;
    std::string known;
    for (const auto& t : tier_names) known += (known.empty() ? "" : ", ") + t;
    return make_error(ErrorKind::kInvalidArgument,
                      "virtual key tiers: '" + tier.substr(0, 64) +
                          "' is not a tier of this gateway (its tiers: " + known +
                          "); a key limited to an unknown tier could use none");
  }
  return {};
}

}  // namespace

std::string virtual_key_json(const VirtualKey& k) {
  return nlohmann::json{{"id", k.id},
                        {"name", k.name},
                        {"team", k.team},
                        {"budget_usd", k.limits.budget_usd},
                        {"requests_per_minute", k.limits.requests_per_minute},
                        {"tokens_per_minute", k.limits.tokens_per_minute},
                        {"tiers", k.tiers},
                        {"data_classes", k.data_classes},
                        {"expires_at", k.expires_at},
                        {"created_at", k.created_at}}
      .dump();
}

Result<VirtualKey> virtual_key_from_json(std::string_view text) {
  const auto j = nlohmann::json::parse(text, nullptr, false);
  if (!j.is_object()) {
    return make_error(ErrorKind::kInvalidArgument, "a virtual key must be a JSON object");
  }
  VirtualKey k;
  std::string field;
  try {
    const auto get = [&](const char* name, auto& out) {
      field = name;
      if (auto it = j.find(name); it != j.end() && !it->is_null()) it->get_to(out);
    };
    get("id", k.id);
    get("name", k.name);
    get("team", k.team);
    get("budget_usd", k.limits.budget_usd);
    get("requests_per_minute", k.limits.requests_per_minute);
    get("tokens_per_minute", k.limits.tokens_per_minute);
    get("tiers", k.tiers);
    get("data_classes", k.data_classes);
    get("expires_at", k.expires_at);
    get("created_at", k.created_at);
  } catch (const nlohmann::json::exception&) {
    return make_error(ErrorKind::kInvalidArgument, "virtual key field '" + field +
                                                       "' has the wrong type (numbers for limits "
                                                       "and times, lists of strings for tiers and "
                                                       "data_classes)");
  }
  if (auto s = check_limits(k); !s.ok()) return s.error();
  return k;
}

Result<std::string> create_virtual_key(state::SharedState& state, VirtualKey& spec,
                                       const std::vector<std::string>& tier_names) {
  if (auto s = check_virtual_key(spec, tier_names); !s.ok()) return s.error();
  unsigned char random[24];
  if (RAND_bytes(random, sizeof random) != 1) {
    return make_error(ErrorKind::kInternal,
                      "the system's random source failed; no key was made, try again");
  }
  const std::string secret = "fsk-" + hex(random, 16);
  spec.id = hex(random + 16, 8);
  spec.created_at = std::time(nullptr);
  const std::string hash = sha256_hex(secret);
  if (auto s = state.put_record(record_key(hash), virtual_key_json(spec)); !s.ok()) {
    return s.error();
  }
  if (auto s = state.put_record(id_key(spec.id), hash); !s.ok()) return s.error();
  return secret;
}

Status revoke_virtual_key(state::SharedState& state, const std::string& id) {
  const auto hash = state.record(id_key(id));
  if (!hash) {
    return make_error(ErrorKind::kNotFound, "no virtual key has the id '" + id +
                                                "'; the id is the one `keys create` printed");
  }
  if (auto s = state.remove_record(record_key(*hash)); !s.ok()) return s;
  return state.remove_record(id_key(id));
}

Result<std::optional<VirtualKey>> find_virtual_key(state::SharedState& state,
                                                   std::string_view secret) {
  if (!secret.starts_with("fsk-")) return std::optional<VirtualKey>();
  const auto text = state.record(record_key(sha256_hex(secret)));
  if (!text) {
    return make_error(ErrorKind::kNotFound,
                      "This virtual key is unknown: it was revoked, mistyped, or lost with the "
                      "state backend's data; ask for a new one");
  }
  auto k = virtual_key_from_json(*text);
  if (!k.ok()) {
    return make_error(ErrorKind::kNotFound,
                      "This virtual key's record in the state backend is "
                      "unreadable (" +
                          k.error().message + "); revoke it and make a new one");
  }
  return std::optional<VirtualKey>(std::move(k).value());
}

}  // namespace foreshore::hybrid
