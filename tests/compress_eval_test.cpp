// Structured pruning and evaluation: block influence on constructed cases, the
// pruned GGUF's shapes and metadata, the pruned model running in the engine,
// and eval's numbers against direct computations.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>

#include "compress/compress.h"
#include "support/gguf_copy.h"
#include "support/process.h"
#include "support/test_paths.h"

namespace foreshore::compress {
namespace {

using engine::GgufFile;
using engine::GgufTensorInfo;
using engine::GgufWriter;
using engine::Model;
using engine::TensorType;
using engine::TokenId;
using testing::temp_path;

constexpr const char* kStoryText =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
    "park with her big red ball. One day, she saw a small dog under a tree. The dog was sad "
    "because it was lost. Lily wanted to help the dog find its home. She looked around and saw "
    "a boy who was calling for his dog. Lily smiled and said, \"Is this your dog?\" The boy was "
    "very happy and said thank you. They played together all day and became good friends.";

std::string write_model(engine::SyntheticModelSpec spec) {
  const std::string path = temp_path(".gguf");
  const Status s = engine::write_synthetic_model(spec, path);
  EXPECT_TRUE(s.ok()) << s.error().message;
  return path;
}

std::shared_ptr<const Model> load(const std::string& path) {
  auto m = Model::load(path);
  EXPECT_TRUE(m.ok()) << m.error().message;
  return m.ok() ? *m : nullptr;
}

// Copies a GGUF with `edit` applied to each tensor's bytes.
std::string rewrite_model(
    const std::string& in,
    const std::function<void(const GgufTensorInfo&, std::vector<uint8_t>&)>& edit) {
  auto file = GgufFile::open(in);
  EXPECT_TRUE(file.ok());
  GgufWriter writer;
  for (const auto& [key, value] : (*file)->metadata()) writer.set(key, value);
  for (const GgufTensorInfo& t : (*file)->tensors()) {
    std::vector<uint8_t> data(t.data, t.data + t.byte_size);
    edit(t, data);
    EXPECT_TRUE(writer.add_tensor(t.name, static_cast<TensorType>(t.type), t.dims, data).ok());
  }
  const std::string out = temp_path(".gguf");
  EXPECT_TRUE(writer.write(out).ok());
  return out;
}

std::vector<float> engine_logits(const std::shared_ptr<const Model>& model,
                                 const std::vector<TokenId>& tokens) {
  engine::ThreadPool pool(2);
  auto ctx = engine::InferenceContext::create(model, {});
  EXPECT_TRUE(ctx.ok());
  auto logits = (*ctx)->evaluate(tokens, pool);
  EXPECT_TRUE(logits.ok()) << logits.error().message;
  return {logits->begin(), logits->end()};
}

double max_abs_difference(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double worst = 0.0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    worst = std::max(worst, std::fabs(static_cast<double>(a[i]) - b[i]));
  }
  return worst;
}

Result<PrunedModel> prune(const std::shared_ptr<const Model>& model, const PruneOptions& options) {
  engine::ThreadPool pool(2);
  return prune_model(model, options, pool);
}

std::string write_pruned(PrunedModel& pruned) {
  const std::string path = temp_path(".gguf");
  const Status s = pruned.writer.write(path);
  EXPECT_TRUE(s.ok()) << s.error().message;
  return path;
}

// The file `prune` writes for `model` without layer `layer`; null (with a
// test failure) when pruning or writing fails.
std::shared_ptr<GgufFile> pruned_without_layer(const std::shared_ptr<const Model>& model,
                                               int32_t layer) {
  PruneOptions options;
  options.remove_layers = {layer};
  auto pruned = prune(model, options);
  EXPECT_TRUE(pruned.ok()) << pruned.error().message;
  if (!pruned.ok()) return nullptr;
  auto file = GgufFile::open(write_pruned(*pruned));
  EXPECT_TRUE(file.ok()) << file.error().message;
  return file.ok() ? *file : nullptr;
}

// The items of `file`'s array `key`, each read by `read` (a test failure
// when there is no such array).
template <class Read>
auto array_items(const GgufFile& file, const std::string& key, Read read) {
  std::vector<decltype(read(std::declval<const engine::GgufValue&>()))> out;
  const auto* value = file.find(key);
  EXPECT_TRUE(value != nullptr && value->as_array() != nullptr) << key;
  if (value == nullptr || value->as_array() == nullptr) return out;
  for (const auto& item : value->as_array()->items) out.push_back(read(item));
  return out;
}

std::vector<TokenId> sample_tokens(const Model& model) {
  return model.tokenizer().encode("Once upon a time the big red dog sat on the mat", true, false);
}

bool same_value(const engine::GgufValue& a, const engine::GgufValue& b) {
  if (a.type != b.type || a.data.index() != b.data.index()) return false;
  return std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, engine::GgufValue::Array>) {
          const auto& y = std::get<T>(b.data);
          if (x.element_type != y.element_type || x.items.size() != y.items.size()) return false;
          for (size_t i = 0; i < x.items.size(); ++i) {
            if (!same_value(x.items[i], y.items[i])) return false;
          }
          return true;
        } else {
          return x == std::get<T>(b.data);
        }
      },
      a.data);
}

// ---- layer statistics, observed in the engine's forward pass ----

class LayerStatisticsFromTheEngine : public ::testing::TestWithParam<engine::SyntheticModelSpec> {};

