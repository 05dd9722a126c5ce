#include "engine/generate.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <optional>

#include "common/install_paths.h"
#include "engine/json_constraint.h"

namespace foreshore::engine {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Length of the longest prefix of `text` that ends on a complete UTF-8 character.
size_t complete_utf8_prefix(std::string_view text) {
  size_t n = text.size();
  // Look back at most 3 bytes for the lead byte of an unfinished sequence.
  for (size_t back = 1; back <= std::min<size_t>(3, n); ++back) {
    const auto c = static_cast<unsigned char>(text[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte
    size_t need = 1;
    if ((c & 0xE0) == 0xC0)
      need = 2;
    else if ((c & 0xF0) == 0xE0)
      need = 3;
    else if ((c & 0xF8) == 0xF0)
      need = 4;
    return back < need ? n - back : n;
  }
  return n;
}

// Bytes at the end of `text` that could begin a stop string and must be held back.
size_t stop_prefix_hold(std::string_view text, const std::vector<std::string>& stops) {
  size_t hold = 0;
  for (const auto& s : stops) {
    for (size_t len = std::min(s.size() - 1, text.size()); len > hold; --len) {
      if (text.substr(text.size() - len) == std::string_view(s).substr(0, len)) {
        hold = len;
        break;
      }
    }
  }
  return hold;
}

}  // namespace

std::string_view finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kCancelled:
      return "cancelled";
  }
  return "stop";
}

Result<GenerationResult> generate(InferenceContext& context, ThreadPool& pool,
                                  const GenerationRequest& request, const TextSink& on_text) {
  const Model& model = context.model();
  const Tokenizer& tokenizer = model.tokenizer();
  if (request.prompt.empty()) {
    return make_error(ErrorKind::kInvalidArgument, "the prompt is empty: nothing to generate from");
  }
  if (static_cast<int64_t>(request.prompt.size()) >= context.context_length()) {
    return make_error(ErrorKind::kResourceExhausted,
                      "the prompt has " + std::to_string(request.prompt.size()) +
                          " tokens but the context of model '" + model.config().name + "' holds " +
                          std::to_string(context.context_length()) +
                          "; shorten the prompt or raise the context size");
  }

  GenerationResult result;
  result.prompt_tokens = static_cast<int32_t>(request.prompt.size());

  // Keep the longest cached prefix, but always evaluate at least one prompt
  // token so the logits belong to this prompt.
  const auto& cached = context.cached_tokens();
  size_t common = 0;
  while (common < cached.size() && common + 1 < request.prompt.size() &&
         cached[common] == request.prompt[common])
    ++common;
  context.truncate(static_cast<int32_t>(common));
  result.reused_prompt_tokens = static_cast<int32_t>(common);

  const auto start = Clock::now();
  auto logits = context.evaluate(std::span<const TokenId>(request.prompt).subspan(common), pool);
  if (!logits.ok()) return logits.error();
  result.prompt_seconds = seconds_since(start);

  Sampler sampler(request.sampling, model.config().vocab_size);
  std::vector<TokenId> history(request.prompt);
  const int32_t room = context.context_length() - context.position();
  const int32_t limit = request.max_tokens > 0 ? std::min(request.max_tokens, room) : room;
  std::string pending;  // generated text not yet handed to the sink
  size_t emitted = 0;   // bytes of result.text already emitted
  const auto gen_start = Clock::now();
  result.finish_reason = FinishReason::kLength;
  std::span<const float> current = logits.value();

  // JSON mode: a token is allowed when its text continues the object. The
  // end of generation is not, until the object closes, and then generation ends.
  JsonObjectPrefix json, trial;
  std::function<bool(TokenId)> continues_json;
  if (request.json_object) {
    continues_json = [&](TokenId id) {
      if (tokenizer.is_end_of_generation(id)) return false;
      // A token with no text (a control token) would make no progress.
      const std::string_view piece = tokenizer.token_to_piece(id);
      if (piece.empty()) return false;
      trial = json;
      return trial.feed(piece);
    };
  }

  for (int32_t i = 0; i < limit; ++i) {
    SampledToken token = sampler.sample(current, history, continues_json);
    if (i == 0) result.time_to_first_token_seconds = seconds_since(start);
    if (token.id < 0 || tokenizer.is_end_of_generation(token.id)) {
      result.finish_reason = FinishReason::kStop;
      break;
    }
    if (request.json_object) json.feed(tokenizer.token_to_piece(token.id));
    history.push_back(token.id);
    result.tokens.push_back(token);
    ++result.generated_tokens;
    result.text += tokenizer.token_to_piece(token.id);

    bool stopped = false;
    for (const auto& s : request.stop) {
      if (s.empty()) continue;
      const size_t from = emitted > s.size() ? emitted - s.size() : 0;
      const size_t at = result.text.find(s, from);
      if (at != std::string::npos) {
        result.text.resize(at);
        stopped = true;
      }
    }
    size_t ready = stopped ? result.text.size() : complete_utf8_prefix(result.text);
    if (!stopped)
      ready -= stop_prefix_hold(std::string_view(result.text).substr(0, ready), request.stop);
    if (ready > emitted && on_text) {
      if (!on_text(std::string_view(result.text).substr(emitted, ready - emitted), token)) {
        result.finish_reason = FinishReason::kCancelled;
        emitted = ready;
        break;
      }
    }
    emitted = std::max(emitted, ready);
    if (stopped || json.complete()) {
      result.finish_reason = FinishReason::kStop;
      break;
    }
    if (i + 1 == limit) break;
    auto next = context.evaluate(std::span<const TokenId>(&token.id, 1), pool);
    if (!next.ok()) return next.error();
    current = next.value();
  }
  if (emitted < result.text.size() && on_text && result.finish_reason != FinishReason::kCancelled &&
      !result.tokens.empty()) {
    on_text(std::string_view(result.text).substr(emitted), result.tokens.back());
  }
  result.generation_seconds = seconds_since(gen_start);
  return result;
}

