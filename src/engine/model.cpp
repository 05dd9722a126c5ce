#include "engine/model.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <numbers>

namespace foreshore::engine {

const char* supported_architectures() {
  return "llama (Llama 2/3, TinyLlama, SmolLM2, TinyStories), qwen2 (Qwen2/2.5), qwen3 "
         "(Qwen3), smollm3 (SmolLM3), gemma3 (Gemma 3), phi3 (Phi-3/3.5, Phi-4-mini), lfm2 "
         "(LFM2)";
}

namespace {

// Rows [first, first + count) of `w`, sharing its memory.
WeightMatrix rows_of(const WeightMatrix& w, int64_t first, int64_t count) {
  WeightMatrix view = w;
  const size_t offset = static_cast<size_t>(first) * w.row_bytes;
  view.data = static_cast<const uint8_t*>(w.data) + offset;
  view.rows = count;
  // The repacked rows keep their offsets where the view starts and ends on
  // the repacking's row-group boundaries (interleaved_bytes of the view).
  view.interleaved = nullptr;
  if (w.interleaved != nullptr && first % kInterleavedRowGroup == 0 &&
      interleaved_bytes(view) != 0) {
    view.interleaved = static_cast<const uint8_t*>(w.interleaved) + offset;
  }
  return view;
}

}  // namespace

struct ModelLoader {
  Model& model;
  const GgufFile& file;
  std::string arch;

  std::string where() const { return "model '" + file.origin() + "'"; }

  Error corrupt(const std::string& what) const {
    return make_error(ErrorKind::kCorrupt,
                      where() + ": " + what + "; re-convert the model or use another file");
  }

  Result<int64_t> require_int(const std::string& suffix) const {
    const std::string key = arch + "." + suffix;
    auto v = file.get_int(key);
    if (!v) return corrupt("missing or non-integer metadata key '" + key + "'");
    if (*v <= 0 || *v > (int64_t{1} << 30))
      return corrupt("metadata key '" + key + "' has implausible value " + std::to_string(*v));
    return *v;
  }

  // A copy of w's rows repacked for the running level's kernels, where it
  // has kernels for repacked rows of w's type. The kernels then read only
  // the copy, so the file's pages of w go back to the system; get_row (the
  // token embedding) brings back the few it reads.
  void repack(WeightMatrix& w) {
    const size_t bytes = interleaved_bytes(w);
    if (bytes == 0) return;
    // Not value-initialized: every byte is written.
    model.interleaved_.push_back(std::unique_ptr<uint8_t[]>(new uint8_t[bytes]));
    uint8_t* out = model.interleaved_.back().get();
    // A few MiB at a time, each slice's file pages released at once, so the
    // copy and the file never hold a large matrix (the embedding) twice.
    constexpr size_t kSliceBytes = size_t{8} << 20;
    const int64_t slice_rows =
        std::max<int64_t>(
            1, static_cast<int64_t>(kSliceBytes / (kInterleavedRowGroup * w.row_bytes))) *
        kInterleavedRowGroup;
    for (int64_t first = 0; first < w.rows; first += slice_rows) {
      const WeightMatrix slice = rows_of(w, first, std::min(slice_rows, w.rows - first));
      const size_t offset = static_cast<size_t>(first) * w.row_bytes;
      interleave_weights(slice, out + offset);
      file.release(static_cast<const uint8_t*>(slice.data), interleaved_bytes(slice));
    }
    w.interleaved = out;
  }

  Result<WeightMatrix> matrix(const std::string& name, int64_t cols, int64_t rows,
                              bool optional = false) {
    const GgufTensorInfo* t = file.find_tensor(name);
    if (t == nullptr) {
      if (optional) return WeightMatrix{};
      return corrupt("tensor '" + name + "' is missing");
    }
    if (t->dims.size() != 2 || static_cast<int64_t>(t->dims[0]) != cols ||
        static_cast<int64_t>(t->dims[1]) != rows) {
      std::string shape;
      for (auto d : t->dims) shape += (shape.empty() ? "" : "x") + std::to_string(d);
      return corrupt("tensor '" + name + "' has shape [" + shape + "], expected [" +
                     std::to_string(cols) + "x" + std::to_string(rows) + "]");
    }
    auto traits = tensor_type_traits(t->type);
    if (!traits || !traits->computable) {
      return make_error(ErrorKind::kUnsupported,
                        where() + ": tensor '" + name + "' has type " + tensor_type_name(t->type) +
                            ", which this engine cannot compute; use a file of this model "
                            "whose weights are " +
                            computable_type_names() +
                            " (llama.cpp's Q4_K_M, Q6_K and Q8_0 files are), or convert "
                            "it with llama.cpp's llama-quantize");
    }
    WeightMatrix w;
    w.type = static_cast<TensorType>(t->type);
    w.data = t->data;
    w.rows = rows;
    w.cols = cols;
    w.row_bytes = tensor_row_bytes(*traits, static_cast<uint64_t>(cols));
    model.weight_bytes_ += t->byte_size;
    // The token embedding is repacked only where it is the output too.
    if (name != "token_embd.weight") repack(w);
    return w;
  }

  // Vectors (norm weights, biases) are used as float; other types are widened once.
  Result<const float*> vector(const std::string& name, int64_t length, bool optional = false) {
    const GgufTensorInfo* t = file.find_tensor(name);
    if (t == nullptr) {
      if (optional) return static_cast<const float*>(nullptr);
      return corrupt("tensor '" + name + "' is missing");
    }
    if (t->element_count != static_cast<uint64_t>(length)) {
      return corrupt("tensor '" + name + "' has " + std::to_string(t->element_count) +
                     " elements, expected " + std::to_string(length));
    }
    model.weight_bytes_ += t->byte_size;
    if (t->type == static_cast<uint32_t>(TensorType::kF32) &&
        reinterpret_cast<uintptr_t>(t->data) % alignof(float) == 0) {
      return reinterpret_cast<const float*>(t->data);
    }
    std::vector<float> widened(static_cast<size_t>(length));
    if (!dequantize_row(static_cast<TensorType>(t->type), t->data, widened.data(), length)) {
      return make_error(ErrorKind::kUnsupported, where() + ": tensor '" + name + "' has type " +
                                                     tensor_type_name(t->type) +
                                                     ", unsupported for a vector");
    }
    model.widened_.push_back(std::move(widened));
    return static_cast<const float*>(model.widened_.back().data());
  }

