// `foreshore quantize`: convert a GGUF model's weights to a smaller type,
// uniformly or by a mixed-precision plan calibrated on the user's own text.
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "compress/compress.h"
#include "engine/engine.h"

namespace foreshore::cli {
namespace {

using json = nlohmann::ordered_json;
using engine::TensorType;

struct QuantizeOptions {
  std::string input;
  std::string output;
  std::string type;
  bool pure = false;
  std::vector<std::string> tensor_types;
  std::string calibration;
  size_t calibration_tokens = 256;
  std::string target_size;
  double target_bpw = 0.0;
  std::string types = "Q4_0,IQ4_NL,Q4_K,Q6_K,Q8_0,F16";
  std::string eval_text;
  size_t eval_tokens = 512;
  std::string report;
  std::string pad_ffn = "auto";
  bool no_importance = false;
  int32_t threads = 0;
  bool quiet = false;
};

Error invalid(std::string message) {
  return make_error(ErrorKind::kInvalidArgument, std::move(message));
}

std::string type_name(TensorType type) {
  return engine::tensor_type_name(static_cast<uint32_t>(type));
}

std::string shape(const std::vector<uint64_t>& dims) {
  std::string s;
  for (uint64_t d : dims) s += (s.empty() ? "" : "x") + std::to_string(d);
  return s;
}

// A type the engine can compute with, by name.
Result<TensorType> parse_computable_type(const std::string& name, const char* flag) {
  const auto type = engine::parse_tensor_type(name);
  const auto traits =
      type ? engine::tensor_type_traits(static_cast<uint32_t>(*type)) : std::nullopt;
  if (!traits || !traits->computable) {
    return invalid(std::string(flag) + " '" + name +
                   "' is not a type this engine runs; use one of " +
                   engine::computable_type_names());
  }
  return *type;
}

Result<std::vector<TensorType>> parse_type_list(const std::string& list) {
  std::vector<TensorType> types;
  std::stringstream in(list);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (item.empty()) continue;
    FSH_ASSIGN_OR_RETURN(TensorType type, parse_computable_type(item, "--types"));
    types.push_back(type);
  }
  if (types.empty()) return invalid("--types is empty; give a list such as Q4_0,Q8_0,F16");
  return types;
}

// "1185376", "700K", "1.2M", "2G" (powers of 1024; an optional trailing "B" or "iB").
Result<uint64_t> parse_size(const std::string& text) {
  size_t used = 0;
  double value = 0.0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  std::string unit;
  for (char c : text.substr(used))
    unit += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (unit.size() > 1 && (unit.ends_with("IB") || unit.ends_with("B"))) {
    unit.erase(unit.size() - (unit.ends_with("IB") ? 2 : 1));
  }
  const std::map<std::string, double> scale{
      {"", 1}, {"B", 1}, {"K", 1024.0}, {"M", 1048576.0}, {"G", 1073741824.0}};
  const auto it = scale.find(unit);
  if (used == 0 || it == scale.end() || !(value > 0)) {
    return invalid("--target-size '" + text +
                   "' is not a size; give bytes or a number with K, M or G (powers of 1024), "
                   "e.g. 700K or 1.2M");
  }
  return static_cast<uint64_t>(value * it->second);
}

// What a person sees of the long steps, on stderr: a bar on a terminal;
// otherwise (a log, CI) one line as each step starts, at each quarter and at
// its end with its time, so a 14 s plan does not look hung; nothing with --quiet.
class Progress {
 public:
  explicit Progress(bool quiet)
      : mode_(quiet                          ? Mode::kOff
              : ::isatty(STDERR_FILENO) == 1 ? Mode::kBar
                                             : Mode::kLines) {}

