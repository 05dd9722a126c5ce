// libFuzzer target for what a client's bytes meet first: the OpenAI request
// parser (chat and completions) and the egress guard's JSON walk. Beyond "no
// crash, no stack exhaustion" (depth bombs), it checks what callers rely on:
// a refusal always has a message and a 4xx status, every error body and every
// string the parser kept serialises to valid UTF-8 JSON, and the guard's walk
// either reads the whole text or says why not.
#include <cstdint>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "backend/egress_guard.h"
#include "hybrid/openai.h"

namespace {

using foreshore::hybrid::Request;
using foreshore::hybrid::RequestKind;

void check(bool ok) {
  if (!ok) std::abort();
}

void check_json_text(const std::string& text) {
  check(foreshore::is_valid_utf8(text));
  check(!nlohmann::json::parse(text, nullptr, false).is_discarded());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  for (RequestKind kind : {RequestKind::kChat, RequestKind::kCompletion}) {
    Request request;
    if (auto error = foreshore::openai::parse_request(kind, body, request)) {
      check(!error->message.empty());
      check(error->status >= 400 && error->status < 500);
      check_json_text(foreshore::openai::error_json(*error));
      continue;
    }
    for (const auto& m : request.backend.messages) {
      std::string out;
      foreshore::append_json_string(out, m.content);
      check_json_text(out);
    }
  }
  std::string arena;
  std::vector<std::string_view> strings;
  std::string why;
  if (!foreshore::backend::collect_json_strings(body, 96, arena, strings, why)) {
    check(!why.empty());
  } else {
    for (std::string_view s : strings) {
      check(s.data() >= arena.data() && s.data() + s.size() <= arena.data() + arena.size());
    }
  }
  return 0;
}
