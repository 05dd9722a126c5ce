#include "compress/prune.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <numeric>
#include <set>
#include <string_view>

#include "compress/layer_trace.h"

namespace foreshore::compress {
namespace {

using engine::GgufTensorInfo;
using engine::TensorType;

Error invalid(const std::string& message) {
  return make_error(ErrorKind::kInvalidArgument, message);
}

// Splits "blk.12.ffn_up.weight" into 12 and "ffn_up.weight".
std::optional<std::pair<int32_t, std::string_view>> split_layer_tensor_name(std::string_view name) {
  constexpr std::string_view kPrefix = "blk.";
  if (!name.starts_with(kPrefix)) return std::nullopt;
  const char* begin = name.data() + kPrefix.size();
  const char* end = name.data() + name.size();
  int32_t index = 0;
  auto [rest, ec] = std::from_chars(begin, end, index);
  if (ec != std::errc() || rest == begin || rest == end || *rest != '.') return std::nullopt;
  return std::make_pair(index, std::string_view(rest + 1, end));
}

// The same value with a new number, keeping the key's stored integer type.
engine::GgufValue with_integer(const engine::GgufValue& original, int64_t value) {
  engine::GgufValue v = original;
  if (std::holds_alternative<uint64_t>(v.data)) {
    v.data = static_cast<uint64_t>(value);
  } else {
    v.data = value;
  }
  return v;
}

// Whether a gemma3 layer at position `index` slides for a period-P pattern,
// as the engine (and llama.cpp) derives it: every P-th layer is global.
bool slides_by_period(int64_t index, int64_t period) {
  return period == 0 || index % period < period - 1;
}

std::string join_indices(const std::vector<int32_t>& indices) {
  std::string out;
  for (int32_t i : indices) out += (out.empty() ? "" : ", ") + std::to_string(i);
  return out;
}

// Refuses a choice of kept layers whose computation depends on the layer's
// position in a way no metadata key of the output could restore: the pruned
// model must compute the original minus the removed layers, not something else.
Status check_kept_layer_positions(const engine::Model& model, const std::vector<int32_t>& kept,
                                  const std::vector<int32_t>& removed) {
  const engine::ModelConfig& c = model.config();
  const std::string where = "model '" + model.file().origin() + "' (" + c.architecture + ")";
  if (c.architecture == "smollm3") {
    // SmolLM3 leaves out RoPE on every fourth layer by position; its files
    // carry no key that could say which layers those are after pruning.
    for (size_t j = 0; j < kept.size(); ++j) {
      const bool rope = model.layers()[static_cast<size_t>(kept[j])].rope;
      const bool rope_at_new_position = (j + 1) % 4 != 0;
      if (rope != rope_at_new_position) {
        return make_error(
            ErrorKind::kUnsupported,
            where + ": removing layers " + join_indices(removed) + " would move layer " +
                std::to_string(kept[j]) + (rope ? " (with RoPE)" : " (without RoPE)") +
                " to position " + std::to_string(j) + ", where smollm3 " +
                (rope ? "leaves RoPE out" : "applies RoPE") +
                " (every fourth layer, 3, 7, 11, ..., has none, with no key to change it); "
                "remove whole groups of four layers (4k to 4k+3) or keep the layers");
      }
    }
  }
  if (c.architecture == "gemma3") {
    // Gemma 3 27B (62 layers) scales attention by embedding_length /
    // head_count instead of the head dimension, decided by the layer count.
    const bool before = c.layer_count == 62;
    const bool after = kept.size() == 62;
    if (before != after) {
      return make_error(ErrorKind::kUnsupported,
                        where +
                            ": the attention scale of gemma3 depends on whether the model "
                            "has 62 layers (Gemma 3 27B's); pruning from " +
                            std::to_string(c.layer_count) + " to " + std::to_string(kept.size()) +
                            " layers would change it; remove another number of layers");
    }
  }
  return Status::Ok();
}

// gemma3's sliding-window pattern for the kept layers: each keeps its
// original kind (sliding or global, and with it its RoPE base). The input's
// period when it still fits, another period when one does, else one flag per
// layer, which the engine reads as well.
engine::GgufValue kept_sliding_pattern(const engine::Model& model, const std::vector<int32_t>& kept,
                                       const engine::GgufValue* original,
                                       std::vector<std::string>& notes) {
  std::vector<bool> flags;
  for (int32_t li : kept) flags.push_back(model.layers()[static_cast<size_t>(li)].sliding);
  const auto fits = [&](int64_t period) {
    for (size_t j = 0; j < flags.size(); ++j) {
      if (flags[j] != slides_by_period(static_cast<int64_t>(j), period)) return false;
    }
    return true;
  };
  const bool original_is_period = original == nullptr || original->as_array() == nullptr;
  const int64_t original_period =
      original != nullptr && original_is_period ? original->as_int().value_or(6) : 6;
  const engine::GgufValue period_template =
      original != nullptr && original_is_period ? *original : engine::GgufValue::u32(6);
  if (original_is_period && fits(original_period)) return period_template;
  // An input with one flag per layer keeps that form.
  for (int64_t period = 0; original_is_period && period <= static_cast<int64_t>(flags.size()) + 1;
       ++period) {
    if (fits(period)) return with_integer(period_template, period);
  }
  if (original_is_period) {
    notes.push_back(
        "no single sliding-window period gives the kept layers their original kinds, so "
        "attention.sliding_window_pattern is written as one flag per layer (an array, which "
        "this engine reads; a loader that expects gemma3's period may not)");
  }
  engine::GgufValue::Array array{engine::GgufValueType::kBool, {}};
  for (bool f : flags) array.items.push_back(engine::GgufValue::boolean(f));
  engine::GgufValue out;
  out.type = engine::GgufValueType::kArray;
  out.data = std::move(array);
  return out;
}

Result<std::vector<int32_t>> choose_removed_layers(const PruneOptions& options,
                                                   const std::vector<double>& influence,
                                                   int32_t layer_count) {
  if (!options.remove_layers.empty()) {
    std::set<int32_t> unique;
    for (int32_t index : options.remove_layers) {
      if (index < 0 || index >= layer_count) {
        return invalid("layer " + std::to_string(index) + " does not exist: the model has " +
                       std::to_string(layer_count) + " layers, numbered 0 to " +
                       std::to_string(layer_count - 1));
      }
      if (!unique.insert(index).second) {
        return invalid("layer " + std::to_string(index) +
                       " is named twice in the layers to remove");
      }
    }
    if (static_cast<int32_t>(unique.size()) >= layer_count) {
      return invalid("removing all " + std::to_string(layer_count) +
                     " layers leaves no model; keep at least one");
    }
    return std::vector<int32_t>(unique.begin(), unique.end());
  }
  if (options.remove_layer_count == 0) return std::vector<int32_t>{};
  std::vector<int32_t> order(static_cast<size_t>(layer_count));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return influence[static_cast<size_t>(a)] < influence[static_cast<size_t>(b)];
  });
  order.resize(static_cast<size_t>(options.remove_layer_count));
  std::sort(order.begin(), order.end());
  return order;
}

