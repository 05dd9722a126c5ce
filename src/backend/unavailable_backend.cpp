#include "backend/backend.h"

namespace foreshore::backend {
namespace {

class UnavailableBackend final : public Backend {
 public:
  UnavailableBackend(const TierConfig& config, const Error& why)
      : reason_((why.message.starts_with("tier '") ? why.message
                                                   : "tier '" + config.name + "': " + why.message) +
                "; fix it and reload the configuration (SIGHUP) or restart") {
    info_.name = config.name;
    info_.kind = config.kind();
    info_.placement = config.placement;
    info_.model = config.model;
    info_.model_version = "unavailable";
  }

  const BackendInfo& info() const override { return info_; }

  Result<Completion> generate(const BackendRequest&, const DeltaSink&) override {
    return make_error(ErrorKind::kUnavailable, reason_);
  }

  std::string unavailable_reason() const override { return reason_; }

 private:
  BackendInfo info_;
  const std::string reason_;
};

}  // namespace

std::shared_ptr<Backend> make_unavailable_backend(const TierConfig& config, const Error& why) {
  return std::make_shared<UnavailableBackend>(config, why);
}

}  // namespace foreshore::backend
