// libFuzzer target for the GGUF reader. Beyond "no crash, no out-of-bounds
// read" (ASan/UBSan), it checks what callers rely on: an error always has a
// message, every accepted tensor lies inside the input, and an accepted file
// survives a trip through the writer unchanged.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>

#include "engine/gguf.h"

namespace {

using foreshore::engine::GgufFile;
using foreshore::engine::GgufValue;
using foreshore::engine::GgufWriter;
using foreshore::engine::TensorType;

void check(bool ok) {
  if (!ok) std::abort();
}

// Reads every value through the accessors so sanitizers see each one.
size_t touch(const GgufValue& v) {
  size_t n = v.as_int().has_value() + v.as_float().has_value();
  if (const std::string* s = v.as_string()) n += s->size();
  if (const GgufValue::Array* a = v.as_array()) {
    for (const GgufValue& item : a->items) {
      check(item.type == a->element_type);
      n += touch(item);
    }
  }
  return n;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto parsed = GgufFile::parse(std::span<const uint8_t>(data, size), "fuzz.gguf");
  if (!parsed.ok()) {
    check(parsed.error().message.rfind("fuzz.gguf: ", 0) == 0);
    return 0;
  }
  const GgufFile& f = **parsed;
  volatile size_t sink = 0;
  for (const auto& [key, value] : f.metadata()) sink = sink + key.size() + touch(value);

  GgufWriter w;
  for (const auto& [key, value] : f.metadata()) w.set(key, value);
  bool rewritable = true;
  for (const auto& t : f.tensors()) {
    check(t.data >= data && t.byte_size <= size &&
          t.data - data <= static_cast<ptrdiff_t>(size - t.byte_size));
    check(f.find_tensor(t.name) == &t);
    uint8_t x = 0;
    for (uint64_t i = 0; i < t.byte_size; ++i) x ^= t.data[i];
    sink = sink + x;
    // The writer refuses names llama.cpp cannot hold; the reader accepts them.
    rewritable = rewritable && w.add_tensor(t.name, static_cast<TensorType>(t.type), t.dims,
                                            {t.data, static_cast<size_t>(t.byte_size)})
                                   .ok();
  }
  if (!rewritable) return 0;

  const std::vector<uint8_t> once = w.to_bytes();
  auto again = GgufFile::parse(once, "rewritten.gguf");
  check(again.ok());
  check((*again)->metadata().size() == f.metadata().size());
  check((*again)->tensors().size() == f.tensors().size());
  for (size_t i = 0; i < f.tensors().size(); ++i) {
    const auto& a = f.tensors()[i];
    const auto& b = (*again)->tensors()[i];
    check(a.name == b.name && a.type == b.type && a.dims == b.dims && a.byte_size == b.byte_size);
    check(std::memcmp(a.data, b.data, a.byte_size) == 0);
  }
  GgufWriter w2;
  for (const auto& [key, value] : (*again)->metadata()) w2.set(key, value);
  for (const auto& t : (*again)->tensors()) {
    check(w2.add_tensor(t.name, static_cast<TensorType>(t.type), t.dims,
                        {t.data, static_cast<size_t>(t.byte_size)})
              .ok());
  }
  check(w2.to_bytes() == once);
  return 0;
}