TEST_P(LayerStatisticsFromTheEngine, ObservingLeavesTheLogitsUnchanged) {
  auto model = load(write_model(GetParam()));
  ASSERT_TRUE(model);
  const std::vector<TokenId> tokens = sample_tokens(*model);
  engine::ThreadPool pool(2);
  const std::vector<std::vector<TokenId>> sequences{tokens};
  auto stats = measure_layers(model, sequences, pool);
  ASSERT_TRUE(stats.ok()) << stats.error().message;
  EXPECT_EQ(stats->tokens, tokens.size());
  EXPECT_LT(max_abs_difference(stats->last_logits, engine_logits(model, tokens)), 1e-4);
  for (double bi : stats->block_influence) {
    EXPECT_GT(bi, 0.0);
    EXPECT_LE(bi, 2.0);
  }

  // The importance matrix: every matrix the forward pass multiplies by, one
  // value per input column; q, k and v read the same input.
  const engine::GgufFile& file = model->file();
  size_t matrices = 0;
  for (const auto& t : file.tensors()) {
    if (t.dims.size() != 2 ||
        (t.name == "token_embd.weight" && file.find_tensor("output.weight"))) {
      continue;
    }
    ++matrices;
    const auto it = stats->importance.find(t.name);
    ASSERT_NE(it, stats->importance.end()) << t.name;
    ASSERT_EQ(it->second.size(), t.dims[0]) << t.name;
    for (float v : it->second) {
      ASSERT_TRUE(std::isfinite(v) && v >= 0.0f) << t.name;
    }
  }
  EXPECT_EQ(stats->importance.size(), matrices);
  EXPECT_EQ(stats->importance.at("blk.0.attn_q.weight"),
            stats->importance.at("blk.0.attn_v.weight"));
  // Mean square >= squared mean absolute value, column by column.
  const std::vector<float>& down = stats->importance.at("blk.0.ffn_down.weight");
  for (size_t j = 0; j < down.size(); ++j) {
    const double mean_abs = stats->ffn_mean_abs_activation[0][j];
    EXPECT_GE(down[j], mean_abs * mean_abs * (1 - 1e-4)) << j;
  }
}

engine::SyntheticModelSpec spec_with(std::function<void(engine::SyntheticModelSpec&)> change) {
  engine::SyntheticModelSpec s;
  change(s);
  return s;
}

INSTANTIATE_TEST_SUITE_P(
    Architectures, LayerStatisticsFromTheEngine,
    ::testing::Values(spec_with([](auto&) {}), spec_with([](auto& s) { s.architecture = "qwen2"; }),
                      spec_with([](auto& s) {
                        s.llama3_rope_scaling = true;
                        s.tied_output = true;
                      }),
                      spec_with([](auto& s) { s.matrix_type = TensorType::kQ8_0; })));

// ---- pruning ----

constexpr int kIdentityLayer = 2;

// A 4-layer model whose layer 2 writes nothing to the residual stream.
std::string model_with_identity_layer() {
  engine::SyntheticModelSpec spec;
  spec.layer_count = 4;
  const std::string prefix = "blk." + std::to_string(kIdentityLayer) + ".";
  return rewrite_model(write_model(spec), [&](const GgufTensorInfo& t, std::vector<uint8_t>& d) {
    if (t.name == prefix + "attn_output.weight" || t.name == prefix + "ffn_down.weight") {
      std::fill(d.begin(), d.end(), 0);
    }
  });
}

TEST(Prune, LayerThatChangesNothingHasZeroInfluenceAndGoesFirst) {
  auto model = load(model_with_identity_layer());
  ASSERT_TRUE(model);
  PruneOptions options;
  options.remove_layer_count = 1;
  options.calibration_text = kStoryText;
  auto pruned = prune(model, options);
  ASSERT_TRUE(pruned.ok()) << pruned.error().message;
  const PruneReport& r = pruned->report;
  ASSERT_EQ(r.layers.size(), 4u);
  for (const PrunedLayer& l : r.layers) {
    if (l.original_index == kIdentityLayer) {
      EXPECT_NEAR(l.block_influence, 0.0, 1e-9);
      EXPECT_EQ(l.new_index, -1);
    } else {
      EXPECT_GT(l.block_influence, 1e-3);
      EXPECT_GE(l.new_index, 0);
    }
  }
  EXPECT_EQ(r.layers_after, 3);
  EXPECT_GT(r.calibration_tokens, 50u);

  // Without a layer that did nothing the model computes exactly the same.
  auto smaller = load(write_pruned(*pruned));
  ASSERT_TRUE(smaller);
  EXPECT_EQ(smaller->config().layer_count, 3);
  const auto tokens = sample_tokens(*model);
  EXPECT_LT(max_abs_difference(engine_logits(smaller, tokens), engine_logits(model, tokens)), 1e-5);
}

