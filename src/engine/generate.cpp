#include "engine/generate.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <optional>

#include "common/install_paths.h"

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

Result<std::unique_ptr<Generation>> Generation::start(InferenceContext& context,
                                                      const GenerationRequest& request,
                                                      TextSink on_text) {
  const Model& model = context.model();
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
  // Checked whole now, so that no later step of a batch fails on it.
  for (TokenId t : request.prompt) {
    if (t < 0 || t >= model.config().vocab_size) {
      return make_error(ErrorKind::kInvalidArgument,
                        "prompt token id " + std::to_string(t) + " is outside the vocabulary of " +
                            std::to_string(model.config().vocab_size) + " tokens of model '" +
                            model.config().name + "'; tokenize with this model's tokenizer");
    }
  }
  std::unique_ptr<Generation> g(new Generation(context, request, std::move(on_text)));
  return g;
}

Generation::Generation(InferenceContext& context, const GenerationRequest& request,
                       TextSink on_text)
    : context_(context),
      request_(request),
      on_text_(std::move(on_text)),
      sampler_(request.sampling, context.model().config().vocab_size),
      history_(request.prompt),
      start_(Clock::now()) {
  result_.prompt_tokens = static_cast<int32_t>(request_.prompt.size());
  // Keep the longest cached prefix, but always evaluate at least one prompt
  // token so the logits belong to this prompt.
  const auto& cached = context_.cached_tokens();
  size_t common = 0;
  while (common < cached.size() && common + 1 < request_.prompt.size() &&
         cached[common] == request_.prompt[common])
    ++common;
  context_.truncate(static_cast<int32_t>(common));
  // A model with convolution state may keep less than asked (nothing).
  common = static_cast<size_t>(context_.position());
  result_.reused_prompt_tokens = static_cast<int32_t>(common);
  prompt_done_ = common;
  const int32_t room = context_.context_length() - static_cast<int32_t>(request_.prompt.size());
  limit_ = request_.max_tokens > 0 ? std::min(request_.max_tokens, room) : room;
  result_.finish_reason = FinishReason::kLength;
  // JSON mode: a token is allowed when its text continues the object. The
  // end of generation is not, until the object closes, and then generation ends.
  if (request_.json_object) {
    const Tokenizer& tokenizer = context_.model().tokenizer();
    continues_json_ = [this, &tokenizer](TokenId id) {
      if (tokenizer.is_end_of_generation(id)) return false;
      // A token with no text (a control token) would make no progress.
      const std::string_view piece = tokenizer.token_to_piece(id);
      if (piece.empty()) return false;
      trial_ = json_;
      return trial_.feed(piece);
    };
  }
  if (limit_ <= 0) finish(FinishReason::kLength);
}

int32_t Generation::prompt_tokens_left() const {
  return static_cast<int32_t>(request_.prompt.size() - prompt_done_);
}

std::span<const TokenId> Generation::next_input(int32_t budget) const {
  if (finished_ || budget <= 0) return {};
  if (prompt_done_ < request_.prompt.size()) {
    return std::span<const TokenId>(request_.prompt)
        .subspan(prompt_done_, std::min<size_t>(static_cast<size_t>(budget),
                                                request_.prompt.size() - prompt_done_));
  }
  return std::span<const TokenId>(&last_token_, 1);
}

void Generation::advance(int32_t consumed) {
  if (finished_ || consumed <= 0) return;
  if (prompt_done_ < request_.prompt.size()) {
    prompt_done_ += static_cast<size_t>(consumed);
    if (prompt_done_ < request_.prompt.size()) return;
    result_.prompt_seconds = seconds_since(start_);
    generation_start_ = Clock::now();
  }
  sample();
}

void Generation::sample() {
  const Tokenizer& tokenizer = context_.model().tokenizer();
  SampledToken token = sampler_.sample(context_.logits(), history_, continues_json_);
  if (result_.generated_tokens == 0) result_.time_to_first_token_seconds = seconds_since(start_);
  if (token.id < 0 || tokenizer.is_end_of_generation(token.id)) {
    finish(FinishReason::kStop);
    return;
  }
  if (request_.json_object) json_.feed(tokenizer.token_to_piece(token.id));
  history_.push_back(token.id);
  result_.tokens.push_back(token);
  ++result_.generated_tokens;
  result_.text += tokenizer.token_to_piece(token.id);
  last_token_ = token.id;

  bool stopped = false;
  for (const auto& s : request_.stop) {
    if (s.empty()) continue;
    const size_t from = emitted_ > s.size() ? emitted_ - s.size() : 0;
    const size_t at = result_.text.find(s, from);
    if (at != std::string::npos) {
      result_.text.resize(at);
      stopped = true;
    }
  }
  size_t ready = stopped ? result_.text.size() : complete_utf8_prefix(result_.text);
  if (!stopped)
    ready -= stop_prefix_hold(std::string_view(result_.text).substr(0, ready), request_.stop);
  if (ready > emitted_ && on_text_) {
    if (!on_text_(std::string_view(result_.text).substr(emitted_, ready - emitted_), token)) {
      emitted_ = ready;
      finish(FinishReason::kCancelled);
      return;
    }
  }
  emitted_ = std::max(emitted_, ready);
  if (stopped || json_.complete()) {
    finish(FinishReason::kStop);
    return;
  }
  if (result_.generated_tokens >= limit_) finish(FinishReason::kLength);
}

void Generation::cancel() {
  if (!finished_) finish(FinishReason::kCancelled);
}

void Generation::finish(FinishReason reason) {
  finished_ = true;
  result_.finish_reason = reason;
  if (emitted_ < result_.text.size() && on_text_ && reason != FinishReason::kCancelled &&
      !result_.tokens.empty()) {
    on_text_(std::string_view(result_.text).substr(emitted_), result_.tokens.back());
  }
  if (generation_start_ != Clock::time_point{})
    result_.generation_seconds = seconds_since(generation_start_);
}

Result<GenerationResult> generate(InferenceContext& context, ThreadPool& pool,
                                  const GenerationRequest& request, const TextSink& on_text) {
  FSH_ASSIGN_OR_RETURN(std::unique_ptr<Generation> generation,
                       Generation::start(context, request, on_text));
  while (!generation->finished()) {
    // The whole rest of the prompt at once: evaluate() splits it into
    // batches of the context's own size.
    const std::span<const TokenId> input = generation->next_input(context.context_length());
    if (auto logits = context.evaluate(input, pool); !logits.ok()) return logits.error();
    generation->advance(static_cast<int32_t>(input.size()));
  }
  return generation->take_result();
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
  if (fs::is_directory(name_or_path, ec)) {
    return make_error(ErrorKind::kInvalidArgument,
                      "model '" + name_or_path +
                          "' is a folder; pass the .gguf file in it, or add the folder to "
                          "FORESHORE_MODEL_PATH and pass the model's name");
  }
  // Something else that exists (a device such as /dev/null, a FIFO, a
  // socket) is not "not found": say what it is.
  if (const auto st = fs::status(name_or_path, ec); !ec && fs::exists(st)) {
    const char* kind = st.type() == fs::file_type::character ? "a character device"
                       : st.type() == fs::file_type::block   ? "a block device"
                       : st.type() == fs::file_type::fifo    ? "a FIFO (named pipe)"
                       : st.type() == fs::file_type::socket  ? "a socket"
                                                             : "not a regular file";
    return make_error(ErrorKind::kInvalidArgument,
                      "model '" + name_or_path + "' is " + kind +
                          ", not a regular file; pass the path of a .gguf file");
  }
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
