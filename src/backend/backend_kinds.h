// Private to src/backend: the constructors of each kind of tier, for
// create_backend() to dispatch to.
#pragma once

#include <memory>
#include <string>

#include "backend/backend.h"

namespace foreshore::backend {

// An OpenAI-compatible base URL split into what httplib needs.
struct EndpointUrl {
  std::string scheme;     // "http" or "https"
  std::string host;       // without brackets for IPv6
  int port = 0;           // explicit or the scheme's default
  std::string base_path;  // e.g. "/v1", never ending in '/'; may be empty

  // "scheme://host:port", the form httplib::Client takes.
  std::string origin() const;
};

// Parses http(s)://host[:port][/path]; errors say what part is wrong.
Result<EndpointUrl> parse_endpoint_url(const std::string& url);

Result<std::shared_ptr<Backend>> create_embedded_backend(const TierConfig& config);
Result<std::shared_ptr<Backend>> create_openai_backend(const TierConfig& config);

}  // namespace foreshore::backend