TEST(Prune, NamedLayersAreRemovedAndTheRestRenumbered) {
  engine::SyntheticModelSpec spec;
  spec.layer_count = 4;
  const std::string in = write_model(spec);
  auto model = load(in);
  ASSERT_TRUE(model);
  PruneOptions options;
  options.remove_layers = {3, 1};
  auto pruned = prune(model, options);
  ASSERT_TRUE(pruned.ok()) << pruned.error().message;
  EXPECT_FALSE(pruned->report.measured);
  const std::string out = write_pruned(*pruned);

  auto original = GgufFile::open(in);
  auto result = GgufFile::open(out);
  ASSERT_TRUE(original.ok() && result.ok());
  // Every key survives; only the block count changes.
  ASSERT_EQ((*result)->metadata().size(), (*original)->metadata().size());
  for (const auto& [key, value] : (*original)->metadata()) {
    const engine::GgufValue* copy = (*result)->find(key);
    ASSERT_NE(copy, nullptr) << key;
    if (key == "llama.block_count") {
      EXPECT_EQ(copy->as_int(), 2);
      EXPECT_EQ(copy->type, value.type);
    } else {
      EXPECT_TRUE(same_value(*copy, value)) << key;
    }
  }
  // Old layers 0 and 2 become 0 and 1, byte for byte.
  for (const auto& [from, to] : {std::pair{0, 0}, std::pair{2, 1}}) {
    for (const char* part : {"attn_q.weight", "ffn_down.weight", "attn_norm.weight"}) {
      const auto* a = (*original)->find_tensor("blk." + std::to_string(from) + "." + part);
      const auto* b = (*result)->find_tensor("blk." + std::to_string(to) + "." + part);
      ASSERT_TRUE(a && b) << part;
      EXPECT_EQ(a->dims, b->dims);
      EXPECT_EQ(0, std::memcmp(a->data, b->data, a->byte_size)) << part;
    }
  }
  EXPECT_EQ((*result)->find_tensor("blk.2.attn_q.weight"), nullptr);
  EXPECT_EQ((*result)->tensors().size(), (*original)->tensors().size() - 2 * 9);

  auto smaller = load(out);
  ASSERT_TRUE(smaller);
  engine::ThreadPool pool(2);
  auto ctx = engine::InferenceContext::create(smaller, {});
  ASSERT_TRUE(ctx.ok());
  engine::GenerationRequest request;
  request.prompt = sample_tokens(*smaller);
  request.sampling = engine::SamplingParams::greedy();
  request.max_tokens = 8;
  auto generated = engine::generate(**ctx, pool, request);
  ASSERT_TRUE(generated.ok()) << generated.error().message;
  EXPECT_GT(generated->generated_tokens, 0);
}

// A model in which a quarter of every layer's FFN channels never fire.
constexpr int kDeadChannelStride = 4;
std::string model_with_dead_ffn_channels(TensorType type) {
  engine::SyntheticModelSpec spec;
  spec.matrix_type = type;
  spec.feed_forward_length = 128;
  return rewrite_model(write_model(spec), [&](const GgufTensorInfo& t, std::vector<uint8_t>& d) {
    if (!t.name.ends_with("ffn_up.weight")) return;
    const size_t row_bytes = d.size() / t.dims[1];
    for (size_t row = 1; row < t.dims[1]; row += kDeadChannelStride) {
      // Zero weights (and, for Q8_0, zero scales): the channel's up projection is 0.
      std::fill_n(d.begin() + row * row_bytes, row_bytes, 0);
    }
  });
}

TEST(Prune, ChannelsThatNeverFireAreCutFirst) {
  auto model = load(model_with_dead_ffn_channels(TensorType::kF32));
  ASSERT_TRUE(model);
  PruneOptions options;
  options.ffn_keep = 0.75;
  options.calibration_text = kStoryText;
  auto pruned = prune(model, options);
  ASSERT_TRUE(pruned.ok()) << pruned.error().message;
  EXPECT_EQ(pruned->report.feed_forward_after, 96);
  EXPECT_TRUE(pruned->report.notes.empty());
  const std::string out = write_pruned(*pruned);
  auto file = GgufFile::open(out);
  ASSERT_TRUE(file.ok());
  EXPECT_EQ((*file)->get_int("llama.feed_forward_length"), 96);
  EXPECT_EQ((*file)->find_tensor("blk.0.ffn_gate.weight")->dims, (std::vector<uint64_t>{64, 96}));
  EXPECT_EQ((*file)->find_tensor("blk.1.ffn_up.weight")->dims, (std::vector<uint64_t>{64, 96}));
  EXPECT_EQ((*file)->find_tensor("blk.1.ffn_down.weight")->dims, (std::vector<uint64_t>{96, 64}));

  // Only silent channels went, so the output is the same.
  auto smaller = load(out);
  ASSERT_TRUE(smaller);
  const auto tokens = sample_tokens(*model);
  EXPECT_LT(max_abs_difference(engine_logits(smaller, tokens), engine_logits(model, tokens)), 1e-4);

  // Cutting deeper has to take live channels and changes the output.
  options.ffn_keep = 0.5;
  auto deeper = prune(model, options);
  ASSERT_TRUE(deeper.ok());
  auto deeper_model = load(write_pruned(*deeper));
  ASSERT_TRUE(deeper_model);
  EXPECT_GT(max_abs_difference(engine_logits(deeper_model, tokens), engine_logits(model, tokens)),
            1e-3);
}

TEST(Prune, QuantizedFfnDownIsRequantizedInWholeBlocks) {
  auto model = load(model_with_dead_ffn_channels(TensorType::kQ8_0));
  ASSERT_TRUE(model);
  PruneOptions options;
  options.ffn_keep = 0.7;  // 89.6 channels: rounded to 96, three Q8_0 blocks
  options.calibration_text = kStoryText;
  auto pruned = prune(model, options);
  ASSERT_TRUE(pruned.ok()) << pruned.error().message;
  EXPECT_EQ(pruned->report.feed_forward_after, 96);
  ASSERT_EQ(pruned->report.notes.size(), 2u);
  EXPECT_NE(pruned->report.notes[0].find("rounded from 90 to 96"), std::string::npos);
  EXPECT_NE(pruned->report.notes[1].find("re-quantized to Q8_0"), std::string::npos);
  const std::string out = write_pruned(*pruned);
  auto file = GgufFile::open(out);
  ASSERT_TRUE(file.ok());
  const GgufTensorInfo* down = (*file)->find_tensor("blk.0.ffn_down.weight");
  ASSERT_NE(down, nullptr);
  EXPECT_EQ(down->type, static_cast<uint32_t>(TensorType::kQ8_0));
  EXPECT_EQ(down->dims, (std::vector<uint64_t>{96, 64}));
  auto smaller = load(out);
  ASSERT_TRUE(smaller);
  const auto tokens = sample_tokens(*model);
  // The dead channels held exact zeros, so only rounding differs: ffn_down
  // weights and the activations feeding it fall into new Q8_0 blocks.
  const std::vector<float> original_logits = engine_logits(model, tokens);
  double largest = 0.0;
  for (float l : original_logits) largest = std::max(largest, std::fabs(static_cast<double>(l)));
  EXPECT_LT(max_abs_difference(engine_logits(smaller, tokens), original_logits), 0.02 * largest);

  options.ffn_keep = 0.9;  // 115 rounds to all 128
  auto unchanged = prune(model, options);
  ASSERT_TRUE(unchanged.ok());
  EXPECT_EQ(unchanged->report.feed_forward_after, 128);
  EXPECT_NE(unchanged->report.notes.back().find("no FFN channels removed"), std::string::npos);
}