namespace {
// An embedding app's own search path (set_model_search_path), ahead of the environment.
std::mutex app_model_path_mu;
std::optional<std::string> app_model_path;
}  // namespace

void set_model_search_path(std::optional<std::string> folders) {
  std::lock_guard lock(app_model_path_mu);
  app_model_path = std::move(folders);
}

std::vector<std::string> model_search_path() {
  std::vector<std::string> dirs;
  std::string from_app;
  {
    std::lock_guard lock(app_model_path_mu);
    if (app_model_path) from_app = *app_model_path;
  }
  const char* env = std::getenv("FORESHORE_MODEL_PATH");
  std::string_view list = !from_app.empty()                ? std::string_view(from_app)
                          : env != nullptr && *env != '\0' ? env
                                                           : "models:../shared/data/models";
  while (!list.empty()) {
    const size_t colon = list.find(':');
    std::string_view dir = list.substr(0, colon);
    if (!dir.empty()) dirs.emplace_back(dir);
    if (colon == std::string_view::npos) break;
    list.remove_prefix(colon + 1);
  }
  // Then the folders found from the binary, so a model shipped beside it is
  // found from any working directory.
  for (auto& dir : binary_relative_model_dirs()) dirs.push_back(std::move(dir));
  return dirs;
}

Result<std::string> resolve_model_path(const std::string& name_or_path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_regular_file(name_or_path, ec)) return name_or_path;
  const bool looks_like_path = name_or_path.find('/') != std::string::npos;
  std::string tried;
  if (!looks_like_path) {
    for (const auto& dir : model_search_path()) {
      for (const std::string& candidate : {name_or_path, name_or_path + ".gguf"}) {
        const fs::path p = fs::path(dir) / candidate;
        if (fs::is_regular_file(p, ec)) return p.string();
      }
      tried += (tried.empty() ? "" : ", ") + dir;
    }
  }
  return make_error(
      ErrorKind::kNotFound,
      "model '" + name_or_path + "' not found" +
          (looks_like_path ? std::string(" (no such file)")
                           : " as a file or in the model search path [" + tried + "]") +
          "; pass a path to a .gguf file or set FORESHORE_MODEL_PATH");
}

}  // namespace foreshore::engine