// Dequantizes a whole weight matrix to rows x cols floats.
std::vector<float> dequantize_matrix(const engine::WeightMatrix& w) {
  std::vector<float> out(static_cast<size_t>(w.rows * w.cols));
  const auto* bytes = static_cast<const uint8_t*>(w.data);
  for (int64_t r = 0; r < w.rows; ++r) {
    engine::dequantize_row(w.type, bytes + r * w.row_bytes, &out[r * w.cols], w.cols);
  }
  return out;
}

// The `keep` channels of one layer with the highest mean |activation| x
// ||ffn_down column||, in ascending index order.
std::vector<int32_t> rank_ffn_channels(const engine::LayerWeights& layer,
                                       const std::vector<double>& mean_abs_activation,
                                       int32_t keep) {
  const engine::WeightMatrix& down = layer.w_down;
  const std::vector<float> weights = dequantize_matrix(down);
  std::vector<double> column_norm(static_cast<size_t>(down.cols), 0.0);
  for (int64_t r = 0; r < down.rows; ++r) {
    for (int64_t c = 0; c < down.cols; ++c) {
      const double w = weights[r * down.cols + c];
      column_norm[c] += w * w;
    }
  }
  std::vector<double> score(column_norm.size());
  for (size_t c = 0; c < score.size(); ++c) {
    score[c] = mean_abs_activation[c] * std::sqrt(column_norm[c]);
  }
  std::vector<int32_t> order(score.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return score[static_cast<size_t>(a)] > score[static_cast<size_t>(b)];
  });
  order.resize(static_cast<size_t>(keep));
  std::sort(order.begin(), order.end());
  return order;
}