  // A step that reports how far it got.
  void operator()(std::string_view stage, uint64_t done, uint64_t total) {
    if (mode_ == Mode::kOff || total == 0) return;
    const int percent = static_cast<int>(100 * done / total);
    const bool new_stage = stage != stage_;
    if (!new_stage && percent == last_percent_) return;
    if (new_stage) {
      stage_ = std::string(stage);
      started_ = std::chrono::steady_clock::now();
    }
    const int last = new_stage ? -1 : last_percent_;
    last_percent_ = percent;
    if (mode_ == Mode::kBar) {
      const int width = 40;
      const int filled = static_cast<int>(width * done / total);
      std::fprintf(stderr, "\r%-10s [%s%s] %3d%% (%llu/%llu)", stage_.c_str(),
                   std::string(static_cast<size_t>(filled), '#').c_str(),
                   std::string(static_cast<size_t>(width - filled), '.').c_str(), percent,
                   static_cast<unsigned long long>(done), static_cast<unsigned long long>(total));
      if (done >= total) std::fputc('\n', stderr);
    } else if (done >= total) {
      std::fprintf(stderr, "[%s: done, %llu in %.1f s]\n", stage_.c_str(),
                   static_cast<unsigned long long>(total), seconds());
    } else if (new_stage || percent / 25 != last / 25) {
      std::fprintf(stderr, "[%s: %d%% (%llu/%llu), %.1f s]\n", stage_.c_str(), percent,
                   static_cast<unsigned long long>(done), static_cast<unsigned long long>(total),
                   seconds());
    }
    std::fflush(stderr);
  }

