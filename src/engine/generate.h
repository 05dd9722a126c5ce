// The generation loop shared by the CLI and the embedded backend: prompt
// processing with KV prefix reuse, sampling, stop conditions, streaming text.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "engine/json_constraint.h"
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

// One request being generated, one forward step at a time, so that a
// scheduler can run several in the same BatchDecoder step: the prompt goes
// in chunks (chunked prefill), then one sampled token per step. Each step's
// logits are read from the context. Sampling, stop strings, JSON mode and
// streaming behave as generate() does, which is a loop over this.
class Generation {
 public:
  // Checks the request against `context`, keeps the longest reusable cached
  // prefix of the prompt (always leaving at least one prompt token to run)
  // and starts the clock. `context` and `on_text` must outlive this.
  static Result<std::unique_ptr<Generation>> start(InferenceContext& context,
                                                   const GenerationRequest& request,
                                                   TextSink on_text = {});

  // The tokens the next step should run for this sequence: up to `budget`
  // prompt tokens while the prompt loads, then the last sampled token. Empty
  // once finished.
  std::span<const TokenId> next_input(int32_t budget) const;
  // After a step ran the first `consumed` tokens of next_input() on the
  // context: once the prompt is in, samples the next token from the
  // context's logits, streams its text and checks the stop conditions.
  void advance(int32_t consumed);
  // Ends the generation now as cancelled (client gone, deadline passed).
  void cancel();

  Generation(const Generation&) = delete;
  Generation& operator=(const Generation&) = delete;

  bool finished() const { return finished_; }
  // Prompt tokens still to run (0 once the prompt is in): the queued
  // prefill work a scheduler predicts latency from.
  int32_t prompt_tokens_left() const;
  InferenceContext& context() const { return context_; }
  const GenerationResult& result() const { return result_; }
  GenerationResult take_result() { return std::move(result_); }

 private:
  Generation(InferenceContext& context, const GenerationRequest& request, TextSink on_text);
  void sample();
  void finish(FinishReason reason);

  InferenceContext& context_;
  const GenerationRequest request_;
  const TextSink on_text_;
  Sampler sampler_;
  std::vector<TokenId> history_;
  size_t prompt_done_ = 0;  // prompt tokens in the context
  int32_t limit_ = 0;       // tokens to sample at most
  size_t emitted_ = 0;  // bytes of result_.text already handed to on_text
  JsonObjectPrefix json_, trial_;
  std::function<bool(TokenId)> continues_json_;
  TokenId last_token_ = -1;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_, generation_start_;
  GenerationResult result_;
};

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