// Rows `kept` of a [cols, rows] tensor, byte for byte (any type: rows are whole blocks).
std::vector<uint8_t> select_rows(const GgufTensorInfo& t, const std::vector<int32_t>& kept) {
  const auto traits = engine::tensor_type_traits(t.type);
  const size_t row_bytes = engine::tensor_row_bytes(*traits, t.dims[0]);
  std::vector<uint8_t> out(row_bytes * kept.size());
  for (size_t i = 0; i < kept.size(); ++i) {
    std::copy_n(t.data + static_cast<size_t>(kept[i]) * row_bytes, row_bytes,
                out.data() + i * row_bytes);
  }
  return out;
}

// Columns `kept` of every row of a [cols, rows] tensor, re-encoded in its own type.
Result<std::vector<uint8_t>> select_columns(const GgufTensorInfo& t,
                                            const std::vector<int32_t>& kept) {
  const auto type = static_cast<TensorType>(t.type);
  const auto traits = engine::tensor_type_traits(t.type);
  const int64_t cols = static_cast<int64_t>(t.dims[0]);
  const int64_t rows = static_cast<int64_t>(t.dims[1]);
  const size_t in_row_bytes = engine::tensor_row_bytes(*traits, t.dims[0]);
  const size_t out_row_bytes = engine::tensor_row_bytes(*traits, kept.size());
  std::vector<float> row(static_cast<size_t>(cols));
  std::vector<float> gathered(kept.size());
  std::vector<uint8_t> out(out_row_bytes * static_cast<size_t>(rows));
  auto unsupported = [&] {
    return make_error(ErrorKind::kUnsupported,
                      "tensor '" + t.name + "' has type " + engine::tensor_type_name(t.type) +
                          ", which cannot be re-encoded after removing FFN channels; "
                          "convert the model to F16 or Q8_0 first");
  };
  for (int64_t r = 0; r < rows; ++r) {
    if (!engine::dequantize_row(type, t.data + r * in_row_bytes, row.data(), cols)) {
      return unsupported();
    }
    std::transform(kept.begin(), kept.end(), gathered.begin(),
                   [&](int32_t c) { return row[static_cast<size_t>(c)]; });
    if (!engine::quantize_row(type, gathered.data(), out.data() + r * out_row_bytes,
                              static_cast<int64_t>(kept.size()))) {
      return unsupported();
    }
  }
  return out;
}

}  // namespace

