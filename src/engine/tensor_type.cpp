#include "engine/tensor_type.h"

#include <array>
#include <cctype>
#include <string>

namespace foreshore::engine {
namespace {

struct Entry {
  uint32_t id;
  TensorTypeTraits traits;
};

constexpr std::array<Entry, 22> kTypes{{
    {0, {"F32", 1, 4, true}},       {1, {"F16", 1, 2, true}},
    {2, {"Q4_0", 32, 18, true}},    {3, {"Q4_1", 32, 20, false}},
    {6, {"Q5_0", 32, 22, true}},    {7, {"Q5_1", 32, 24, true}},
    {8, {"Q8_0", 32, 34, true}},    {9, {"Q8_1", 32, 36, false}},
    {10, {"Q2_K", 256, 84, true}},  {11, {"Q3_K", 256, 110, true}},
    {12, {"Q4_K", 256, 144, true}}, {13, {"Q5_K", 256, 176, true}},
    {14, {"Q6_K", 256, 210, true}}, {15, {"Q8_K", 256, 292, false}},
    {20, {"IQ4_NL", 32, 18, true}}, {23, {"IQ4_XS", 256, 136, true}},
    {24, {"I8", 1, 1, false}},      {25, {"I16", 1, 2, false}},
    {26, {"I32", 1, 4, false}},     {27, {"I64", 1, 8, false}},
    {28, {"F64", 1, 8, false}},     {30, {"BF16", 1, 2, true}},
}};

}  // namespace

std::optional<TensorTypeTraits> tensor_type_traits(uint32_t type) {
  for (const auto& e : kTypes) {
    if (e.id == type) return e.traits;
  }
  return std::nullopt;
}

std::string tensor_type_name(uint32_t type) {
  if (auto t = tensor_type_traits(type)) return std::string(t->name);
  return "type#" + std::to_string(type);
}

std::string computable_type_names() {
  std::string names;
  for (const auto& e : kTypes) {
    if (!e.traits.computable) continue;
    if (!names.empty()) names += ", ";
    names += e.traits.name;
  }
  return names;
}

std::optional<TensorType> parse_tensor_type(std::string_view name) {
  for (const auto& e : kTypes) {
    if (e.traits.name.size() != name.size()) continue;
    bool same = true;
    for (size_t i = 0; i < name.size(); ++i) {
      if (std::toupper(static_cast<unsigned char>(name[i])) != e.traits.name[i]) same = false;
    }
    if (same) return static_cast<TensorType>(e.id);
  }
  return std::nullopt;
}

}  // namespace foreshore::engine
