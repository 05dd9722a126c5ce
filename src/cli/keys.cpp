// `foreshore keys`: make and revoke virtual API keys in the state backend
// every replica of a gateway shares (hybrid/virtual_keys.h).
#include <ctime>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "hybrid/config.h"
#include "hybrid/virtual_keys.h"

namespace foreshore::cli {
namespace {

struct KeysFlags {
  std::string config;
  hybrid::VirtualKey spec;
  int64_t expires_in_days = 0;
  std::string id;
};

// The shared state the config names; `tier_names` gets its tiers' names.
Result<std::unique_ptr<state::SharedState>> open_state(const std::string& config_path,
                                                       std::vector<std::string>& tier_names) {
  auto config = config::load_config(config_path);
  if (!config.ok()) return config.error();
  tier_names = config->tier_names();
  if (config->state.backend == "local") {
    return make_error(ErrorKind::kInvalidArgument,
                      config_path +
                          ": virtual keys live in a shared state backend, and this config's is "
                          "local (the gateway's own memory); set state: {backend: redis, url: ...} "
                          "or use POST /admin/keys on the running gateway");
  }
  auto state = state::SharedState::create(config->state);
  if (!state.ok()) return state.error();
  return std::move(state).value();
}

int run_create(KeysFlags& flags) {
  std::vector<std::string> tiers;
  auto state = open_state(flags.config, tiers);
  if (!state.ok()) return fail(state.error());
  if (flags.expires_in_days > 0) {
    flags.spec.expires_at = std::time(nullptr) + flags.expires_in_days * 86400;
  }
  auto secret = hybrid::create_virtual_key(**state, flags.spec, tiers);
  if (!secret.ok()) return fail(secret.error());
  auto out = nlohmann::json::parse(hybrid::virtual_key_json(flags.spec));
  out["key"] = *secret;
  std::cout << out.dump(2) << "\n";
  return 0;
}

int run_revoke(const KeysFlags& flags) {
  std::vector<std::string> tiers;
  auto state = open_state(flags.config, tiers);
  if (!state.ok()) return fail(state.error());
  if (auto s = hybrid::revoke_virtual_key(**state, flags.id); !s.ok()) return fail(s.error());
  std::cout << "revoked " << flags.id << "\n";
  return 0;
}

}  // namespace

void add_keys_command(CLI::App& app) {
  auto flags = std::make_shared<KeysFlags>();
  CLI::App* keys = app.add_subcommand(
      "keys", "Make and revoke virtual API keys, shared by every replica (state.backend: redis)");
  keys->require_subcommand(1);
  keys->footer(
      "Examples (the config's state: section names the Redis every replica shares):\n"
      "  foreshore keys create --config gateway.yaml --name ci --budget-usd 5 --tiers edge,cloud\n"
      "  foreshore keys revoke --config gateway.yaml KEY_ID");
  CLI::App* create = keys->add_subcommand(
      "create", "Make a key; prints it once with its id (only its SHA-256 digest is stored)");
  create->add_option("--config", flags->config, "The gateway's config file (its state: section)")
      ->required();
  create->add_option("--name", flags->spec.name, "What to call the key");
  create->add_option("--team", flags->spec.team, "Team whose spend it counts to");
  create->add_option("--budget-usd", flags->spec.limits.budget_usd,
                     "Dollars it may spend; 0: none");
  create->add_option("--requests-per-minute", flags->spec.limits.requests_per_minute, "0: none");
  create->add_option("--tokens-per-minute", flags->spec.limits.tokens_per_minute, "0: none");
  create->add_option("--tiers", flags->spec.tiers, "Tiers it may use (default: all)")
      ->delimiter(',');
  create
      ->add_option("--data-classes", flags->spec.data_classes,
                   "Data classes it may send (default: all)")
      ->delimiter(',');
  create->add_option("--expires-in-days", flags->expires_in_days, "0: never")
      ->check(CLI::Range(int64_t{0}, int64_t{36600}));
  create->footer(
      "Example:\n  foreshore keys create --config gateway.yaml --name ci --budget-usd 5 "
      "--tiers edge,cloud");
  on_run(create, [flags] { return run_create(*flags); });
  CLI::App* revoke = keys->add_subcommand("revoke", "Revoke the key with this id");
  revoke->add_option("--config", flags->config, "The gateway's config file")->required();
  revoke->add_option("id", flags->id, "The id `keys create` printed")->required();
  revoke->footer(
      "Example (the key stops working on every replica at once):\n"
      "  foreshore keys revoke --config gateway.yaml KEY_ID");
  on_run(revoke, [flags] { return run_revoke(*flags); });
}

}  // namespace foreshore::cli