  Status load() {
    auto a = file.get_string("general.architecture");
    if (!a) return corrupt("missing 'general.architecture'");
    arch = *a;
    if (arch != "llama" && arch != "qwen2" && arch != "qwen3" && arch != "smollm3" &&
        arch != "gemma3" && arch != "phi3" && arch != "lfm2") {
      return make_error(ErrorKind::kUnsupported,
                        where() + ": architecture '" + arch +
                            "' is not supported; supported: " + supported_architectures());
    }
    ModelConfig& c = model.config_;
    c.architecture = arch;
    // Converters that know no better write the architecture as general.name
    // (stories260K's says "llama"); the file's own name says more then.
    const std::string stem = std::filesystem::path(file.origin()).stem().string();
    const auto general_name = file.get_string("general.name");
    c.name = general_name && !general_name->empty() && *general_name != arch ? *general_name : stem;
    // The version names the weights as the file does, so renaming a file
    // does not make its weights look new.
    const std::string version_name = general_name.value_or(stem);
    // A short identity of the weights for version pinning: name, size and a
    // hash of the header (metadata and tensor table), cheap to compute; taken
    // before repacking releases the file's pages, which its samples would
    // bring back.
    uint64_t h = 1469598103934665603ull;
    for (const auto& t : file.tensors()) {
      for (char ch : t.name) h = (h ^ static_cast<uint8_t>(ch)) * 1099511628211ull;
      h = (h ^ t.type) * 1099511628211ull;
      h = (h ^ t.byte_size) * 1099511628211ull;
      // Sample the data so re-trained weights of the same shape get a new version.
      const size_t step = std::max<size_t>(1, t.byte_size / 16);
      for (size_t off = 0; off < t.byte_size; off += step) h = (h ^ t.data[off]) * 1099511628211ull;
    }
    char hex[17];
    std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
    model.version_ = version_name + "@" + std::string(hex, 12);
    FSH_ASSIGN_OR_RETURN(int64_t n_embd, require_int("embedding_length"));
    FSH_ASSIGN_OR_RETURN(int64_t n_layer, require_int("block_count"));
    FSH_ASSIGN_OR_RETURN(int64_t n_head, require_int("attention.head_count"));
    FSH_ASSIGN_OR_RETURN(int64_t n_ff, require_int("feed_forward_length"));
    FSH_ASSIGN_OR_RETURN(int64_t n_ctx, require_int("context_length"));
    int64_t n_head_kv = file.get_int(arch + ".attention.head_count_kv").value_or(n_head);
    // LFM2 gives head_count_kv per layer: 0 marks a short-convolution layer;
    // its attention layers all have the same count.
    std::vector<bool> conv_layer(static_cast<size_t>(n_layer), false);
    if (const GgufValue* per_layer = file.find(arch + ".attention.head_count_kv");
        per_layer != nullptr && per_layer->as_array() != nullptr) {
      const auto& items = per_layer->as_array()->items;
      if (items.size() != static_cast<size_t>(n_layer))
        return corrupt("attention.head_count_kv has " + std::to_string(items.size()) +
                       " entries for " + std::to_string(n_layer) + " layers");
      n_head_kv = 0;
      for (size_t i = 0; i < items.size(); ++i) {
        const int64_t kv = items[i].as_int().value_or(-1);
        conv_layer[i] = kv == 0;
        if (kv < 0 || (kv > 0 && n_head_kv > 0 && kv != n_head_kv))
          return corrupt("attention.head_count_kv of layer " + std::to_string(i) + " is " +
                         std::to_string(kv) + "; the attention layers must share one count");
        if (kv > 0) n_head_kv = kv;
      }
      if (arch != "lfm2" && n_head_kv > 0 &&
          std::find(conv_layer.begin(), conv_layer.end(), true) != conv_layer.end())
        return corrupt("attention.head_count_kv is 0 for some layers, which only lfm2 has");
    }
    if (n_head_kv <= 0 || n_head % n_head_kv != 0)
      return corrupt("attention.head_count_kv " + std::to_string(n_head_kv) +
                     " does not divide head_count " + std::to_string(n_head));
    int64_t head_dim = file.get_int(arch + ".attention.key_length").value_or(n_embd / n_head);
    if (head_dim <= 0 || head_dim % 2 != 0)
      return corrupt("head dimension " + std::to_string(head_dim) + " must be even");
    const int64_t rope_dim = file.get_int(arch + ".rope.dimension_count").value_or(head_dim);
    if (rope_dim <= 0 || rope_dim % 2 != 0 || rope_dim > head_dim)
      return corrupt("rope.dimension_count " + std::to_string(rope_dim) +
                     " must be even and at most the head dimension " + std::to_string(head_dim));
    c.embedding_length = static_cast<int32_t>(n_embd);
    c.layer_count = static_cast<int32_t>(n_layer);
    c.head_count = static_cast<int32_t>(n_head);
    c.head_count_kv = static_cast<int32_t>(n_head_kv);
    c.head_dim = static_cast<int32_t>(head_dim);
    c.feed_forward_length = static_cast<int32_t>(n_ff);
    c.context_length = static_cast<int32_t>(n_ctx);
    const double epsilon =
        file.get_float(arch + ".attention.layer_norm_rms_epsilon").value_or(1e-5);
    // NaN or a non-positive epsilon makes every norm NaN (or infinite) and the
    // model silently generates nothing.
    if (!(epsilon > 0.0 && epsilon < 1.0))
      return corrupt(arch + ".attention.layer_norm_rms_epsilon is " + std::to_string(epsilon) +
                     "; it must be a small positive number (1e-5 or 1e-6 in real models)");
    c.rms_norm_epsilon = static_cast<float>(epsilon);
    c.rope_freq_base = static_cast<float>(file.get_float(arch + ".rope.freq_base").value_or(1e4));
    c.rope_dim = static_cast<int32_t>(rope_dim);
    // Rotation styles as llama.cpp assigns them per architecture.
    c.rope_neox =
        arch == "qwen2" || arch == "qwen3" || arch == "gemma3" || arch == "phi3" || arch == "lfm2";
    c.attention_bias = arch == "qwen2";
    c.qk_norm = arch == "qwen3" || arch == "gemma3" || arch == "lfm2";
    if (arch == "lfm2") {
      FSH_ASSIGN_OR_RETURN(int64_t l_cache, require_int("shortconv.l_cache"));
      if (l_cache < 1 || l_cache > 64)
        return corrupt("shortconv.l_cache " + std::to_string(l_cache) +
                       " must be between 1 and 64 (LFM2's convolutions have 3 taps)");
      c.shortconv_l_cache = static_cast<int32_t>(l_cache);
    }
    c.attention_scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
    if (arch == "gemma3") {
      // Gemma's converters store RMSNorm weights as (1 + w), so the norms are
      // the usual ones here. The input embedding is scaled by sqrt(d).
      c.post_norms = true;
      c.gelu_ffn = true;
      c.embedding_scale = std::sqrt(static_cast<float>(n_embd));
      // query_pre_attn_scalar: the head dimension, except Gemma 3 27B (62
      // layers), which uses embedding_length / head_count, as llama.cpp does.
      if (n_layer == 62) c.attention_scale = 1.0f / std::sqrt(static_cast<float>(n_embd / n_head));
      c.sliding_window =
          static_cast<int32_t>(file.get_int(arch + ".attention.sliding_window").value_or(0));
      c.rope_freq_base_local =
          static_cast<float>(file.get_float(arch + ".rope.freq_base_swa").value_or(1e4));
      c.final_logit_softcap =
          static_cast<float>(file.get_float(arch + ".final_logit_softcapping").value_or(0.0));
    }
    if (file.get_string(arch + ".rope.scaling.type").value_or("") == "linear") {
      const double factor = file.get_float(arch + ".rope.scaling.factor").value_or(1.0);
      if (factor > 0.0) c.rope_linear_scale = static_cast<float>(1.0 / factor);
    }
    c.rope_attn_factor =
        static_cast<float>(file.get_float(arch + ".rope.scaling.attn_factor").value_or(1.0));
    // LongRoPE picks its short or long factors by the context actually used
    // against the trained one.
    c.rope_original_context = static_cast<int32_t>(
        file.get_int(arch + ".rope.scaling.original_context_length").value_or(n_ctx));
    if (file.get_string(arch + ".rope.scaling.type").value_or("") == "llama3") {
      c.rope_scaling_factor =
          static_cast<float>(file.get_float(arch + ".rope.scaling.factor").value_or(8.0));
      c.rope_low_freq_factor =
          static_cast<float>(file.get_float(arch + ".rope.scaling.low_freq_factor").value_or(1.0));
      c.rope_high_freq_factor =
          static_cast<float>(file.get_float(arch + ".rope.scaling.high_freq_factor").value_or(4.0));
      c.rope_original_context = static_cast<int32_t>(
          file.get_int(arch + ".rope.scaling.original_context_length").value_or(8192));
    }

    auto vocab = Vocabulary::from_gguf(file);
    if (!vocab.ok()) return vocab.error();
    const int64_t n_vocab = static_cast<int64_t>(vocab->tokens.size());
    auto tokenizer = Tokenizer::create(std::move(vocab).value());
    if (!tokenizer.ok()) return tokenizer.error();
    model.tokenizer_ = std::move(tokenizer).value();
    c.vocab_size = static_cast<int32_t>(n_vocab);

    const int64_t q_dim = n_head * head_dim;
    const int64_t kv_dim = n_head_kv * head_dim;
    FSH_ASSIGN_OR_RETURN(model.token_embd_, matrix("token_embd.weight", n_embd, n_vocab));
    // LFM2's converter names the final norm token_embd_norm.
    FSH_ASSIGN_OR_RETURN(
        model.output_norm_,
        vector(arch == "lfm2" ? "token_embd_norm.weight" : "output_norm.weight", n_embd));
    FSH_ASSIGN_OR_RETURN(model.output_, matrix("output.weight", n_embd, n_vocab, true));
    if (model.output_.data == nullptr) {
      c.tied_output = true;
      repack(model.token_embd_);
      model.output_ = model.token_embd_;
    }
    model.widened_.reserve(static_cast<size_t>(n_layer) * 9 + 4);
    // Which layers attend through a sliding window: a per-layer array of
    // booleans, or one period P (every P-th layer global), as llama.cpp reads it.
    std::vector<bool> sliding(static_cast<size_t>(n_layer), false);
    if (c.sliding_window > 0) {
      const GgufValue* pattern = file.find(arch + ".attention.sliding_window_pattern");
      const GgufValue::Array* flags = pattern != nullptr ? pattern->as_array() : nullptr;
      if (flags != nullptr) {
        if (flags->items.size() != static_cast<size_t>(n_layer))
          return corrupt("attention.sliding_window_pattern has " +
                         std::to_string(flags->items.size()) + " entries for " +
                         std::to_string(n_layer) + " layers");
        for (size_t i = 0; i < flags->items.size(); ++i) {
          const auto* b = std::get_if<bool>(&flags->items[i].data);
          sliding[i] = b != nullptr ? *b : flags->items[i].as_int().value_or(0) != 0;
        }
      } else {
        const int64_t period = pattern != nullptr ? pattern->as_int().value_or(6) : 6;
        for (int64_t i = 0; i < n_layer; ++i)
          sliding[static_cast<size_t>(i)] = period == 0 || i % period < period - 1;
      }
    }
    for (int64_t i = 0; i < n_layer; ++i) {
      const std::string p = "blk." + std::to_string(i) + ".";
      LayerWeights l;
      FSH_ASSIGN_OR_RETURN(l.attn_norm, vector(p + "attn_norm.weight", n_embd));
      if (conv_layer[static_cast<size_t>(i)]) {
        // LFM2's short convolution in place of attention: in_proj makes B, C
        // and x (rows in that order), a depthwise causal convolution of B*x
        // over the last l_cache positions, gated by C, then out_proj.
        l.conv_index = c.conv_layer_count++;
        FSH_ASSIGN_OR_RETURN(l.conv_in, matrix(p + "shortconv.in_proj.weight", n_embd, 3 * n_embd));
        FSH_ASSIGN_OR_RETURN(l.conv_kernel,
                             vector(p + "shortconv.conv.weight", c.shortconv_l_cache * n_embd));
        FSH_ASSIGN_OR_RETURN(l.conv_out, matrix(p + "shortconv.out_proj.weight", n_embd, n_embd));
      } else if (arch == "phi3" && file.find_tensor(p + "attn_qkv.weight") != nullptr) {
        // Phi-3 fuses Q, K and V into one matrix; its rows are Q's, then K's,
        // then V's, so each is a view of consecutive rows.
        FSH_ASSIGN_OR_RETURN(WeightMatrix qkv,
                             matrix(p + "attn_qkv.weight", n_embd, q_dim + 2 * kv_dim));
        l.wq = rows_of(qkv, 0, q_dim);
        l.wk = rows_of(qkv, q_dim, kv_dim);
        l.wv = rows_of(qkv, q_dim + kv_dim, kv_dim);
      } else {
        FSH_ASSIGN_OR_RETURN(l.wq, matrix(p + "attn_q.weight", n_embd, q_dim));
        FSH_ASSIGN_OR_RETURN(l.wk, matrix(p + "attn_k.weight", n_embd, kv_dim));
        FSH_ASSIGN_OR_RETURN(l.wv, matrix(p + "attn_v.weight", n_embd, kv_dim));
      }
      if (l.conv_index < 0) {
        FSH_ASSIGN_OR_RETURN(l.wo, matrix(p + "attn_output.weight", q_dim, n_embd));
        FSH_ASSIGN_OR_RETURN(l.bq, vector(p + "attn_q.bias", q_dim, true));
        FSH_ASSIGN_OR_RETURN(l.bk, vector(p + "attn_k.bias", kv_dim, true));
        FSH_ASSIGN_OR_RETURN(l.bv, vector(p + "attn_v.bias", kv_dim, true));
      }
      if (c.qk_norm && l.conv_index < 0) {
        FSH_ASSIGN_OR_RETURN(l.q_norm, vector(p + "attn_q_norm.weight", head_dim));
        FSH_ASSIGN_OR_RETURN(l.k_norm, vector(p + "attn_k_norm.weight", head_dim));
      }
      if (c.post_norms) {
        FSH_ASSIGN_OR_RETURN(l.attn_post_norm, vector(p + "post_attention_norm.weight", n_embd));
        FSH_ASSIGN_OR_RETURN(l.ffn_post_norm, vector(p + "post_ffw_norm.weight", n_embd));
      }
      FSH_ASSIGN_OR_RETURN(l.ffn_norm, vector(p + "ffn_norm.weight", n_embd));
      if (arch == "phi3") {
        // Phi-3's ffn_up holds the gate's rows, then the up projection's.
        FSH_ASSIGN_OR_RETURN(WeightMatrix gate_up, matrix(p + "ffn_up.weight", n_embd, 2 * n_ff));
        l.w_gate = rows_of(gate_up, 0, n_ff);
        l.w_up = rows_of(gate_up, n_ff, n_ff);
      } else {
        FSH_ASSIGN_OR_RETURN(l.w_gate, matrix(p + "ffn_gate.weight", n_embd, n_ff));
        FSH_ASSIGN_OR_RETURN(l.w_up, matrix(p + "ffn_up.weight", n_embd, n_ff));
      }
      FSH_ASSIGN_OR_RETURN(l.w_down, matrix(p + "ffn_down.weight", n_ff, n_embd));
      // SmolLM3 leaves out RoPE on every fourth layer; its GGUF files carry no
      // key for it (llama.cpp fixes the interval at 4 too).
      l.rope = arch != "smollm3" || (i + 1) % 4 != 0;
      l.sliding = sliding[static_cast<size_t>(i)];
      model.layers_.push_back(l);
    }
    // Per-dimension RoPE frequency divisors: Llama 3's rope_freqs, or
    // LongRoPE's short and long sets (phi3).
    const int64_t rope_half = rope_dim / 2;
    FSH_ASSIGN_OR_RETURN(model.rope_factors_, vector("rope_freqs.weight", rope_half, true));
    FSH_ASSIGN_OR_RETURN(model.rope_factors_short_,
                         vector("rope_factors_short.weight", rope_half, true));
    FSH_ASSIGN_OR_RETURN(model.rope_factors_long_,
                         vector("rope_factors_long.weight", rope_half, true));
    return Status::Ok();
  }
};

Result<std::shared_ptr<const Model>> Model::with_matrix(std::shared_ptr<const Model> base,
                                                        std::string_view tensor_name,
                                                        TensorType type,
                                                        std::vector<uint8_t> data) {
  std::shared_ptr<Model> model(new Model());
  model->file_ = base->file_;
  model->tokenizer_ = base->tokenizer_;
  model->config_ = base->config_;
  model->weight_bytes_ = base->weight_bytes_;
  model->token_embd_ = base->token_embd_;
  model->output_ = base->output_;
  model->output_norm_ = base->output_norm_;
  model->layers_ = base->layers_;
  model->rope_factors_ = base->rope_factors_;
  model->rope_factors_short_ = base->rope_factors_short_;
  model->rope_factors_long_ = base->rope_factors_long_;

  std::vector<WeightMatrix*> targets;
  if (tensor_name == "token_embd.weight") {
    targets.push_back(&model->token_embd_);
    if (model->config_.tied_output) targets.push_back(&model->output_);
  } else if (tensor_name == "output.weight" && !model->config_.tied_output) {
    targets.push_back(&model->output_);
  } else if (tensor_name.starts_with("blk.")) {
    size_t layer = 0;
    const char* begin = tensor_name.data() + 4;
    const char* end = tensor_name.data() + tensor_name.size();
    const auto [rest, ec] = std::from_chars(begin, end, layer);
    if (ec == std::errc() && rest != begin && rest != end && *rest == '.' &&
        layer < model->layers_.size()) {
      LayerWeights& l = model->layers_[layer];
      const std::string_view suffix(rest + 1, static_cast<size_t>(end - rest - 1));
      const std::pair<std::string_view, WeightMatrix*> matrices[] = {
          {"attn_q.weight", &l.wq},      {"attn_k.weight", &l.wk},       {"attn_v.weight", &l.wv},
          {"attn_output.weight", &l.wo}, {"ffn_gate.weight", &l.w_gate}, {"ffn_up.weight", &l.w_up},
          {"ffn_down.weight", &l.w_down}};
      for (const auto& [name, matrix] : matrices) {
        if (suffix == name) targets.push_back(matrix);
      }
    }
  }
  if (targets.empty()) {
    return make_error(ErrorKind::kInvalidArgument, "model '" + base->config_.name +
                                                       "' has no weight matrix '" +
                                                       std::string(tensor_name) + "' to replace");
  }
  const WeightMatrix& old = *targets.front();
  const auto traits = tensor_type_traits(static_cast<uint32_t>(type));
  if (!traits || !traits->computable || old.cols % traits->block_size != 0) {
    return make_error(ErrorKind::kInvalidArgument,
                      "cannot run '" + std::string(tensor_name) + "' as " +
                          tensor_type_name(static_cast<uint32_t>(type)) + ": " +
                          (traits && traits->computable ? "its rows do not split into its blocks"
                                                        : "the engine has no kernels for it"));
  }
  const size_t row_bytes = tensor_row_bytes(*traits, static_cast<uint64_t>(old.cols));
  if (data.size() != row_bytes * static_cast<size_t>(old.rows)) {
    return make_error(
        ErrorKind::kInvalidArgument,
        "replacement for '" + std::string(tensor_name) + "' has " + std::to_string(data.size()) +
            " bytes; " + std::to_string(row_bytes * static_cast<size_t>(old.rows)) +
            " expected for its shape as " + tensor_type_name(static_cast<uint32_t>(type)));
  }
  model->weight_bytes_ =
      model->weight_bytes_ - old.row_bytes * static_cast<size_t>(old.rows) + data.size();
  model->replacement_ = std::move(data);
  for (WeightMatrix* target : targets) {
    target->type = type;
    target->data = model->replacement_.data();
    target->row_bytes = row_bytes;
    target->interleaved = nullptr;
  }
  // Repacked as a load of the converted file would repack it, so the two
  // give the same bits.
  if (const size_t bytes = interleaved_bytes(*targets.front()); bytes != 0) {
    model->interleaved_.push_back(std::unique_ptr<uint8_t[]>(new uint8_t[bytes]));
    interleave_weights(*targets.front(), model->interleaved_.back().get());
    for (WeightMatrix* target : targets) target->interleaved = model->interleaved_.back().get();
  }
  model->version_ = base->version_ + "+" + std::string(tensor_name) + ":" +
                    tensor_type_name(static_cast<uint32_t>(type));
  model->base_ = std::move(base);
  return std::shared_ptr<const Model>(std::move(model));
}

Result<std::shared_ptr<const Model>> Model::load(const std::string& path) {
  auto file = GgufFile::open(path);
  if (!file.ok()) return file.error();
  return from_gguf(std::move(file).value());
}

Result<std::shared_ptr<const Model>> Model::from_gguf(std::shared_ptr<GgufFile> file) {
  std::shared_ptr<Model> model(new Model());
  model->file_ = file;
  ModelLoader loader{*model, *file, {}};
  if (auto s = loader.load(); !s.ok()) return s.error();
  return std::shared_ptr<const Model>(std::move(model));
}

uint64_t Model::kv_bytes_per_token(TensorType kv_type) const {
  // The cache keeps a slot for every layer (short-convolution layers too,
  // unused there), plus lfm2's convolution inputs.
  const uint64_t values = static_cast<uint64_t>(config_.head_count_kv) * config_.head_dim;
  const uint64_t row_bytes = kv_type == TensorType::kF32    ? values * sizeof(float)
                             : kv_type == TensorType::kQ8_0 ? values / 32 * 34
                                                            : values * sizeof(uint16_t);
  return 2ull * static_cast<uint64_t>(config_.layer_count) * row_bytes +
         static_cast<uint64_t>(config_.conv_layer_count) * config_.embedding_length * sizeof(float);
}

namespace {

// Sizes `s` for passes of up to `tokens` tokens over `m`.
void size_scratch(ForwardScratch& s, const Model& m, int32_t tokens) {
  const ModelConfig& c = m.config();
  const size_t b = static_cast<size_t>(tokens);
  const size_t kv_dim = static_cast<size_t>(c.head_count_kv) * c.head_dim;
  const size_t q_dim = static_cast<size_t>(c.head_count) * c.head_dim;
  s.max_tokens = tokens;
  if (c.conv_layer_count > 0) {
    s.conv_bcx.resize(b * 3 * c.embedding_length);
    s.conv_y.resize(b * c.embedding_length);
  }
  s.x.resize(b * c.embedding_length);
  s.xn.resize(b * std::max<size_t>(c.embedding_length, q_dim));
  s.q.resize(b * q_dim);
  s.k.resize(b * kv_dim);
  s.v.resize(b * kv_dim);
  s.attn_out.resize(b * q_dim);
  s.gate.resize(b * c.feed_forward_length);
  s.up.resize(b * c.feed_forward_length);
  s.token_entry.resize(b);
  s.token_position.resize(b);
  size_t quant = 0;
  auto need = [&](const WeightMatrix& w) {
    quant = std::max(quant, activation_scratch_bytes(w.type, w.cols, tokens));
  };
  need(m.output());
  for (const auto& l : m.layers()) {
    for (const auto* w :
         {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down, &l.conv_in, &l.conv_out}) {
      if (w->data != nullptr) need(*w);
    }
  }
  s.quant.resize(quant);
}

}  // namespace

Result<std::unique_ptr<InferenceContext>> InferenceContext::create(
    std::shared_ptr<const Model> model, ContextOptions options) {
  const ModelConfig& c = model->config();
  if (!options.kv_pool) {
    if (auto row = KvPool::row_bytes_for(*model, options.kv_type); !row.ok()) return row.error();
  }
  const uint64_t per_token = model->kv_bytes_per_token(options.kv_type);
  const int64_t fits = static_cast<int64_t>(options.kv_memory_budget / per_token);
  if (!options.kv_pool && fits < 16) {
    return make_error(ErrorKind::kResourceExhausted,
                      "KV memory budget of " + std::to_string(options.kv_memory_budget) +
                          " bytes holds only " + std::to_string(fits) + " tokens of model '" +
                          c.name + "' (" + std::to_string(per_token) +
                          " bytes per token); raise the budget");
  }
  // A context asked for is honoured, beyond the trained one too (as
  // llama.cpp does; callers warn), or refused: never silently changed.
  if (options.kv_pool) {
    if (options.kv_pool->model() != model.get()) {
      return make_error(ErrorKind::kInvalidArgument,
                        "the KV pool given for model '" + c.name +
                            "' was made for another model; make one pool per model");
    }
    if (options.context_length > options.kv_pool->capacity_tokens()) {
      return make_error(ErrorKind::kResourceExhausted,
                        "a context of " + std::to_string(options.context_length) +
                            " tokens of model '" + c.name +
                            "' is more than its whole KV pool holds (" +
                            std::to_string(options.kv_pool->capacity_tokens()) +
                            " tokens); raise the pool's budget or ask for a shorter context");
    }
  } else if (options.context_length > 0 && options.context_length > fits) {
    return make_error(
        ErrorKind::kResourceExhausted,
        "a context of " + std::to_string(options.context_length) + " tokens of model '" + c.name +
            "' needs " + std::to_string(per_token * static_cast<uint64_t>(options.context_length)) +
            " bytes of KV cache, but the budget is " + std::to_string(options.kv_memory_budget) +
            " bytes (" + std::to_string(fits) +
            " tokens); raise the budget or ask for a shorter context");
  }
  const int64_t n_ctx =
      options.context_length > 0
          ? options.context_length
          : std::min<int64_t>(c.context_length,
                              options.kv_pool ? options.kv_pool->capacity_tokens() : fits);

  // A context far beyond the machine's memory (run -c 2147483647) fails
  // here with a clear error instead of aborting on std::bad_alloc.
  try {
    return create_sized(std::move(model), options, n_ctx);
  } catch (const std::bad_alloc&) {
    return make_error(ErrorKind::kResourceExhausted,
                      "cannot allocate memory for a context of " + std::to_string(n_ctx) +
                          " tokens of model '" + c.name + "' (" + std::to_string(per_token) +
                          " bytes of KV cache per token, besides its token and score buffers); "
                          "ask for a shorter context (-c, context_length) or a smaller KV cache "
                          "type (q8_0)");
  }
}

Result<std::unique_ptr<InferenceContext>> InferenceContext::create_sized(
    std::shared_ptr<const Model> model, ContextOptions& options, int64_t n_ctx) {
  const ModelConfig& c = model->config();
  std::unique_ptr<InferenceContext> ctx(new InferenceContext());
  ctx->model_ = std::move(model);
  ctx->context_length_ = static_cast<int32_t>(n_ctx);
  if (options.kv_pool) {
    ctx->kv_pool_ = std::move(options.kv_pool);
  } else {
    const uint64_t blocks =
        (static_cast<uint64_t>(n_ctx) + KvPool::kBlockTokens - 1) / KvPool::kBlockTokens;
    const uint64_t block_bytes = 2ull * c.layer_count * KvPool::kBlockTokens *
                                 KvPool::row_bytes_for(*ctx->model_, options.kv_type).value();
    FSH_ASSIGN_OR_RETURN(ctx->kv_pool_,
                         KvPool::create(*ctx->model_, options.kv_type, blocks * block_bytes));
  }
  ctx->kv_type_ = ctx->kv_pool_->kv_type();
  ctx->kv_row_bytes_ = ctx->kv_pool_->row_bytes();
  if (c.conv_layer_count > 0) {
    ctx->conv_state_.assign(static_cast<size_t>(c.conv_layer_count) *
                                static_cast<size_t>(c.shortconv_l_cache - 1) *
                                static_cast<size_t>(c.embedding_length),
                            0.0f);
  }
  ctx->logits_.resize(static_cast<size_t>(c.vocab_size));
  ctx->cached_tokens_.reserve(static_cast<size_t>(n_ctx));
  size_scratch(ctx->scratch_, *ctx->model_, std::clamp(options.max_batch, 1, 512));

  const int32_t half = c.rope_dim / 2;
  ctx->rope_inv_freq_.resize(static_cast<size_t>(half));
  ctx->rope_inv_freq_local_.resize(static_cast<size_t>(half));
  // LongRoPE's long factors serve contexts beyond the trained original one,
  // as llama.cpp chooses them.
  const Model& m = *ctx->model_;
  const float* factors = m.rope_factors();
  if (factors == nullptr) {
    factors = n_ctx > c.rope_original_context && m.rope_factors_long() != nullptr
                  ? m.rope_factors_long()
                  : m.rope_factors_short();
  }
  for (int32_t i = 0; i < half; ++i) {
    const float exponent = -2.0f * static_cast<float>(i) / static_cast<float>(c.rope_dim);
    float f = std::pow(c.rope_freq_base, exponent);
    if (factors != nullptr) {
      f /= factors[i];
    } else if (c.rope_scaling_factor > 0.0f) {
      // Llama 3 scaling: long wavelengths are slowed by the factor, short ones
      // kept, and the band between interpolated smoothly.
      const float wavelength = 2.0f * std::numbers::pi_v<float> / f;
      const float low_wl = c.rope_original_context / c.rope_low_freq_factor;
      const float high_wl = c.rope_original_context / c.rope_high_freq_factor;
      if (wavelength > low_wl) {
        f /= c.rope_scaling_factor;
      } else if (wavelength >= high_wl) {
        const float smooth = (c.rope_original_context / wavelength - c.rope_low_freq_factor) /
                             (c.rope_high_freq_factor - c.rope_low_freq_factor);
        f = (1.0f - smooth) * f / c.rope_scaling_factor + smooth * f;
      }
    }
    ctx->rope_inv_freq_[static_cast<size_t>(i)] = f * c.rope_linear_scale;
    // Sliding-window layers (Gemma 3's local ones) use their own base and no
    // scaling, as llama.cpp's defaults for them are.
    ctx->rope_inv_freq_local_[static_cast<size_t>(i)] = std::pow(c.rope_freq_base_local, exponent);
  }
  return ctx;
}

InferenceContext::~InferenceContext() {
  if (kv_pool_) kv_pool_->release(kv_blocks_);
}

void InferenceContext::truncate(int32_t position) {
  position = std::clamp(position, 0, position_);
  // The convolution state holds the latest positions only (see conv_state_).
  if (model_->config().conv_layer_count > 0 && position < position_) position = 0;
  position_ = position;
  cached_tokens_.resize(static_cast<size_t>(position_));
}

Status InferenceContext::reserve(int32_t positions) {
  const size_t needed =
      (static_cast<size_t>(std::clamp(positions, 0, context_length_)) + KvPool::kBlockTokens - 1) /
      KvPool::kBlockTokens;
  if (needed <= kv_blocks_.size()) return Status::Ok();
  bool acquired = false;
  try {
    acquired = kv_pool_->acquire(needed - kv_blocks_.size(), kv_blocks_);
  } catch (const std::bad_alloc&) {
    return make_error(ErrorKind::kResourceExhausted,
                      "cannot allocate memory for the KV cache of " + std::to_string(positions) +
                          " positions of model '" + model_->config().name +
                          "' (the system refused it, though the KV budget allows it); ask for a "
                          "shorter context (-c, context_length), a smaller KV budget or a "
                          "smaller KV cache type (q8_0)");
  }
  if (!acquired) {
    return make_error(ErrorKind::kResourceExhausted,
                      "the KV cache pool of model '" + model_->config().name + "' has " +
                          std::to_string(kv_pool_->blocks_free()) + " free blocks of " +
                          std::to_string(KvPool::kBlockTokens) + " tokens, and " +
                          std::to_string(positions) + " positions need " +
                          std::to_string(needed - kv_blocks_.size()) +
                          " more; wait for running sequences to end, or raise kv_memory_mb");
  }
  return Status::Ok();
}

void InferenceContext::release_unused_kv() {
  const size_t keep =
      (static_cast<size_t>(position_) + KvPool::kBlockTokens - 1) / KvPool::kBlockTokens;
  if (keep >= kv_blocks_.size()) return;
  kv_pool_->release(std::span(kv_blocks_).subspan(keep));
  kv_blocks_.resize(keep);
}

Status InferenceContext::check_input(std::span<const TokenId> tokens) const {
  const ModelConfig& c = model_->config();
  if (tokens.empty()) {
    return make_error(ErrorKind::kInvalidArgument, "evaluate() needs at least one token");
  }
  if (static_cast<int64_t>(position_) + static_cast<int64_t>(tokens.size()) > context_length_) {
    return make_error(ErrorKind::kResourceExhausted,
                      "context overflow: " + std::to_string(position_) + " tokens cached + " +
                          std::to_string(tokens.size()) + " new exceed the context of " +
                          std::to_string(context_length_) + " tokens of model '" + c.name +
                          "'; shorten the prompt or lower max_tokens");
  }
  for (TokenId t : tokens) {
    if (t < 0 || t >= c.vocab_size) {
      return make_error(ErrorKind::kInvalidArgument, "token id " + std::to_string(t) +
                                                         " is outside the vocabulary of " +
                                                         std::to_string(c.vocab_size) + " tokens");
    }
  }
  return Status::Ok();
}

namespace {

Error out_of_memory_in_step(const Model& model, int32_t context_length) {
  return make_error(ErrorKind::kResourceExhausted,
                    "cannot allocate memory for the attention scores of a context of " +
                        std::to_string(context_length) + " tokens of model '" +
                        model.config().name +
                        "' (one row per thread); ask for a shorter context (-c, context_length)");
}

// Rotates the first rope_dim dimensions of each head; the rest pass through.
// `mscale` multiplies the rotated ones (LongRoPE's attention factor).
void apply_rope(float* v, int32_t heads, int32_t head_dim, int32_t rope_dim, int32_t position,
                bool neox, const float* inv_freq, float mscale) {
  const int32_t half = rope_dim / 2;
  for (int32_t h = 0; h < heads; ++h) {
    float* x = v + static_cast<size_t>(h) * head_dim;
    for (int32_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(position) * inv_freq[i];
      const float c = std::cos(angle) * mscale;
      const float s = std::sin(angle) * mscale;
      // NeoX style rotates element i with i+half; the original style rotates pairs.
      float* a = neox ? x + i : x + 2 * i;
      float* b = neox ? x + i + half : x + 2 * i + 1;
      const float x0 = *a;
      const float x1 = *b;
      *a = x0 * c - x1 * s;
      *b = x0 * s + x1 * c;
    }
  }
}

}  // namespace

// The forward pass over a batch whose tokens belong to one or more
// sequences: every matrix product covers all tokens at once; the KV cache,
// positions, RoPE and attention are each token's own sequence's.
struct ForwardPass {
  const Model& m;
  std::span<const BatchEntry> entries;
  ForwardScratch& s;
  ThreadPool& pool;
  int32_t n = 0;  // tokens in all
  ForwardObserver* observer = nullptr;

