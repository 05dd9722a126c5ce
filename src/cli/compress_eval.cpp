// `foreshore prune` and `foreshore eval`: make a model smaller by removing
// whole layers and FFN channels, and measure whether it is still fit for the
// user's text and tasks.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "compress/compress.h"

namespace foreshore::cli {
namespace {

using json = nlohmann::ordered_json;

Result<std::string> read_text_file(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return make_error(ErrorKind::kNotFound,
                      "cannot read " + what + " '" + path + "': no such readable file");
  }
  std::ostringstream content;
  content << in.rdbuf();
  return content.str();
}

Status write_text_file(const std::string& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
  if (!out.flush()) {
    return make_error(ErrorKind::kIo, "cannot write '" + path + "'; check the folder exists");
  }
  return Status::Ok();
}

Result<std::shared_ptr<const engine::Model>> load_model(const std::string& name_or_path) {
  FSH_ASSIGN_OR_RETURN(std::string path, engine::resolve_model_path(name_or_path));
  return engine::Model::load(path);
}

std::string format_size(uint64_t bytes) {
  char buf[32];
  if (bytes >= (uint64_t{1} << 30)) {
    std::snprintf(buf, sizeof buf, "%.2f GiB", static_cast<double>(bytes) / (1 << 30));
  } else if (bytes >= (uint64_t{1} << 20)) {
    std::snprintf(buf, sizeof buf, "%.2f MiB", static_cast<double>(bytes) / (1 << 20));
  } else {
    std::snprintf(buf, sizeof buf, "%.1f KiB", static_cast<double>(bytes) / 1024);
  }
  return buf;
}

// ---- prune ----

struct PruneFlags {
  std::string input;
  std::string output;
  int32_t remove_layer_count = 0;
  std::vector<int32_t> layers;
  double ffn_keep = 1.0;
  std::string calibration;
  size_t calibration_tokens = 2048;
  std::string report;
  int32_t threads = 0;
};

json prune_report_json(const compress::PruneReport& r, const PruneFlags& f, uint64_t bytes_in,
                       uint64_t bytes_out) {
  json layers = json::array();
  for (const auto& l : r.layers) {
    json entry{{"index", l.original_index}};
    if (r.measured) entry["block_influence"] = l.block_influence;
    entry["removed"] = l.new_index < 0;
    if (l.new_index >= 0) {
      entry["new_index"] = l.new_index;
      entry["ffn_channels"] = l.ffn_channels;
    }
    layers.push_back(entry);
  }
  json removed = json::array();
  for (const auto& l : r.layers) {
    if (l.new_index < 0) removed.push_back(l.original_index);
  }
  return json{{"input", f.input},
              {"output", f.output},
              {"architecture", r.architecture},
              {"calibration", f.calibration.empty() ? json() : json(f.calibration)},
              {"calibration_tokens", r.calibration_tokens},
              {"layers_before", r.layers_before},
              {"layers_after", r.layers_after},
              {"removed_layers", removed},
              {"feed_forward_length_before", r.feed_forward_before},
              {"feed_forward_length_after", r.feed_forward_after},
              {"file_bytes_before", bytes_in},
              {"file_bytes_after", bytes_out},
              {"tensor_bytes_before", r.tensor_bytes_before},
              {"tensor_bytes_after", r.tensor_bytes_after},
              {"layers", layers},
              {"notes", r.notes}};
}

int prune(const PruneFlags& f) {
  // A FIFO, device or folder as the output fails now, not after the work.
  if (auto out = engine::resolve_output_path(f.output); !out.ok()) return fail(out.error());
  auto path = engine::resolve_model_path(f.input);
  if (!path.ok()) return fail(path.error());
  auto model = engine::Model::load(*path);
  if (!model.ok()) return fail(model.error());

  compress::PruneOptions options;
  options.remove_layers = f.layers;
  options.remove_layer_count = f.remove_layer_count;
  options.ffn_keep = f.ffn_keep;
  options.calibration_tokens = f.calibration_tokens;
  if (!f.calibration.empty()) {
    auto text = read_text_file(f.calibration, "calibration text");
    if (!text.ok()) return fail(text.error());
    options.calibration_text = std::move(text).value();
  }
  engine::ThreadPool pool(f.threads);
  auto pruned = compress::prune_model(*model, options, pool);
  if (!pruned.ok()) return fail(pruned.error());
  // The engine's own loader checks every shape and key of what was written,
  // before it replaces the output: a model that does not load never takes the
  // place of a file (the input itself, when pruning in place).
  std::shared_ptr<const engine::Model> reloaded;
  const auto verify = [&](const std::string& written) -> Status {
    auto loaded = engine::Model::load(written);
    if (!loaded.ok()) {
      return make_error(ErrorKind::kInternal,
                        "the pruned model does not load, so '" + f.output +
                            "' was left as it was: " + loaded.error().message +
                            "; please report this with the command line");
    }
    reloaded = std::move(loaded).value();
    return Status::Ok();
  };
  if (auto s = pruned->writer.write(f.output, verify); !s.ok()) return fail(s.error());

  const compress::PruneReport& r = pruned->report;
  const uint64_t bytes_in = (*model)->file().file_size();
  const uint64_t bytes_out = reloaded->file().file_size();
  if (r.measured) {
    std::printf("block influence (1 - cos(input, output), mean over %zu calibration tokens):\n",
                r.calibration_tokens);
    for (const auto& l : r.layers) {
      std::printf("  layer %3d  %.6f%s\n", l.original_index, l.block_influence,
                  l.new_index < 0 ? "  removed" : "");
    }
  }
  std::printf("layers %d -> %d, feed_forward_length %d -> %d, size %s -> %s (%.1f%%)\n",
              r.layers_before, r.layers_after, r.feed_forward_before, r.feed_forward_after,
              format_size(bytes_in).c_str(), format_size(bytes_out).c_str(),
              100.0 * static_cast<double>(bytes_out) / static_cast<double>(bytes_in));
  for (const auto& note : r.notes) std::printf("note: %s\n", note.c_str());
  std::printf(
      "wrote %s (loads in the engine); compare it with: foreshore eval %s --reference %s "
      "--text FILE\n",
      f.output.c_str(), f.output.c_str(), path->c_str());
  if (!f.report.empty()) {
    const json report = prune_report_json(r, f, bytes_in, bytes_out);
    if (auto s = write_text_file(f.report,
                                 report.dump(2, ' ', false, json::error_handler_t::replace) + "\n");
        !s.ok())
      return fail(s.error());
  }
  return 0;
}

// ---- eval ----

struct EvalFlags {
  std::vector<std::string> models;
  std::string reference;
  std::string text;
  std::string tasks;
  int32_t max_tokens = 64;
  bool chat = false;
  size_t text_tokens = 4096;
  size_t window = 512;
  bool json_output = false;
  int32_t threads = 0;
};

json evaluation_json(const std::vector<compress::ModelEvaluation>& results, const EvalFlags& f) {
  json models = json::array();
  for (const auto& e : results) {
    json m{{"path", e.path}, {"file_bytes", e.file_bytes}, {"reference", e.is_reference}};
    if (!f.text.empty()) {
      m["scored_tokens"] = e.scored_tokens;
      m["window_tokens"] = e.window_tokens;
      m["perplexity"] = e.perplexity ? json(*e.perplexity) : json();
      m["scoring_tokens_per_second"] =
          e.scoring_tokens_per_second ? json(*e.scoring_tokens_per_second) : json();
    }
    if (e.divergence) {
      m["mean_kl"] = e.divergence->mean_kl;
      m["max_kl"] = e.divergence->max_kl;
      m["top1_agreement"] = e.divergence->top1_agreement;
    }
    if (!e.tasks.empty()) {
      json outcomes = json::array();
      for (const auto& t : e.tasks) {
        outcomes.push_back({{"line", t.line}, {"correct", t.correct}, {"output", t.output}});
      }
      m["tasks"] = {{"correct", e.tasks_correct},
                    {"total", e.tasks.size()},
                    {"accuracy", static_cast<double>(e.tasks_correct) / e.tasks.size()},
                    {"results", outcomes}};
    }
    models.push_back(m);
  }
  return json{{"reference", f.reference.empty() ? json() : json(f.reference)},
              {"text", f.text.empty() ? json() : json(f.text)},
              {"tasks", f.tasks.empty() ? json() : json(f.tasks)},
              {"models", models}};
}

void print_table(const std::vector<compress::ModelEvaluation>& results, const EvalFlags& f) {
  const bool has_text = !f.text.empty();
  const bool has_reference = !f.reference.empty();
  const bool has_tasks = !f.tasks.empty();
  size_t name_width = 5;
  for (const auto& e : results) {
    name_width = std::max(name_width, std::filesystem::path(e.path).filename().string().size());
  }
  std::printf("%-*s %11s", static_cast<int>(name_width), "model", "size");
  if (has_text) std::printf(" %10s", "perplexity");
  if (has_reference && has_text) std::printf(" %9s %9s %7s", "mean KL", "max KL", "top-1");
  if (has_tasks) std::printf(" %14s", "tasks");
  if (has_text) std::printf(" %9s", "tok/s");
  std::printf("\n");
  for (const auto& e : results) {
    std::printf("%-*s %11s", static_cast<int>(name_width),
                std::filesystem::path(e.path).filename().string().c_str(),
                format_size(e.file_bytes).c_str());
    if (has_text) {
      if (e.perplexity) {
        std::printf(" %10.4f", *e.perplexity);
      } else {
        std::printf(" %10s", "-");
      }
    }
    if (has_reference && has_text) {
      if (e.divergence) {
        std::printf(" %9.5f %9.5f %6.1f%%", e.divergence->mean_kl, e.divergence->max_kl,
                    100.0 * e.divergence->top1_agreement);
      } else {
        std::printf(" %9s %9s %7s", "ref", "ref", "ref");
      }
    }
    if (has_tasks) {
      char cell[32];
      std::snprintf(cell, sizeof cell, "%zu/%zu %5.1f%%", e.tasks_correct, e.tasks.size(),
                    100.0 * static_cast<double>(e.tasks_correct) / e.tasks.size());
      std::printf(" %14s", cell);
    }
    if (has_text) {
      if (e.scoring_tokens_per_second) {
        std::printf(" %9.1f", *e.scoring_tokens_per_second);
      } else {
        std::printf(" %9s", "-");
      }
    }
    std::printf("\n");
  }
  if (has_text) {
    // The window actually used: --window capped by the (smallest) context.
    size_t window = f.window;
    for (const auto& e : results) window = std::min(window, e.window_tokens);
    std::printf("perplexity over %zu tokens in windows of up to %zu tokens",
                results.empty() ? size_t{0} : results.front().scored_tokens, window);
    if (window < f.window) {
      std::printf(" (--window %zu capped by the model's context)", f.window);
    }
    std::printf("; ");
    if (has_reference) {
      std::printf(
          "KL(reference || model) in nats per token; top-1: share of positions where both "
          "models' most likely next token agree; ");
    }
    std::printf("tok/s: scoring speed, one token per forward step as in decoding\n");
  }
}

int evaluate(const EvalFlags& f) {
  compress::EvaluationOptions options;
  options.max_tokens = f.max_tokens;
  options.chat = f.chat;
  options.window_tokens = f.window;
  options.max_text_tokens = f.text_tokens;
  if (f.text.empty() && f.tasks.empty()) {
    return fail(make_error(ErrorKind::kInvalidArgument,
                           "nothing to evaluate: give --text FILE (perplexity, and divergence "
                           "with --reference) and/or --tasks FILE.jsonl"));
  }
  if (!f.text.empty()) {
    auto text = read_text_file(f.text, "evaluation text");
    if (!text.ok()) return fail(text.error());
    options.text = std::move(text).value();
    if (options.text.empty()) {
      return fail(make_error(ErrorKind::kInvalidArgument,
                             "evaluation text '" + f.text + "' is empty; give a text to score"));
    }
  }
  if (!f.tasks.empty()) {
    auto content = read_text_file(f.tasks, "tasks file");
    if (!content.ok()) return fail(content.error());
    auto tasks = compress::parse_tasks(*content, f.tasks);
    if (!tasks.ok()) return fail(tasks.error());
    options.tasks = std::move(tasks).value();
  }
  std::shared_ptr<const engine::Model> reference;
  if (!f.reference.empty()) {
    auto loaded = load_model(f.reference);
    if (!loaded.ok()) return fail(loaded.error());
    reference = std::move(loaded).value();
  }
  std::vector<std::shared_ptr<const engine::Model>> candidates;
  for (const auto& name : f.models) {
    auto loaded = load_model(name);
    if (!loaded.ok()) return fail(loaded.error());
    candidates.push_back(std::move(loaded).value());
  }
  engine::ThreadPool pool(f.threads);
  auto results = compress::evaluate_models(candidates, reference, options, pool);
  if (!results.ok()) return fail(results.error());
  if (f.json_output) {
    // Generated text can hold bytes that are not UTF-8; JSON shows them as U+FFFD.
    const std::string out =
        evaluation_json(*results, f).dump(2, ' ', false, json::error_handler_t::replace);
    std::printf("%s\n", out.c_str());
  } else {
    print_table(*results, f);
  }
  return 0;
}

}  // namespace

