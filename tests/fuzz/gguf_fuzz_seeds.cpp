// Writes a seed corpus for gguf_fuzz: each model given, shrunk to a few KiB
// (arrays cut to a few items, tensors to a block or two of their real bytes)
// so that the fuzzer mutates real structure at a useful speed, plus small
// files using every value type and a non-default alignment.
//
// Usage: gguf_fuzz_seeds OUT_DIR [MODEL.gguf ...]
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>

#include "engine/gguf.h"

namespace {

using foreshore::engine::GgufFile;
using foreshore::engine::GgufValue;
using foreshore::engine::GgufValueType;
using foreshore::engine::GgufWriter;
using foreshore::engine::TensorType;

constexpr size_t kMaxItems = 8;

GgufValue shrink(const GgufValue& v) {
  const GgufValue::Array* a = v.as_array();
  if (!a) return v;
  GgufValue::Array out{a->element_type, {}};
  for (size_t i = 0; i < std::min(kMaxItems, a->items.size()); ++i) {
    out.items.push_back(shrink(a->items[i]));
  }
  return {GgufValueType::kArray, std::move(out)};
}

bool save(const GgufWriter& w, const std::filesystem::path& path) {
  const foreshore::Status s = w.write(path.string());
  if (!s.ok()) std::fprintf(stderr, "gguf_fuzz_seeds: %s\n", s.error().message.c_str());
  return s.ok();
}

bool shrink_model(const std::string& model, const std::filesystem::path& out_dir) {
  auto file = GgufFile::open(model);
  if (!file.ok()) {
    std::fprintf(stderr, "gguf_fuzz_seeds: %s\n", file.error().message.c_str());
    return false;
  }
  GgufWriter w;
  for (const auto& [key, value] : (*file)->metadata()) w.set(key, shrink(value));
  for (const auto& t : (*file)->tensors()) {
    const auto traits = foreshore::engine::tensor_type_traits(t.type);
    std::vector<uint64_t> dims = t.dims;
    dims[0] = traits->block_size;
    for (size_t d = 1; d < dims.size(); ++d) dims[d] = std::min<uint64_t>(dims[d], 2);
    uint64_t blocks = 1;
    for (size_t d = 1; d < dims.size(); ++d) blocks *= dims[d];
    const size_t bytes = static_cast<size_t>(blocks * traits->block_bytes);
    // Real weights where the tensor has enough, zeros past them.
    std::vector<uint8_t> data(bytes, 0);
    std::copy_n(t.data, std::min<uint64_t>(bytes, t.byte_size), data.begin());
    const foreshore::Status s = w.add_tensor(t.name, static_cast<TensorType>(t.type), dims, data);
    if (!s.ok()) {
      std::fprintf(stderr, "gguf_fuzz_seeds: %s\n", s.error().message.c_str());
      return false;
    }
  }
  const std::string stem = std::filesystem::path(model).stem().string();
  return save(w, out_dir / (stem + ".small.gguf"));
}

bool synthetic(const std::filesystem::path& out_dir) {
  GgufWriter every;
  const auto scalar = [](GgufValueType type, auto v) {
    GgufValue out;
    out.type = type;
    out.data = v;
    return out;
  };
  every.set("u8", scalar(GgufValueType::kUint8, uint64_t{200}));
  every.set("i8", scalar(GgufValueType::kInt8, int64_t{-3}));
  every.set("u16", scalar(GgufValueType::kUint16, uint64_t{60000}));
  every.set("i16", scalar(GgufValueType::kInt16, int64_t{-300}));
  every.set("u32", GgufValue::u32(7));
  every.set("i32", GgufValue::i32(-7));
  every.set("f32", GgufValue::f32(0.5f));
  every.set("bool", GgufValue::boolean(true));
  every.set("str", GgufValue::string("text"));
  every.set("u64", GgufValue::u64(1));
  every.set("i64", scalar(GgufValueType::kInt64, int64_t{-1}));
  every.set("f64", scalar(GgufValueType::kFloat64, 0.25));
  every.set("strs", GgufValue::string_array({"a", "b"}));
  every.set("nested", {GgufValueType::kArray,
                       GgufValue::Array{GgufValueType::kArray, {GgufValue::i32_array({1, 2})}}});
  const std::vector<uint8_t> q8(34 * 2, 1);
  if (!every.add_tensor("q8", TensorType::kQ8_0, {32, 2}, q8).ok()) return false;
  const std::vector<uint8_t> q4k(144, 2);
  if (!every.add_tensor("q4k", TensorType::kQ4_K, {256}, q4k).ok()) return false;

  GgufWriter aligned;
  aligned.set("general.alignment", GgufValue::u32(64));
  const std::vector<uint8_t> f32(12, 3);
  if (!aligned.add_tensor("a", TensorType::kF32, {3}, f32).ok()) return false;
  if (!aligned.add_tensor("b", TensorType::kF32, {1, 3}, f32).ok()) return false;

  return save(every, out_dir / "every-type.gguf") && save(aligned, out_dir / "aligned64.gguf") &&
         save(GgufWriter(), out_dir / "empty.gguf");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR [MODEL.gguf ...]\n", argv[0]);
    return 2;
  }
  const std::filesystem::path out_dir = argv[1];
  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  bool ok = synthetic(out_dir);
  for (int i = 2; i < argc; ++i) ok = shrink_model(argv[i], out_dir) && ok;
  return ok ? 0 : 1;
}
