// GGUF v2/v3 files: a validating reader over mmap and a writer.
//
// The reader never trusts the file: every length, count, offset and type is
// checked against the mapping before use, so a truncated, corrupt or hostile
// file yields an Error, never a crash or an out-of-bounds read.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <variant>
#include <vector>

#include "common/result.h"
#include "engine/tensor_type.h"

namespace foreshore::engine {

enum class GgufValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

// One metadata value. Arrays hold elements of a single type; nested arrays are
// allowed by the format and supported.
struct GgufValue {
  struct Array {
    GgufValueType element_type = GgufValueType::kUint8;
    std::vector<GgufValue> items;
  };
  GgufValueType type = GgufValueType::kUint8;
  std::variant<uint64_t, int64_t, double, bool, std::string, Array> data;

  static GgufValue u32(uint32_t v);
  static GgufValue i32(int32_t v);
  static GgufValue u64(uint64_t v);
  static GgufValue f32(float v);
  static GgufValue boolean(bool v);
  static GgufValue string(std::string v);
  static GgufValue string_array(const std::vector<std::string>& v);
  static GgufValue f32_array(const std::vector<float>& v);
  static GgufValue i32_array(const std::vector<int32_t>& v);

  // Numeric value as the requested kind, when this value is numeric (any width).
  std::optional<int64_t> as_int() const;
  std::optional<double> as_float() const;
  const std::string* as_string() const;
  const Array* as_array() const;
};

struct GgufTensorInfo {
  std::string name;
  uint32_t type = 0;           // TensorType number (validated as known)
  std::vector<uint64_t> dims;  // ne[0] is the contiguous (row) dimension
  uint64_t offset = 0;         // relative to the data section
  uint64_t element_count = 0;
  uint64_t byte_size = 0;
  const uint8_t* data = nullptr;  // inside the mapping; valid while the file lives
};

// A parsed GGUF file. Owns its memory mapping (or borrowed bytes for parse()).
class GgufFile {
 public:
  // Maps and validates a file. Errors name the file, the offset and the problem.
  static Result<std::shared_ptr<GgufFile>> open(const std::string& path);
  // Validates bytes already in memory (not copied; must outlive the result). Used by the fuzzer.
  static Result<std::shared_ptr<GgufFile>> parse(std::span<const uint8_t> bytes,
                                                 std::string origin = "<memory>");

  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  const std::string& origin() const { return origin_; }
  size_t file_size() const { return bytes_.size(); }

  const std::map<std::string, GgufValue>& metadata() const { return metadata_; }
  const GgufValue* find(std::string_view key) const;
  // Typed lookups; nullopt when missing or of an incompatible type.
  std::optional<std::string> get_string(std::string_view key) const;
  std::optional<int64_t> get_int(std::string_view key) const;
  std::optional<double> get_float(std::string_view key) const;
  std::optional<bool> get_bool(std::string_view key) const;

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(std::string_view name) const;
  // Gives the memory-mapped pages wholly inside [data, data + size) back to
  // the system, for bytes the reader keeps a copy of: they stay readable, a
  // later read bringing them back from the file. Does nothing for bytes
  // given to parse().
  void release(const uint8_t* data, size_t size) const;

 private:
  GgufFile() = default;
  Status parse_all();

  std::string origin_;
  std::span<const uint8_t> bytes_;
  void* mapping_ = nullptr;
  size_t mapping_size_ = 0;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::map<std::string, GgufValue> metadata_;
  std::vector<GgufTensorInfo> tensors_;
  // Views into tensors_[i].name; tensors_ is not modified after parsing.
  std::unordered_map<std::string_view, size_t> tensor_index_;
};

// Builds a GGUF v3 file: metadata in insertion order, tensors aligned to
// `general.alignment` (32 unless set).
// The file a writer would replace for `path`: `path` itself when it is a
// regular file or does not exist, the final target when it is a symlink
// (chain); an error when it (or the target) exists but is not a regular file.
// Commands call it before their work so a bad output path fails at once.
Result<std::string> resolve_output_path(const std::string& path);

class GgufWriter {
 public:
  void set(std::string key, GgufValue value);
  // Copies `data` (its size must match type and dims).
  Status add_tensor(std::string name, TensorType type, std::vector<uint64_t> dims,
                    std::span<const uint8_t> data);
  // Checks every metadata value against its declared type, then writes the
  // file atomically (via a temporary beside it). A symlink at `path` is
  // written through (its target is replaced, the link kept); any other
  // existing non-regular file (FIFO, device, socket, folder) is refused.
  // With `verify`, the finished temporary is passed to it before the rename;
  // an error from it removes the temporary and leaves `path` untouched.
  Status write(const std::string& path,
               const std::function<Status(const std::string& written)>& verify = {}) const;
  // The same encoding without write()'s checks; tests use it to craft files.
  std::vector<uint8_t> to_bytes() const;

 private:
  struct PendingTensor {
    std::string name;
    TensorType type;
    std::vector<uint64_t> dims;
    std::vector<uint8_t> data;
  };
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::vector<PendingTensor> tensors_;
};

}  // namespace foreshore::engine