TEST(Prune, BadRequestsAreClearErrors) {
  engine::SyntheticModelSpec spec;
  spec.layer_count = 3;
  auto model = load(write_model(spec));
  ASSERT_TRUE(model);
  auto error_of = [&](PruneOptions options) {
    auto r = prune(model, options);
    EXPECT_FALSE(r.ok());
    return r.ok() ? std::string() : r.error().message;
  };
  PruneOptions o;
  o.remove_layers = {3};
  EXPECT_NE(error_of(o).find("layer 3 does not exist"), std::string::npos);
  o.remove_layers = {1, 1};
  EXPECT_NE(error_of(o).find("named twice"), std::string::npos);
  o.remove_layers = {0, 1, 2};
  EXPECT_NE(error_of(o).find("keep at least one"), std::string::npos);
  o = {};
  o.remove_layer_count = 3;
  EXPECT_NE(error_of(o).find("remove between 0 and 2"), std::string::npos);
  o.remove_layer_count = 1;
  EXPECT_NE(error_of(o).find("needs calibration text"), std::string::npos);
  o.remove_layers = {1};
  EXPECT_NE(error_of(o).find("not both"), std::string::npos);
  o = {};
  EXPECT_NE(error_of(o).find("nothing to prune"), std::string::npos);
  o.ffn_keep = 0.0;
  EXPECT_NE(error_of(o).find("(0, 1]"), std::string::npos);
}

// ---- pruning the other architectures: each kept layer computes what it did ----

engine::SyntheticModelSpec preset(const char* name) {
  auto spec = engine::synthetic_model_preset(name, TensorType::kF32);
  EXPECT_TRUE(spec.has_value()) << name;
  return spec.value_or(engine::SyntheticModelSpec{});
}

// The preset with layer `identity` writing nothing to the residual stream
// (attention or convolution output and ffn_down zero; gemma3's post-norms of
// zero are zero), so removing it must leave the logits as they are.
std::string preset_with_identity_layer(const char* name, int identity) {
  const std::string prefix = "blk." + std::to_string(identity) + ".";
  return rewrite_model(
      write_model(preset(name)), [&](const GgufTensorInfo& t, std::vector<uint8_t>& d) {
        if (t.name == prefix + "attn_output.weight" || t.name == prefix + "ffn_down.weight" ||
            t.name == prefix + "shortconv.out_proj.weight") {
          std::fill(d.begin(), d.end(), 0);
        }
      });
}

std::vector<TokenId> long_sample(const Model& model) {
  // Longer than gemma3-tiny's sliding window (5), so a layer's kind matters.
  return model.tokenizer().encode(
      "Once upon a time the big red dog sat on the mat and then it ran far away home", true, false);
}

void expect_removing_identity_layer_keeps_logits(const char* name, int identity) {
  SCOPED_TRACE(name);
  auto model = load(preset_with_identity_layer(name, identity));
  ASSERT_TRUE(model);
  PruneOptions options;
  options.remove_layers = {identity};
  auto pruned = prune(model, options);
  ASSERT_TRUE(pruned.ok()) << pruned.error().message;
  auto smaller = load(write_pruned(*pruned));
  ASSERT_TRUE(smaller);
  EXPECT_EQ(smaller->config().layer_count, model->config().layer_count - 1);
  for (int32_t li = 0, next = 0; li < model->config().layer_count; ++li) {
    if (li == identity) continue;
    const auto& before = model->layers()[static_cast<size_t>(li)];
    const auto& after = smaller->layers()[static_cast<size_t>(next++)];
    EXPECT_EQ(before.sliding, after.sliding) << "layer " << li;
    EXPECT_EQ(before.conv_index < 0, after.conv_index < 0) << "layer " << li;
    EXPECT_EQ(before.rope, after.rope) << "layer " << li;
  }
  const auto tokens = long_sample(*model);
  EXPECT_LT(max_abs_difference(engine_logits(smaller, tokens), engine_logits(model, tokens)), 1e-4);
}

TEST(Prune, Lfm2PerLayerHeadCountsAreCutWithTheLayers) {
  // Layer 1 is a convolution; head_count_kv has one entry per layer (0 for them).
  expect_removing_identity_layer_keeps_logits("lfm2-tiny", 1);
  auto model = load(preset_with_identity_layer("lfm2-tiny", 1));
  ASSERT_TRUE(model);
  const auto file = pruned_without_layer(model, 1);
  ASSERT_TRUE(file);
  const auto counts =
      array_items(*file, "lfm2.attention.head_count_kv",
                  [](const engine::GgufValue& v) { return v.as_int().value_or(-1); });
  EXPECT_EQ(counts, (std::vector<int64_t>{0, 2, 0, 0, 2}));
}