  // A step that reports nothing as it goes: a line before and one after.
  template <typename Step>
  auto step(const char* what, Step&& run) {
    const auto start = std::chrono::steady_clock::now();
    if (mode_ != Mode::kOff) std::fprintf(stderr, "[%s ...]\n", what);
    auto result = run();
    if (mode_ != Mode::kOff) {
      std::fprintf(stderr, "[%s: %s in %.1f s]\n", what, result.ok() ? "done" : "failed",
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    return result;
  }

 private:
  enum class Mode { kOff, kBar, kLines };
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  }

  Mode mode_;
  std::string stage_;
  int last_percent_ = -1;
  std::chrono::steady_clock::time_point started_;
};

struct Measurement {
  size_t tokens = 0;
  compress::Divergence divergence;
  double reference_perplexity = 0.0;
  double perplexity = 0.0;
};

Result<Measurement> measure(std::shared_ptr<const engine::Model> reference,
                            std::shared_ptr<const engine::Model> quantized,
                            const compress::CalibrationSet& text, engine::ThreadPool& pool) {
  FSH_ASSIGN_OR_RETURN(compress::CalibrationRun ref,
                       compress::run_calibration(reference, text, pool));
  FSH_ASSIGN_OR_RETURN(compress::CalibrationRun out,
                       compress::run_calibration(quantized, text, pool));
  Measurement m;
  m.tokens = text.token_count();
  m.divergence = compress::compare_distributions(ref.distributions, out.distributions);
  m.reference_perplexity = std::exp(ref.mean_nll);
  m.perplexity = std::exp(out.mean_nll);
  return m;
}

json measurement_json(const Measurement& m) {
  return {{"tokens", m.tokens},
          {"mean_kl", m.divergence.mean_kl},
          {"max_kl", m.divergence.max_kl},
          {"top1_agreement", m.divergence.top1_agreement},
          {"reference_perplexity", m.reference_perplexity},
          {"perplexity", m.perplexity}};
}

void print_measurement(const char* label, const Measurement& m) {
  std::printf(
      "%-11s %zu tokens: KL %.6f nats/token (max %.4f), top-1 agreement %.1f%%, "
      "perplexity %.3f -> %.3f\n",
      label, m.tokens, m.divergence.mean_kl, m.divergence.max_kl,
      100.0 * m.divergence.top1_agreement, m.reference_perplexity, m.perplexity);
}

// Tensors written in another type than asked, grouped by reason, on stderr.
void print_fallbacks(const std::vector<compress::TensorChoice>& choices) {
  std::map<std::string, std::vector<std::string>> by_note;
  for (const auto& c : choices) {
    if (!c.note.empty()) by_note[c.note].push_back(c.name);
  }
  for (const auto& [note, names] : by_note) {
    std::string list;
    for (size_t i = 0; i < names.size() && i < 4; ++i) list += (i ? ", " : "") + names[i];
    if (names.size() > 4) list += ", ...";
    std::fprintf(stderr, "note: %zu tensor%s: %s (%s)\n", names.size(),
                 names.size() == 1 ? "" : "s", note.c_str(), list.c_str());
  }
}

void print_table(const engine::GgufFile& file, const std::vector<compress::TensorChoice>& choices,
                 const std::vector<compress::TensorSensitivity>& sensitivities) {
  std::map<std::string_view, const compress::TensorSensitivity*> by_name;
  for (const auto& s : sensitivities) by_name[s.name] = &s;
  std::printf("%-28s %-11s %-5s %-5s %10s  %s\n", "tensor", "shape", "from", "to", "bytes",
              sensitivities.empty() ? "note" : "KL per candidate type (nats/token)");
  for (size_t i = 0; i < choices.size(); ++i) {
    const auto& t = file.tensors()[i];
    std::string detail = choices[i].note;
    if (const auto it = by_name.find(t.name); it != by_name.end()) {
      detail.clear();
      for (const auto& c : it->second->candidates) {
        char cell[64];
        std::snprintf(cell, sizeof cell, "%s%s %.2e", detail.empty() ? "" : "  ",
                      type_name(c.type).c_str(), c.mean_kl);
        detail += cell;
      }
    }
    std::printf("%-28s %-11s %-5s %-5s %10llu  %s\n", t.name.c_str(), shape(t.dims).c_str(),
                engine::tensor_type_name(t.type).c_str(), type_name(choices[i].type).c_str(),
                static_cast<unsigned long long>(compress::tensor_bytes(t.dims, choices[i].type)),
                detail.c_str());
  }
}

json report_tensors(const engine::GgufFile& file,
                    const std::vector<compress::TensorChoice>& choices,
                    const std::vector<compress::TensorSensitivity>& sensitivities) {
  std::map<std::string_view, const compress::TensorSensitivity*> by_name;
  for (const auto& s : sensitivities) by_name[s.name] = &s;
  json tensors = json::array();
  for (size_t i = 0; i < choices.size(); ++i) {
    const auto& t = file.tensors()[i];
    json entry = {{"name", t.name},
                  {"dims", t.dims},
                  {"source_type", engine::tensor_type_name(t.type)},
                  {"type", type_name(choices[i].type)},
                  {"bytes", compress::tensor_bytes(t.dims, choices[i].type)}};
    if (!choices[i].note.empty()) entry["note"] = choices[i].note;
    if (const auto it = by_name.find(t.name); it != by_name.end()) {
      json candidates = json::array();
      for (const auto& c : it->second->candidates) {
        candidates.push_back({{"type", type_name(c.type)},
                              {"bytes", c.bytes},
                              {"mean_kl", c.mean_kl},
                              {"top1_agreement", c.top1_agreement}});
      }
      entry["candidates"] = std::move(candidates);
    }
    tensors.push_back(std::move(entry));
  }
  return tensors;
}

// Applies --tensor-type PATTERN=TYPE: matrices whose name the regex matches
// take TYPE (or its fallback), later flags winning, as llama.cpp's flag does.
Status apply_tensor_types(const engine::GgufFile& file, const std::vector<std::string>& overrides,
                          std::vector<compress::TensorChoice>& choices) {
  for (const std::string& item : overrides) {
    const size_t eq = item.rfind('=');
    if (eq == std::string::npos || eq == 0) {
      return invalid("--tensor-type '" + item + "' needs PATTERN=TYPE, e.g. attn_v=Q8_0");
    }
    FSH_ASSIGN_OR_RETURN(TensorType type,
                         parse_computable_type(item.substr(eq + 1), "--tensor-type"));
    auto pattern = compress::TextPattern::compile(item.substr(0, eq));
    if (!pattern.ok()) {
      return invalid("--tensor-type '" + item + "': " + pattern.error().message);
    }
    size_t matched = 0;
    for (size_t i = 0; i < choices.size(); ++i) {
      const auto& t = file.tensors()[i];
      if (!compress::is_quantizable(t) || !pattern->search(t.name)) continue;
      compress::FittedType fitted = compress::fit_type(type, t.dims[0]);
      choices[i].type = fitted.type;
      choices[i].note = std::move(fitted.note);
      ++matched;
    }
    if (matched == 0) {
      return invalid("--tensor-type '" + item + "' matches no weight matrix of " + file.origin() +
                     "; names look like blk.0.attn_v.weight");
    }
  }
  return Status::Ok();
}

Status validate(const QuantizeOptions& o) {
  const bool targeted = !o.target_size.empty() || o.target_bpw > 0.0;
  if (!o.target_size.empty() && o.target_bpw > 0.0) {
    return invalid("give --target-size or --target-bpw, not both");
  }
  if (targeted == !o.type.empty()) {
    return invalid(
        targeted ? "--type and a size target exclude each other: --type quantizes "
                   "every matrix alike, --target-size/--target-bpw makes a mixed plan"
                 : "say what to quantize to: --type Q4_0 (or IQ4_NL, Q5_0, Q5_1, Q4_K, Q5_K, "
                   "Q6_K, Q8_0, F16, BF16, F32), or --calibration FILE with --target-size SIZE");
  }
  if (targeted && !o.tensor_types.empty()) {
    return invalid("--tensor-type applies to --type; a mixed plan chooses every matrix's type");
  }
  if (targeted && o.calibration.empty()) {
    return invalid(
        "a mixed-precision plan needs --calibration FILE: text (or JSONL with "
        "\"prompt\") from the task the model will serve, to measure each tensor on");
  }
  return Status::Ok();
}

int quantize(const QuantizeOptions& o) {
  if (auto s = validate(o); !s.ok()) return fail(s.error());
  // A FIFO, device or folder as the output fails now, not after the work.
  if (auto out = engine::resolve_output_path(o.output); !out.ok()) return fail(out.error());
  auto path = engine::resolve_model_path(o.input);
  if (!path.ok()) return fail(path.error());
  auto file = engine::GgufFile::open(*path);
  if (!file.ok()) return fail(file.error());
  const engine::GgufFile& in = **file;
  // A vocabulary-only GGUF (llama.cpp's ggml-vocab-*.gguf) has nothing to
  // quantize; "converting" it would write a weightless copy.
  if (std::none_of(in.tensors().begin(), in.tensors().end(),
                   [](const engine::GgufTensorInfo& t) { return compress::is_quantizable(t); })) {
    return fail(make_error(ErrorKind::kInvalidArgument,
                           "model '" + *path + "' has no weight matrices (" +
                               std::to_string(in.tensors().size()) +
                               " tensors; a vocabulary-only GGUF?): nothing to quantize; give "
                               "a model file with its weights"));
  }
  engine::ThreadPool pool(o.threads);
  Progress progress(o.quiet);
  const auto on_progress = [&progress](std::string_view stage, uint64_t done, uint64_t total) {
    progress(stage, done, total);
  };

  std::shared_ptr<const engine::Model> reference;
  if (!o.calibration.empty() || !o.eval_text.empty()) {
    auto model = engine::Model::from_gguf(*file);
    if (!model.ok()) return fail(model.error());
    reference = *model;
  }
  std::optional<compress::CalibrationSet> calibration;
  if (!o.calibration.empty()) {
    auto set = compress::load_calibration(o.calibration, *reference, o.calibration_tokens);
    if (!set.ok()) return fail(set.error());
    calibration = std::move(*set);
  }

  json report = {{"input", {{"path", *path}, {"bytes", in.file_size()}}}};
  // The file the output is converted from: the input, or its FFN-padded version.
  const engine::GgufFile* source = &in;
  std::optional<compress::PaddedModel> padded;
  const auto pad_for = [&](std::span<const TensorType> types) -> Status {
    if (o.pad_ffn == "no") return Status::Ok();
    auto made = compress::pad_for_types(in, types);
    if (!made.ok()) {
      if (o.pad_ffn == "yes") return made.error();
      return Status::Ok();
    }
    if (!*made && o.pad_ffn == "yes") {
      return invalid("--pad-ffn yes: the FFN of " + in.origin() +
                     " needs no padding for these types (ffn_down's rows already fit their "
                     "blocks, or none is a block type)");
    }
    padded = std::move(*made);
    return Status::Ok();
  };
  // With calibration text, Q4_0 and K-quant blocks are rounded by the importance of
  // their input columns on it (measured on the model being converted).
  std::optional<compress::ImportanceMatrix> importance;
  size_t importance_tokens = 0;
  // The model being converted: the input's, or the padded one's.
  const auto source_model = [&]() -> Result<std::shared_ptr<const engine::Model>> {
    if (!padded) return reference;
    return engine::Model::from_gguf(padded->file);
  };
  const auto measure_importance = [&](std::shared_ptr<const engine::Model> model) -> Status {
    if (!calibration || o.no_importance) return Status::Ok();
    FSH_ASSIGN_OR_RETURN(compress::LayerStatistics stats,
                         progress.step("measuring column importance on the calibration text", [&] {
                           return compress::measure_layers(model, calibration->sequences, pool);
                         }));
    importance = std::move(stats.importance);
    importance_tokens = stats.tokens;
    return Status::Ok();
  };
  std::vector<compress::TensorChoice> choices;
  std::vector<compress::TensorSensitivity> sensitivities;
  std::optional<compress::MixedPrecisionPlan> plan;
  if (!o.type.empty()) {
    auto type = parse_computable_type(o.type, "--type");
    if (!type.ok()) return fail(type.error());
    if (o.pad_ffn == "yes") {
      const TensorType wanted[] = {*type};
      if (auto s = pad_for(wanted); !s.ok()) return fail(s.error());
      source = padded->file.get();
    }
    choices = compress::uniform_choices(*source, *type, o.pure);
    if (auto s = apply_tensor_types(*source, o.tensor_types, choices); !s.ok()) {
      return fail(s.error());
    }
    if (calibration) {
      auto model = source_model();
      if (!model.ok()) return fail(model.error());
      if (auto s = measure_importance(*model); !s.ok()) return fail(s.error());
    }
    report["mode"] = "uniform";
    report["type"] = o.type;
    report["pure"] = o.pure;
    report["tensor_types"] = o.tensor_types;
  } else {
    auto types = parse_type_list(o.types);
    if (!types.ok()) return fail(types.error());
    compress::SizeTarget target;
    if (!o.target_size.empty()) {
      auto bytes = parse_size(o.target_size);
      if (!bytes.ok()) return fail(bytes.error());
      target.file_bytes = *bytes;
    } else {
      target.bits_per_weight = o.target_bpw;
    }
    if (auto s = pad_for(*types); !s.ok()) return fail(s.error());
    auto model = source_model();
    if (!model.ok()) return fail(model.error());
    if (auto s = measure_importance(*model); !s.ok()) return fail(s.error());
    auto ref_run = progress.step("running the input model on the calibration text", [&] {
      return compress::run_calibration(reference, *calibration, pool);
    });
    if (!ref_run.ok()) return fail(ref_run.error());
    // Padding is exact, so measuring on the padded model serves both
    // variants; the plan keeps the one with the lower predicted divergence.
    auto measured =
        compress::measure_sensitivities(*model, *calibration, ref_run->distributions, *types, pool,
                                        on_progress, importance ? &*importance : nullptr);
    if (!measured.ok()) return fail(measured.error());
    auto made = compress::plan_mixed_precision(padded ? *padded->file : in, *measured, target);
    if (padded && o.pad_ffn == "auto") {
      auto unpadded_sensitivities = compress::sensitivities_without_padding(in, *measured);
      if (unpadded_sensitivities) {
        auto unpadded = compress::plan_mixed_precision(in, *unpadded_sensitivities, target);
        if (unpadded.ok() && (!made.ok() || unpadded->predicted_kl <= made->predicted_kl)) {
          made = std::move(unpadded);
          measured = std::move(*unpadded_sensitivities);
          padded.reset();
        }
      }
    }
    if (!made.ok()) return fail(made.error());
    if (padded) source = padded->file.get();
    sensitivities = std::move(*measured);
    plan = std::move(*made);
    choices = plan->choices;
    json candidate_types = json::array();
    for (TensorType t : *types) candidate_types.push_back(type_name(t));
    report["mode"] = "mixed";
    report["candidate_types"] = std::move(candidate_types);
    report["target"] = target.file_bytes ? json{{"file_bytes", target.file_bytes}}
                                         : json{{"bits_per_weight", target.bits_per_weight}};
    report["predicted_kl"] = plan->predicted_kl;
    report["smallest_file_bytes"] = plan->smallest_file_bytes;
    report["largest_file_bytes"] = plan->largest_file_bytes;
  }
  report["importance"] = importance
                             ? json{{"tokens", importance_tokens}, {"matrices", importance->size()}}
                             : json(nullptr);
  report["ffn_padding"] = padded ? json{{"channels_before", padded->channels_before},
                                        {"channels_after", padded->channels_after}}
                                 : json(nullptr);

  {
    auto writer = compress::build_quantized(*source, choices, pool, on_progress,
                                            importance ? &*importance : nullptr);
    if (!writer.ok()) return fail(writer.error());
    if (auto s = writer->write(o.output); !s.ok()) return fail(s.error());
  }
  auto written = engine::GgufFile::open(o.output);
  if (!written.ok()) return fail(written.error());
  const double out_bpw = compress::bits_per_weight(*source, choices);
  report["output"] = {{"path", o.output},
                      {"bytes", (*written)->file_size()},
                      {"bits_per_weight", out_bpw},
                      {"file_type", compress::llama_file_type(*source, choices)}};

  if (!o.quiet) print_table(*source, choices, sensitivities);
  print_fallbacks(choices);
  if (padded) {
    std::printf(
        "\nFFN padded from %d to %d channels with zeros (the same function) so ffn_down's rows "
        "split into quantization blocks\n",
        padded->channels_before, padded->channels_after);
  }
  std::printf("\n%s: %zu bytes -> %s: %zu bytes (%.2f bits per weight)\n", path->c_str(),
              in.file_size(), o.output.c_str(), (*written)->file_size(), out_bpw);
  if (plan) {
    std::printf(
        "plan: predicted KL %.6f nats/token (sum over tensors); sizes from %llu (all "
        "smallest) to %llu bytes (all largest)\n",
        plan->predicted_kl, static_cast<unsigned long long>(plan->smallest_file_bytes),
        static_cast<unsigned long long>(plan->largest_file_bytes));
  }

  if (reference) {
    auto quantized = engine::Model::from_gguf(*written);
    if (!quantized.ok()) return fail(quantized.error());
    json measured = json::object();
    if (calibration) {
      auto m = progress.step("measuring the output on the calibration text",
                             [&] { return measure(reference, *quantized, *calibration, pool); });
      if (!m.ok()) return fail(m.error());
      print_measurement("calibration", *m);
      measured["calibration"] = measurement_json(*m);
      measured["calibration"]["path"] = o.calibration;
    }
    if (!o.eval_text.empty()) {
      auto set = compress::load_calibration(o.eval_text, *reference, o.eval_tokens);
      if (!set.ok()) return fail(set.error());
      auto m = progress.step("measuring the output on the eval text",
                             [&] { return measure(reference, *quantized, *set, pool); });
      if (!m.ok()) return fail(m.error());
      print_measurement("eval text", *m);
      measured["eval"] = measurement_json(*m);
      measured["eval"]["path"] = o.eval_text;
    }
    report["measured"] = std::move(measured);
  }

  if (!o.report.empty()) {
    report["tensors"] = report_tensors(*source, choices, sensitivities);
    std::ofstream out(o.report);
    out << report.dump(1) << "\n";
    if (!out) {
      return fail(make_error(ErrorKind::kIo, "cannot write the report to " + o.report +
                                                 ": check the folder exists and is writable"));
    }
  }
  return 0;
}

}  // namespace

void add_quantize_command(CLI::App& app) {
  auto opts = std::make_shared<QuantizeOptions>();
  CLI::App* cmd =
      app.add_subcommand("quantize",
                         "Convert a GGUF model's weights to smaller types, uniformly or by a plan "
                         "calibrated on your text");
  cmd->add_option("input", opts->input, "GGUF file, or model name on FORESHORE_MODEL_PATH")
      ->required();
  cmd->add_option("output", opts->output, "GGUF file to write")->required();
  cmd->add_option(
      "--type", opts->type,
      "Every weight matrix to Q4_0, IQ4_NL, IQ4_XS, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, "
      "Q8_0, F16, BF16 or F32 (rows that do not split into the type's blocks fall back: "
      "Q2_K/Q3_K/IQ4_XS->IQ4_NL, Q4_K->Q4_0, Q5_K->Q5_1, Q6_K->Q8_0, ->F16)");
  cmd->add_flag("--pure", opts->pure,
                "With --type Q4_0/IQ4_NL/IQ4_XS/Q2_K/Q3_K/Q4_K/Q5_K: also the output projection "
                "(llama.cpp keeps it at Q6_K)");
  cmd->add_option("--tensor-type", opts->tensor_types,
                  "With --type: PATTERN=TYPE gives the matrices whose names match the regex "
                  "another type (repeatable), e.g. --tensor-type 'attn_v|output'=Q8_0");
  cmd->add_option("--calibration", opts->calibration,
                  "Text from your task: plain text (one sequence per paragraph) or JSONL with "
                  "\"prompt\" and optional \"expected\"/\"text\". Measures each tensor's "
                  "sensitivity for a plan, the input importance rounding weighs errors by, "
                  "and the output's divergence from the input");
  cmd->add_option("--calibration-tokens", opts->calibration_tokens,
                  "Tokens of calibration text used (each candidate costs one pass over them)")
      ->check(CLI::Range(size_t{2}, size_t{1} << 20))
      ->capture_default_str();
  cmd->add_option("--target-size", opts->target_size,
                  "Mixed precision: output file size, bytes or with K/M/G (powers of 1024)");
  cmd->add_option("--target-bpw", opts->target_bpw,
                  "Mixed precision: bits per weight over all tensors, as llama.cpp counts them")
      ->check(kPositive);
  cmd->add_option("--types", opts->types, "Candidate types of a mixed plan, comma-separated")
      ->capture_default_str();
  cmd->add_option("--eval-text", opts->eval_text,
                  "Held-out text (same formats) to measure the output against the input on; "
                  "never used for the plan")
      ->check(CLI::ExistingFile);
  cmd->add_option("--eval-tokens", opts->eval_tokens, "Tokens of --eval-text used")
      ->check(CLI::Range(size_t{2}, size_t{1} << 20))
      ->capture_default_str();
  cmd->add_option("--report", opts->report,
                  "JSON report: every tensor's type, measured sensitivities, plan, divergence");
  cmd->add_option("--pad-ffn", opts->pad_ffn,
                  "Widen the FFN with zero channels (exact) so ffn_down's rows fit quantization "
                  "blocks: auto (a mixed plan uses it when it lowers the predicted KL; --type "
                  "never), yes, no")
      ->check(CLI::IsMember({"auto", "yes", "no"}))
      ->capture_default_str();
  cmd->add_flag(
      "--no-importance", opts->no_importance,
      "With --calibration: round Q4_0/IQ4_NL and K-quant blocks by the plain rules instead of "
      "weighing errors by the importance of their input columns on the calibration text");
  cmd->add_option("-t,--threads", opts->threads, "Threads (0: one per core)")
      ->check(kThreadCount)
      ->capture_default_str();
  cmd->add_flag("-q,--quiet", opts->quiet,
                "No per-tensor table and no progress: only notes, the sizes and measurements");
  cmd->footer(
      "Examples:\n"
      "  foreshore quantize stories260K out-q8.gguf --type Q8_0\n"
      "  foreshore quantize model-f16.gguf model-q4k.gguf --type Q4_K --calibration task.txt\n"
      "  foreshore quantize stories260K mixed.gguf --calibration task.jsonl --target-size 420K "
      "\\\n"
      "      --types Q4_0,Q8_0,F16 --report plan.json\n"
      "  foreshore quantize model-f16.gguf mixed.gguf --calibration task.txt --target-bpw 5.5\n"
      "Norm vectors and biases stay as they are. A plan measures, for each matrix and candidate\n"
      "type, the KL divergence of the next-token distributions on the calibration tokens when\n"
      "only that matrix is converted, then picks the types with the least total divergence that\n"
      "fit the target. A plan also tries widening the FFN with zero channels where ffn_down's\n"
      "rows fit no block (stories260K: 172 -> 192), which computes the same function and lets\n"
      "ffn_down leave F16. With --calibration the output's own divergence and perplexity are\n"
      "printed. See docs/COMPRESSION.md.");
  on_run(cmd, [opts] { return quantize(*opts); });
}

}  // namespace foreshore::cli
