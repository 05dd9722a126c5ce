#include "compress/mixed_precision.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "compress/prune.h"

namespace foreshore::compress {
namespace {

using engine::TensorType;

// The knapsack table has one byte per (tensor, budget unit): this many units
// keeps it within tens of MB for models with hundreds of tensors, and the
// rounding it costs is at most one unit per tensor.
constexpr uint64_t kMaxBudgetUnits = uint64_t{1} << 18;

bool is_blank(std::string_view line) {
  return std::all_of(line.begin(), line.end(), [](unsigned char c) { return std::isspace(c); });
}

std::vector<std::string_view> split_lines(std::string_view content) {
  std::vector<std::string_view> lines;
  size_t start = 0;
  while (start <= content.size()) {
    const size_t end = std::min(content.find('\n', start), content.size());
    lines.push_back(content.substr(start, end - start));
    start = end + 1;
  }
  return lines;
}

// JSONL records as "prompt answer" texts.
Result<std::vector<std::string>> jsonl_texts(std::string_view content, std::string_view origin) {
  std::vector<std::string> texts;
  const auto lines = split_lines(content);
  for (size_t i = 0; i < lines.size(); ++i) {
    if (is_blank(lines[i])) continue;
    const std::string where = std::string(origin) + ":" + std::to_string(i + 1);
    const auto record = nlohmann::json::parse(lines[i], nullptr, /*allow_exceptions=*/false);
    if (!record.is_object()) {
      return make_error(ErrorKind::kInvalidArgument,
                        where +
                            ": not a JSON object; a JSONL calibration file holds one object "
                            "per line, e.g. {\"prompt\": \"...\", \"expected\": \"...\"}");
    }
    const auto string_field = [&](const char* key) -> std::string {
      const auto it = record.find(key);
      return it != record.end() && it->is_string() ? it->get<std::string>() : std::string();
    };
    std::string prompt = string_field("prompt");
    std::string answer = string_field("expected");
    if (answer.empty()) answer = string_field("text");
    if (prompt.empty() && answer.empty()) {
      return make_error(ErrorKind::kInvalidArgument,
                        where + ": no \"prompt\", \"text\" or \"expected\" string to calibrate on");
    }
    if (!prompt.empty() && !answer.empty() &&
        !std::isspace(static_cast<unsigned char>(prompt.back()))) {
      prompt += ' ';
    }
    texts.push_back(prompt + answer);
  }
  return texts;
}

std::vector<std::string> paragraphs(std::string_view content) {
  std::vector<std::string> texts;
  std::string current;
  for (std::string_view line : split_lines(content)) {
    if (is_blank(line)) {
      if (!current.empty()) texts.push_back(std::move(current));
      current.clear();
      continue;
    }
    if (!current.empty()) current += '\n';
    current += line;
  }
  if (!current.empty()) texts.push_back(std::move(current));
  return texts;
}

uint64_t align_up(uint64_t value, uint64_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

}  // namespace

size_t CalibrationSet::token_count() const {
  size_t n = 0;
  for (const auto& s : sequences) n += s.size();
  return n;
}

Result<CalibrationSet> parse_calibration(std::string_view content, std::string_view origin,
                                         const engine::Model& model, size_t max_tokens) {
  const size_t first = content.find_first_not_of(" \t\r\n");
  std::vector<std::string> texts;
  if (first != std::string_view::npos && content[first] == '{') {
    FSH_ASSIGN_OR_RETURN(texts, jsonl_texts(content, origin));
  } else {
    texts = paragraphs(content);
  }
  const size_t context = static_cast<size_t>(std::max(1, model.config().context_length));
  CalibrationSet set;
  size_t taken = 0;
  for (const std::string& text : texts) {
    const std::vector<engine::TokenId> tokens = model.tokenizer().encode(text, true, false);
    for (size_t start = 0; start < tokens.size() && taken < max_tokens; start += context) {
      const size_t n = std::min({context, tokens.size() - start, max_tokens - taken});
      set.sequences.emplace_back(tokens.begin() + start, tokens.begin() + start + n);
      taken += n;
    }
    if (taken >= max_tokens) break;
  }
  if (set.sequences.empty()) {
    return make_error(ErrorKind::kInvalidArgument,
                      std::string(origin) +
                          " holds no text to calibrate on: give plain text or JSONL records with "
                          "a \"prompt\" (and \"expected\") from the task the model will serve");
  }
  return set;
}

Result<CalibrationSet> load_calibration(const std::string& path, const engine::Model& model,
                                        size_t max_tokens) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return make_error(ErrorKind::kNotFound,
                      "cannot read calibration file " + path + ": check the path");
  }
  std::ostringstream content;
  content << in.rdbuf();
  return parse_calibration(content.str(), path, model, max_tokens);
}