TEST(Prune, Gemma3LayersKeepTheirSlidingOrGlobalKind) {
  // Period 3: layers 2 and 5 are global. Without layer 1 the kept kinds
  // (S G S S G) fit no period, so the pattern becomes one flag per layer.
  expect_removing_identity_layer_keeps_logits("gemma3-tiny", 1);
  // Without layer 2 they are S S S S G: period 5.
  expect_removing_identity_layer_keeps_logits("gemma3-tiny", 2);
  auto model = load(write_model(preset("gemma3-tiny")));
  ASSERT_TRUE(model);
  const auto file = pruned_without_layer(model, 2);
  ASSERT_TRUE(file);
  EXPECT_EQ(file->get_int("gemma3.attention.sliding_window_pattern"), 5);

  // A pattern stored as one flag per layer loses the removed layer's flag.
  auto input = GgufFile::open(write_model(preset("gemma3-tiny")));
  ASSERT_TRUE(input.ok());
  engine::GgufValue::Array flags{engine::GgufValueType::kBool, {}};
  for (bool f : {true, true, false, true, true, false}) {
    flags.items.push_back(engine::GgufValue::boolean(f));
  }
  engine::GgufValue pattern;
  pattern.type = engine::GgufValueType::kArray;
  pattern.data = flags;
  const std::string with_flags =
      testing::copy_gguf_with(**input, {{"gemma3.attention.sliding_window_pattern", pattern}});
  ASSERT_FALSE(with_flags.empty());
  auto flagged = load(with_flags);
  ASSERT_TRUE(flagged);
  const auto cut_file = pruned_without_layer(flagged, 1);
  ASSERT_TRUE(cut_file);
  const auto kinds = array_items(*cut_file, "gemma3.attention.sliding_window_pattern",
                                 [](const engine::GgufValue& v) { return std::get<bool>(v.data); });
  EXPECT_EQ(kinds, (std::vector<bool>{true, false, true, true, false}));
}

TEST(Prune, Phi3FusedGateAndUpAreCutAsTwoHalves) {
  // A quarter of the channels never fire: their gate rows (the first half of
  // phi3's fused ffn_up) are zero, so keeping 3/4 must keep the function.
  auto spec = preset("phi3-tiny");
  const auto ff = static_cast<size_t>(spec.feed_forward_length);
  auto model =
      load(rewrite_model(write_model(spec), [&](const GgufTensorInfo& t, std::vector<uint8_t>& d) {
        if (!t.name.ends_with("ffn_up.weight")) return;
        ASSERT_EQ(t.dims[1], 2 * ff);
        const size_t row_bytes = d.size() / t.dims[1];
        for (size_t row = 1; row < ff; row += kDeadChannelStride) {
          std::fill_n(d.begin() + row * row_bytes, row_bytes, 0);
        }
      }));
  ASSERT_TRUE(model);
  PruneOptions options;
  options.ffn_keep = 0.75;
  options.calibration_text = kStoryText;
  auto pruned = prune(model, options);
  ASSERT_TRUE(pruned.ok()) << pruned.error().message;
  EXPECT_EQ(pruned->report.feed_forward_after, static_cast<int32_t>(ff * 3 / 4));
  const std::string out = write_pruned(*pruned);
  auto file = GgufFile::open(out);
  ASSERT_TRUE(file.ok());
  EXPECT_EQ((*file)->find_tensor("blk.0.ffn_up.weight")->dims[1], ff * 3 / 2);
  auto smaller = load(out);
  ASSERT_TRUE(smaller);
  const auto tokens = sample_tokens(*model);
  EXPECT_LT(max_abs_difference(engine_logits(smaller, tokens), engine_logits(model, tokens)), 1e-4);
}

TEST(Prune, PositionalLayerKindsThatCannotBeKeptAreRefused) {
  // smollm3 leaves RoPE out of every fourth layer by position, with no key.
  auto model = load(write_model(preset("smollm3-tiny")));
  ASSERT_TRUE(model);
  PruneOptions options;
  options.remove_layers = {1};
  auto refused = prune(model, options);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().kind, ErrorKind::kUnsupported);
  EXPECT_NE(refused.error().message.find("smollm3"), std::string::npos);
  EXPECT_NE(refused.error().message.find("layer 3 (without RoPE) to position 2"), std::string::npos)
      << refused.error().message;
  // Removing the last two layers moves nothing.
  options.remove_layers = {4, 5};
  auto kept = prune(model, options);
  ASSERT_TRUE(kept.ok()) << kept.error().message;
  EXPECT_TRUE(load(write_pruned(*kept)));
}

std::string stories_path() {
  return testing::shared_models_dir() + "/stories260K.gguf";
}

TEST(RealModel, PrunedStories260KLoadsAndGenerates) {
  if (!std::filesystem::exists(stories_path())) GTEST_SKIP() << "no " << stories_path();
  auto model = load(stories_path());
  ASSERT_TRUE(model);
  const auto& c = model->config();
  PruneOptions options;
  options.remove_layer_count = 2;
  options.ffn_keep = 0.5;
  options.calibration_text = kStoryText;
  auto pruned = prune(model, options);
  ASSERT_TRUE(pruned.ok()) << pruned.error().message;
  auto smaller = load(write_pruned(*pruned));
  ASSERT_TRUE(smaller);
  EXPECT_EQ(smaller->config().layer_count, c.layer_count - 2);
  // Half the channels, to the nearest multiple of 16.
  const int32_t ffn = smaller->config().feed_forward_length;
  EXPECT_EQ(ffn % 16, 0);
  EXPECT_LE(std::abs(2 * ffn - c.feed_forward_length), 16);
  EXPECT_EQ(smaller->config().embedding_length, c.embedding_length);
  EXPECT_LT(smaller->file().file_size(), model->file().file_size());

  engine::ThreadPool pool(2);
  auto ctx = engine::InferenceContext::create(smaller, {});
  ASSERT_TRUE(ctx.ok());
  engine::GenerationRequest request;
  request.prompt = smaller->tokenizer().encode("Once upon a time", true, false);
  request.sampling = engine::SamplingParams::greedy();
  request.max_tokens = 16;
  auto generated = engine::generate(**ctx, pool, request);
  ASSERT_TRUE(generated.ok()) << generated.error().message;
  EXPECT_GT(generated->generated_tokens, 0);
}

