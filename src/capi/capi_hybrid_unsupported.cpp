// The C API's hybrid functions in an engine-only build (FSH_ENGINE_ONLY),
// which has no gateway: each says so and what to build instead.
#include "capi/capi_internal.h"

using foreshore::capi::fail;

namespace {
foreshore_status unsupported(const char* function) {
  return fail(FORESHORE_ERR_UNSUPPORTED,
              std::string(function) +
                  ": this libforeshore is an engine-only build (FSH_ENGINE_ONLY), without the "
                  "hybrid pipeline; use a full build for routing and cloud tiers");
}
}  // namespace

extern "C" {

FORESHORE_API foreshore_hybrid_params foreshore_hybrid_default_params(void) {
  return foreshore_hybrid_params{};
}

FORESHORE_API foreshore_status foreshore_hybrid_create(const foreshore_hybrid_params*,
                                                       foreshore_hybrid** out_hybrid) {
  if (out_hybrid != nullptr) *out_hybrid = nullptr;
  return unsupported("foreshore_hybrid_create");
}

FORESHORE_API void foreshore_hybrid_free(foreshore_hybrid*) {}

FORESHORE_API foreshore_status foreshore_hybrid_route(foreshore_hybrid*, const char*,
                                                      const foreshore_route_hints*,
                                                      char** out_json) {
  if (out_json != nullptr) *out_json = nullptr;
  return unsupported("foreshore_hybrid_route");
}

FORESHORE_API foreshore_chat_params foreshore_chat_default_params(void) {
  return foreshore_chat_params{};
}

FORESHORE_API foreshore_status foreshore_hybrid_chat(foreshore_hybrid*, const char*,
                                                     const foreshore_chat_params*, char** out_json,
                                                     int* out_http_status) {
  if (out_json != nullptr) *out_json = nullptr;
  if (out_http_status != nullptr) *out_http_status = 0;
  return unsupported("foreshore_hybrid_chat");
}

FORESHORE_API foreshore_status foreshore_hybrid_set_memory_pressure(foreshore_hybrid*, int) {
  return unsupported("foreshore_hybrid_set_memory_pressure");
}

}  // extern "C"
