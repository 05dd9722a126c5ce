#include "backend/backend.h"

#include "backend/backend_kinds.h"

namespace foreshore::backend {

namespace {

Error tier_error(const TierConfig& config, const std::string& problem) {
  return make_error(ErrorKind::kInvalidArgument, "tier '" + config.name + "' (kind '" +
                                                     std::string(kind_name(config.kind())) +
                                                     "'): " + problem);
}

Status check_positive(const TierConfig& config, const char* field, int64_t value) {
  if (value > 0) return Status::Ok();
  return tier_error(config, std::string(field) + " is " + std::to_string(value) +
                                "; it must be a positive number");
}

}  // namespace

Result<std::shared_ptr<Backend>> create_backend(const TierConfig& config) {
  const EmbeddedTierSettings* embedded = config.embedded();
  if (config.model.empty()) {
    return tier_error(config, embedded != nullptr
                                  ? "model is empty; give a model name or a path to a .gguf file"
                                  : "model is empty; give the model id the upstream serves");
  }
  FSH_TRY_STATUS(check_positive(config, "max_concurrency", config.max_concurrency));
  if (config.max_queue < 0) {
    return tier_error(
        config, "max_queue is " + std::to_string(config.max_queue) + "; it must be 0 or more");
  }
  if (embedded != nullptr) {
    if (embedded->context_length < 0) {
      return tier_error(config, "context_length is " + std::to_string(embedded->context_length) +
                                    "; use 0 for the model's own or a positive token count");
    }
    FSH_TRY_STATUS(check_positive(config, "kv_memory_mb", embedded->kv_memory_mb));
    return create_embedded_backend(config);
  }
  const OpenAiTierSettings& openai = *config.openai();
  if (openai.endpoint.empty()) {
    return tier_error(config,
                      "endpoint is empty; give the base URL, e.g. "
                      "https://api.openai.com/v1 or http://127.0.0.1:8000/v1");
  }
  if (auto url = parse_endpoint_url(openai.endpoint); !url.ok()) {
    return tier_error(config, "endpoint: " + url.error().message);
  }
  FSH_TRY_STATUS(check_positive(config, "connect_timeout_ms", openai.connect_timeout_ms));
  FSH_TRY_STATUS(check_positive(config, "first_byte_timeout_ms", openai.first_byte_timeout_ms));
  FSH_TRY_STATUS(check_positive(config, "total_timeout_ms", openai.total_timeout_ms));
  return create_openai_backend(config);
}

}  // namespace foreshore::backend