Result<CalibrationRun> run_calibration(std::shared_ptr<const engine::Model> model,
                                       const CalibrationSet& calibration,
                                       engine::ThreadPool& pool) {
  CalibrationRun run;
  run.distributions.vocab_size = model->config().vocab_size;
  double nll_sum = 0.0;
  size_t scored = 0;
  for (const auto& sequence : calibration.sequences) {
    FSH_ASSIGN_OR_RETURN(TokenDistributions d, next_token_log_probs(model, sequence, pool));
    if (d.positions() >= 2) {
      const size_t n = d.positions() - 1;
      nll_sum += mean_negative_log_likelihood(d, sequence) * static_cast<double>(n);
      scored += n;
    }
    run.distributions.log_probs.insert(run.distributions.log_probs.end(), d.log_probs.begin(),
                                       d.log_probs.end());
  }
  run.mean_nll = scored ? nll_sum / static_cast<double>(scored) : 0.0;
  return run;
}

std::vector<TensorType> candidate_types(const engine::GgufTensorInfo& tensor,
                                        std::span<const TensorType> types) {
  std::vector<TensorType> out;
  for (TensorType wanted : types) {
    const TensorType fitted = fit_type(wanted, tensor.dims[0]).type;
    if (std::find(out.begin(), out.end(), fitted) == out.end()) out.push_back(fitted);
  }
  std::stable_sort(out.begin(), out.end(), [&](TensorType a, TensorType b) {
    return tensor_bytes(tensor.dims, a) < tensor_bytes(tensor.dims, b);
  });
  return out;
}

Result<std::vector<TensorSensitivity>> measure_sensitivities(
    std::shared_ptr<const engine::Model> model, const CalibrationSet& calibration,
    const TokenDistributions& reference, std::span<const TensorType> types,
    engine::ThreadPool& pool, const ProgressFn& progress, const ImportanceMatrix* importance) {
  const engine::GgufFile& file = model->file();
  std::vector<TensorSensitivity> out;
  uint64_t total = 0;
  for (const auto& t : file.tensors()) {
    if (!is_quantizable(t)) continue;
    TensorSensitivity s{t.name, t.dims, static_cast<TensorType>(t.type), {}};
    for (TensorType type : candidate_types(t, types)) {
      s.candidates.push_back({type, tensor_bytes(t.dims, type), 0.0, 1.0});
      if (type != s.source_type) ++total;
    }
    out.push_back(std::move(s));
  }
  uint64_t done = 0;
  for (TensorSensitivity& s : out) {
    const engine::GgufTensorInfo& tensor = *file.find_tensor(s.name);
    for (CandidateSensitivity& c : s.candidates) {
      if (c.type == s.source_type) continue;
      FSH_ASSIGN_OR_RETURN(std::vector<uint8_t> converted,
                          convert_tensor(tensor, c.type, pool, importance_of(tensor, importance)));
      FSH_ASSIGN_OR_RETURN(auto candidate, engine::Model::with_matrix(model, tensor.name, c.type,
                                                                     std::move(converted)));
      FSH_ASSIGN_OR_RETURN(CalibrationRun run,
                          run_calibration(std::move(candidate), calibration, pool));
      const Divergence d = compare_distributions(reference, run.distributions);
      c.mean_kl = d.mean_kl;
      c.top1_agreement = d.top1_agreement;
      if (progress) progress("calibrate", ++done, total);
    }
  }
  return out;
}

double bits_per_weight(const engine::GgufFile& file, std::span<const TensorChoice> choices) {
  uint64_t bytes = 0;
  uint64_t elements = 0;
  for (size_t i = 0; i < choices.size() && i < file.tensors().size(); ++i) {
    bytes += tensor_bytes(file.tensors()[i].dims, choices[i].type);
    elements += file.tensors()[i].element_count;
  }
  return elements ? 8.0 * static_cast<double>(bytes) / static_cast<double>(elements) : 0.0;
}

