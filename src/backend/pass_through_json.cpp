// Apart from backend.cpp so that the request fuzzer (tests/fuzz) can compile
// it in without the tiers.
#include <nlohmann/json.hpp>

#include "backend/backend.h"

namespace foreshore::backend {

PassThroughJson PassThroughJson::of(const nlohmann::json& value) {
  return PassThroughJson(value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

}  // namespace foreshore::backend
