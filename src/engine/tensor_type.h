// Tensor element types as numbered by the GGUF format, and their block layout.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace foreshore::engine {

enum class TensorType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kIQ4_NL = 20,
  kIQ4_XS = 23,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kBF16 = 30,
};

struct TensorTypeTraits {
  std::string_view name;
  uint32_t block_size;   // elements per block
  uint32_t block_bytes;  // bytes per block
  bool computable;       // the engine has kernels for it (others load but cannot run)
};

// Layout of a known type, or nullopt for a number this engine does not know.
std::optional<TensorTypeTraits> tensor_type_traits(uint32_t type);

// Name ("Q4_K") of a type, or "type#N" for an unknown number.
std::string tensor_type_name(uint32_t type);

// Parses a type name case-insensitively ("q4_k", "Q8_0", "bf16").
std::optional<TensorType> parse_tensor_type(std::string_view name);
// The types this engine computes with, for messages: "F32, F16, ..., Q6_K".
std::string computable_type_names();

// Bytes needed for `elements` of `type` (elements must be a multiple of the block size).
inline size_t tensor_row_bytes(const TensorTypeTraits& t, uint64_t elements) {
  return static_cast<size_t>(elements / t.block_size) * t.block_bytes;
}

}  // namespace foreshore::engine