Result<MixedPrecisionPlan> plan_mixed_precision(const engine::GgufFile& file,
                                                std::span<const TensorSensitivity> sensitivities,
                                                const SizeTarget& target) {
  const bool by_file = target.file_bytes > 0;
  if (by_file == (target.bits_per_weight > 0.0)) {
    return make_error(ErrorKind::kInvalidArgument,
                      "give exactly one size target: a file size or bits per weight");
  }
  const auto& tensors = file.tensors();
  const uint64_t alignment = file.alignment();
  // What a tensor costs against the target: its padded size in the file, or
  // its raw size for bits per weight.
  const auto cost = [&](std::span<const uint64_t> dims, TensorType type) {
    const uint64_t bytes = tensor_bytes(dims, type);
    return by_file ? align_up(bytes, alignment) : bytes;
  };

  std::map<std::string_view, const TensorSensitivity*> by_name;
  for (const auto& s : sensitivities) {
    if (!s.candidates.empty()) by_name[s.name] = &s;
  }
  MixedPrecisionPlan plan;
  std::vector<const TensorSensitivity*> items;  // tensors the plan chooses for, in file order
  std::vector<size_t> item_tensor;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto it = by_name.find(tensors[i].name);
    if (it != by_name.end()) {
      items.push_back(it->second);
      item_tensor.push_back(i);
      plan.choices.push_back({tensors[i].name, it->second->candidates.front().type, ""});
    } else {
      plan.choices.push_back({tensors[i].name, static_cast<TensorType>(tensors[i].type), ""});
    }
  }

  uint64_t smallest_items = 0;
  for (const auto* s : items) smallest_items += cost(s->dims, s->candidates.front().type);
  plan.smallest_file_bytes = quantized_file_bytes(file, plan.choices);
  uint64_t fixed = 0;
  uint64_t budget = 0;
  if (by_file) {
    fixed = plan.smallest_file_bytes - smallest_items;
    budget = target.file_bytes;
  } else {
    uint64_t elements = 0;
    for (size_t i = 0; i < tensors.size(); ++i) {
      elements += tensors[i].element_count;
      if (!by_name.contains(tensors[i].name)) fixed += cost(tensors[i].dims, plan.choices[i].type);
    }
    budget = static_cast<uint64_t>(
        std::floor(target.bits_per_weight * static_cast<double>(elements) / 8.0));
  }
  if (budget < fixed + smallest_items) {
    const double smallest_bpw = bits_per_weight(file, plan.choices);
    return make_error(
        ErrorKind::kInvalidArgument,
        "the size target (" +
            (by_file ? std::to_string(budget) + " bytes"
                     : std::to_string(target.bits_per_weight) + " bits per weight") +
            ") is below the smallest plan these types allow (" +
            std::to_string(plan.smallest_file_bytes) + " bytes, " + std::to_string(smallest_bpw) +
            " bits per weight, every tensor at its smallest candidate): raise the target or add "
            "a smaller type to --types");
  }

  // Multiple-choice knapsack over the bytes spent above every tensor's
  // smallest candidate, in units so that the table stays small. Sizes are
  // rounded up to whole units, so a plan that fits in units fits in bytes.
  const uint64_t spare = budget - fixed - smallest_items;
  const uint64_t unit = std::max<uint64_t>(1, (spare + kMaxBudgetUnits - 1) / kMaxBudgetUnits);
  const size_t width = static_cast<size_t>(spare / unit) + 1;
  std::vector<std::vector<size_t>> extra_units(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    const uint64_t base = cost(items[i]->dims, items[i]->candidates.front().type);
    for (const auto& c : items[i]->candidates) {
      extra_units[i].push_back(
          static_cast<size_t>((cost(items[i]->dims, c.type) - base + unit - 1) / unit));
    }
  }
  // best[b]: least total divergence of the tensors so far within b units.
  std::vector<double> best(width, 0.0);
  std::vector<double> next(width);
  std::vector<std::vector<uint8_t>> chosen(items.size(), std::vector<uint8_t>(width, 0));
  for (size_t i = 0; i < items.size(); ++i) {
    const auto& candidates = items[i]->candidates;
    for (size_t b = 0; b < width; ++b) {
      double least = std::numeric_limits<double>::infinity();
      for (size_t j = 0; j < candidates.size() && j <= std::numeric_limits<uint8_t>::max(); ++j) {
        if (extra_units[i][j] > b) continue;
        const double total = best[b - extra_units[i][j]] + candidates[j].mean_kl;
        if (total < least) {
          least = total;
          chosen[i][b] = static_cast<uint8_t>(j);
        }
      }
      next[b] = least;
    }
    best.swap(next);
  }
  std::vector<size_t> pick(items.size());
  uint64_t spent = fixed;
  size_t b = width - 1;
  for (size_t i = items.size(); i-- > 0;) {
    pick[i] = chosen[i][b];
    b -= extra_units[i][pick[i]];
    spent += cost(items[i]->dims, items[i]->candidates[pick[i]].type);
  }
  // Rounding up to units can leave up to one unit per tensor unspent: spend
  // it on the upgrades that lower the divergence most, in exact bytes.
  while (true) {
    size_t best_item = items.size(), best_candidate = 0;
    double best_gain = 0.0;
    for (size_t i = 0; i < items.size(); ++i) {
      const auto& candidates = items[i]->candidates;
      const uint64_t current = cost(items[i]->dims, candidates[pick[i]].type);
      for (size_t j = pick[i] + 1; j < candidates.size(); ++j) {
        const double gain = candidates[pick[i]].mean_kl - candidates[j].mean_kl;
        if (gain > best_gain &&
            spent - current + cost(items[i]->dims, candidates[j].type) <= budget) {
          best_gain = gain;
          best_item = i;
          best_candidate = j;
        }
      }
    }
    if (best_item == items.size()) break;
    const auto& candidates = items[best_item]->candidates;
    spent = spent - cost(items[best_item]->dims, candidates[pick[best_item]].type) +
            cost(items[best_item]->dims, candidates[best_candidate].type);
    pick[best_item] = best_candidate;
  }

  std::vector<TensorChoice> largest = plan.choices;
  for (size_t i = 0; i < items.size(); ++i) {
    plan.choices[item_tensor[i]].type = items[i]->candidates[pick[i]].type;
    plan.predicted_kl += items[i]->candidates[pick[i]].mean_kl;
    largest[item_tensor[i]].type = items[i]->candidates.back().type;
  }
  plan.largest_file_bytes = quantized_file_bytes(file, largest);
  plan.file_bytes = quantized_file_bytes(file, plan.choices);
  plan.bits_per_weight = bits_per_weight(file, plan.choices);
  return plan;
}

