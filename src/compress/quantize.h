// Post-training quantization of GGUF models: every weight matrix converted to
// a chosen type (uniformly, or per tensor by a mixed-precision plan), every
// metadata key kept, the result readable by this engine and by llama.cpp.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "engine/engine.h"

namespace foreshore::compress {

// Reports how far a long step has got (`done` of `total` units of `stage`).
using ProgressFn = std::function<void(std::string_view stage, uint64_t done, uint64_t total)>;

// Whether quantization may change a tensor: weight matrices (2 or more
// dimensions, name ending in "weight"). Norm vectors, other 1-D tensors and
// biases are copied as they are, as llama.cpp does: they are tiny and
// quantizing them costs quality for no size.
bool is_quantizable(const engine::GgufTensorInfo& tensor);

struct FittedType {
  engine::TensorType type;
  std::string note;  // why `type` is not the one asked for; empty when it is
};

// `wanted` when rows of `row_length` elements split into its blocks, else the
// nearest type that does: Q4_K -> Q4_0, Q6_K -> Q8_0, Q4_0, IQ4_NL and Q8_0 -> F16.
FittedType fit_type(engine::TensorType wanted, uint64_t row_length);

// What one tensor of the output is written as.
struct TensorChoice {
  std::string name;
  engine::TensorType type = engine::TensorType::kF32;
  std::string note;  // why the type differs from the one asked for, when it does
};

// One choice per tensor of `file`, in file order: quantizable tensors get
// `type` (or its fallback), the rest keep theirs. Unless `pure`, the output
// projection of a 4-bit target gets Q6_K (or its fallback), as llama.cpp
// does, because it is the most sensitive matrix of most models.
std::vector<TensorChoice> uniform_choices(const engine::GgufFile& file, engine::TensorType type,
                                          bool pure);

// The tensor's elements as `type`: dequantized to float first when stored in
// another type, copied byte for byte when already of that type. Rows are
// split over the pool. Fails for a type without kernels or a row length that
// is not a multiple of the type's block.
// With `importance` (one value per element of a row, see ImportanceMatrix),
// rounding minimizes the importance-weighted error (engine::quantize_row_weighted).
Result<std::vector<uint8_t>> convert_tensor(const engine::GgufTensorInfo& tensor,
                                            engine::TensorType type, engine::ThreadPool& pool,
                                            std::span<const float> importance = {});

// Per-column importance of weight matrices, by tensor name (see
// LayerStatistics::importance).
using ImportanceMatrix = std::map<std::string, std::vector<float>>;

// `tensor`'s importance from `matrix`, or empty when there is none of its row length.
std::span<const float> importance_of(const engine::GgufTensorInfo& tensor,
                                     const ImportanceMatrix* matrix);

// llama.cpp's general.file_type (llama_ftype) for the type holding most of
// the quantizable elements: 0 F32, 1 F16, 2 Q4_0, 7 Q8_0, 14 Q4_K_S, 18 Q6_K, 25 IQ4_NL,
// 32 BF16.
uint32_t llama_file_type(const engine::GgufFile& file, std::span<const TensorChoice> choices);

// The output file: every metadata key of `file` (values unchanged, so
// general.alignment and with it the tensor alignment carry over), plus
// general.file_type and general.quantization_version as llama.cpp writes
// them, and every tensor converted as `choices` says (one per tensor of
// `file`, in file order). Progress is reported in elements converted.
// With `importance`, matrices it covers are rounded by it.
Result<engine::GgufWriter> build_quantized(const engine::GgufFile& file,
                                           std::span<const TensorChoice> choices,
                                           engine::ThreadPool& pool,
                                           const ProgressFn& progress = {},
                                           const ImportanceMatrix* importance = nullptr);

// Exact size in bytes of the file build_quantized would produce for these
// choices, computed without converting any tensor.
uint64_t quantized_file_bytes(const engine::GgufFile& file, std::span<const TensorChoice> choices);

// Bytes of a tensor of these dimensions stored as `type` (unpadded).
uint64_t tensor_bytes(std::span<const uint64_t> dims, engine::TensorType type);

}  // namespace foreshore::compress
