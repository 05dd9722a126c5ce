#include "compress/evaluate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "compress/layer_trace.h"
#include "compress/text_pattern.h"

namespace foreshore::compress {
namespace {

using engine::Model;
using engine::TokenId;
using nlohmann::json;

std::string_view trim(std::string_view s) {
  const auto first = s.find_first_not_of(" \t\r\n");
  if (first == std::string_view::npos) return {};
  const auto last = s.find_last_not_of(" \t\r\n");
  return s.substr(first, last - first + 1);
}

Result<EvaluationTask> parse_task(const std::string& line, size_t line_number,
                                  const std::string& origin) {
  const std::string where = origin + ":" + std::to_string(line_number) + ": ";
  auto bad = [&](const std::string& what) {
    return make_error(ErrorKind::kInvalidArgument, where + what);
  };
  json j;
  try {
    j = json::parse(line);
  } catch (const json::parse_error& e) {
    return bad(std::string("not valid JSON (") + e.what() + ")");
  }
  if (!j.is_object()) return bad("each line must be a JSON object");

  EvaluationTask task;
  task.line = line_number;
  if (!j.contains("prompt") || !j["prompt"].is_string()) {
    return bad("\"prompt\" is missing or not a string");
  }
  task.prompt = j["prompt"].get<std::string>();
  const int forms = static_cast<int>(j.contains("expected")) +
                    static_cast<int>(j.contains("checker")) +
                    static_cast<int>(j.contains("choices"));
  if (forms != 1) {
    return bad(
        "give exactly one of \"expected\" (a string), \"checker\" ({\"regex\": ...}) "
        "or \"choices\" (with \"answer\")");
  }
  if (j.contains("stop")) {
    const json& stop = j["stop"];
    if (!stop.is_array() ||
        !std::all_of(stop.begin(), stop.end(), [](const json& s) { return s.is_string(); })) {
      return bad("\"stop\" must be an array of strings");
    }
    task.stop = stop.get<std::vector<std::string>>();
  }

  if (j.contains("expected")) {
    task.kind = EvaluationTask::Kind::kExpected;
    if (!j["expected"].is_string() || j["expected"].get<std::string>().empty()) {
      return bad("\"expected\" must be a string that is not empty");
    }
    task.expected = j["expected"].get<std::string>();
    const std::string match = j.value("match", std::string("contains"));
    if (match != "contains" && match != "exact") {
      return bad("\"match\" must be \"contains\" or \"exact\", got \"" + match + "\"");
    }
    task.exact_match = match == "exact";
  } else if (j.contains("checker")) {
    task.kind = EvaluationTask::Kind::kRegex;
    const json& checker = j["checker"];
    if (!checker.is_object() || !checker.contains("regex") || !checker["regex"].is_string()) {
      return bad("\"checker\" must be an object with a \"regex\" string");
    }
    task.regex = checker["regex"].get<std::string>();
    auto compiled = TextPattern::compile(task.regex);
    if (!compiled.ok()) return bad(compiled.error().message);
  } else {
    task.kind = EvaluationTask::Kind::kChoices;
    const json& choices = j["choices"];
    if (!choices.is_array() || choices.size() < 2 ||
        !std::all_of(choices.begin(), choices.end(), [](const json& c) {
          return c.is_string() && !c.get<std::string>().empty();
        })) {
      return bad("\"choices\" must be an array of at least two strings that are not empty");
    }
    task.choices = choices.get<std::vector<std::string>>();
    if (!j.contains("answer") || !j["answer"].is_number_integer() ||
        j["answer"].get<int64_t>() < 0 ||
        j["answer"].get<int64_t>() >= static_cast<int64_t>(task.choices.size())) {
      return bad("\"answer\" must be the index (0 to " + std::to_string(task.choices.size() - 1) +
                 ") of the right choice");
    }
    task.answer = j["answer"].get<size_t>();
  }
  return task;
}

// Everything one model needs across text windows and tasks.
struct ModelRun {
  std::shared_ptr<const Model> model;
  std::vector<std::vector<TokenId>> windows;
  double nll_sum = 0.0;
  size_t nll_count = 0;
  size_t tokens = 0;
  double seconds = 0.0;
  double kl_sum = 0.0;
  size_t positions = 0;
  size_t agreements = 0;
  double max_kl = 0.0;
};

Result<TokenDistributions> score_window(ModelRun& run, size_t window, engine::ThreadPool& pool) {
  const auto& tokens = run.windows[window];
  const auto start = std::chrono::steady_clock::now();
  FSH_ASSIGN_OR_RETURN(TokenDistributions dist, next_token_log_probs(run.model, tokens, pool));
  run.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  run.tokens += dist.positions();
  if (dist.positions() >= 2) {
    const size_t scored = dist.positions() - 1;
    run.nll_sum += mean_negative_log_likelihood(dist, tokens) * static_cast<double>(scored);
    run.nll_count += scored;
  }
  return dist;
}

std::string render_prompt(const Model& model, const std::string& prompt, bool chat) {
  if (!chat) return prompt;
  engine::ChatFormat format = engine::ChatFormat::kPlain;
  if (auto t = model.file().get_string("tokenizer.chat_template")) {
    format = engine::detect_chat_format(*t).value_or(engine::ChatFormat::kPlain);
  }
  return engine::render_chat(format, {{"user", prompt}}, true);
}

Result<TaskOutcome> run_generation_task(const EvaluationTask& task,
                                        engine::InferenceContext& context,
                                        const EvaluationOptions& options,
                                        engine::ThreadPool& pool) {
  const Model& model = context.model();
  engine::GenerationRequest request;
  request.prompt =
      model.tokenizer().encode(render_prompt(model, task.prompt, options.chat), true, options.chat);
  request.sampling = engine::SamplingParams::greedy();
  request.max_tokens = options.max_tokens;
  request.stop = task.stop;
  auto generated = engine::generate(context, pool, request);
  if (!generated.ok()) {
    return make_error(generated.error().kind, "task on line " + std::to_string(task.line) + ": " +
                                                  generated.error().message);
  }
  TaskOutcome outcome{task.line, false, generated->text};
  if (task.kind == EvaluationTask::Kind::kRegex) {
    FSH_ASSIGN_OR_RETURN(TextPattern regex, TextPattern::compile(task.regex));
    outcome.correct = regex.search(outcome.output);
  } else if (task.exact_match) {
    outcome.correct = trim(outcome.output) == trim(task.expected);
  } else {
    outcome.correct = outcome.output.find(task.expected) != std::string::npos;
  }
  return outcome;
}

// Total log-probability of the tokens `choice` adds after `prompt`.
Result<double> choice_log_likelihood(const std::shared_ptr<const Model>& model,
                                     const std::string& prompt, const std::string& choice,
                                     bool chat, size_t line, engine::ThreadPool& pool) {
  const engine::Tokenizer& tokenizer = model->tokenizer();
  const std::vector<TokenId> context = tokenizer.encode(prompt, true, chat);
  const std::vector<TokenId> whole = tokenizer.encode(prompt + choice, true, chat);
  // Tokens can merge across the seam, so the choice starts where the two
  // encodings first differ; the first token is never scored (nothing before it).
  size_t start = 0;
  while (start < context.size() && start < whole.size() && context[start] == whole[start]) ++start;
  start = std::max<size_t>(start, 1);
  const std::string where = "task on line " + std::to_string(line) + ": choice \"" + choice + "\"";
  if (start >= whole.size()) {
    return make_error(ErrorKind::kInvalidArgument,
                      where + " adds no token to the prompt to score; give a longer choice");
  }
  if (whole.size() > static_cast<size_t>(model->config().context_length)) {
    return make_error(ErrorKind::kInvalidArgument,
                      where + " with its prompt has " + std::to_string(whole.size()) +
                          " tokens, more than the model's context of " +
                          std::to_string(model->config().context_length));
  }
  FSH_ASSIGN_OR_RETURN(TokenDistributions dist, next_token_log_probs(model, whole, pool));
  double total = 0.0;
  for (size_t i = start; i < whole.size(); ++i) total += dist.row(i - 1)[whole[i]];
  return total;
}

Result<TaskOutcome> run_choice_task(const EvaluationTask& task,
                                    const std::shared_ptr<const Model>& model,
                                    const EvaluationOptions& options, engine::ThreadPool& pool) {
  const std::string prompt = render_prompt(*model, task.prompt, options.chat);
  size_t best = 0;
  double best_ll = -std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < task.choices.size(); ++i) {
    FSH_ASSIGN_OR_RETURN(double ll, choice_log_likelihood(model, prompt, task.choices[i],
                                                          options.chat, task.line, pool));
    if (ll > best_ll) {
      best_ll = ll;
      best = i;
    }
  }
  return TaskOutcome{task.line, best == task.answer, task.choices[best]};
}

Status run_tasks(const std::shared_ptr<const Model>& model, const EvaluationOptions& options,
                 engine::ThreadPool& pool, ModelEvaluation& out) {
  if (options.tasks.empty()) return Status::Ok();
  FSH_ASSIGN_OR_RETURN(auto context, engine::InferenceContext::create(model, {}));
  for (const EvaluationTask& task : options.tasks) {
    Result<TaskOutcome> outcome = task.kind == EvaluationTask::Kind::kChoices
                                      ? run_choice_task(task, model, options, pool)
                                      : run_generation_task(task, *context, options, pool);
    if (!outcome.ok()) return outcome.error();
    out.tasks_correct += outcome->correct ? 1 : 0;
    out.tasks.push_back(std::move(outcome).value());
  }
  return Status::Ok();
}

}  // namespace