Result<std::optional<PaddedModel>> pad_for_types(const engine::GgufFile& file,
                                                 std::span<const TensorType> types) {
  uint32_t block = 0;
  for (TensorType type : types) {
    const uint32_t size = engine::tensor_type_traits(static_cast<uint32_t>(type))->block_size;
    if (size > 1 && (block == 0 || size < block)) block = size;
  }
  const auto length = feed_forward_length(file);
  if (block == 0 || !length) return std::optional<PaddedModel>();
  const int32_t padded = (*length + static_cast<int32_t>(block) - 1) / static_cast<int32_t>(block) *
                         static_cast<int32_t>(block);
  if (padded == *length) return std::optional<PaddedModel>();
  FSH_ASSIGN_OR_RETURN(engine::GgufWriter writer, pad_feed_forward(file, padded));
  PaddedModel model;
  model.bytes = writer.to_bytes();
  model.channels_before = *length;
  model.channels_after = padded;
  FSH_ASSIGN_OR_RETURN(model.file,
                      engine::GgufFile::parse(model.bytes, file.origin() + " [FFN padded to " +
                                                               std::to_string(padded) + "]"));
  return std::optional<PaddedModel>(std::move(model));
}

std::optional<std::vector<TensorSensitivity>> sensitivities_without_padding(
    const engine::GgufFile& file, std::span<const TensorSensitivity> padded) {
  std::vector<TensorSensitivity> out;
  for (const TensorSensitivity& p : padded) {
    const engine::GgufTensorInfo* tensor = file.find_tensor(p.name);
    if (tensor == nullptr) return std::nullopt;
    TensorSensitivity s{p.name, tensor->dims, static_cast<TensorType>(tensor->type), {}};
    for (const CandidateSensitivity& c : p.candidates) {
      if (fit_type(c.type, tensor->dims[0]).type != c.type) continue;
      CandidateSensitivity kept = c;
      kept.bytes = tensor_bytes(tensor->dims, c.type);
      s.candidates.push_back(kept);
    }
    if (s.candidates.empty()) return std::nullopt;
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace foreshore::compress