Result<PrunedModel> prune_model(std::shared_ptr<const engine::Model> shared_model,
                                const PruneOptions& options, engine::ThreadPool& pool) {
  const engine::Model& model = *shared_model;
  const engine::ModelConfig& c = model.config();
  const engine::GgufFile& file = model.file();
  const int32_t layer_count = c.layer_count;
  const int32_t ff = c.feed_forward_length;

  if (!options.remove_layers.empty() && options.remove_layer_count > 0) {
    return invalid(
        "give either layers to remove by index or a number of layers to remove, not both");
  }
  if (options.remove_layer_count < 0 || options.remove_layer_count >= layer_count) {
    return invalid("cannot remove " + std::to_string(options.remove_layer_count) + " of " +
                   std::to_string(layer_count) + " layers; remove between 0 and " +
                   std::to_string(layer_count - 1));
  }
  if (options.remove_layers.empty() && options.remove_layer_count == 0 && options.ffn_keep == 1.0) {
    return invalid(
        "nothing to prune: name layers to remove, give a number of layers to remove, or a "
        "share of FFN channels to keep below 1");
  }
  if (!(options.ffn_keep > 0.0 && options.ffn_keep <= 1.0)) {
    return invalid("the share of FFN channels to keep must be in (0, 1], got " +
                   std::to_string(options.ffn_keep));
  }

  PrunedModel result;
  PruneReport& report = result.report;
  report.architecture = c.architecture;
  report.layers_before = layer_count;
  report.feed_forward_before = ff;

  const bool prune_ffn = options.ffn_keep < 1.0;
  LayerStatistics stats;
  if (options.remove_layer_count > 0 || prune_ffn) {
    if (options.calibration_text.empty()) {
      return invalid(
          "ranking layers or FFN channels needs calibration text like the model's real "
          "input; give one, or name the layers to remove by index");
    }
    const auto windows = tokenize_windows(model, options.calibration_text,
                                          options.calibration_window, options.calibration_tokens);
    FSH_ASSIGN_OR_RETURN(stats, measure_layers(shared_model, windows, pool));
    report.measured = true;
    report.calibration_tokens = stats.tokens;
  }

  FSH_ASSIGN_OR_RETURN(std::vector<int32_t> removed,
                       choose_removed_layers(options, stats.block_influence, layer_count));
  std::vector<int32_t> new_index(static_cast<size_t>(layer_count), -1);
  for (int32_t li = 0, next = 0; li < layer_count; ++li) {
    if (!std::binary_search(removed.begin(), removed.end(), li)) new_index[li] = next++;
  }
  report.layers_after = layer_count - static_cast<int32_t>(removed.size());
  std::vector<int32_t> kept_layers;
  for (int32_t li = 0; li < layer_count; ++li) {
    if (new_index[li] >= 0) kept_layers.push_back(li);
  }
  FSH_TRY_STATUS(check_kept_layer_positions(model, kept_layers, removed));

  // Channels kept per layer; empty for removed layers or without FFN pruning.
  std::vector<std::vector<int32_t>> kept_channels(static_cast<size_t>(layer_count));
  int32_t keep = ff;
  if (prune_ffn) {
    keep = std::max(1, static_cast<int32_t>(std::lround(ff * options.ffn_keep)));
    // The count is rounded to the nearest multiple of a granularity: ffn_down
    // rows hold one element per channel and must stay whole quantization
    // blocks, and the engine's float kernels take rows 16 elements at a time
    // and finish any remainder one by one (on stories260K, 96 channels run
    // faster than 86).
    int32_t granularity = 16;
    for (int32_t li = 0; li < layer_count; ++li) {
      const auto traits = engine::tensor_type_traits(
          static_cast<uint32_t>(model.layers()[static_cast<size_t>(li)].w_down.type));
      granularity = std::lcm(granularity, static_cast<int32_t>(traits->block_size));
    }
    const int32_t nearest = (keep + granularity / 2) / granularity * granularity;
    const int32_t rounded = std::min(ff, std::max(granularity, nearest));
    if (rounded != keep) {
      report.notes.push_back("FFN channels kept per layer rounded from " + std::to_string(keep) +
                             " to " + std::to_string(rounded) + ", a multiple of " +
                             std::to_string(granularity) +
                             " (whole ffn_down quantization blocks and float kernel steps)");
      keep = rounded;
    }
    if (keep == ff) {
      report.notes.push_back("no FFN channels removed: the kept share rounds to all " +
                             std::to_string(ff) + " channels; lower the share");
    } else {
      for (int32_t li = 0; li < layer_count; ++li) {
        if (new_index[li] < 0) continue;
        kept_channels[li] = rank_ffn_channels(model.layers()[static_cast<size_t>(li)],
                                              stats.ffn_mean_abs_activation[li], keep);
      }
    }
  }
  report.feed_forward_after = keep;
  for (int32_t li = 0; li < layer_count; ++li) {
    PrunedLayer& layer = report.layers.emplace_back();
    layer.original_index = li;
    layer.new_index = new_index[li];
    if (report.measured) layer.block_influence = stats.block_influence[li];
    layer.ffn_channels = new_index[li] < 0 ? 0 : keep;
  }

  engine::GgufWriter& writer = result.writer;
  const std::string block_count_key = c.architecture + ".block_count";
  const std::string ffn_length_key = c.architecture + ".feed_forward_length";
  const std::string pattern_key = c.architecture + ".attention.sliding_window_pattern";
  const bool sliding_pattern = c.architecture == "gemma3" && c.sliding_window > 0;
  for (const auto& [key, value] : file.metadata()) {
    const engine::GgufValue::Array* array = value.as_array();
    if (key == block_count_key) {
      writer.set(key, with_integer(value, report.layers_after));
    } else if (key == ffn_length_key) {
      writer.set(key, with_integer(value, keep));
    } else if (key == pattern_key && sliding_pattern) {
      writer.set(key, kept_sliding_pattern(model, kept_layers, &value, report.notes));
    } else if (array != nullptr && key.starts_with(c.architecture + ".") &&
               array->items.size() == static_cast<size_t>(layer_count)) {
      // A per-layer array (LFM2's attention.head_count_kv, where 0 marks a
      // convolution layer, and any other such key, as llama.cpp reads
      // arrays of block_count entries) loses the removed layers' entries.
      engine::GgufValue cut = value;
      auto& items = std::get<engine::GgufValue::Array>(cut.data).items;
      items.clear();
      for (int32_t li : kept_layers) items.push_back(array->items[static_cast<size_t>(li)]);
      writer.set(key, std::move(cut));
    } else {
      writer.set(key, value);
    }
  }
  if (sliding_pattern && file.find(pattern_key) == nullptr) {
    // Without the key every sixth layer is global; say so if that no longer fits.
    engine::GgufValue pattern = kept_sliding_pattern(model, kept_layers, nullptr, report.notes);
    if (pattern.as_array() != nullptr || pattern.as_int() != 6) {
      writer.set(pattern_key, std::move(pattern));
    }
  }

  std::set<std::string> requantized_types;
  for (const GgufTensorInfo& t : file.tensors()) {
    report.tensor_bytes_before += t.byte_size;
    std::string name = t.name;
    std::vector<uint64_t> dims = t.dims;
    std::vector<uint8_t> data;
    const auto layer_part = split_layer_tensor_name(t.name);
    if (layer_part && (layer_part->first < 0 || layer_part->first >= layer_count)) {
      return make_error(ErrorKind::kCorrupt, "model '" + file.origin() + "': tensor '" + t.name +
                                                 "' belongs to a layer the model does not have (" +
                                                 std::to_string(layer_count) + " layers)");
    }
    if (layer_part) {
      const auto [li, suffix] = *layer_part;
      if (new_index[li] < 0) continue;
      name = "blk." + std::to_string(new_index[li]) + "." + std::string(suffix);
      const std::vector<int32_t>& kept = kept_channels[li];
      if (!kept.empty()) {
        if (suffix == "ffn_up.weight" && c.architecture == "phi3") {
          // Phi-3 fuses gate and up in ffn_up: the gate's ff rows, then up's
          // ff rows; a channel keeps its row in each half.
          if (dims.size() != 2 || dims[1] != 2 * static_cast<uint64_t>(ff)) {
            return make_error(ErrorKind::kUnsupported,
                              "model '" + file.origin() + "': tensor '" + t.name +
                                  "' is not phi3's fused gate and up projection of " +
                                  std::to_string(2 * static_cast<int64_t>(ff)) +
                                  " rows; prune layers only (no FFN channel share)");
          }
          std::vector<int32_t> both = kept;
          for (int32_t k : kept) both.push_back(ff + k);
          data = select_rows(t, both);
          dims[1] = both.size();
        } else if (suffix == "ffn_gate.weight" || suffix == "ffn_up.weight") {
          data = select_rows(t, kept);
          dims[1] = kept.size();
        } else if (suffix == "ffn_down.weight") {
          FSH_ASSIGN_OR_RETURN(data, select_columns(t, kept));
          dims[0] = kept.size();
          if (engine::tensor_type_traits(t.type)->block_size > 1) {
            requantized_types.insert(engine::tensor_type_name(t.type));
          }
        } else if (suffix.starts_with("ffn_") && suffix != "ffn_norm.weight") {
          return make_error(ErrorKind::kUnsupported,
                            "model '" + file.origin() + "': tensor '" + t.name +
                                "' is an FFN tensor this pruner does not know how to cut; "
                                "prune layers only (no FFN channel share)");
        }
      }
    }
    if (data.empty()) data.assign(t.data, t.data + t.byte_size);
    report.tensor_bytes_after += data.size();
    FSH_TRY_STATUS(
        writer.add_tensor(std::move(name), static_cast<TensorType>(t.type), std::move(dims), data));
  }
  for (const std::string& type : requantized_types) {
    report.notes.push_back("ffn_down tensors of type " + type +
                           " were dequantized, cut and re-quantized to " + type +
                           " (one more rounding of those weights)");
  }
  return result;
}

}  // namespace foreshore::compress

