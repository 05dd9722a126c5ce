#include "support/tiny_model.h"

#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <random>
#include <stdexcept>

namespace sy::testing {

engine::Vocabulary tiny_vocabulary() {
  engine::Vocabulary v;
  v.model = "llama";
  v.tokens = {"<unk>", "<s>", "</s>"};
  v.kinds = {engine::TokenKind::kUnknown, engine::TokenKind::kControl,
             engine::TokenKind::kControl};
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    v.tokens.push_back(buf);
    v.kinds.push_back(engine::TokenKind::kByte);
  }
  const char* words[] = {"▁the", "▁a", "▁cat", "▁dog", "▁sat", "▁on", "▁mat", "▁and",
                         "▁ran", "▁to", "▁big", "▁red", "e", "t", "a", "o",
                         "▁", "s", "n", "r", "i", "h", "l", "d",
                         "c", "m", "u", "▁w", "▁s", "▁b", "er", "in",
                         "▁H", "ello", "▁Once", "▁upon", "▁time", "."};
  for (const char* w : words) {
    v.tokens.push_back(w);
    v.kinds.push_back(engine::TokenKind::kNormal);
  }
  v.scores.resize(v.tokens.size());
  for (size_t i = 0; i < v.tokens.size(); ++i) v.scores[i] = -static_cast<float>(i);
  v.unknown = 0;
  v.bos = 1;
  v.eos = 2;
  return v;
}

namespace {

std::vector<uint8_t> encode(engine::TensorType type, const std::vector<float>& values) {
  const auto traits = engine::tensor_type_traits(static_cast<uint32_t>(type));
  std::vector<uint8_t> out(engine::tensor_row_bytes(*traits, values.size()));
  if (!engine::quantize_row(type, values.data(), out.data(), static_cast<int64_t>(values.size())))
    throw std::runtime_error("quantize_row failed");
  return out;
}

}  // namespace