// ---- evaluation ----

Result<std::vector<ModelEvaluation>> evaluate(std::vector<std::shared_ptr<const Model>> models,
                                              std::shared_ptr<const Model> reference,
                                              const EvaluationOptions& options) {
  engine::ThreadPool pool(2);
  return evaluate_models(models, std::move(reference), options, pool);
}

TEST(Eval, PerplexityIsExpOfTheMeanNextTokenLoss) {
  auto model = load(write_model({}));
  ASSERT_TRUE(model);
  const std::string text = "the cat sat on the mat and ran";
  const auto windows = tokenize_windows(*model, text, 512, 4096);
  ASSERT_EQ(windows.size(), 1u);
  const std::vector<TokenId>& tokens = windows[0];
  ASSERT_GT(tokens.size(), 4u);

  // Each prefix run from scratch as one batch, softmax in double.
  double loss = 0.0;
  for (size_t i = 0; i + 1 < tokens.size(); ++i) {
    const std::vector<TokenId> prefix(tokens.begin(), tokens.begin() + i + 1);
    const std::vector<float> logits = engine_logits(model, prefix);
    double max_logit = -1e300, sum = 0.0;
    for (float l : logits) max_logit = std::max(max_logit, static_cast<double>(l));
    for (float l : logits) sum += std::exp(l - max_logit);
    loss -= logits[tokens[i + 1]] - max_logit - std::log(sum);
  }
  const double expected = std::exp(loss / static_cast<double>(tokens.size() - 1));

  EvaluationOptions options;
  options.text = text;
  auto results = evaluate({model}, nullptr, options);
  ASSERT_TRUE(results.ok()) << results.error().message;
  ASSERT_EQ(results->size(), 1u);
  const ModelEvaluation& e = results->front();
  EXPECT_EQ(e.scored_tokens, tokens.size() - 1);
  ASSERT_TRUE(e.perplexity);
  EXPECT_NEAR(*e.perplexity, expected, 1e-4 * expected);
  EXPECT_FALSE(e.divergence);
}

TEST(Eval, WindowsCoverTheTextOnce) {
  auto model = load(write_model({}));
  ASSERT_TRUE(model);
  const std::string text(200, 'x');
  const auto all = model->tokenizer().encode(text, false, false);
  const auto windows = tokenize_windows(*model, text, 16, 4096);
  size_t body = 0;
  for (const auto& w : windows) {
    EXPECT_LE(w.size(), 16u);
    EXPECT_EQ(w.front(), model->tokenizer().bos());
    body += w.size() - 1;
  }
  EXPECT_EQ(body, all.size());
  EXPECT_EQ(tokenize_windows(*model, text, 16, 20).size(), 2u);
}

TEST(Eval, ModelAgainstItselfHasNoDivergenceAndAnotherModelHas) {
  const std::string path = write_model({});
  auto reference = load(path);
  auto same = load(path);
  engine::SyntheticModelSpec other_spec;
  other_spec.seed = 7;
  auto other = load(write_model(other_spec));
  ASSERT_TRUE(reference && same && other);
  EvaluationOptions options;
  options.text = kStoryText;
  options.window_tokens = 40;  // several windows
  auto results = evaluate({same, other}, reference, options);
  ASSERT_TRUE(results.ok()) << results.error().message;
  ASSERT_EQ(results->size(), 3u);
  EXPECT_TRUE((*results)[0].is_reference);
  EXPECT_FALSE((*results)[0].divergence);
  const ModelEvaluation& self = (*results)[1];
  ASSERT_TRUE(self.divergence);
  EXPECT_NEAR(self.divergence->mean_kl, 0.0, 1e-9);
  EXPECT_DOUBLE_EQ(self.divergence->top1_agreement, 1.0);
  EXPECT_DOUBLE_EQ(*self.perplexity, *(*results)[0].perplexity);
  EXPECT_EQ(
      self.divergence->positions,
      (*results)[0].scored_tokens + tokenize_windows(*reference, kStoryText, 40, 4096).size());
  const ModelEvaluation& different = (*results)[2];
  ASSERT_TRUE(different.divergence);
  EXPECT_GT(different.divergence->mean_kl, 0.01);
  EXPECT_LT(different.divergence->top1_agreement, 1.0);
  EXPECT_GE(different.divergence->max_kl, different.divergence->mean_kl);
}

TEST(Eval, ModelsWithAnotherVocabularyCannotBeCompared) {
  engine::SyntheticModelSpec bigger;
  bigger.vocab_size = 400;
  auto reference = load(write_model({}));
  auto candidate = load(write_model(bigger));
  ASSERT_TRUE(reference && candidate);
  EvaluationOptions options;
  options.text = kStoryText;
  auto results = evaluate({candidate}, reference, options);
  ASSERT_FALSE(results.ok());
  EXPECT_NE(results.error().message.find("another vocabulary"), std::string::npos);
}

// Total log-probability of `choice` after `prompt`, from full-batch logits.
double log_likelihood(const std::shared_ptr<const Model>& model, const std::string& prompt,
                      const std::string& choice) {
  const auto context = model->tokenizer().encode(prompt, true, false);
  const auto whole = model->tokenizer().encode(prompt + choice, true, false);
  size_t start = 0;
  while (start < context.size() && context[start] == whole[start]) ++start;
  double total = 0.0;
  for (size_t i = start; i < whole.size(); ++i) {
    const std::vector<float> logits =
        engine_logits(model, std::vector<TokenId>(whole.begin(), whole.begin() + i));
    double max_logit = -1e300, sum = 0.0;
    for (float l : logits) max_logit = std::max(max_logit, static_cast<double>(l));
    for (float l : logits) sum += std::exp(l - max_logit);
    total += logits[whole[i]] - max_logit - std::log(sum);
  }
  return total;
}

