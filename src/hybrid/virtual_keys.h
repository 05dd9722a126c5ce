// Virtual API keys: client keys made and revoked while the gateway runs
// (`foreshore keys`, POST/DELETE /admin/keys), each with its own budget, rate
// limits, allowed tiers and data classes, and expiry. They live in the state
// backend, so every replica sharing it knows them; only a SHA-256 digest of a
// key is stored, never the key. The static server.api_keys keep working
// beside them.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "hybrid/shared_limits.h"
#include "state/state.h"

namespace foreshore::hybrid {

struct VirtualKey {
  std::string id;    // public handle: names the key in logs and revocations
  std::string name;  // what the operator called it
  std::string team;
  Limits limits;                          // this key's own limits (0: none)
  std::vector<std::string> tiers;         // tiers it may use; empty: all
  std::vector<std::string> data_classes;  // data classes it may send; empty: all
  int64_t expires_at = 0;                 // Unix seconds; 0: never
  int64_t created_at = 0;
};

// The key as JSON (without the secret) and back; errors name the field.
std::string virtual_key_json(const VirtualKey& key);
Result<VirtualKey> virtual_key_from_json(std::string_view json);

// Makes a key with `spec`'s settings (id and created_at are filled in) and
// returns the secret, shown this once ("fsk-" and 32 hex digits). Refused
// (kInvalidArgument, naming the field) unless limits and expiry are 0 (none)
// or more, data classes are known (stored under their canonical names, as
// admission compares them) and tiers are among `tier_names` (the config's).
Result<std::string> create_virtual_key(state::SharedState& state, VirtualKey& spec,
                                       const std::vector<std::string>& tier_names);
// Revokes the key with this id; kNotFound when there is none.
Status revoke_virtual_key(state::SharedState& state, const std::string& id);
// The key a bearer secret stands for, expired or not; nullopt when the secret
// is not a virtual key's ("fsk-" prefix). An error (kNotFound) when it has
// the prefix but no key stands for it (revoked, mistyped, or lost with the
// state backend), or its stored record is unreadable: such a client must be
// refused, never served as if it had sent no key.
Result<std::optional<VirtualKey>> find_virtual_key(state::SharedState& state,
                                                   std::string_view secret);

}  // namespace foreshore::hybrid
