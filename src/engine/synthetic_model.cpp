#include "engine/synthetic_model.h"

#include <cmath>
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
  const char* words[] = {"▁the", "▁a",   "▁cat",  "▁dog",  "▁sat",  "▁on", "▁mat", "▁and",
                         "▁ran", "▁to",  "▁big",  "▁red",  "e",     "t",   "a",    "o",
                         "▁",    "s",    "n",     "r",     "i",     "h",   "l",    "d",
                         "c",    "m",    "u",     "▁w",    "▁s",    "▁b",  "er",   "in",
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

const char* synthetic_model_preset_names() {
  return "smollm2-135m, qwen2.5-0.5b, llama3.2-1b, tinyllama-1.1b, qwen3-0.6b, qwen3-1.7b, "
         "gemma3-270m, gemma3-1b, phi4-mini, smollm3-3b, lfm2-350m, qwen3-tiny, gemma3-tiny, "
         "phi3-tiny, smollm3-tiny, lfm2-tiny";
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
  } else if (name == "qwen3-0.6b" || name == "qwen3-1.7b") {
    const bool small = name == "qwen3-0.6b";
    s.architecture = "qwen3";
    s.embedding_length = small ? 1024 : 2048;
    s.layer_count = 28;
    s.head_count = 16;
    s.head_count_kv = 8;
    s.head_dim = 128;
    s.feed_forward_length = small ? 3072 : 6144;
    s.vocab_size = 151936;
    s.tied_output = true;
    s.rope_freq_base = 1000000.0f;
  } else if (name == "gemma3-270m" || name == "gemma3-1b") {
    const bool small = name == "gemma3-270m";
    s.architecture = "gemma3";
    s.embedding_length = small ? 640 : 1152;
    s.layer_count = small ? 18 : 26;
    s.head_count = small ? 4 : 4;
    s.head_count_kv = 1;
    s.head_dim = 256;
    s.feed_forward_length = small ? 2048 : 6912;
    s.vocab_size = 262144;
    s.tied_output = true;
    s.rope_freq_base = 1000000.0f;
    s.sliding_window = 512;
  } else if (name == "phi4-mini") {
    s.architecture = "phi3";
    s.embedding_length = 3072;
    s.layer_count = 32;
    s.head_count = 24;
    s.head_count_kv = 8;
    s.feed_forward_length = 8192;
    s.vocab_size = 200064;
    s.tied_output = true;
    s.rope_dim = 96;  // partial_rotary_factor 0.75 of 128
    s.longrope_original_context = 4096;
    s.longrope_attn_factor = 1.1902f;  // sqrt(1 + ln(32) / ln(4096))
  } else if (name == "smollm3-3b") {
    s.architecture = "smollm3";
    s.embedding_length = 2048;
    s.layer_count = 36;
    s.head_count = 16;
    s.head_count_kv = 4;
    s.feed_forward_length = 11008;
    s.vocab_size = 128256;
    s.tied_output = true;
    s.rope_freq_base = 5000000.0f;
  } else if (name == "lfm2-350m") {
    s.architecture = "lfm2";
    s.embedding_length = 1024;
    s.layer_count = 16;
    s.head_count = 16;
    s.head_count_kv = 8;
    s.feed_forward_length = 4608;
    s.vocab_size = 65536;
    s.tied_output = true;
    s.rope_freq_base = 1000000.0f;
    s.conv_layers.assign(16, true);
    for (int layer : {2, 5, 8, 10, 12, 14}) s.conv_layers[static_cast<size_t>(layer)] = false;
  } else if (name == "qwen3-tiny" || name == "gemma3-tiny" || name == "phi3-tiny" ||
             name == "smollm3-tiny" || name == "lfm2-tiny") {
    // A few MB, rows of 256 so every type (K-quants too) applies; enough
    // layers for smollm3's NoPE layer (the 4th) and two of gemma3's global
    // ones. phi3's original context is 256 because llama.cpp rounds the
    // context up to a multiple of 256 before it picks LongRoPE's factors:
    // contexts up to 256 use the short ones there and here, longer the long.
    s.architecture = std::string(name.substr(0, name.find('-')));
    s.embedding_length = 256;
    s.layer_count = 6;
    s.head_count = 4;
    s.head_count_kv = 2;
    s.feed_forward_length = 512;
    s.context_length = 256;
    s.seed = 19;
    if (s.architecture == "qwen3") {
      s.head_count = 8;
      s.head_dim = 64;  // q is wider than the residual stream, as in Qwen3
      s.rope_freq_base = 1000000.0f;
    } else if (s.architecture == "gemma3") {
      s.sliding_window = 5;
      s.sliding_window_pattern = 3;
      s.rope_freq_base = 1000000.0f;
      s.tied_output = true;
    } else if (s.architecture == "phi3") {
      s.rope_dim = 48;  // three quarters of the head, like Phi-4-mini
      s.longrope_original_context = 256;
      s.context_length = 1024;
      s.longrope_attn_factor = 1.1f;
    } else if (s.architecture == "lfm2") {
      s.rope_freq_base = 1000000.0f;
      s.tied_output = true;
      s.conv_layers = {true, true, false, true, true, false};
    } else {
      s.rope_freq_base = 5000000.0f;
      s.tied_output = true;
    }
  } else {
    return std::nullopt;
  }
  s.fresh_init = s.architecture != "llama" && s.architecture != "qwen2";
  return s;
}