  void run() {
    const ModelConfig& c = m.config();
    const int64_t d = c.embedding_length;
    for (size_t e = 0; e < entries.size(); ++e) {
      const InferenceContext& ctx = *entries[e].context;
      for (size_t i = 0; i < entries[e].tokens.size(); ++i) {
        s.token_entry[static_cast<size_t>(n)] = static_cast<int32_t>(e);
        s.token_position[static_cast<size_t>(n)] = ctx.position_ + static_cast<int32_t>(i);
        get_row(m.token_embedding(), entries[e].tokens[i], s.x.data() + n * d);
        ++n;
      }
    }
    if (entries.size() == 1) observer = entries[0].context->observer_;
    if (c.embedding_scale != 1.0f)
      scale_f32(s.x.data(), c.embedding_scale, static_cast<int64_t>(n) * d);
    int32_t longest = 0;
    for (const auto& e : entries) longest = std::max(longest, e.context->context_length_);
    if (s.scores.size() < static_cast<size_t>(pool.size()) * longest) {
      s.scores.resize(static_cast<size_t>(pool.size()) * longest);
    }
    for (int32_t li = 0; li < c.layer_count; ++li) layer(li);
    output();
    for (const auto& e : entries) {
      e.context->position_ += static_cast<int32_t>(e.tokens.size());
      e.context->cached_tokens_.insert(e.context->cached_tokens_.end(), e.tokens.begin(),
                                       e.tokens.end());
    }
  }

