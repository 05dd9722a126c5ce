#include "engine/synthetic_model.h"

#include <cstdio>
#include <random>

#include "engine/kernels.h"

namespace foreshore::engine {

Vocabulary synthetic_vocabulary(int32_t size) {
  Vocabulary v;
  v.model = "llama";
  v.tokens = {"<unk>", "<s>", "</s>"};
  v.kinds = {TokenKind::kUnknown, TokenKind::kControl, TokenKind::kControl};
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    v.tokens.push_back(buf);
    v.kinds.push_back(TokenKind::kByte);
  }
  const char* words[] = {"▁the", "▁a",   "▁cat", "▁dog",  "▁sat",  "▁on",   "▁mat", "▁and",
                         "▁ran", "▁to",  "▁big", "▁red",  "e",     "t",     "a",    "o",
                         "▁",    "s",    "n",    "r",     "i",     "h",     "l",    "d",
                         "c",    "m",    "u",    "▁w",    "▁s",    "▁b",    "er",   "in",
                         "▁H",   "ello", "▁Once", "▁upon", "▁time", "."};
  for (const char* w : words) {
    v.tokens.push_back(w);
    v.kinds.push_back(TokenKind::kNormal);
  }
  for (int32_t i = static_cast<int32_t>(v.tokens.size()); i < size; ++i) {
    v.tokens.push_back("▁w" + std::to_string(i));
    v.kinds.push_back(TokenKind::kNormal);
  }
  v.scores.resize(v.tokens.size());
  for (size_t i = 0; i < v.tokens.size(); ++i) v.scores[i] = -static_cast<float>(i);
  v.unknown = 0;
  v.bos = 1;
  v.eos = 2;
  return v;
}

std::optional<SyntheticModelSpec> synthetic_model_preset(std::string_view name, TensorType type) {
  SyntheticModelSpec s;
  s.matrix_type = type;
  s.embedding_type = type;
  s.context_length = 2048;
  if (name == "smollm2-135m") {
    s.embedding_length = 576;
    s.layer_count = 30;
    s.head_count = 9;
    s.head_count_kv = 3;
    s.feed_forward_length = 1536;
    s.vocab_size = 49152;
    s.tied_output = true;
  } else if (name == "qwen2.5-0.5b") {
    s.architecture = "qwen2";
    s.embedding_length = 896;
    s.layer_count = 24;
    s.head_count = 14;
    s.head_count_kv = 2;
    s.feed_forward_length = 4864;
    s.vocab_size = 151936;
    s.tied_output = true;
    s.rope_freq_base = 1000000.0f;
  } else if (name == "llama3.2-1b") {
    s.embedding_length = 2048;
    s.layer_count = 16;
    s.head_count = 32;
    s.head_count_kv = 8;
    s.feed_forward_length = 8192;
    s.vocab_size = 128256;
    s.tied_output = true;
    s.llama3_rope_scaling = true;
    s.rope_freq_base = 500000.0f;
  } else if (name == "tinyllama-1.1b") {
    s.embedding_length = 2048;
    s.layer_count = 22;
    s.head_count = 32;
    s.head_count_kv = 4;
    s.feed_forward_length = 5632;
    s.vocab_size = 32000;
  } else {
    return std::nullopt;
  }
  return s;
}