void add_prune_command(CLI::App& app) {
  auto f = std::make_shared<PruneFlags>();
  CLI::App* cmd = app.add_subcommand(
      "prune", "Make a model smaller by removing whole layers and FFN channels (structured)");
  cmd->add_option("input", f->input, "GGUF model (F32, F16, BF16 or quantized), path or name")
      ->required();
  cmd->add_option("output", f->output, "GGUF file to write")->required();
  auto* count = cmd->add_option(
      "--remove-layers", f->remove_layer_count,
      "Remove this many layers, lowest block influence first (needs --calibration)");
  auto* layers = cmd->add_option("--layers", f->layers, "Remove these layers (0-based, e.g. 3,5)")
                     ->delimiter(',');
  count->excludes(layers);
  cmd->add_option("--ffn-keep", f->ffn_keep,
                  "Share of FFN channels every layer keeps, in (0, 1] (needs --calibration)")
      ->capture_default_str();
  cmd->add_option("--calibration", f->calibration,
                  "Text file like the model's real input; the rankings are measured on it");
  cmd->add_option("--calibration-tokens", f->calibration_tokens, "Calibration tokens used at most")
      ->check(CLI::Range(size_t{1}, size_t{1} << 30))
      ->capture_default_str();
  cmd->add_option("--report", f->report,
                  "Write a JSON report: block influence per layer, what was removed, sizes");
  cmd->add_option("-t,--threads", f->threads, "Threads (0: one per core)")
      ->check(kThreadCount)
      ->capture_default_str();
  cmd->footer(
      "Block influence of a layer is 1 - cos(its input, its output) averaged over the\n"
      "calibration tokens (ShortGPT); the lowest goes first. FFN channels are ranked per\n"
      "layer by mean |activation| x ||ffn_down column|| and every layer keeps the same\n"
      "number, rounded to a multiple of 16 and of ffn_down's quantization block. The\n"
      "output keeps every metadata key, with block_count and feed_forward_length updated\n"
      "and per-layer arrays cut with their layers (gemma3's sliding-window pattern keeps\n"
      "each layer's kind); a choice the format cannot express (smollm3 layers moving past\n"
      "its fixed NoPE positions) is refused. The output is loaded before it replaces OUT.\n"
      "Examples:\n"
      "  foreshore prune stories260K small.gguf --remove-layers 1 --calibration text.txt\n"
      "  foreshore prune model.gguf out.gguf --layers 3,5\n"
      "  foreshore prune model.gguf out.gguf --ffn-keep 0.75 --calibration text.txt "
      "--report prune.json\n"
      "Then measure what was lost: foreshore eval out.gguf --reference model.gguf --text "
      "text.txt");
  on_run(cmd, [f] { return prune(*f); });
}