namespace foreshore::compress {

std::optional<int32_t> feed_forward_length(const engine::GgufFile& file) {
  const auto architecture = file.get_string("general.architecture");
  if (!architecture) return std::nullopt;
  const auto length = file.get_int(*architecture + ".feed_forward_length");
  if (!length || *length <= 0 || *length > std::numeric_limits<int32_t>::max()) {
    return std::nullopt;
  }
  return static_cast<int32_t>(*length);
}

Result<engine::GgufWriter> pad_feed_forward(const engine::GgufFile& file, int32_t new_length) {
  const auto length = feed_forward_length(file);
  if (!length) {
    return make_error(ErrorKind::kUnsupported,
                      "model '" + file.origin() +
                          "' has no <architecture>.feed_forward_length; only llama-style "
                          "models' FFN can be padded");
  }
  const int32_t ff = *length;
  if (new_length < ff) {
    return invalid("cannot pad the FFN of '" + file.origin() + "' from " + std::to_string(ff) +
                   " to " + std::to_string(new_length) + " channels: padding only adds");
  }
  const auto unsupported = [&](const GgufTensorInfo& t, const std::string& why) {
    return make_error(ErrorKind::kUnsupported, "model '" + file.origin() + "': tensor '" + t.name +
                                                   "' " + why + "; quantize without FFN padding");
  };

  engine::GgufWriter writer;
  const std::string ffn_length_key =
      *file.get_string("general.architecture") + ".feed_forward_length";
  for (const auto& [key, value] : file.metadata()) {
    writer.set(key, key == ffn_length_key ? with_integer(value, new_length) : value);
  }
  const auto extra = static_cast<uint64_t>(new_length - ff);
  for (const GgufTensorInfo& t : file.tensors()) {
    std::vector<uint64_t> dims = t.dims;
    std::vector<uint8_t> data(t.data, t.data + t.byte_size);
    const auto traits = engine::tensor_type_traits(t.type);
    const auto layer_part = split_layer_tensor_name(t.name);
    const std::string_view suffix = layer_part ? layer_part->second : std::string_view();
    if (suffix == "ffn_gate.weight" || suffix == "ffn_up.weight") {
      if (dims.size() != 2 || dims[1] != static_cast<uint64_t>(ff)) {
        return unsupported(t, "does not have " + std::to_string(ff) + " rows");
      }
      // An all-zero block decodes to zeros in every GGUF type (zero scales).
      data.resize(data.size() + extra * engine::tensor_row_bytes(*traits, dims[0]), 0);
      dims[1] = static_cast<uint64_t>(new_length);
    } else if (suffix == "ffn_down.weight") {
      if (dims.size() != 2 || dims[0] != static_cast<uint64_t>(ff)) {
        return unsupported(t, "does not have rows of " + std::to_string(ff) + " elements");
      }
      if (extra > 0 && traits->block_size != 1) {
        return unsupported(t, "is " + engine::tensor_type_name(t.type) +
                                  ", whose blocks already fit; only float rows are padded");
      }
      const size_t in_row = engine::tensor_row_bytes(*traits, dims[0]);
      const size_t out_row = engine::tensor_row_bytes(*traits, static_cast<uint64_t>(new_length));
      std::vector<uint8_t> padded(out_row * dims[1], 0);
      for (uint64_t r = 0; r < dims[1]; ++r) {
        std::copy_n(t.data + r * in_row, in_row, padded.data() + r * out_row);
      }
      data = std::move(padded);
      dims[0] = static_cast<uint64_t>(new_length);
    } else if (suffix.starts_with("ffn_") && suffix != "ffn_norm.weight") {
      return unsupported(t, "is an FFN tensor the padding does not know how to widen");
    }
    FSH_TRY_STATUS(
        writer.add_tensor(t.name, static_cast<TensorType>(t.type), std::move(dims), data));
  }
  return writer;
}

}  // namespace foreshore::compress