  // LFM2's short-convolution block on the normed batch in xn, result in xn:
  // B, C, x = in_proj(xn); out_proj of C * (depthwise causal convolution of
  // B*x over the last l_cache positions, zeros before the first). The state
  // keeps B*x of the l_cache - 1 positions before the current one, in a ring
  // indexed by position; a sequence's tokens come in position order, so each
  // reads its predecessors' rows (the oldest is read before it is replaced).
  void short_convolution(const LayerWeights& l) {
    const ModelConfig& c = m.config();
    const int64_t d = c.embedding_length;
    const int32_t taps = c.shortconv_l_cache;
    const int32_t rows = taps - 1;
    matmul(l.conv_in, s.xn.data(), n, s.conv_bcx.data(), s.quant, pool);
    for (int32_t t = 0; t < n; ++t) {
      InferenceContext& ctx = *entries[static_cast<size_t>(s.token_entry[t])].context;
      float* state = ctx.conv_state_.data() + static_cast<size_t>(l.conv_index) * rows * d;
      const int32_t position = s.token_position[t];
      const float* b = s.conv_bcx.data() + t * 3 * d;
      const float* gate = b + d;  // C
      const float* x = b + 2 * d;
      float* y = s.conv_y.data() + t * d;
      for (int64_t i = 0; i < d; ++i) {
        const float bx = b[i] * x[i];
        float sum = 0.0f;
        for (int32_t k = 0; k < rows; ++k) {
          const int32_t p = position - rows + k;
          if (p >= 0) {
            sum += l.conv_kernel[i * taps + k] * state[static_cast<size_t>(p % rows) * d + i];
          }
        }
        sum += l.conv_kernel[i * taps + rows] * bx;
        y[i] = gate[i] * sum;
        if (rows > 0) state[static_cast<size_t>(position % rows) * d + i] = bx;
      }
    }
    matmul(l.conv_out, s.conv_y.data(), n, s.xn.data(), s.quant, pool);
  }