TEST(Eval, TaskAccuracyOnConstructedTasks) {
  auto model = load(write_model({}));
  ASSERT_TRUE(model);
  const std::string prompt = "Once upon a time";

  engine::ThreadPool pool(2);
  auto ctx = engine::InferenceContext::create(model, {});
  ASSERT_TRUE(ctx.ok());
  engine::GenerationRequest request;
  request.prompt = model->tokenizer().encode(prompt, true, false);
  request.sampling = engine::SamplingParams::greedy();
  request.max_tokens = 8;
  auto greedy = engine::generate(**ctx, pool, request);
  ASSERT_TRUE(greedy.ok());
  ASSERT_GT(greedy->text.size(), 0u);

  const double cat = log_likelihood(model, prompt, " the cat");
  const double dog = log_likelihood(model, prompt, " a dog");
  ASSERT_NE(cat, dog);
  const int likelier = cat > dog ? 0 : 1;

  nlohmann::json lines = nlohmann::json::array();
  // A letter of the output, found anywhere in it by the regex.
  const auto letter = std::find_if(greedy->text.rbegin(), greedy->text.rend(), [](char ch) {
    return std::isalnum(static_cast<unsigned char>(ch));
  });
  ASSERT_NE(letter, greedy->text.rend());
  lines.push_back(
      {{"prompt", prompt}, {"checker", {{"regex", std::string(1, *letter)}}}});  // right
  lines.push_back({{"prompt", prompt}, {"checker", {{"regex", "^\\d{12}$"}}}});  // wrong
  lines.push_back({{"prompt", prompt}, {"choices", {" the cat", " a dog"}}, {"answer", likelier}});
  lines.push_back(
      {{"prompt", prompt}, {"choices", {" the cat", " a dog"}}, {"answer", 1 - likelier}});
  std::string jsonl;
  for (const auto& line : lines) jsonl += line.dump() + "\n\n";  // blank lines are skipped
  auto tasks = parse_tasks(jsonl, "tasks.jsonl");
  ASSERT_TRUE(tasks.ok()) << tasks.error().message;
  ASSERT_EQ(tasks->size(), 4u);
  EXPECT_EQ((*tasks)[1].line, 3u);
  // A random model's output may hold bytes that are not UTF-8, which JSON
  // cannot carry, so the tasks quoting it are built directly.
  for (const auto& [expected, exact] : {std::pair{greedy->text, true},            // right
                                        std::pair{greedy->text + "#", false}}) {  // wrong
    EvaluationTask task;
    task.prompt = prompt;
    task.expected = expected;
    task.exact_match = exact;
    tasks->insert(tasks->begin() + (exact ? 0 : 1), task);
  }

  EvaluationOptions options;
  options.tasks = *tasks;
  options.max_tokens = 8;
  auto results = evaluate({model}, nullptr, options);
  ASSERT_TRUE(results.ok()) << results.error().message;
  const ModelEvaluation& e = results->front();
  ASSERT_EQ(e.tasks.size(), 6u);
  const std::vector<bool> expected{true, false, true, false, true, false};
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(e.tasks[i].correct, expected[i]) << "task " << i << " output: " << e.tasks[i].output;
  }
  EXPECT_EQ(e.tasks_correct, 3u);
  EXPECT_EQ(e.tasks[0].output, greedy->text);
  EXPECT_EQ(e.tasks[4].output, likelier == 0 ? " the cat" : " a dog");
  EXPECT_FALSE(e.perplexity);
}

TEST(Eval, MalformedTaskLinesAreNamed) {
  auto error_of = [](const std::string& jsonl) {
    auto r = parse_tasks(jsonl, "t.jsonl");
    EXPECT_FALSE(r.ok()) << jsonl;
    return r.ok() ? std::string() : r.error().message;
  };
  const std::string good = R"({"prompt": "a", "expected": "b"})";
  EXPECT_NE(error_of(good + "\n{\"prompt\": \n").find("t.jsonl:2: not valid JSON"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"expected": "b"})").find("t.jsonl:1: \"prompt\""), std::string::npos);
  EXPECT_NE(error_of(R"([1, 2])").find("JSON object"), std::string::npos);
  EXPECT_NE(
      error_of(R"({"prompt": "a", "expected": "b", "choices": ["x", "y"]})").find("exactly one of"),
      std::string::npos);
  EXPECT_NE(error_of(R"({"prompt": "a", "checker": {"regex": "(unclosed"}})").find("offset"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"prompt": "a", "choices": ["x", "y"], "answer": 2})").find("\"answer\""),
            std::string::npos);
  EXPECT_NE(error_of(R"({"prompt": "a", "choices": ["x"], "answer": 0})").find("at least two"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"prompt": "a", "expected": "b", "match": "fuzzy"})").find("\"match\""),
            std::string::npos);
  EXPECT_NE(error_of(R"({"prompt": "a", "expected": "b", "stop": "x"})").find("\"stop\""),
            std::string::npos);
  EXPECT_NE(error_of("\n\n").find("no tasks"), std::string::npos);
}

TEST(Eval, NothingToEvaluateIsAnError) {
  auto model = load(write_model({}));
  ASSERT_TRUE(model);
  auto r = evaluate({model}, nullptr, {});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("nothing to evaluate"), std::string::npos);
}

// ---- the commands ----

using testing::run_foreshore;

