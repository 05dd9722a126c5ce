// Whether a compressed model is still fit for the user's task: perplexity on
// their text, how far its next-token distributions are from a reference
// model's (mean KL, top-1 agreement), and accuracy on their own task list.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "compress/divergence.h"
#include "engine/engine.h"

namespace foreshore::compress {

// One line of a tasks JSONL file, in one of three forms:
//   {"prompt": "...", "expected": "...", "match": "contains"|"exact", "stop": ["\n"]}
//   {"prompt": "...", "checker": {"regex": "..."}, "stop": [...]}
//   {"prompt": "...", "choices": ["...", "..."], "answer": 1}
// The first two generate greedily from the prompt; "contains" (the default)
// passes when the output contains `expected`, "exact" when the output equals it
// once both are trimmed of surrounding whitespace; the regex passes when it
// matches anywhere in the output (PCRE2 syntax). The third passes when the
// answer is the choice whose tokens, appended to the prompt, have the highest
// total log-likelihood.
struct EvaluationTask {
  enum class Kind { kExpected, kRegex, kChoices };
  size_t line = 0;  // 1-based line in the file, for messages
  Kind kind = Kind::kExpected;
  std::string prompt;
  std::string expected;
  bool exact_match = false;
  std::string regex;
  std::vector<std::string> stop;
  std::vector<std::string> choices;
  size_t answer = 0;
};

// Parses a tasks file; blank lines are skipped. Errors name origin:line and
// the field that is wrong.
Result<std::vector<EvaluationTask>> parse_tasks(std::string_view jsonl, const std::string& origin);

struct EvaluationOptions {
  std::string text;  // scored for perplexity and divergence; empty: neither
  std::vector<EvaluationTask> tasks;
  int32_t max_tokens = 64;  // generated per prompt task
  bool chat = false;        // wrap prompts in the model's chat template
  size_t window_tokens = 512;
  size_t max_text_tokens = 4096;
};

struct TaskOutcome {
  size_t line = 0;
  bool correct = false;
  std::string output;  // the generated text, or the chosen choice
};

struct ModelEvaluation {
  std::string path;  // the model file
  uint64_t file_bytes = 0;
  bool is_reference = false;
  // Text results, present when there was text to score.
  size_t scored_tokens = 0;
  // The window length used: the options' window_tokens capped by this
  // model's context length.
  size_t window_tokens = 0;
  std::optional<double> perplexity;
  // Tokens scored per second, one token per forward step as in decoding.
  std::optional<double> scoring_tokens_per_second;
  // Against the reference; absent for the reference itself and without one.
  std::optional<Divergence> divergence;
  std::vector<TaskOutcome> tasks;
  size_t tasks_correct = 0;
};

// Evaluates the reference (when given; it comes first in the result) and each
// candidate on the same text and tasks. With a reference every model must
// share its vocabulary.
Result<std::vector<ModelEvaluation>> evaluate_models(
    std::span<const std::shared_ptr<const engine::Model>> candidates,
    std::shared_ptr<const engine::Model> reference, const EvaluationOptions& options,
    engine::ThreadPool& pool);

}  // namespace foreshore::compress