  void attention(int32_t li, const LayerWeights& l) {
    const ModelConfig& c = m.config();
    const int64_t hd = c.head_dim;
    const int64_t q_dim = static_cast<int64_t>(c.head_count) * hd;
    const int64_t kv_dim = static_cast<int64_t>(c.head_count_kv) * hd;
    const int32_t group = c.head_count / c.head_count_kv;
    const float attn_scale = c.attention_scale;
    constexpr int32_t kBlock = KvPool::kBlockTokens;
    // Layer li's key row at `position` (values: half a block further on).
    auto key_row = [&](const InferenceContext& ctx, int32_t position) {
      return ctx.kv_blocks_[static_cast<size_t>(position / kBlock)] +
             (static_cast<size_t>(li) * kBlock + static_cast<size_t>(position % kBlock)) *
                 ctx.kv_row_bytes_;
    };
    auto value_offset = [&](const InferenceContext& ctx) {
      return static_cast<size_t>(c.layer_count) * kBlock * ctx.kv_row_bytes_;
    };
    auto store = [&](uint8_t* row, const InferenceContext& ctx, const float* values) {
      if (ctx.kv_type_ == TensorType::kF32) {
        std::memcpy(row, values, kv_dim * sizeof(float));
      } else {
        quantize_row(ctx.kv_type_, values, row, kv_dim);
      }
    };
    for (int32_t t = 0; t < n; ++t) {
      InferenceContext& ctx = *entries[static_cast<size_t>(s.token_entry[t])].context;
      const int32_t position = s.token_position[t];
      float* q = s.q.data() + t * q_dim;
      float* k = s.k.data() + t * kv_dim;
      float* v = s.v.data() + t * kv_dim;
      if (l.bq != nullptr) {
        for (int64_t i = 0; i < q_dim; ++i) q[i] += l.bq[i];
      }
      if (l.bk != nullptr) {
        for (int64_t i = 0; i < kv_dim; ++i) k[i] += l.bk[i];
      }
      if (l.bv != nullptr) {
        for (int64_t i = 0; i < kv_dim; ++i) v[i] += l.bv[i];
      }
      if (l.q_norm != nullptr) {
        for (int32_t h = 0; h < c.head_count; ++h)
          rmsnorm(q + h * hd, l.q_norm, q + h * hd, hd, c.rms_norm_epsilon);
        for (int32_t h = 0; h < c.head_count_kv; ++h)
          rmsnorm(k + h * hd, l.k_norm, k + h * hd, hd, c.rms_norm_epsilon);
      }
      if (l.rope) {
        const float* inv_freq =
            l.sliding ? ctx.rope_inv_freq_local_.data() : ctx.rope_inv_freq_.data();
        apply_rope(q, c.head_count, c.head_dim, c.rope_dim, position, c.rope_neox, inv_freq,
                   c.rope_attn_factor);
        apply_rope(k, c.head_count_kv, c.head_dim, c.rope_dim, position, c.rope_neox, inv_freq,
                   c.rope_attn_factor);
      }
      uint8_t* row = key_row(ctx, position);
      store(row, ctx, k);
      store(row + value_offset(ctx), ctx, v);
    }

    // Causal attention; each (token, head) pair is independent.
    const int64_t items = static_cast<int64_t>(n) * c.head_count;
    pool.run_on_all([&](int thread, int thread_count) {
      float* scores = s.scores.data() + static_cast<size_t>(thread) *
                                            (s.scores.size() / static_cast<size_t>(thread_count));
      const int64_t per = (items + thread_count - 1) / thread_count;
      const int64_t begin = per * thread;
      const int64_t end = std::min(items, begin + per);
      for (int64_t item = begin; item < end; ++item) {
        const int32_t t = static_cast<int32_t>(item / c.head_count);
        const int32_t h = static_cast<int32_t>(item % c.head_count);
        InferenceContext& ctx = *entries[static_cast<size_t>(s.token_entry[t])].context;
        const int32_t position = s.token_position[t];
        const int32_t kvh = h / group;
        const float* q = s.q.data() + t * q_dim + h * hd;
        // A sliding-window layer sees only keys fewer than sliding_window
        // positions back.
        const int32_t first = l.sliding ? std::max(0, position + 1 - c.sliding_window) : 0;
        const int32_t span = position + 1 - first;
        float* out = s.attn_out.data() + t * q_dim + h * hd;
        std::fill(out, out + hd, 0.0f);
        // Positions lie in runs of one block each, contiguous within a run.
        auto runs = [&](auto&& visit) {
          for (int32_t p = first; p <= position;) {
            const int32_t end = std::min(position + 1, (p / kBlock + 1) * kBlock);
            const uint8_t* keys =
                key_row(ctx, p) + ctx.kv_row_bytes_ / c.head_count_kv * static_cast<size_t>(kvh);
            visit(p - first, end - p, keys, keys + value_offset(ctx));
            p = end;
          }
        };
        if (ctx.kv_type_ == TensorType::kF32) {
          runs([&](int32_t at, int32_t count, const uint8_t* k_bytes, const uint8_t*) {
            const auto* keys = reinterpret_cast<const float*>(k_bytes);
            for (int32_t p = 0; p < count; ++p) {
              scores[at + p] = attn_scale * dot_f32(q, keys + static_cast<size_t>(p) * kv_dim, hd);
            }
          });
          softmax(scores, span);
          runs([&](int32_t at, int32_t count, const uint8_t*, const uint8_t* v_bytes) {
            const auto* values = reinterpret_cast<const float*>(v_bytes);
            for (int32_t p = 0; p < count; ++p) {
              axpy_f32(scores[at + p], values + static_cast<size_t>(p) * kv_dim, out, hd);
            }
          });
        } else if (ctx.kv_type_ == TensorType::kQ8_0) {
          const size_t stride = ctx.kv_row_bytes_;
          runs([&](int32_t at, int32_t count, const uint8_t* keys, const uint8_t*) {
            for (int32_t p = 0; p < count; ++p) {
              scores[at + p] =
                  attn_scale * dot_f32_q8_0(q, keys + static_cast<size_t>(p) * stride, hd);
            }
          });
          softmax(scores, span);
          runs([&](int32_t at, int32_t count, const uint8_t*, const uint8_t* values) {
            for (int32_t p = 0; p < count; ++p) {
              axpy_q8_0(scores[at + p], values + static_cast<size_t>(p) * stride, out, hd);
            }
          });
        } else {
          runs([&](int32_t at, int32_t count, const uint8_t* k_bytes, const uint8_t*) {
            const auto* keys = reinterpret_cast<const uint16_t*>(k_bytes);
            for (int32_t p = 0; p < count; ++p) {
              scores[at + p] =
                  attn_scale * dot_f32_f16(q, keys + static_cast<size_t>(p) * kv_dim, hd);
            }
          });
          softmax(scores, span);
          runs([&](int32_t at, int32_t count, const uint8_t*, const uint8_t* v_bytes) {
            const auto* values = reinterpret_cast<const uint16_t*>(v_bytes);
            for (int32_t p = 0; p < count; ++p) {
              axpy_f16(scores[at + p], values + static_cast<size_t>(p) * kv_dim, out, hd);
            }
          });
        }
      }
    });
  }

