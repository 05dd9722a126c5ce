// The C API's common part and its engine half: errors, strings, the model
// search path, and a model loaded and run in process. Links only the engine
// (no HTTP, TLS, SQLite or pattern library), so an engine-only build has it.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "capi/capi_internal.h"
#include "engine/engine.h"

namespace foreshore::capi {
namespace {
thread_local std::string last_error;
}  // namespace

foreshore_status fail(foreshore_status status, std::string message) {
  last_error = std::move(message);
  return status;
}

foreshore_status fail(const Error& error) {
  foreshore_status status = FORESHORE_ERR_INTERNAL;
  switch (error.kind) {
    case ErrorKind::kInvalidArgument:
    case ErrorKind::kCorrupt:
    case ErrorKind::kPermissionDenied:
      status = FORESHORE_ERR_INVALID_ARGUMENT;
      break;
    case ErrorKind::kNotFound:
    case ErrorKind::kIo:
      status = FORESHORE_ERR_NOT_FOUND;
      break;
    case ErrorKind::kUnsupported:
      status = FORESHORE_ERR_UNSUPPORTED;
      break;
    case ErrorKind::kResourceExhausted:  // a prompt past the context, a context past memory
      status = FORESHORE_ERR_INVALID_ARGUMENT;
      break;
    case ErrorKind::kUnavailable:
    case ErrorKind::kDeadlineExceeded:
      status = FORESHORE_ERR_UNAVAILABLE;
      break;
    case ErrorKind::kCancelled:
      status = FORESHORE_ERR_CANCELLED;
      break;
    case ErrorKind::kInternal:
      break;
  }
  return fail(status, error.message);
}

foreshore_status succeed() {
  last_error.clear();
  return FORESHORE_OK;
}

char* copy_string(const std::string& text) {
  char* out = static_cast<char*>(std::malloc(text.size() + 1));
  if (out != nullptr) std::memcpy(out, text.c_str(), text.size() + 1);
  return out;
}

}  // namespace foreshore::capi

using foreshore::capi::fail;
using foreshore::capi::succeed;
namespace engine = foreshore::engine;

struct foreshore_model {
  std::shared_ptr<const engine::Model> model;
  std::unique_ptr<engine::InferenceContext> context;
  std::unique_ptr<engine::ThreadPool> pool;
  engine::ChatFormat chat_format = engine::ChatFormat::kPlain;
  std::mutex generating;  // one generation at a time: the context holds its KV cache
  std::atomic<bool> cancel{false};
};