TEST(Cli, PruneThenEvalOnARealModel) {
  if (!std::filesystem::exists(stories_path())) GTEST_SKIP() << "no " << stories_path();
  const std::string text_path = temp_path(".txt");
  std::ofstream(text_path) << kStoryText;
  const std::string out = temp_path(".gguf");
  const std::string report_path = temp_path(".json");
  auto pruned = run_foreshore({"prune", stories_path(), out, "--remove-layers", "1", "--ffn-keep",
                               "0.75", "--calibration", text_path, "--report", report_path});
  ASSERT_EQ(pruned.status, 0) << pruned.err;
  EXPECT_NE(pruned.out.find("removed"), std::string::npos);
  std::ifstream report_file(report_path);
  const auto report = nlohmann::json::parse(report_file);
  EXPECT_EQ(report["layers_after"].get<int>(), report["layers_before"].get<int>() - 1);
  EXPECT_EQ(report["removed_layers"].size(), 1u);
  EXPECT_EQ(report["layers"].size(), report["layers_before"].get<size_t>());
  EXPECT_LT(report["file_bytes_after"].get<uint64_t>(),
            report["file_bytes_before"].get<uint64_t>());

  const std::string tasks_path = temp_path(".jsonl");
  std::ofstream(tasks_path)
      << R"({"prompt": "Once upon a time", "expected": "there"})"
      << "\n"
      << R"({"prompt": "Lily saw a", "choices": [" dog", " xylophone"], "answer": 0})"
      << "\n";
  auto evaluated =
      run_foreshore({"eval", out, stories_path(), "--reference", stories_path(), "--text",
                     text_path, "--tasks", tasks_path, "--json", "-n", "12"});
  ASSERT_EQ(evaluated.status, 0) << evaluated.err;
  const auto result = nlohmann::json::parse(evaluated.out);
  ASSERT_EQ(result["models"].size(), 3u);
  EXPECT_TRUE(result["models"][0]["reference"].get<bool>());
  const auto& pruned_row = result["models"][1];
  const auto& self_row = result["models"][2];
  EXPECT_GT(pruned_row["mean_kl"].get<double>(), 0.0);
  EXPECT_NEAR(self_row["mean_kl"].get<double>(), 0.0, 1e-9);
  EXPECT_DOUBLE_EQ(self_row["top1_agreement"].get<double>(), 1.0);
  EXPECT_EQ(self_row["tasks"]["total"].get<int>(), 2);
  EXPECT_GT(result["models"][0]["perplexity"].get<double>(), 1.0);

  auto table = run_foreshore({"eval", out, "--reference", stories_path(), "--text", text_path});
  ASSERT_EQ(table.status, 0) << table.err;
  EXPECT_NE(table.out.find("perplexity"), std::string::npos);
  EXPECT_NE(table.out.find("top-1"), std::string::npos);
}

TEST(Cli, PruningInPlaceReplacesTheInputOnlyWithAModelThatLoads) {
  const std::string path = write_model(preset("lfm2-tiny"));
  auto pruned = run_foreshore({"prune", path, path, "--layers", "2"});
  ASSERT_EQ(pruned.status, 0) << pruned.err;
  auto model = load(path);
  ASSERT_TRUE(model);
  EXPECT_EQ(model->config().layer_count, 5);
  EXPECT_FALSE(std::filesystem::exists(path + ".partial"));
}

TEST(Cli, EvalSaysTheWindowItUsed) {
  engine::SyntheticModelSpec spec;
  spec.context_length = 64;
  const std::string model = write_model(spec);
  const std::string text_path = temp_path(".txt");
  std::ofstream(text_path) << kStoryText;
  auto capped = run_foreshore({"eval", model, "--text", text_path, "--window", "100000"});
  ASSERT_EQ(capped.status, 0) << capped.err;
  EXPECT_NE(capped.out.find("windows of up to 64 tokens (--window 100000 capped by the model's "
                            "context)"),
            std::string::npos)
      << capped.out;
  auto json_run =
      run_foreshore({"eval", model, "--text", text_path, "--window", "100000", "--json"});
  ASSERT_EQ(json_run.status, 0) << json_run.err;
  EXPECT_EQ(nlohmann::json::parse(json_run.out)["models"][0]["window_tokens"], 64);
  auto fits = run_foreshore({"eval", model, "--text", text_path, "--window", "32"});
  ASSERT_EQ(fits.status, 0) << fits.err;
  EXPECT_NE(fits.out.find("windows of up to 32 tokens; "), std::string::npos) << fits.out;
}

TEST(Cli, HelpTeachesAndBadInputFailsClearly) {
  for (const char* command : {"prune", "eval"}) {
    auto help = run_foreshore({command, "--help"});
    EXPECT_EQ(help.status, 0);
    EXPECT_NE(help.out.find("Examples:"), std::string::npos) << command;
  }
  auto missing =
      run_foreshore({"prune", "/nonexistent/model.gguf", temp_path(".gguf"), "--layers", "0"});
  EXPECT_EQ(missing.status, 2);
  EXPECT_NE(missing.err.find("error:"), std::string::npos);

  const std::string model = write_model({});
  const std::string tasks_path = temp_path(".jsonl");
  std::ofstream(tasks_path) << R"({"prompt": "a", "expected": "b"})"
                            << "\nnot json\n";
  auto bad_tasks = run_foreshore({"eval", model, "--tasks", tasks_path});
  EXPECT_EQ(bad_tasks.status, 2);
  EXPECT_NE(bad_tasks.err.find(tasks_path + ":2:"), std::string::npos) << bad_tasks.err;
  auto no_text = run_foreshore({"eval", model, "--text", "/nonexistent.txt"});
  EXPECT_EQ(no_text.status, 2);
  EXPECT_NE(no_text.err.find("/nonexistent.txt"), std::string::npos);
}

}  // namespace
}  // namespace foreshore::compress