Status write_synthetic_model(const SyntheticModelSpec& s, const std::string& path) {
  const auto traits = tensor_type_traits(static_cast<uint32_t>(s.matrix_type));
  if (!traits || !traits->computable) {
    return make_error(ErrorKind::kUnsupported,
                      "synthetic model: type " +
                          tensor_type_name(static_cast<uint32_t>(s.matrix_type)) +
                          " has no kernels");
  }
  const std::string a = s.architecture;
  if (a != "llama" && a != "qwen2" && a != "qwen3" && a != "smollm3" && a != "gemma3" &&
      a != "phi3" && a != "lfm2") {
    return make_error(
        ErrorKind::kInvalidArgument,
        "synthetic model: architecture '" + a +
            "' is not one it writes; use llama, qwen2, qwen3, smollm3, gemma3, phi3 or "
            "lfm2");
  }
  const int64_t head_dim = s.head_dim > 0 ? s.head_dim : s.embedding_length / s.head_count;
  const int64_t q_dim = s.head_count * head_dim;
  for (int64_t cols : {int64_t{s.embedding_length}, int64_t{s.feed_forward_length}, q_dim}) {
    if (cols % static_cast<int64_t>(traits->block_size) != 0) {
      return make_error(ErrorKind::kInvalidArgument,
                        "synthetic model: row length " + std::to_string(cols) +
                            " is not a multiple of the " + std::string(traits->name) +
                            " block size " + std::to_string(traits->block_size));
    }
  }
  GgufWriter w;
  const Vocabulary vocab = synthetic_vocabulary(s.vocab_size);
  const int64_t n_vocab = static_cast<int64_t>(vocab.tokens.size());
  w.set("general.architecture", GgufValue::string(a));
  // llama.cpp expects Phi-3's own special tokens, which the synthetic
  // vocabulary lacks, in any model whose name says "phi3".
  w.set("general.name", GgufValue::string("synthetic-" + (a == "phi3" ? "phi" : a)));
  w.set(a + ".context_length", GgufValue::u32(static_cast<uint32_t>(s.context_length)));
  w.set(a + ".embedding_length", GgufValue::u32(static_cast<uint32_t>(s.embedding_length)));
  w.set(a + ".block_count", GgufValue::u32(static_cast<uint32_t>(s.layer_count)));
  w.set(a + ".feed_forward_length", GgufValue::u32(static_cast<uint32_t>(s.feed_forward_length)));
  w.set(a + ".attention.head_count", GgufValue::u32(static_cast<uint32_t>(s.head_count)));
  const auto is_conv = [&](int32_t layer) {
    return static_cast<size_t>(layer) < s.conv_layers.size() &&
           s.conv_layers[static_cast<size_t>(layer)];
  };
  if (a == "lfm2") {
    // Per layer, as LFM2's files give it: 0 for short-convolution layers.
    std::vector<int32_t> kv_heads;
    for (int32_t i = 0; i < s.layer_count; ++i)
      kv_heads.push_back(is_conv(i) ? 0 : s.head_count_kv);
    w.set(a + ".attention.head_count_kv", GgufValue::i32_array(kv_heads));
    w.set(a + ".shortconv.l_cache", GgufValue::u32(static_cast<uint32_t>(s.shortconv_l_cache)));
  } else {
    w.set(a + ".attention.head_count_kv", GgufValue::u32(static_cast<uint32_t>(s.head_count_kv)));
  }
  w.set(a + ".attention.layer_norm_rms_epsilon", GgufValue::f32(1e-5f));
  w.set(a + ".rope.freq_base", GgufValue::f32(s.rope_freq_base));
  if (s.head_dim > 0) {
    w.set(a + ".attention.key_length", GgufValue::u32(static_cast<uint32_t>(head_dim)));
    w.set(a + ".attention.value_length", GgufValue::u32(static_cast<uint32_t>(head_dim)));
  }
  const int64_t rope_dim = s.rope_dim > 0 ? s.rope_dim : head_dim;
  if (s.rope_dim > 0) {
    w.set(a + ".rope.dimension_count", GgufValue::u32(static_cast<uint32_t>(rope_dim)));
  }
  if (s.sliding_window > 0) {
    w.set(a + ".attention.sliding_window", GgufValue::u32(static_cast<uint32_t>(s.sliding_window)));
    w.set(a + ".attention.sliding_window_pattern",
          GgufValue::u32(static_cast<uint32_t>(s.sliding_window_pattern)));
    w.set(a + ".rope.freq_base_swa", GgufValue::f32(s.rope_freq_base_local));
  }
  if (s.longrope_original_context > 0) {
    w.set(a + ".rope.scaling.original_context_length",
          GgufValue::u32(static_cast<uint32_t>(s.longrope_original_context)));
    w.set(a + ".rope.scaling.attn_factor", GgufValue::f32(s.longrope_attn_factor));
  }
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
  if (!s.chat_template.empty())
    w.set("tokenizer.chat_template", GgufValue::string(s.chat_template));

  std::mt19937_64 rng(s.seed);
  std::vector<float> values;
  std::vector<uint8_t> bytes;
  auto add = [&](const std::string& name, TensorType type, int64_t cols, int64_t rows, float scale,
                 float offset) -> Status {
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
  const int64_t ff = s.feed_forward_length;
  const int64_t kv_dim = s.head_count_kv * head_dim;
  const TensorType f32 = TensorType::kF32;
  const TensorType mt = s.matrix_type;
  // Standard deviations: fresh_init keeps each product's output at the scale
  // of its input (1/sqrt(fan-in)); the older draw uses 0.2 everywhere.
  auto sd = [&](int64_t fan_in) {
    return s.fresh_init ? 1.0f / std::sqrt(static_cast<float>(fan_in)) : 0.2f;
  };
  const float norm_sd = s.fresh_init ? 0.05f : 0.1f;
  const float bias_sd = s.fresh_init ? 0.02f : 0.1f;
  FSH_TRY_STATUS(
      add("token_embd.weight", s.embedding_type, d, n_vocab, s.fresh_init ? sd(d) : 1.0f, 0.0f));
  FSH_TRY_STATUS(
      add(a == "lfm2" ? "token_embd_norm.weight" : "output_norm.weight", f32, d, 0, norm_sd, 1.0f));
  if (!s.tied_output) FSH_TRY_STATUS(add("output.weight", mt, d, n_vocab, sd(d), 0.0f));
  if (s.longrope_original_context > 0) {
    // LongRoPE divisors: mild for the short set, stronger for the long one.
    std::vector<float> short_factors, long_factors;
    for (int64_t i = 0; i < rope_dim / 2; ++i) {
      short_factors.push_back(1.0f + 0.05f * static_cast<float>(i));
      long_factors.push_back(1.0f + 0.5f * static_cast<float>(i));
    }
    auto bytes_of = [](const std::vector<float>& v) {
      const auto* p = reinterpret_cast<const uint8_t*>(v.data());
      return std::vector<uint8_t>(p, p + v.size() * sizeof(float));
    };
    const std::vector<uint64_t> dims{static_cast<uint64_t>(rope_dim / 2)};
    FSH_TRY_STATUS(w.add_tensor("rope_factors_short.weight", f32, dims, bytes_of(short_factors)));
    FSH_TRY_STATUS(w.add_tensor("rope_factors_long.weight", f32, dims, bytes_of(long_factors)));
  }
  for (int32_t i = 0; i < s.layer_count; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    FSH_TRY_STATUS(add(p + "attn_norm.weight", f32, d, 0, norm_sd, 1.0f));
    if (is_conv(i)) {
      FSH_TRY_STATUS(add(p + "shortconv.in_proj.weight", mt, d, 3 * d, sd(d), 0.0f));
      FSH_TRY_STATUS(add(p + "shortconv.conv.weight", f32, s.shortconv_l_cache, d,
                         sd(s.shortconv_l_cache), 0.0f));
      FSH_TRY_STATUS(add(p + "shortconv.out_proj.weight", mt, d, d, sd(d), 0.0f));
    } else if (a == "phi3") {
      FSH_TRY_STATUS(add(p + "attn_qkv.weight", mt, d, q_dim + 2 * kv_dim, sd(d), 0.0f));
    } else {
      FSH_TRY_STATUS(add(p + "attn_q.weight", mt, d, q_dim, sd(d), 0.0f));
      FSH_TRY_STATUS(add(p + "attn_k.weight", mt, d, kv_dim, sd(d), 0.0f));
      FSH_TRY_STATUS(add(p + "attn_v.weight", mt, d, kv_dim, sd(d), 0.0f));
    }
    if (!is_conv(i)) FSH_TRY_STATUS(add(p + "attn_output.weight", mt, q_dim, d, sd(q_dim), 0.0f));
    if (a == "qwen2") {
      FSH_TRY_STATUS(add(p + "attn_q.bias", f32, q_dim, 0, bias_sd, 0.0f));
      FSH_TRY_STATUS(add(p + "attn_k.bias", f32, kv_dim, 0, bias_sd, 0.0f));
      FSH_TRY_STATUS(add(p + "attn_v.bias", f32, kv_dim, 0, bias_sd, 0.0f));
    }
    if (a == "qwen3" || a == "gemma3" || (a == "lfm2" && !is_conv(i))) {
      FSH_TRY_STATUS(add(p + "attn_q_norm.weight", f32, head_dim, 0, norm_sd, 1.0f));
      FSH_TRY_STATUS(add(p + "attn_k_norm.weight", f32, head_dim, 0, norm_sd, 1.0f));
    }
    if (a == "gemma3") {
      FSH_TRY_STATUS(add(p + "post_attention_norm.weight", f32, d, 0, norm_sd, 1.0f));
      FSH_TRY_STATUS(add(p + "post_ffw_norm.weight", f32, d, 0, norm_sd, 1.0f));
    }
    FSH_TRY_STATUS(add(p + "ffn_norm.weight", f32, d, 0, norm_sd, 1.0f));
    if (a == "phi3") {
      FSH_TRY_STATUS(add(p + "ffn_up.weight", mt, d, 2 * ff, sd(d), 0.0f));
    } else {
      FSH_TRY_STATUS(add(p + "ffn_gate.weight", mt, d, ff, sd(d), 0.0f));
      FSH_TRY_STATUS(add(p + "ffn_up.weight", mt, d, ff, sd(d), 0.0f));
    }
    FSH_TRY_STATUS(add(p + "ffn_down.weight", mt, ff, d, sd(ff), 0.0f));
  }
  return w.write(path);
}

}  // namespace foreshore::engine
