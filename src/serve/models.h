// GET /v1/models: every name a client may send as `model`, in OpenAI's list
// shape, each saying which tier it reaches.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>

#include "hybrid/deployment.h"

namespace foreshore::serve {

// The model name that leaves the choice of tier to the gateway (the default
// tier until the router decides per request).
inline constexpr const char* kRoutedModel = "foreshore";

// The list for `dep`, `created` as each model's creation time; each model's
// own object goes into `by_id` as well, for GET /v1/models/{id}.
std::string render_models(const hybrid::Deployment& dep, int64_t created,
                          std::unordered_map<std::string, std::string>& by_id);

}  // namespace foreshore::serve
