// What several benchmarks share: the shipped detectors and complexity model,
// built once, and the mixed prompt the routing benchmarks score.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "route/complexity.h"
#include "route/sensitivity.h"

namespace foreshore::bench {

// The complexity model shipped in data/router/.
inline std::shared_ptr<const route::ComplexityModel> shipped_complexity_model() {
  static const auto m = [] {
    auto r = route::ComplexityModel::load(std::string(FSH_SOURCE_DIR) +
                                          "/data/router/complexity-default.json");
    if (!r.ok()) {
      std::fprintf(stderr, "%s\n", r.error().message.c_str());
      std::exit(1);
    }
    return std::make_shared<const route::ComplexityModel>(std::move(r).value());
  }();
  return m;
}

// Mixed prose, a multiple-choice question, code and math, repeated to size.
inline std::string mixed_prompt(size_t bytes) {
  static const std::string unit =
      "A patient presents with chest pain radiating to the left arm. Which of the following is "
      "the most likely diagnosis?\nA. Myocardial infarction\nB. Pericarditis\nC. Aortic "
      "dissection\nD. Pulmonary embolism\nExplain step by step why, then solve 3x^2 + 2x - 5 = 0 "
      "and fix this code:\n```cpp\nint main() { return f(2); }\n```\n";
  std::string s;
  while (s.size() < bytes) s += unit;
  s.resize(bytes);
  return s;
}

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
