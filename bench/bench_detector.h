// The sensitivity detectors with the shipped defaults, built once for the
// benchmarks that need them (building takes a few hundred milliseconds).
#pragma once

#include <cstdio>
#include <cstdlib>

#include "route/sensitivity.h"

namespace foreshore::bench {

inline const route::SensitivityDetector& default_detector() {
  static const auto d = [] {
    auto created = route::SensitivityDetector::create({});
    if (!created.ok()) {
      std::fprintf(stderr, "%s\n", created.error().message.c_str());
      std::exit(1);
    }
    return std::move(created).value();
  }();
  return *d;
}

}  // namespace foreshore::bench