extern "C" {

FORESHORE_API const char* foreshore_version(void) {
  return "0.1.0";
}

FORESHORE_API const char* foreshore_status_name(foreshore_status status) {
  switch (status) {
    case FORESHORE_OK:
      return "ok";
    case FORESHORE_ERR_INVALID_ARGUMENT:
      return "invalid_argument";
    case FORESHORE_ERR_NOT_FOUND:
      return "not_found";
    case FORESHORE_ERR_UNAVAILABLE:
      return "unavailable";
    case FORESHORE_ERR_CANCELLED:
      return "cancelled";
    case FORESHORE_ERR_UNSUPPORTED:
      return "unsupported";
    case FORESHORE_ERR_INTERNAL:
      return "internal";
  }
  return "unknown";
}

FORESHORE_API const char* foreshore_last_error(void) {
  return foreshore::capi::last_error.c_str();
}

FORESHORE_API void foreshore_string_free(char* text) {
  std::free(text);
}

FORESHORE_API foreshore_status foreshore_set_model_search_path(const char* folders) {
  engine::set_model_search_path(folders == nullptr ? std::nullopt
                                                   : std::optional<std::string>(folders));
  return succeed();
}

FORESHORE_API foreshore_model_params foreshore_model_default_params(void) {
  foreshore_model_params p{};
  p.threads = 0;
  p.context_length = 0;
  p.progress = nullptr;
  p.progress_user_data = nullptr;
  return p;
}

FORESHORE_API foreshore_status foreshore_model_load(const char* name_or_path,
                                                    const foreshore_model_params* params,
                                                    foreshore_model** out_model) {
  if (out_model == nullptr || name_or_path == nullptr) {
    return fail(FORESHORE_ERR_INVALID_ARGUMENT,
                "foreshore_model_load: name_or_path and out_model must not be NULL");
  }
  *out_model = nullptr;
  const foreshore_model_params p = params ? *params : foreshore_model_default_params();
  if (p.context_length < 0) {
    return fail(FORESHORE_ERR_INVALID_ARGUMENT,
                "foreshore_model_load: context_length " + std::to_string(p.context_length) +
                    " is negative; give 0 (the model's own) or a number of tokens");
  }
  if (p.threads < 0 || p.threads > engine::kMaxThreads) {
    return fail(FORESHORE_ERR_INVALID_ARGUMENT, "foreshore_model_load: threads " +
                                                    std::to_string(p.threads) +
                                                    " is out of range; give 0 (one per core) to " +
                                                    std::to_string(engine::kMaxThreads));
  }
  // The load has three stages (find and map the file, build the context,
  // start the threads); progress is reported between them, where an abort
  // leaves nothing half made.
  auto stage = [&](float progress) {
    return p.progress == nullptr || p.progress(progress, p.progress_user_data);
  };
  const auto aborted = [&] {
    return fail(FORESHORE_ERR_CANCELLED, std::string("foreshore_model_load: loading '") +
                                             name_or_path +
                                             "' was aborted by its progress callback");
  };
  try {
    if (!stage(0.0f)) return aborted();
    auto path = engine::resolve_model_path(name_or_path);
    if (!path.ok()) return fail(path.error());
    auto model = engine::Model::load(*path);
    if (!model.ok()) return fail(model.error());
    if (!stage(0.7f)) return aborted();
    engine::ContextOptions options;
    options.context_length = p.context_length;
    auto context = engine::InferenceContext::create(*model, options);
    if (!context.ok()) return fail(context.error());
    if (!stage(0.9f)) return aborted();
    auto handle = std::make_unique<foreshore_model>();
    handle->model = *model;
    handle->context = std::move(context).value();
    handle->pool = std::make_unique<engine::ThreadPool>(p.threads);
    if (auto t = handle->model->file().get_string("tokenizer.chat_template")) {
      handle->chat_format = engine::detect_chat_format(*t).value_or(engine::ChatFormat::kPlain);
    }
    if (!stage(1.0f)) return aborted();
    *out_model = handle.release();
    return succeed();
  } catch (const std::exception& e) {
    return fail(FORESHORE_ERR_INTERNAL, std::string("foreshore_model_load: ") + e.what());
  }
}

FORESHORE_API void foreshore_model_free(foreshore_model* model) {
  delete model;
}

FORESHORE_API foreshore_generate_params foreshore_generate_default_params(void) {
  const engine::SamplingParams defaults;
  foreshore_generate_params p{};
  p.max_tokens = 256;
  p.temperature = defaults.temperature;
  p.top_p = defaults.top_p;
  p.top_k = defaults.top_k;
  p.seed = 0;
  p.chat = true;
  p.on_token = nullptr;
  p.user_data = nullptr;
  return p;
}

FORESHORE_API foreshore_status foreshore_model_generate(foreshore_model* model, const char* prompt,
                                                        const foreshore_generate_params* params,
                                                        char** out_text) {
  if (model == nullptr || prompt == nullptr || out_text == nullptr) {
    return fail(FORESHORE_ERR_INVALID_ARGUMENT,
                "foreshore_model_generate: model, prompt and out_text must not be NULL");
  }
  *out_text = nullptr;
  const foreshore_generate_params p = params ? *params : foreshore_generate_default_params();
  if (!(p.temperature >= 0.0f && p.temperature <= 2.0f) || !(p.top_p >= 0.0f && p.top_p <= 1.0f) ||
      p.top_k < 0) {
    return fail(FORESHORE_ERR_INVALID_ARGUMENT,
                "foreshore_model_generate: temperature must be 0 to 2, top_p 0 to 1 and top_k 0 "
                "or more (got " +
                    std::to_string(p.temperature) + ", " + std::to_string(p.top_p) + ", " +
                    std::to_string(p.top_k) + ")");
  }
  try {
    std::lock_guard lock(model->generating);
    model->cancel.store(false);
    engine::GenerationRequest request;
    request.sampling.temperature = p.temperature;
    request.sampling.top_p = p.top_p;
    request.sampling.top_k = p.top_k;
    request.sampling.seed = p.seed;
    request.max_tokens = p.max_tokens;
    const std::string text =
        p.chat ? engine::render_chat(model->chat_format, {{"user", prompt}}, true) : prompt;
    request.prompt = model->model->tokenizer().encode(text, true, p.chat);
    auto on_text = [&](std::string_view piece, const engine::SampledToken&) {
      if (model->cancel.load()) return false;
      return p.on_token == nullptr || p.on_token(piece.data(), piece.size(), p.user_data);
    };
    auto result = engine::generate(*model->context, *model->pool, request, on_text);
    if (!result.ok()) return fail(result.error());
    *out_text = foreshore::capi::copy_string(result->text);
    if (result->finish_reason == engine::FinishReason::kCancelled) {
      return fail(FORESHORE_ERR_CANCELLED,
                  "foreshore_model_generate: cancelled by the token callback or "
                  "foreshore_model_cancel after " +
                      std::to_string(result->generated_tokens) + " tokens");
    }
    return succeed();
  } catch (const std::exception& e) {
    return fail(FORESHORE_ERR_INTERNAL, std::string("foreshore_model_generate: ") + e.what());
  }
}

FORESHORE_API void foreshore_model_cancel(foreshore_model* model) {
  if (model != nullptr) model->cancel.store(true);
}

}  // extern "C"
