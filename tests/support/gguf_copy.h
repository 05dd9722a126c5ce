// A GGUF file copied with some metadata changed: how tests make the hostile
// or unusual variants of a good model (an unknown architecture, a NaN
// epsilon, another alignment) without a generator of their own.
#pragma once

#include <gtest/gtest.h>

#include <map>
#include <span>
#include <string>

#include "engine/gguf.h"
#include "support/test_paths.h"

namespace foreshore::testing {

// Writes `file`'s metadata, with `changes` set over it, and all its tensors
// to a new temporary file; returns its path (empty, with a test failure, when
// writing fails). Header-only: the engine's own tests link no test library.
inline std::string copy_gguf_with(const engine::GgufFile& file,
                                  const std::map<std::string, engine::GgufValue>& changes) {
  engine::GgufWriter writer;
  for (const auto& [key, value] : file.metadata()) writer.set(key, value);
  for (const auto& [key, value] : changes) writer.set(key, value);
  for (const auto& t : file.tensors()) {
    const Status added =
        writer.add_tensor(t.name, static_cast<engine::TensorType>(t.type), t.dims,
                          std::span<const uint8_t>(t.data, static_cast<size_t>(t.byte_size)));
    EXPECT_TRUE(added.ok()) << added.error().message;
    if (!added.ok()) return {};
  }
  const std::string path = temp_path(".gguf");
  const Status written = writer.write(path);
  EXPECT_TRUE(written.ok()) << written.error().message;
  return written.ok() ? path : std::string();
}

}  // namespace foreshore::testing