void add_eval_command(CLI::App& app) {
  auto f = std::make_shared<EvalFlags>();
  CLI::App* cmd = app.add_subcommand(
      "eval",
      "Measure models on your text and tasks: perplexity, KL and top-1 agreement against a "
      "reference, task accuracy");
  cmd->add_option("models", f->models, "GGUF models (paths or names), one row each")->required();
  cmd->add_option("--reference", f->reference,
                  "The model the others are compared with (usually the uncompressed one)");
  cmd->add_option("--text", f->text, "Text file to score (perplexity, KL, top-1)");
  cmd->add_option("--tasks", f->tasks, "JSONL tasks, one object per line (see below)");
  cmd->add_option("-n,--max-tokens", f->max_tokens, "Tokens generated per prompt task")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  cmd->add_flag("--chat", f->chat, "Wrap task prompts in each model's chat template");
  cmd->add_option("--text-tokens", f->text_tokens, "Text tokens scored at most")
      ->check(CLI::Range(size_t{1}, size_t{1} << 30))
      ->capture_default_str();
  cmd->add_option("--window", f->window, "Tokens per scoring window (capped by the context)")
      ->check(CLI::Range(size_t{1}, size_t{1} << 30))
      ->capture_default_str();
  cmd->add_flag("--json", f->json_output,
                "Print JSON (with every task's output) instead of a table");
  cmd->add_option("-t,--threads", f->threads, "Threads (0: one per core)")
      ->check(kThreadCount)
      ->capture_default_str();
  cmd->footer(
      "Task lines (JSONL):\n"
      "  {\"prompt\": \"The capital of France is\", \"expected\": \"Paris\"}   "
      "greedy output contains it\n"
      "      (add \"match\": \"exact\" to require the trimmed output to equal it, \"stop\": "
      "[\"\\n\"] to stop early)\n"
      "  {\"prompt\": \"2+2=\", \"checker\": {\"regex\": \"^\\\\s*4\\\\b\"}}   "
      "PCRE2 regex found in the output\n"
      "  {\"prompt\": \"The sky is\", \"choices\": [\" blue\", \" green\"], \"answer\": 0}   "
      "highest log-likelihood choice\n"
      "Examples:\n"
      "  foreshore eval small.gguf --reference stories260K --text text.txt\n"
      "  foreshore eval a.gguf b.gguf --reference model.gguf --text text.txt --tasks "
      "tasks.jsonl --json\n"
      "A model compared with itself has mean KL 0 and top-1 100%.");
  on_run(cmd, [f] { return evaluate(*f); });
}

}  // namespace foreshore::cli