void write_tiny_model(const TinyModelSpec& s, const std::string& path) {
  using engine::GgufValue;
  engine::GgufWriter w;
  const std::string a = s.architecture;
  const engine::Vocabulary vocab = tiny_vocabulary();
  const int64_t n_vocab = static_cast<int64_t>(vocab.tokens.size());
  const int64_t head_dim = s.embedding_length / s.head_count;
  w.set("general.architecture", GgufValue::string(a));
  w.set("general.name", GgufValue::string("tiny-" + a));
  w.set(a + ".context_length", GgufValue::u32(static_cast<uint32_t>(s.context_length)));
  w.set(a + ".embedding_length", GgufValue::u32(static_cast<uint32_t>(s.embedding_length)));
  w.set(a + ".block_count", GgufValue::u32(static_cast<uint32_t>(s.layer_count)));
  w.set(a + ".feed_forward_length", GgufValue::u32(static_cast<uint32_t>(s.feed_forward_length)));
  w.set(a + ".attention.head_count", GgufValue::u32(static_cast<uint32_t>(s.head_count)));
  w.set(a + ".attention.head_count_kv", GgufValue::u32(static_cast<uint32_t>(s.head_count_kv)));
  w.set(a + ".attention.layer_norm_rms_epsilon", GgufValue::f32(1e-5f));
  w.set(a + ".rope.freq_base", GgufValue::f32(s.rope_freq_base));
  if (s.llama3_rope_scaling) {
    w.set(a + ".rope.scaling.type", GgufValue::string("llama3"));
    w.set(a + ".rope.scaling.factor", GgufValue::f32(8.0f));
    w.set(a + ".rope.scaling.original_context_length", GgufValue::u32(64));
  }
  w.set("tokenizer.ggml.model", GgufValue::string("llama"));
  w.set("tokenizer.ggml.tokens", GgufValue::string_array(vocab.tokens));
  w.set("tokenizer.ggml.scores", GgufValue::f32_array(vocab.scores));
  std::vector<int32_t> kinds;
  for (auto k : vocab.kinds) kinds.push_back(static_cast<int32_t>(k));
  w.set("tokenizer.ggml.token_type", GgufValue::i32_array(kinds));
  w.set("tokenizer.ggml.bos_token_id", GgufValue::u32(1));
  w.set("tokenizer.ggml.eos_token_id", GgufValue::u32(2));
  w.set("tokenizer.ggml.unknown_token_id", GgufValue::u32(0));
  if (!s.chat_template.empty()) w.set("tokenizer.chat_template", GgufValue::string(s.chat_template));

  std::mt19937_64 rng(s.seed);
  auto random = [&](size_t n, float scale) {
    std::normal_distribution<float> dist(0.0f, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = dist(rng);
    return v;
  };
  auto add = [&](const std::string& name, engine::TensorType type, int64_t cols, int64_t rows,
                 float scale) {
    std::vector<uint64_t> dims{static_cast<uint64_t>(cols)};
    if (rows > 0) dims.push_back(static_cast<uint64_t>(rows));
    const auto bytes = encode(type, random(static_cast<size_t>(cols * std::max<int64_t>(rows, 1)), scale));
    auto st = w.add_tensor(name, type, dims, bytes);
    if (!st.ok()) throw std::runtime_error(st.error().message);
  };
  auto add_norm = [&](const std::string& name, int64_t n) {
    std::vector<float> v = random(static_cast<size_t>(n), 0.1f);
    for (auto& x : v) x += 1.0f;
    auto st = w.add_tensor(name, engine::TensorType::kF32, {static_cast<uint64_t>(n)},
                           {reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(float)});
    if (!st.ok()) throw std::runtime_error(st.error().message);
  };
  const int64_t d = s.embedding_length;
  const int64_t q_dim = s.head_count * head_dim;
  const int64_t kv_dim = s.head_count_kv * head_dim;
  add("token_embd.weight", s.embedding_type, d, n_vocab, 1.0f);
  add_norm("output_norm.weight", d);
  if (!s.tied_output) add("output.weight", s.matrix_type, d, n_vocab, 0.2f);
  for (int32_t i = 0; i < s.layer_count; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    add_norm(p + "attn_norm.weight", d);
    add(p + "attn_q.weight", s.matrix_type, d, q_dim, 0.2f);
    add(p + "attn_k.weight", s.matrix_type, d, kv_dim, 0.2f);
    add(p + "attn_v.weight", s.matrix_type, d, kv_dim, 0.2f);
    add(p + "attn_output.weight", s.matrix_type, q_dim, d, 0.2f);
    if (a == "qwen2") {
      add(p + "attn_q.bias", engine::TensorType::kF32, q_dim, 0, 0.1f);
      add(p + "attn_k.bias", engine::TensorType::kF32, kv_dim, 0, 0.1f);
      add(p + "attn_v.bias", engine::TensorType::kF32, kv_dim, 0, 0.1f);
    }
    add_norm(p + "ffn_norm.weight", d);
    add(p + "ffn_gate.weight", s.matrix_type, d, s.feed_forward_length, 0.2f);
    add(p + "ffn_up.weight", s.matrix_type, d, s.feed_forward_length, 0.2f);
    add(p + "ffn_down.weight", s.matrix_type, s.feed_forward_length, d, 0.2f);
  }
  auto st = w.write(path);
  if (!st.ok()) throw std::runtime_error(st.error().message);
}

std::string temp_path(const std::string& suffix) {
  static std::atomic<int> counter{0};
  const auto dir = std::filesystem::temp_directory_path();
  return (dir / ("switchyard-test-" + std::to_string(::getpid()) + "-" +
                 std::to_string(counter++) + suffix))
      .string();
}

std::string shared_models_dir() {
  return (std::filesystem::path(SY_SOURCE_DIR) / ".." / "shared" / "data" / "models")
      .lexically_normal()
      .string();
}

}  // namespace sy::testing
