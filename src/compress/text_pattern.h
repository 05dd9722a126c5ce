// A compiled PCRE2 regular expression, for task checkers and tensor-name
// patterns (`eval --tasks`, `quantize --tensor-type`).
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "common/result.h"

struct pcre2_real_code_8;

namespace foreshore::compress {

class TextPattern {
 public:
  // On failure, the error says where in the pattern and why.
  static Result<TextPattern> compile(const std::string& pattern);
  // True when the pattern matches anywhere in `text`.
  bool search(std::string_view text) const;

 private:
  struct Free {
    void operator()(pcre2_real_code_8* code) const;
  };
  explicit TextPattern(pcre2_real_code_8* code) : code_(code) {}
  std::unique_ptr<pcre2_real_code_8, Free> code_;
};

}  // namespace foreshore::compress