  void layer(int32_t li) {
    const ModelConfig& c = m.config();
    const int64_t d = c.embedding_length;
    const int64_t q_dim = static_cast<int64_t>(c.head_count) * c.head_dim;
    const int64_t ff = c.feed_forward_length;
    const LayerWeights& l = m.layers()[static_cast<size_t>(li)];
    const size_t stream = static_cast<size_t>(n) * static_cast<size_t>(d);
    if (observer != nullptr) s.observed_input.assign(s.x.begin(), s.x.begin() + stream);

    for (int32_t t = 0; t < n; ++t) {
      rmsnorm(s.x.data() + t * d, l.attn_norm, s.xn.data() + t * d, d, c.rms_norm_epsilon);
    }
    if (l.conv_index >= 0) {
      short_convolution(l);
    } else {
      if (observer != nullptr) {
        observer->on_matrix_input(li, ForwardObserver::MatrixInput::kAttentionQkv,
                                  {s.xn.data(), stream}, n);
      }
      matmul(l.wq, s.xn.data(), n, s.q.data(), s.quant, pool);
      matmul(l.wk, s.xn.data(), n, s.k.data(), s.quant, pool);
      matmul(l.wv, s.xn.data(), n, s.v.data(), s.quant, pool);
      attention(li, l);
      if (observer != nullptr) {
        observer->on_matrix_input(li, ForwardObserver::MatrixInput::kAttentionOutput,
                                  {s.attn_out.data(), static_cast<size_t>(n * q_dim)}, n);
      }
      matmul(l.wo, s.attn_out.data(), n, s.xn.data(), s.quant, pool);
      if (l.attn_post_norm != nullptr) {
        for (int32_t t = 0; t < n; ++t) {
          rmsnorm(s.xn.data() + t * d, l.attn_post_norm, s.xn.data() + t * d, d,
                  c.rms_norm_epsilon);
        }
      }
    }
    add_f32(s.x.data(), s.xn.data(), static_cast<int64_t>(n) * d);

    for (int32_t t = 0; t < n; ++t) {
      rmsnorm(s.x.data() + t * d, l.ffn_norm, s.xn.data() + t * d, d, c.rms_norm_epsilon);
    }
    if (observer != nullptr) {
      observer->on_matrix_input(li, ForwardObserver::MatrixInput::kFfnGateUp, {s.xn.data(), stream},
                                n);
    }
    matmul(l.w_gate, s.xn.data(), n, s.gate.data(), s.quant, pool);
    matmul(l.w_up, s.xn.data(), n, s.up.data(), s.quant, pool);
    if (c.gelu_ffn) {
      gelu_mul(s.gate.data(), s.up.data(), static_cast<int64_t>(n) * ff);
    } else {
      silu_mul(s.gate.data(), s.up.data(), static_cast<int64_t>(n) * ff);
    }
    if (observer != nullptr) {
      observer->on_ffn_activation(li, {s.gate.data(), static_cast<size_t>(n * ff)}, n);
      observer->on_matrix_input(li, ForwardObserver::MatrixInput::kFfnDown,
                                {s.gate.data(), static_cast<size_t>(n * ff)}, n);
    }
    matmul(l.w_down, s.gate.data(), n, s.xn.data(), s.quant, pool);
    if (l.ffn_post_norm != nullptr) {
      for (int32_t t = 0; t < n; ++t) {
        rmsnorm(s.xn.data() + t * d, l.ffn_post_norm, s.xn.data() + t * d, d, c.rms_norm_epsilon);
      }
    }
    add_f32(s.x.data(), s.xn.data(), static_cast<int64_t>(n) * d);
    if (observer != nullptr) observer->on_block(li, s.observed_input, {s.x.data(), stream}, n);
  }