Status write_synthetic_model(const SyntheticModelSpec& s, const std::string& path) {
  const auto traits = tensor_type_traits(static_cast<uint32_t>(s.matrix_type));
  if (!traits || !traits->computable) {
    return make_error(ErrorKind::kUnsupported,
                      "synthetic model: type " + tensor_type_name(static_cast<uint32_t>(s.matrix_type)) +
                          " has no kernels");
  }
  for (int32_t cols : {s.embedding_length, s.feed_forward_length}) {
    if (cols % static_cast<int32_t>(traits->block_size) != 0) {
      return make_error(ErrorKind::kInvalidArgument,
                        "synthetic model: row length " + std::to_string(cols) +
                            " is not a multiple of the " + std::string(traits->name) +
                            " block size " + std::to_string(traits->block_size));
    }
  }
  GgufWriter w;
  const std::string a = s.architecture;
  const Vocabulary vocab = synthetic_vocabulary(s.vocab_size);
  const int64_t n_vocab = static_cast<int64_t>(vocab.tokens.size());
  const int64_t head_dim = s.embedding_length / s.head_count;
  w.set("general.architecture", GgufValue::string(a));
  w.set("general.name", GgufValue::string("synthetic-" + a));
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
  kinds.reserve(vocab.kinds.size());
  for (auto k : vocab.kinds) kinds.push_back(static_cast<int32_t>(k));
  w.set("tokenizer.ggml.token_type", GgufValue::i32_array(kinds));
  w.set("tokenizer.ggml.bos_token_id", GgufValue::u32(1));
  w.set("tokenizer.ggml.eos_token_id", GgufValue::u32(2));
  w.set("tokenizer.ggml.unknown_token_id", GgufValue::u32(0));
  if (!s.chat_template.empty()) w.set("tokenizer.chat_template", GgufValue::string(s.chat_template));

  std::mt19937_64 rng(s.seed);
  std::vector<float> values;
  std::vector<uint8_t> bytes;
  auto add = [&](const std::string& name, TensorType type, int64_t cols, int64_t rows,
                 float scale, float offset) -> Status {
    std::vector<uint64_t> dims{static_cast<uint64_t>(cols)};
    if (rows > 0) dims.push_back(static_cast<uint64_t>(rows));
    const int64_t n = cols * std::max<int64_t>(rows, 1);
    std::normal_distribution<float> dist(offset, scale);
    values.resize(static_cast<size_t>(n));
    for (auto& x : values) x = dist(rng);
    const auto t = tensor_type_traits(static_cast<uint32_t>(type));
    bytes.resize(tensor_row_bytes(*t, static_cast<uint64_t>(n)));
    if (!quantize_row(type, values.data(), bytes.data(), n)) {
      return make_error(ErrorKind::kUnsupported, "synthetic model: cannot encode " + name);
    }
    return w.add_tensor(name, type, dims, bytes);
  };
  const int64_t d = s.embedding_length;
  const int64_t q_dim = s.head_count * head_dim;
  const int64_t kv_dim = s.head_count_kv * head_dim;
  const TensorType f32 = TensorType::kF32;
  FSH_TRY_STATUS(add("token_embd.weight", s.embedding_type, d, n_vocab, 1.0f, 0.0f));
  FSH_TRY_STATUS(add("output_norm.weight", f32, d, 0, 0.1f, 1.0f));
  if (!s.tied_output) FSH_TRY_STATUS(add("output.weight", s.matrix_type, d, n_vocab, 0.2f, 0.0f));
  for (int32_t i = 0; i < s.layer_count; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    FSH_TRY_STATUS(add(p + "attn_norm.weight", f32, d, 0, 0.1f, 1.0f));
    FSH_TRY_STATUS(add(p + "attn_q.weight", s.matrix_type, d, q_dim, 0.2f, 0.0f));
    FSH_TRY_STATUS(add(p + "attn_k.weight", s.matrix_type, d, kv_dim, 0.2f, 0.0f));
    FSH_TRY_STATUS(add(p + "attn_v.weight", s.matrix_type, d, kv_dim, 0.2f, 0.0f));
    FSH_TRY_STATUS(add(p + "attn_output.weight", s.matrix_type, q_dim, d, 0.2f, 0.0f));
    if (a == "qwen2") {
      FSH_TRY_STATUS(add(p + "attn_q.bias", f32, q_dim, 0, 0.1f, 0.0f));
      FSH_TRY_STATUS(add(p + "attn_k.bias", f32, kv_dim, 0, 0.1f, 0.0f));
      FSH_TRY_STATUS(add(p + "attn_v.bias", f32, kv_dim, 0, 0.1f, 0.0f));
    }
    FSH_TRY_STATUS(add(p + "ffn_norm.weight", f32, d, 0, 0.1f, 1.0f));
    FSH_TRY_STATUS(add(p + "ffn_gate.weight", s.matrix_type, d, s.feed_forward_length, 0.2f, 0.0f));
    FSH_TRY_STATUS(add(p + "ffn_up.weight", s.matrix_type, d, s.feed_forward_length, 0.2f, 0.0f));
    FSH_TRY_STATUS(add(p + "ffn_down.weight", s.matrix_type, s.feed_forward_length, d, 0.2f, 0.0f));
  }
  return w.write(path);
}

}  // namespace foreshore::engine
