// The generation loop shared by the CLI and the embedded backend: prompt
// processing with KV prefix reuse, sampling, stop conditions, streaming text.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "engine/model.h"
#include "engine/sampler.h"

namespace foreshore::engine {

struct GenerationRequest {
  std::vector<TokenId> prompt;
  SamplingParams sampling;
  int32_t max_tokens = 256;       // <= 0: until end of generation or context full
  std::vector<std::string> stop;  // stop strings; never included in the output
  // JSON mode: the output is one JSON object and generation stops when it
  // closes (finish "stop"); cut short by max_tokens it is a prefix of one.
  bool json_object = false;
};

enum class FinishReason { kStop, kLength, kCancelled };
std::string_view finish_reason_name(FinishReason reason);  // OpenAI's "stop", "length", ...

struct GenerationResult {
  FinishReason finish_reason = FinishReason::kStop;
  int32_t prompt_tokens = 0;
  int32_t reused_prompt_tokens = 0;  // served from the KV cache of an earlier turn
  int32_t generated_tokens = 0;
  double prompt_seconds = 0.0;
  double generation_seconds = 0.0;
  double time_to_first_token_seconds = 0.0;
  std::string text;
  std::vector<SampledToken> tokens;  // with logprob and entropy, one per generated token
};

// Receives each piece of text as it becomes final (complete UTF-8, clear of
// any stop-string prefix) with the tokens that produced it. Return false to cancel.
using TextSink = std::function<bool(std::string_view text, const SampledToken& last_token)>;

Result<GenerationResult> generate(InferenceContext& context, ThreadPool& pool,
                                  const GenerationRequest& request, const TextSink& on_text = {});

// Finds a model by path, or by name (with or without .gguf) in the folders of
// FORESHORE_MODEL_PATH (colon-separated; default "models:../shared/data/models").
Result<std::string> resolve_model_path(const std::string& name_or_path);
// Replaces FORESHORE_MODEL_PATH for this process (an app hands in its own
// colon-separated folders); nullopt goes back to the environment.
void set_model_search_path(std::optional<std::string> folders);
// Folders searched, in order, for error messages and listings.
std::vector<std::string> model_search_path();

}  // namespace foreshore::engine