  // Logits for each entry's last token only: the others' are never sampled.
  void output() {
    const ModelConfig& c = m.config();
    const int64_t d = c.embedding_length;
    const size_t vocab = static_cast<size_t>(c.vocab_size);
    const int32_t rows = static_cast<int32_t>(entries.size());
    int32_t last = -1;
    for (int32_t e = 0; e < rows; ++e) {
      last += static_cast<int32_t>(entries[static_cast<size_t>(e)].tokens.size());
      rmsnorm(s.x.data() + static_cast<int64_t>(last) * d, m.output_norm(), s.xn.data() + e * d, d,
              c.rms_norm_epsilon);
    }
    if (observer != nullptr) {
      observer->on_matrix_input(-1, ForwardObserver::MatrixInput::kOutput,
                                {s.xn.data(), static_cast<size_t>(d)}, 1);
    }
    if (s.logits.size() < vocab * static_cast<size_t>(rows)) {
      s.logits.resize(vocab * static_cast<size_t>(rows));
    }
    matmul(m.output(), s.xn.data(), rows, s.logits.data(), s.quant, pool);
    for (int32_t e = 0; e < rows; ++e) {
      InferenceContext& ctx = *entries[static_cast<size_t>(e)].context;
      float* out = ctx.logits_.data();
      const float* in = s.logits.data() + static_cast<size_t>(e) * vocab;
      if (c.final_logit_softcap > 0.0f) {
        for (size_t i = 0; i < vocab; ++i)
          out[i] = c.final_logit_softcap * std::tanh(in[i] / c.final_logit_softcap);
      } else {
        std::memcpy(out, in, vocab * sizeof(float));
      }
      ctx.logits_size_ = vocab;
    }
  }
};

Result<std::span<const float>> InferenceContext::evaluate(std::span<const TokenId> tokens,
                                                          ThreadPool& pool) {
  FSH_TRY_STATUS(check_input(tokens));
  FSH_TRY_STATUS(reserve(position_ + static_cast<int32_t>(tokens.size())));
  size_t done = 0;
  try {
    while (done < tokens.size()) {
      const size_t n =
          std::min<size_t>(tokens.size() - done, static_cast<size_t>(scratch_.max_tokens));
      const BatchEntry entry{this, tokens.subspan(done, n)};
      ForwardPass{*model_, {&entry, 1}, scratch_, pool}.run();
      done += n;
    }
  } catch (const std::bad_alloc&) {
    // The attention scores grow with the context (threads x positions); a
    // step that runs out of memory there has changed nothing.
    return out_of_memory_in_step(*model_, context_length_);
  }
  return logits();
}

Result<std::unique_ptr<BatchDecoder>> BatchDecoder::create(std::shared_ptr<const Model> model,
                                                           int32_t max_tokens) {
  if (max_tokens < 1 || max_tokens > 4096) {
    return make_error(ErrorKind::kInvalidArgument,
                      "a batch step of " + std::to_string(max_tokens) +
                          " tokens is outside 1..4096; choose a step size in that range");
  }
  std::unique_ptr<BatchDecoder> decoder(new BatchDecoder());
  decoder->model_ = std::move(model);
  size_scratch(decoder->scratch_, *decoder->model_, max_tokens);
  return decoder;
}

Status BatchDecoder::decode(std::span<const BatchEntry> entries, ThreadPool& pool) {
  if (entries.empty()) {
    return make_error(ErrorKind::kInvalidArgument, "a batch step needs at least one sequence");
  }
  size_t total = 0;
  for (size_t i = 0; i < entries.size(); ++i) {
    const InferenceContext* ctx = entries[i].context;
    if (ctx == nullptr || &ctx->model() != model_.get()) {
      return make_error(ErrorKind::kInvalidArgument,
                        "batch entry " + std::to_string(i) +
                            " has no context or one of another model; create contexts from the "
                            "decoder's model");
    }
    for (size_t j = 0; j < i; ++j) {
      if (entries[j].context == ctx) {
        return make_error(ErrorKind::kInvalidArgument,
                          "batch entries " + std::to_string(j) + " and " + std::to_string(i) +
                              " share one context; give a sequence's tokens as one entry");
      }
    }
    FSH_TRY_STATUS(ctx->check_input(entries[i].tokens));
    total += entries[i].tokens.size();
  }
  if (total > static_cast<size_t>(scratch_.max_tokens)) {
    return make_error(ErrorKind::kInvalidArgument, "a batch step of " + std::to_string(total) +
                                                       " tokens exceeds the decoder's " +
                                                       std::to_string(scratch_.max_tokens) +
                                                       "; split the prompt into smaller chunks");
  }
  for (const BatchEntry& e : entries) {
    FSH_TRY_STATUS(
        e.context->reserve(e.context->position() + static_cast<int32_t>(e.tokens.size())));
  }
  int32_t longest = 0;
  for (const BatchEntry& e : entries) longest = std::max(longest, e.context->context_length());
  try {
    ForwardPass{*model_, entries, scratch_, pool}.run();
  } catch (const std::bad_alloc&) {
    return out_of_memory_in_step(*model_, longest);
  }
  return Status::Ok();
}

}  // namespace foreshore::engine