Result<std::vector<EvaluationTask>> parse_tasks(std::string_view jsonl, const std::string& origin) {
  std::vector<EvaluationTask> tasks;
  size_t line_number = 0;
  while (!jsonl.empty()) {
    const size_t end = jsonl.find('\n');
    const std::string line(jsonl.substr(0, end));
    jsonl.remove_prefix(end == std::string_view::npos ? jsonl.size() : end + 1);
    ++line_number;
    if (trim(line).empty()) continue;
    FSH_ASSIGN_OR_RETURN(EvaluationTask task, parse_task(line, line_number, origin));
    tasks.push_back(std::move(task));
  }
  if (tasks.empty()) {
    return make_error(ErrorKind::kInvalidArgument,
                      origin +
                          ": no tasks; write one JSON object per line, e.g. "
                          "{\"prompt\": \"2+2=\", \"expected\": \"4\"}");
  }
  return tasks;
}

Result<std::vector<ModelEvaluation>> evaluate_models(
    std::span<const std::shared_ptr<const Model>> candidates,
    std::shared_ptr<const Model> reference, const EvaluationOptions& options,
    engine::ThreadPool& pool) {
  if (candidates.empty()) {
    return make_error(ErrorKind::kInvalidArgument, "no model to evaluate");
  }
  if (options.text.empty() && options.tasks.empty()) {
    return make_error(ErrorKind::kInvalidArgument,
                      "nothing to evaluate: give a text to score and/or tasks to run");
  }
  std::vector<ModelRun> runs;
  if (reference) runs.push_back({reference, {}});
  for (const auto& model : candidates) runs.push_back({model, {}});
  if (reference) {
    const auto& reference_tokens = reference->tokenizer().vocabulary().tokens;
    for (const auto& model : candidates) {
      if (model->tokenizer().vocabulary().tokens != reference_tokens) {
        return make_error(ErrorKind::kInvalidArgument,
                          "model '" + model->file().origin() +
                              "' has another vocabulary than the reference '" +
                              reference->file().origin() +
                              "': divergence compares distributions over the same tokens");
      }
    }
  }

  size_t window_count = 0;
  if (!options.text.empty()) {
    for (ModelRun& run : runs) {
      run.windows = tokenize_windows(*run.model, options.text, options.window_tokens,
                                     options.max_text_tokens);
      window_count = std::max(window_count, run.windows.size());
    }
    if (window_count == 0) {
      return make_error(ErrorKind::kInvalidArgument,
                        "the evaluation text gives no tokens; give a text that is not empty");
    }
  }
  // Window by window so that only two windows of distributions are held at
  // once, whatever the text length and the number of models.
  for (size_t w = 0; w < window_count; ++w) {
    std::optional<TokenDistributions> reference_dist;
    for (size_t r = 0; r < runs.size(); ++r) {
      ModelRun& run = runs[r];
      if (w >= run.windows.size()) continue;
      FSH_ASSIGN_OR_RETURN(TokenDistributions dist, score_window(run, w, pool));
      if (reference && r == 0) {
        reference_dist = std::move(dist);
      } else if (reference_dist) {
        const Divergence d = compare_distributions(*reference_dist, dist);
        run.kl_sum += d.mean_kl * static_cast<double>(d.positions);
        run.agreements +=
            static_cast<size_t>(std::lround(d.top1_agreement * static_cast<double>(d.positions)));
        run.positions += d.positions;
        run.max_kl = std::max(run.max_kl, d.max_kl);
      }
    }
  }

  std::vector<ModelEvaluation> results;
  for (size_t r = 0; r < runs.size(); ++r) {
    const ModelRun& run = runs[r];
    ModelEvaluation& e = results.emplace_back();
    e.path = run.model->file().origin();
    e.file_bytes = run.model->file().file_size();
    e.is_reference = reference && r == 0;
    if (window_count > 0) {
      e.scored_tokens = run.nll_count;
      e.window_tokens =
          std::min(options.window_tokens, static_cast<size_t>(run.model->config().context_length));
      if (run.nll_count > 0) {
        e.perplexity = std::exp(run.nll_sum / static_cast<double>(run.nll_count));
      }
      if (run.seconds > 0.0) e.scoring_tokens_per_second = run.tokens / run.seconds;
      if (reference && r > 0 && run.positions > 0) {
        Divergence d;
        d.positions = run.positions;
        d.mean_kl = run.kl_sum / static_cast<double>(run.positions);
        d.max_kl = run.max_kl;
        d.top1_agreement = static_cast<double>(run.agreements) / static_cast<double>(run.positions);
        e.divergence = d;
      }
    }
    FSH_TRY_STATUS(run_tasks(run.model, options, pool, e));
  }
  return results;
}

}  // namespace foreshore::compress
