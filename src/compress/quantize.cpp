#include "compress/quantize.h"

#include <algorithm>
#include <cstring>
#include <map>

namespace foreshore::compress {
namespace {

using engine::TensorType;

constexpr std::string_view kFileTypeKey = "general.file_type";
constexpr std::string_view kQuantizationVersionKey = "general.quantization_version";
// ggml's block layout version of the legacy and K quants (GGML_QNT_VERSION).
constexpr uint32_t kQuantizationVersion = 2;

engine::TensorTypeTraits traits_of(TensorType type) {
  // Every TensorType enumerator has traits; a missing one is a programming error.
  return *engine::tensor_type_traits(static_cast<uint32_t>(type));
}

std::string type_name(TensorType type) {
  return engine::tensor_type_name(static_cast<uint32_t>(type));
}

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

uint64_t align_up(uint64_t value, uint64_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

// The tensor llama.cpp treats as the output projection: output.weight, or the
// token embedding when the output is tied to it.
const engine::GgufTensorInfo* output_projection(const engine::GgufFile& file) {
  if (const auto* out = file.find_tensor("output.weight")) return out;
  return file.find_tensor("token_embd.weight");
}

void set_output_metadata(engine::GgufWriter& writer, const engine::GgufFile& file,
                         uint32_t file_type) {
  for (const auto& [key, value] : file.metadata()) writer.set(key, value);
  writer.set(std::string(kFileTypeKey), engine::GgufValue::u32(file_type));
  writer.set(std::string(kQuantizationVersionKey), engine::GgufValue::u32(kQuantizationVersion));
}

Status check_choices(const engine::GgufFile& file, std::span<const TensorChoice> choices) {
  const auto& tensors = file.tensors();
  if (choices.size() != tensors.size()) {
    return make_error(ErrorKind::kInvalidArgument,
                      "quantization plan has " + std::to_string(choices.size()) + " tensors but " +
                          file.origin() + " has " + std::to_string(tensors.size()) +
                          ": the plan was made for another model");
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (choices[i].name != tensors[i].name) {
      return make_error(ErrorKind::kInvalidArgument,
                        "quantization plan names tensor '" + choices[i].name + "' where " +
                            file.origin() + " has '" + tensors[i].name +
                            "': the plan was made for another model");
    }
  }
  return Status::Ok();
}

}  // namespace

bool is_quantizable(const engine::GgufTensorInfo& tensor) {
  return tensor.dims.size() >= 2 && ends_with(tensor.name, "weight");
}

FittedType fit_type(TensorType wanted, uint64_t row_length) {
  TensorType type = wanted;
  std::string note;
  while (row_length % traits_of(type).block_size != 0) {
    const TensorType next = [&] {
      switch (type) {
        case TensorType::kQ4_K:
          return TensorType::kQ4_0;
        case TensorType::kQ5_K:
          return TensorType::kQ5_1;
        case TensorType::kQ2_K:
        case TensorType::kQ3_K:
        case TensorType::kIQ4_XS:
          return TensorType::kIQ4_NL;
        case TensorType::kQ6_K:
          return TensorType::kQ8_0;
        default:
          return TensorType::kF16;
      }
    }();
    if (note.empty()) {
      note = "rows of " + std::to_string(row_length) + " are not a multiple of " + type_name(type) +
             "'s block of " + std::to_string(traits_of(type).block_size);
    }
    type = next;
  }
  if (!note.empty()) note += ": " + type_name(type);
  return {type, std::move(note)};
}

std::vector<TensorChoice> uniform_choices(const engine::GgufFile& file, TensorType type,
                                          bool pure) {
  // llama.cpp's 2- to 5-bit mixes keep the output projection, the matrix
  // most sensitive to rounding, at Q6_K.
  const bool output_at_q6k = type == TensorType::kQ4_0 || type == TensorType::kIQ4_NL ||
                             type == TensorType::kIQ4_XS || type == TensorType::kQ2_K ||
                             type == TensorType::kQ3_K || type == TensorType::kQ4_K ||
                             type == TensorType::kQ5_K;
  const engine::GgufTensorInfo* output = pure || !output_at_q6k ? nullptr : output_projection(file);
  std::vector<TensorChoice> choices;
  choices.reserve(file.tensors().size());
  for (const auto& t : file.tensors()) {
    TensorChoice choice{t.name, static_cast<TensorType>(t.type), ""};
    if (is_quantizable(t)) {
      const bool is_output = output != nullptr && t.name == output->name;
      FittedType fitted = fit_type(is_output ? TensorType::kQ6_K : type, t.dims[0]);
      choice.type = fitted.type;
      choice.note = is_output ? "output projection at Q6_K as llama.cpp does (--pure: off)" : "";
      if (!fitted.note.empty()) {
        choice.note += (choice.note.empty() ? "" : "; ") + fitted.note;
      }
    }
    choices.push_back(std::move(choice));
  }
  return choices;
}

uint64_t tensor_bytes(std::span<const uint64_t> dims, TensorType type) {
  uint64_t elements = 1;
  for (uint64_t d : dims) elements *= d;
  return engine::tensor_row_bytes(traits_of(type), elements);
}

std::span<const float> importance_of(const engine::GgufTensorInfo& tensor,
                                     const ImportanceMatrix* matrix) {
  if (matrix == nullptr) return {};
  const auto it = matrix->find(tensor.name);
  if (it == matrix->end() || it->second.size() != tensor.dims[0]) return {};
  return it->second;
}

Result<std::vector<uint8_t>> convert_tensor(const engine::GgufTensorInfo& tensor, TensorType type,
                                            engine::ThreadPool& pool,
                                            std::span<const float> importance) {
  const auto source = static_cast<TensorType>(tensor.type);
  if (source == type) return std::vector<uint8_t>(tensor.data, tensor.data + tensor.byte_size);
  const auto source_traits = engine::tensor_type_traits(tensor.type);
  const auto target_traits = traits_of(type);
  if (!source_traits || !source_traits->computable) {
    return make_error(ErrorKind::kUnsupported,
                      "tensor '" + tensor.name + "' is stored as " +
                          engine::tensor_type_name(tensor.type) +
                          ", which this engine cannot dequantize: quantize from the F32, F16 or "
                          "BF16 original instead");
  }
  if (!target_traits.computable) {
    return make_error(ErrorKind::kUnsupported,
                      "cannot quantize to " + type_name(type) +
                          ": the engine has no kernels for it; use one of " +
                          engine::computable_type_names());
  }
  const uint64_t cols = tensor.dims[0];
  if (cols % target_traits.block_size != 0) {
    return make_error(ErrorKind::kInvalidArgument,
                      "tensor '" + tensor.name + "' has rows of " + std::to_string(cols) +
                          ", not a multiple of " + type_name(type) + "'s block of " +
                          std::to_string(target_traits.block_size) + ": choose another type");
  }
  if (!importance.empty() && importance.size() != cols) {
    return make_error(ErrorKind::kInvalidArgument,
                      "importance for tensor '" + tensor.name + "' has " +
                          std::to_string(importance.size()) + " values for rows of " +
                          std::to_string(cols) + ": it was measured on another model");
  }
  const uint64_t rows = tensor.element_count / cols;
  const size_t source_row_bytes = engine::tensor_row_bytes(*source_traits, cols);
  const size_t target_row_bytes = engine::tensor_row_bytes(target_traits, cols);
  std::vector<uint8_t> out(static_cast<size_t>(rows) * target_row_bytes);
  pool.parallel_for(static_cast<int64_t>(rows), [&](int64_t begin, int64_t end) {
    std::vector<float> row(cols);
    for (int64_t r = begin; r < end; ++r) {
      // Both calls succeed: the types are computable and cols fits both blocks.
      engine::dequantize_row(source, tensor.data + r * source_row_bytes, row.data(),
                             static_cast<int64_t>(cols));
      if (importance.empty()) {
        engine::quantize_row(type, row.data(), out.data() + r * target_row_bytes,
                             static_cast<int64_t>(cols));
      } else {
        engine::quantize_row_weighted(type, row.data(), out.data() + r * target_row_bytes,
                                      static_cast<int64_t>(cols), importance.data());
      }
    }
  });
  return out;
}

uint32_t llama_file_type(const engine::GgufFile& file, std::span<const TensorChoice> choices) {
  std::map<TensorType, uint64_t> elements_by_type;
  for (size_t i = 0; i < choices.size() && i < file.tensors().size(); ++i) {
    if (is_quantizable(file.tensors()[i])) {
      elements_by_type[choices[i].type] += file.tensors()[i].element_count;
    }
  }
  if (elements_by_type.empty()) return 0;
  const auto dominant =
      std::max_element(elements_by_type.begin(), elements_by_type.end(),
                       [](const auto& a, const auto& b) { return a.second < b.second; });
  switch (dominant->first) {
    case TensorType::kF16:
      return 1;
    case TensorType::kQ4_0:
      return 2;
    case TensorType::kIQ4_NL:
      return 25;
    case TensorType::kIQ4_XS:
      return 30;
    case TensorType::kQ8_0:
      return 7;
    case TensorType::kQ5_0:
      return 8;
    case TensorType::kQ5_1:
      return 9;
    case TensorType::kQ2_K:
      return 10;
    case TensorType::kQ3_K:
      return 11;
    case TensorType::kQ4_K:
      return 14;
    case TensorType::kQ5_K:
      return 16;
    case TensorType::kQ6_K:
      return 18;
    case TensorType::kBF16:
      return 32;
    default:
      return 0;
  }
}

Result<engine::GgufWriter> build_quantized(const engine::GgufFile& file,
                                           std::span<const TensorChoice> choices,
                                           engine::ThreadPool& pool, const ProgressFn& progress,
                                           const ImportanceMatrix* importance) {
  FSH_TRY_STATUS(check_choices(file, choices));
  engine::GgufWriter writer;
  set_output_metadata(writer, file, llama_file_type(file, choices));
  uint64_t total = 0;
  for (const auto& t : file.tensors()) total += t.element_count;
  uint64_t done = 0;
  for (size_t i = 0; i < choices.size(); ++i) {
    const auto& tensor = file.tensors()[i];
    FSH_ASSIGN_OR_RETURN(
        std::vector<uint8_t> data,
        convert_tensor(tensor, choices[i].type, pool, importance_of(tensor, importance)));
    FSH_TRY_STATUS(writer.add_tensor(tensor.name, choices[i].type, tensor.dims, data));
    done += tensor.element_count;
    if (progress) progress("quantize", done, total);
  }
  return writer;
}

uint64_t quantized_file_bytes(const engine::GgufFile& file, std::span<const TensorChoice> choices) {
  // The header does not depend on tensor types or sizes, only on names and
  // dimension counts, so a writer holding one-element placeholders measures it.
  engine::GgufWriter header_only;
  set_output_metadata(header_only, file, 0);
  const uint8_t placeholder[sizeof(float)] = {};
  const uint64_t alignment = file.alignment();
  uint64_t placeholder_bytes = 0;
  for (const auto& t : file.tensors()) {
    std::vector<uint64_t> ones(t.dims.size(), 1);
    // Cannot fail: the names and dimension counts come from a valid file.
    (void)header_only.add_tensor(t.name, TensorType::kF32, std::move(ones), placeholder);
    placeholder_bytes += align_up(sizeof placeholder, alignment);
  }
  uint64_t bytes = header_only.to_bytes().size() - placeholder_bytes;
  for (size_t i = 0; i < choices.size() && i < file.tensors().size(); ++i) {
    bytes += align_up(tensor_bytes(file.tensors()[i].dims, choices[i].type), alignment);
  }
  return bytes;
}

}  // namespace foreshore::compress
