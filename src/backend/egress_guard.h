// The egress guard: the last line of the privacy guarantee. Every body the
// OpenAI-compatible tier is about to send to a cloud endpoint passes here,
// whatever path produced it (routing, retries, fallbacks, cascade,
// consistency, shadow runs). It reads the exact bytes: every key and every
// string value at any depth, after JSON unescaping, and numbers as written.
// It fails closed: a body it cannot read completely (too large, too deep, not
// valid JSON) or a guard without a policy refuses to send.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace foreshore::backend {

// What the router's own scan already read of a request, so that the guard
// need not read it twice: exact copies of the message contents and prompt it
// scanned, the strictest data class it found in all it scanned (as a rank the
// policy understands) and which detectors did the scan. The guard skips a
// body string only when it is byte for byte one of `texts` under the key
// "content" or "prompt" (keys that add nothing a detector reads); every other
// byte, JSON inside those strings included, it reads as before.
struct EgressClearance {
  std::vector<std::string> texts;  // in the order the body holds them
  int32_t rank = 0;
  const void* scanner = nullptr;
};

// Decides whether the strings found in a body may go to `tier`: empty when
// they may, else why not (which detector, which class). `skipped` is set when
// the guard left out strings a clearance vouched for: the policy then counts
// its rank, or, when its scanner is not the one in force (the configuration
// was reloaded in between), reads the clearance's texts again itself. Supplied by the layer that
// owns the detectors, so this layer needs none of them.
using EgressPolicy =
    std::function<std::string(std::string_view tier, std::span<const std::string_view> strings,
                              const EgressClearance* skipped)>;

struct EgressLimits {
  size_t max_bytes = size_t{32} << 20;
  // Above the client limit (kMaxJsonDepth): the gateway wraps client JSON a
  // few levels deeper (messages[i].content[j]...).
  int max_depth = 96;
};

// The text a detector must see in a JSON document: every key, every string
// value (unescaped) and every number as written, appended to `out` (views
// into `arena`, which is cleared first and must outlive them). A string
// value under a key is one entry "key: value", so that a secret keeps the
// name that marks it ({"password": "..."}). JSON inside a string value
// (tool-call arguments) is read as well. In `arena` each entry is followed by
// '\0', so the arena is also all of them as one text. False, with `why`,
// when the text is not valid JSON or nests deeper than `max_depth`.
bool collect_json_strings(std::string_view json_text, int max_depth, std::string& arena,
                          std::vector<std::string_view>& out, std::string& why);

class EgressGuard {
 public:
  explicit EgressGuard(EgressLimits limits = {}) : limits_(limits) {}

  // Replaces the policy; requests checked afterwards use the new one.
  void set_policy(EgressPolicy policy);

  // Ok when `body` may be sent to cloud tier `tier`; kPermissionDenied with
  // the reason otherwise. `cleared`, when given, is what need not be read again.
  Status check(std::string_view tier, std::string_view body,
               const EgressClearance* cleared = nullptr) const;

 private:
  EgressLimits limits_;
  mutable std::mutex mu_;
  std::shared_ptr<const EgressPolicy> policy_;
};

}  // namespace foreshore::backend
