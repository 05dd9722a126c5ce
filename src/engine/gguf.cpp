#include "engine/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>
#include <numeric>
#include <utility>

namespace foreshore::engine {
namespace {

constexpr uint8_t kMagic[4] = {'G', 'G', 'U', 'F'};
constexpr uint32_t kWriteVersion = 3;
constexpr uint32_t kMaxDims = 4;
constexpr uint64_t kDefaultAlignment = 32;
constexpr std::string_view kAlignmentKey = "general.alignment";
// Real files nest arrays at most once; the limit keeps recursion bounded on
// hostile input.
constexpr int kMaxArrayDepth = 8;
// Every value costs a 48-byte GgufValue however small its encoding, so a
// hostile array of a billion uint8 would ask for 48x the file size in memory.
// The largest real vocabularies (token, score, type and merge arrays of a
// 256K-token model) need about 1.3M values.
constexpr uint64_t kMaxMetadataValues = uint64_t{1} << 22;
// llama.cpp stores tensor names in a 64-byte buffer with a terminating NUL.
constexpr size_t kMaxWriterTensorName = 63;
// Smallest possible encodings, used to reject counts that cannot fit in the
// bytes left before anything is allocated for them: key length + 1 byte key +
// value type + 1 byte value, and name length + 1 byte name + n_dims + one dim +
// type + offset.
constexpr uint64_t kMinKvBytes = 8 + 1 + 4 + 1;
constexpr uint64_t kMinTensorInfoBytes = 8 + 1 + 4 + 8 + 4 + 8;

constexpr std::string_view kCorruptAdvice =
    "the file is truncated or damaged; re-download it or re-convert the model";

const char* value_type_name(uint32_t type) {
  switch (static_cast<GgufValueType>(type)) {
    case GgufValueType::kUint8:
      return "uint8";
    case GgufValueType::kInt8:
      return "int8";
    case GgufValueType::kUint16:
      return "uint16";
    case GgufValueType::kInt16:
      return "int16";
    case GgufValueType::kUint32:
      return "uint32";
    case GgufValueType::kInt32:
      return "int32";
    case GgufValueType::kFloat32:
      return "float32";
    case GgufValueType::kBool:
      return "bool";
    case GgufValueType::kString:
      return "string";
    case GgufValueType::kArray:
      return "array";
    case GgufValueType::kUint64:
      return "uint64";
    case GgufValueType::kInt64:
      return "int64";
    case GgufValueType::kFloat64:
      return "float64";
  }
  return "unknown";
}

// Encoded size of a scalar, or the minimum for strings and arrays; nullopt for
// a number the format does not define.
std::optional<uint64_t> min_encoded_size(uint32_t type) {
  switch (static_cast<GgufValueType>(type)) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kBool:
      return 1;
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
      return 2;
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kFloat32:
      return 4;
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
    case GgufValueType::kFloat64:
    case GgufValueType::kString:
      return 8;
    case GgufValueType::kArray:
      return 4 + 8;
  }
  return std::nullopt;
}

// Names of ggml types this engine cannot load, so the error can say what the
// file holds rather than a bare number.
std::string describe_tensor_type(uint32_t type) {
  struct Known {
    uint32_t id;
    const char* name;
  };
  static constexpr Known kForeign[] = {
      {4, "Q4_2 (removed from ggml)"},
      {5, "Q4_3 (removed from ggml)"},
      {16, "IQ2_XXS"},
      {17, "IQ2_XS"},
      {18, "IQ3_XXS"},
      {19, "IQ1_S"},
      {20, "IQ4_NL"},
      {21, "IQ3_S"},
      {22, "IQ2_S"},
      {23, "IQ4_XS"},
      {29, "IQ1_M"},
      {31, "Q4_0_4_4"},
      {32, "Q4_0_4_8"},
      {33, "Q4_0_8_8"},
      {34, "TQ1_0"},
      {35, "TQ2_0"},
      {39, "MXFP4"},
  };
  for (const auto& k : kForeign) {
    if (k.id == type) return std::to_string(type) + " (" + k.name + ")";
  }
  return std::to_string(type) + " (unknown)";
}

// A key or tensor name as it can safely appear in an error message: hostile
// names may be megabytes long or hold control bytes.
std::string printable(std::string_view name) {
  constexpr size_t kMaxShown = 80;
  std::string out;
  for (const char ch : name.substr(0, kMaxShown)) {
    const auto c = static_cast<unsigned char>(ch);
    if (c >= 0x20 && c != 0x7f) {
      out += ch;
    } else {
      static constexpr char kHex[] = "0123456789abcdef";
      out += {'\\', 'x', kHex[c >> 4], kHex[c & 15]};
    }
  }
  if (name.size() > kMaxShown) out += "...";
  return out;
}

uint64_t align_up(uint64_t value, uint64_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

bool is_power_of_two(uint64_t v) {
  return v != 0 && (v & (v - 1)) == 0;
}

// llama.cpp writes 32; a file asking for more than 1 MiB would pad its
// header and every tensor by that much (a fuzzed 1 GiB alignment made a
// zero-tensor file round-trip into 1 GiB), so such a file is refused.
constexpr uint64_t kMaxAlignment = uint64_t{1} << 20;
bool is_valid_alignment(int64_t v) {
  return v > 0 && is_power_of_two(static_cast<uint64_t>(v)) &&
         static_cast<uint64_t>(v) <= kMaxAlignment;
}

template <typename T>
T load_le(const uint8_t* p) {
  static_assert(std::is_unsigned_v<T>);
  T v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) v |= static_cast<T>(static_cast<T>(p[i]) << (8 * i));
  return v;
}

// Reads one GGUF byte stream front to back. Every read is preceded by a bounds
// check, and every error names the file, the item being read and the offset.
class Parser {
 public:
  Parser(std::span<const uint8_t> bytes, const std::string& origin)
      : bytes_(bytes), origin_(origin) {}

  size_t pos() const { return pos_; }
  void skip(size_t n) { pos_ += std::min(n, remaining()); }
  size_t remaining() const { return bytes_.size() - pos_; }
  // Describes the item being read ("metadata key #3 'general.name'") for errors.
  void set_context(std::string context) { context_ = std::move(context); }

  Error fail(ErrorKind kind, uint64_t at, const std::string& what, std::string_view advice) const {
    std::string msg = origin_ + ": ";
    if (!context_.empty()) msg += context_ + ": ";
    msg += what + " (at byte offset " + std::to_string(at) + "); ";
    msg += advice;
    return make_error(kind, std::move(msg));
  }
  Error corrupt(uint64_t at, const std::string& what) const {
    return fail(ErrorKind::kCorrupt, at, what, kCorruptAdvice);
  }

  Status need(uint64_t n, std::string_view field, std::string_view suffix = {}) const {
    if (n <= remaining()) return Status::Ok();
    return corrupt(pos_, "file ends inside the " + std::string(field) + std::string(suffix) +
                             " (needs " + std::to_string(n) + " bytes, " +
                             std::to_string(remaining()) + " left of " +
                             std::to_string(bytes_.size()) + ")");
  }

  template <typename T>
  Result<T> read(std::string_view field) {
    FSH_TRY_STATUS(need(sizeof(T), field));
    T v = load_le<T>(bytes_.data() + pos_);
    pos_ += sizeof(T);
    return v;
  }

  Result<std::string> read_string(std::string_view field) {
    FSH_ASSIGN_OR_RETURN(std::string_view view, read_string_view(field));
    return std::string(view);
  }

  Status read_value(uint32_t raw_type, int depth, GgufValue& out) {
    FSH_TRY_STATUS(check_value_budget(1));
    ++values_;
    const auto type = static_cast<GgufValueType>(raw_type);
    if (const size_t size = scalar_size(type)) {
      FSH_TRY_STATUS(need(size, value_type_name(raw_type), " value"));
      pos_ += size;
      return decode_scalar(type, pos_ - size, out);
    }
    if (type == GgufValueType::kString) {
      FSH_ASSIGN_OR_RETURN(std::string_view view, read_string_view("string value"));
      out.type = type;
      out.data.emplace<std::string>(view);
      return Status::Ok();
    }
    if (type == GgufValueType::kArray) return read_array(depth, out);
    return corrupt(pos_ >= 4 ? pos_ - 4 : 0,
                   "unknown value type " + std::to_string(raw_type) + " (valid: 0-12)");
  }

 private:
  // Byte size of a fixed-size type; 0 for strings, arrays and unknown numbers.
  // The reader's length table answers it, so the two cannot disagree.
  static size_t scalar_size(GgufValueType type) {
    if (type == GgufValueType::kString || type == GgufValueType::kArray) return 0;
    return static_cast<size_t>(min_encoded_size(static_cast<uint32_t>(type)).value_or(0));
  }

  // Decodes the scalar at `at`, whose bytes the caller has bounds-checked.
  Status decode_scalar(GgufValueType type, size_t at, GgufValue& out) const {
    const uint8_t* p = bytes_.data() + at;
    out.type = type;
    switch (type) {
      case GgufValueType::kUint8:
        out.data = uint64_t{p[0]};
        break;
      case GgufValueType::kInt8:
        out.data = int64_t{static_cast<int8_t>(p[0])};
        break;
      case GgufValueType::kUint16:
        out.data = uint64_t{load_le<uint16_t>(p)};
        break;
      case GgufValueType::kInt16:
        out.data = int64_t{static_cast<int16_t>(load_le<uint16_t>(p))};
        break;
      case GgufValueType::kUint32:
        out.data = uint64_t{load_le<uint32_t>(p)};
        break;
      case GgufValueType::kInt32:
        out.data = int64_t{static_cast<int32_t>(load_le<uint32_t>(p))};
        break;
      case GgufValueType::kUint64:
        out.data = load_le<uint64_t>(p);
        break;
      case GgufValueType::kInt64:
        out.data = static_cast<int64_t>(load_le<uint64_t>(p));
        break;
      case GgufValueType::kFloat32: {
        const uint32_t bits = load_le<uint32_t>(p);
        float f;
        std::memcpy(&f, &bits, sizeof f);
        out.data = static_cast<double>(f);
        break;
      }
      case GgufValueType::kFloat64: {
        const uint64_t bits = load_le<uint64_t>(p);
        double d;
        std::memcpy(&d, &bits, sizeof d);
        out.data = d;
        break;
      }
      case GgufValueType::kBool:
        if (p[0] > 1) return corrupt(at, "bool value is " + std::to_string(p[0]) + ", not 0 or 1");
        out.data = p[0] == 1;
        break;
      case GgufValueType::kString:
      case GgufValueType::kArray:
        break;
    }
    return Status::Ok();
  }

  Result<std::string_view> read_string_view(std::string_view field) {
    const size_t at = pos_;
    FSH_ASSIGN_OR_RETURN(uint64_t len, read<uint64_t>(field));
    if (len > remaining()) {
      return corrupt(at, std::string(field) + " claims " + std::to_string(len) +
                             " bytes but only " + std::to_string(remaining()) + " remain");
    }
    std::string_view view(reinterpret_cast<const char*>(bytes_.data() + pos_),
                          static_cast<size_t>(len));
    pos_ += static_cast<size_t>(len);
    return view;
  }

  Status check_value_budget(uint64_t more) const {
    if (more <= kMaxMetadataValues - values_) return Status::Ok();
    return fail(ErrorKind::kUnsupported, pos_,
                "metadata holds more than " + std::to_string(kMaxMetadataValues) + " values",
                "this reader caps metadata size to bound memory; check that the file is a "
                "model and not damaged");
  }

  Status read_array(int depth, GgufValue& out) {
    const size_t at = pos_;
    if (depth >= kMaxArrayDepth) {
      return corrupt(
          at, "arrays are nested more than " + std::to_string(kMaxArrayDepth) + " levels deep");
    }
    FSH_ASSIGN_OR_RETURN(uint32_t elem_type, read<uint32_t>("array element type"));
    const auto min_size = min_encoded_size(elem_type);
    if (!min_size) {
      return corrupt(
          at, "array has unknown element type " + std::to_string(elem_type) + " (valid: 0-12)");
    }
    const size_t count_at = pos_;
    FSH_ASSIGN_OR_RETURN(uint64_t count, read<uint64_t>("array length"));
    if (count > remaining() / *min_size) {
      return corrupt(count_at, "array of " + std::string(value_type_name(elem_type)) + " claims " +
                                   std::to_string(count) + " elements but only " +
                                   std::to_string(remaining()) + " bytes remain");
    }
    FSH_TRY_STATUS(check_value_budget(count));  // before allocating for the items
    GgufValue::Array arr;
    arr.element_type = static_cast<GgufValueType>(elem_type);
    arr.items.resize(static_cast<size_t>(count));
    // Scalars have a fixed size, so the length check above already covered
    // every item: decode them without per-item checks (vocabulary scores and
    // token types are ~2/3 of a model's metadata values).
    if (const size_t size = scalar_size(arr.element_type)) {
      values_ += count;
      for (GgufValue& item : arr.items) {
        FSH_TRY_STATUS(decode_scalar(arr.element_type, pos_, item));
        pos_ += size;
      }
    } else {
      for (GgufValue& item : arr.items) FSH_TRY_STATUS(read_value(elem_type, depth + 1, item));
    }
    out.type = GgufValueType::kArray;
    out.data = std::move(arr);
    return Status::Ok();
  }

  std::span<const uint8_t> bytes_;
  const std::string& origin_;
  std::string context_;
  size_t pos_ = 0;
  uint64_t values_ = 0;
};

// Non-throwing views of a value for encoding: to_bytes() encodes whatever it is
// given, and write() checks beforehand that alternatives match declared types.
uint64_t raw_bits(const GgufValue& v) {
  if (const auto* u = std::get_if<uint64_t>(&v.data)) return *u;
  if (const auto* i = std::get_if<int64_t>(&v.data)) return static_cast<uint64_t>(*i);
  if (const auto* b = std::get_if<bool>(&v.data)) return *b ? 1 : 0;
  return 0;
}

void put_bytes(std::vector<uint8_t>& out, const void* p, size_t n) {
  const auto* b = static_cast<const uint8_t*>(p);
  out.insert(out.end(), b, b + n);
}

template <typename T>
void put_le(std::vector<uint8_t>& out, T v) {
  static_assert(std::is_unsigned_v<T>);
  for (size_t i = 0; i < sizeof(T); ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

void put_string(std::vector<uint8_t>& out, std::string_view s) {
  put_le<uint64_t>(out, s.size());
  put_bytes(out, s.data(), s.size());
}

void put_value(std::vector<uint8_t>& out, const GgufValue& v) {
  switch (v.type) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kBool:
      put_le<uint8_t>(out, static_cast<uint8_t>(raw_bits(v)));
      return;
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
      put_le<uint16_t>(out, static_cast<uint16_t>(raw_bits(v)));
      return;
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
      put_le<uint32_t>(out, static_cast<uint32_t>(raw_bits(v)));
      return;
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
      put_le<uint64_t>(out, raw_bits(v));
      return;
    case GgufValueType::kFloat32: {
      const float f = static_cast<float>(v.as_float().value_or(0.0));
      uint32_t bits;
      std::memcpy(&bits, &f, sizeof bits);
      put_le<uint32_t>(out, bits);
      return;
    }
    case GgufValueType::kFloat64: {
      const double d = v.as_float().value_or(0.0);
      uint64_t bits;
      std::memcpy(&bits, &d, sizeof bits);
      put_le<uint64_t>(out, bits);
      return;
    }
    case GgufValueType::kString: {
      const std::string* s = v.as_string();
      put_string(out, s ? std::string_view(*s) : std::string_view());
      return;
    }
    case GgufValueType::kArray: {
      const GgufValue::Array* a = v.as_array();
      put_le<uint32_t>(out, static_cast<uint32_t>(a ? a->element_type : GgufValueType::kUint8));
      put_le<uint64_t>(out, a ? a->items.size() : 0);
      if (a) {
        for (const GgufValue& item : a->items) put_value(out, item);
      }
      return;
    }
  }
}

Status invalid_value(std::string_view key, const std::string& what) {
  return make_error(ErrorKind::kInvalidArgument,
                    "GGUF writer: metadata key '" + std::string(key) + "': " + what);
}

// Checks that a value's stored alternative and range match its declared type,
// so the encoded file reads back as what the caller set.
Status check_value(std::string_view key, const GgufValue& v, int depth) {
  const auto type_name = value_type_name(static_cast<uint32_t>(v.type));
  const auto in_range = [&](int64_t lo, uint64_t hi) -> bool {
    if (const auto* u = std::get_if<uint64_t>(&v.data)) return *u <= hi;
    if (const auto* i = std::get_if<int64_t>(&v.data)) {
      return *i >= lo && (*i < 0 || static_cast<uint64_t>(*i) <= hi);
    }
    return false;
  };
  bool ok = false;
  switch (v.type) {
    case GgufValueType::kUint8:
      ok = in_range(0, UINT8_MAX);
      break;
    case GgufValueType::kUint16:
      ok = in_range(0, UINT16_MAX);
      break;
    case GgufValueType::kUint32:
      ok = in_range(0, UINT32_MAX);
      break;
    case GgufValueType::kUint64:
      ok = in_range(0, UINT64_MAX);
      break;
    case GgufValueType::kInt8:
      ok = in_range(INT8_MIN, INT8_MAX);
      break;
    case GgufValueType::kInt16:
      ok = in_range(INT16_MIN, INT16_MAX);
      break;
    case GgufValueType::kInt32:
      ok = in_range(INT32_MIN, INT32_MAX);
      break;
    case GgufValueType::kInt64:
      ok = in_range(INT64_MIN, INT64_MAX);
      break;
    case GgufValueType::kFloat32:
    case GgufValueType::kFloat64:
      ok = std::holds_alternative<double>(v.data);
      break;
    case GgufValueType::kBool:
      ok = std::holds_alternative<bool>(v.data);
      break;
    case GgufValueType::kString:
      ok = std::holds_alternative<std::string>(v.data);
      break;
    case GgufValueType::kArray: {
      const GgufValue::Array* a = v.as_array();
      if (!a) break;
      if (depth >= kMaxArrayDepth) {
        return invalid_value(
            key, "arrays nested more than " + std::to_string(kMaxArrayDepth) + " levels deep");
      }
      if (!min_encoded_size(static_cast<uint32_t>(a->element_type))) {
        return invalid_value(key, "array element type " +
                                      std::to_string(static_cast<uint32_t>(a->element_type)) +
                                      " is not a GGUF type");
      }
      for (const GgufValue& item : a->items) {
        if (item.type != a->element_type) {
          return invalid_value(key, std::string("array of ") +
                                        value_type_name(static_cast<uint32_t>(a->element_type)) +
                                        " holds a " +
                                        value_type_name(static_cast<uint32_t>(item.type)));
        }
        FSH_TRY_STATUS(check_value(key, item, depth + 1));
      }
      ok = true;
      break;
    }
    default:
      return invalid_value(key, "value type " + std::to_string(static_cast<uint32_t>(v.type)) +
                                    " is not a GGUF type");
  }
  if (!ok) {
    return invalid_value(key, std::string("value does not fit its declared type ") + type_name);
  }
  return Status::Ok();
}

Status write_all(int fd, const uint8_t* p, size_t n, const std::string& path) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return make_error(ErrorKind::kIo, path + ": write failed: " + std::strerror(errno) +
                                            "; check free disk space and permissions");
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return Status::Ok();
}

}  // namespace

// ---------------------------------------------------------------- GgufValue

GgufValue GgufValue::u32(uint32_t v) {
  return {GgufValueType::kUint32, uint64_t{v}};
}
GgufValue GgufValue::i32(int32_t v) {
  return {GgufValueType::kInt32, int64_t{v}};
}
GgufValue GgufValue::u64(uint64_t v) {
  return {GgufValueType::kUint64, v};
}
GgufValue GgufValue::f32(float v) {
  return {GgufValueType::kFloat32, static_cast<double>(v)};
}
GgufValue GgufValue::boolean(bool v) {
  return {GgufValueType::kBool, v};
}
GgufValue GgufValue::string(std::string v) {
  return {GgufValueType::kString, std::move(v)};
}

GgufValue GgufValue::string_array(const std::vector<std::string>& v) {
  Array a{GgufValueType::kString, {}};
  a.items.reserve(v.size());
  for (const auto& s : v) a.items.push_back(string(s));
  return {GgufValueType::kArray, std::move(a)};
}

GgufValue GgufValue::f32_array(const std::vector<float>& v) {
  Array a{GgufValueType::kFloat32, {}};
  a.items.reserve(v.size());
  for (float f : v) a.items.push_back(f32(f));
  return {GgufValueType::kArray, std::move(a)};
}

GgufValue GgufValue::i32_array(const std::vector<int32_t>& v) {
  Array a{GgufValueType::kInt32, {}};
  a.items.reserve(v.size());
  for (int32_t i : v) a.items.push_back(i32(i));
  return {GgufValueType::kArray, std::move(a)};
}

std::optional<int64_t> GgufValue::as_int() const {
  if (const auto* u = std::get_if<uint64_t>(&data)) {
    if (*u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return static_cast<int64_t>(*u);
  }
  if (const auto* i = std::get_if<int64_t>(&data)) return *i;
  if (const auto* d = std::get_if<double>(&data)) {
    // Only exact conversions: a float key read as an integer must not be
    // silently truncated. 2^63 itself is out of range for int64.
    if (!std::isfinite(*d) || std::trunc(*d) != *d) return std::nullopt;
    if (*d < -9223372036854775808.0 || *d >= 9223372036854775808.0) return std::nullopt;
    return static_cast<int64_t>(*d);
  }
  return std::nullopt;
}

std::optional<double> GgufValue::as_float() const {
  if (const auto* d = std::get_if<double>(&data)) return *d;
  if (const auto* u = std::get_if<uint64_t>(&data)) return static_cast<double>(*u);
  if (const auto* i = std::get_if<int64_t>(&data)) return static_cast<double>(*i);
  return std::nullopt;
}

const std::string* GgufValue::as_string() const {
  return std::get_if<std::string>(&data);
}
const GgufValue::Array* GgufValue::as_array() const {
  return std::get_if<Array>(&data);
}

// ----------------------------------------------------------------- GgufFile

GgufFile::~GgufFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_size_);
}

Result<std::shared_ptr<GgufFile>> GgufFile::open(const std::string& path) {
  // O_NONBLOCK so that a FIFO passed by mistake is refused below instead of
  // blocking here; it changes nothing for regular files.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT || err == ENOTDIR) {
      return make_error(ErrorKind::kNotFound,
                        path + ": no such file; check the model path or download the model");
    }
    return make_error(ErrorKind::kIo, path + ": cannot open: " + std::strerror(err) +
                                          "; check the path and its permissions");
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return make_error(ErrorKind::kIo, path + ": cannot stat: " + std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return make_error(ErrorKind::kInvalidArgument,
                      path + ": not a regular file (a directory or device?); pass a .gguf file");
  }
  if (st.st_size == 0) {
    ::close(fd);
    return make_error(ErrorKind::kCorrupt, path + ": file is empty (0 bytes), not a GGUF model; " +
                                               std::string(kCorruptAdvice));
  }
  const auto size = static_cast<size_t>(st.st_size);
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_err = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (map == MAP_FAILED) {
    return make_error(ErrorKind::kIo, path + ": cannot memory-map " + std::to_string(size) +
                                          " bytes: " + std::strerror(map_err) +
                                          "; check free address space and memory limits");
  }
  std::shared_ptr<GgufFile> file(new GgufFile());
  file->origin_ = path;
  file->mapping_ = map;
  file->mapping_size_ = size;
  file->bytes_ = std::span<const uint8_t>(static_cast<const uint8_t*>(map), size);
  FSH_TRY_STATUS(file->parse_all());
  return file;
}

void GgufFile::release(const uint8_t* data, size_t size) const {
  const auto map = reinterpret_cast<uintptr_t>(mapping_);
  const auto first = reinterpret_cast<uintptr_t>(data);
  if (mapping_ == nullptr || first < map || size > mapping_size_ ||
      first - map > mapping_size_ - size) {
    return;
  }
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (first + page - 1) / page * page;
  const uintptr_t end = (first + size) / page * page;
  // A private read-only file mapping: dropped pages are read from the file
  // again on the next access. Failure only leaves them where they were.
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

Result<std::shared_ptr<GgufFile>> GgufFile::parse(std::span<const uint8_t> bytes,
                                                  std::string origin) {
  std::shared_ptr<GgufFile> file(new GgufFile());
  file->origin_ = std::move(origin);
  file->bytes_ = bytes;
  FSH_TRY_STATUS(file->parse_all());
  return file;
}

Status GgufFile::parse_all() {
  try {
    Parser p(bytes_, origin_);

    const size_t head = std::min(sizeof kMagic, bytes_.size());
    if (head > 0 && std::memcmp(bytes_.data(), kMagic, head) != 0) {
      const std::string found = printable({reinterpret_cast<const char*>(bytes_.data()), head});
      return p.fail(ErrorKind::kCorrupt, 0,
                    "not a GGUF file: expected magic 'GGUF', found '" + found + "'",
                    "pass a .gguf model; old GGML/GGJT files must be re-converted with a current "
                    "llama.cpp convert script");
    }
    FSH_TRY_STATUS(p.need(sizeof kMagic, "magic"));
    p.skip(sizeof kMagic);

    FSH_ASSIGN_OR_RETURN(version_, p.read<uint32_t>("version"));
    if (version_ != 2 && version_ != 3) {
      const uint32_t swapped = __builtin_bswap32(version_);
      if (swapped == 2 || swapped == 3) {
        return p.fail(ErrorKind::kUnsupported, 4,
                      "big-endian GGUF v" + std::to_string(swapped) + " file",
                      "this engine reads little-endian files only; re-convert the model "
                      "without --bigendian");
      }
      if (version_ == 1) {
        return p.fail(ErrorKind::kUnsupported, 4, "GGUF version 1 is not supported",
                      "re-convert the model with a current llama.cpp convert script (v2 or v3)");
      }
      return p.fail(version_ == 0 ? ErrorKind::kCorrupt : ErrorKind::kUnsupported, 4,
                    "GGUF version " + std::to_string(version_) + " is not supported (2 or 3)",
                    "re-convert the model to GGUF v3, or re-download it if it is damaged");
    }

    const size_t tensor_count_at = p.pos();
    FSH_ASSIGN_OR_RETURN(uint64_t tensor_count, p.read<uint64_t>("tensor count"));
    const size_t kv_count_at = p.pos();
    FSH_ASSIGN_OR_RETURN(uint64_t kv_count, p.read<uint64_t>("metadata count"));
    if (kv_count > p.remaining() / kMinKvBytes) {
      return p.corrupt(kv_count_at, "metadata count " + std::to_string(kv_count) +
                                        " cannot fit in the " + std::to_string(p.remaining()) +
                                        " bytes left");
    }
    if (tensor_count > (p.remaining() - kv_count * kMinKvBytes) / kMinTensorInfoBytes) {
      return p.corrupt(tensor_count_at, "tensor count " + std::to_string(tensor_count) +
                                            " cannot fit in the " + std::to_string(p.remaining()) +
                                            " bytes left");
    }

    for (uint64_t i = 0; i < kv_count; ++i) {
      const size_t key_at = p.pos();
      p.set_context("metadata key #" + std::to_string(i));
      FSH_ASSIGN_OR_RETURN(std::string key, p.read_string("key"));
      if (key.empty()) return p.corrupt(key_at, "key is empty");
      p.set_context("metadata key #" + std::to_string(i) + " '" + printable(key) + "'");
      auto [it, inserted] = metadata_.try_emplace(std::move(key));
      if (!inserted) return p.corrupt(key_at, "key appears more than once");
      FSH_ASSIGN_OR_RETURN(uint32_t type, p.read<uint32_t>("value type"));
      FSH_TRY_STATUS(p.read_value(type, 0, it->second));
      const GgufValue& value = it->second;
      if (it->first == kAlignmentKey) {
        const auto a = value.as_int();
        if (value.type != GgufValueType::kUint32 || !a || !is_valid_alignment(*a)) {
          return p.corrupt(key_at,
                           std::string("alignment must be a uint32 power of two up to 1048576, "
                                       "found ") +
                               value_type_name(type) + " " +
                               (a ? std::to_string(*a) : std::string("?")));
        }
        alignment_ = static_cast<uint64_t>(*a);
      }
    }
    p.set_context("");

    tensors_.reserve(static_cast<size_t>(tensor_count));
    std::vector<size_t> info_offsets;
    info_offsets.reserve(static_cast<size_t>(tensor_count));
    for (uint64_t i = 0; i < tensor_count; ++i) {
      const size_t info_at = p.pos();
      info_offsets.push_back(info_at);
      p.set_context("tensor #" + std::to_string(i));
      GgufTensorInfo t;
      FSH_ASSIGN_OR_RETURN(t.name, p.read_string("tensor name"));
      if (t.name.empty()) return p.corrupt(info_at, "tensor name is empty");
      p.set_context("tensor #" + std::to_string(i) + " '" + printable(t.name) + "'");

      const size_t dims_at = p.pos();
      FSH_ASSIGN_OR_RETURN(uint32_t n_dims, p.read<uint32_t>("dimension count"));
      if (n_dims == 0 || n_dims > kMaxDims) {
        return p.corrupt(dims_at, "has " + std::to_string(n_dims) + " dimensions (1 to " +
                                      std::to_string(kMaxDims) + " allowed)");
      }
      t.dims.resize(n_dims);
      uint64_t elements = 1;
      for (uint32_t d = 0; d < n_dims; ++d) {
        const size_t dim_at = p.pos();
        FSH_ASSIGN_OR_RETURN(t.dims[d], p.read<uint64_t>("dimension"));
        if (t.dims[d] == 0) return p.corrupt(dim_at, "dimension " + std::to_string(d) + " is 0");
        if (__builtin_mul_overflow(elements, t.dims[d], &elements) ||
            elements > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
          return p.corrupt(dim_at, "dimensions overflow a 64-bit element count at dimension " +
                                       std::to_string(d));
        }
      }
      t.element_count = elements;

      const size_t type_at = p.pos();
      FSH_ASSIGN_OR_RETURN(t.type, p.read<uint32_t>("tensor type"));
      const auto traits = tensor_type_traits(t.type);
      if (!traits) {
        return p.fail(
            ErrorKind::kUnsupported, type_at,
            "tensor type " + describe_tensor_type(t.type) + " is not supported by this engine",
            "use a file of this model whose weights are " + computable_type_names());
      }
      if (t.dims[0] % traits->block_size != 0) {
        return p.corrupt(dims_at, "row length " + std::to_string(t.dims[0]) +
                                      " is not a multiple of the " + std::string(traits->name) +
                                      " block size " + std::to_string(traits->block_size));
      }
      uint64_t bytes = 0;
      if (__builtin_mul_overflow(elements / traits->block_size, uint64_t{traits->block_bytes},
                                 &bytes)) {
        return p.corrupt(dims_at, "byte size of " + std::to_string(elements) + " " +
                                      std::string(traits->name) + " elements overflows 64 bits");
      }
      t.byte_size = bytes;

      const size_t offset_at = p.pos();
      FSH_ASSIGN_OR_RETURN(t.offset, p.read<uint64_t>("tensor data offset"));
      if (t.offset % alignment_ != 0) {
        return p.corrupt(offset_at, "data offset " + std::to_string(t.offset) +
                                        " is not a multiple of the alignment " +
                                        std::to_string(alignment_));
      }
      tensors_.push_back(std::move(t));
    }
    p.set_context("");

    const uint64_t size = bytes_.size();
    const uint64_t data_start = align_up(p.pos(), alignment_);
    if (tensor_count > 0 && data_start > size) {
      return p.corrupt(p.pos(), "tensor data section would start at byte " +
                                    std::to_string(data_start) + " but the file has " +
                                    std::to_string(size) + " bytes");
    }
    const uint64_t data_size = tensor_count > 0 ? size - data_start : 0;
    for (size_t i = 0; i < tensors_.size(); ++i) {
      GgufTensorInfo& t = tensors_[i];
      if (t.offset > data_size || t.byte_size > data_size - t.offset) {
        p.set_context("tensor #" + std::to_string(i) + " '" + printable(t.name) + "'");
        return p.corrupt(info_offsets[i],
                         "data [" + std::to_string(t.offset) + ", +" + std::to_string(t.byte_size) +
                             " bytes) of the data section at byte " + std::to_string(data_start) +
                             " runs past the end of the file (" + std::to_string(size) + " bytes)");
      }
      t.data = bytes_.data() + data_start + t.offset;
    }

    std::vector<size_t> order(tensors_.size());
    std::iota(order.begin(), order.end(), size_t{0});
    std::sort(order.begin(), order.end(),
              [&](size_t a, size_t b) { return tensors_[a].offset < tensors_[b].offset; });
    for (size_t k = 1; k < order.size(); ++k) {
      const GgufTensorInfo& prev = tensors_[order[k - 1]];
      const GgufTensorInfo& cur = tensors_[order[k]];
      if (prev.offset + prev.byte_size > cur.offset) {
        p.set_context("tensor #" + std::to_string(order[k]) + " '" + printable(cur.name) + "'");
        return p.corrupt(info_offsets[order[k]],
                         "data at offset " + std::to_string(cur.offset) + " overlaps tensor '" +
                             printable(prev.name) + "' [" + std::to_string(prev.offset) + ", " +
                             std::to_string(prev.offset + prev.byte_size) + ")");
      }
    }

    tensor_index_.reserve(tensors_.size());
    for (size_t i = 0; i < tensors_.size(); ++i) {
      if (!tensor_index_.emplace(tensors_[i].name, i).second) {
        p.set_context("tensor #" + std::to_string(i) + " '" + printable(tensors_[i].name) + "'");
        return p.corrupt(info_offsets[i], "tensor name appears more than once");
      }
    }
    return Status::Ok();
  } catch (const std::bad_alloc&) {
    return make_error(ErrorKind::kResourceExhausted,
                      origin_ +
                          ": out of memory while reading GGUF metadata; free memory or "
                          "check that the file is not damaged");
  }
}

const GgufValue* GgufFile::find(std::string_view key) const {
  const auto it = metadata_.find(std::string(key));
  return it == metadata_.end() ? nullptr : &it->second;
}

std::optional<std::string> GgufFile::get_string(std::string_view key) const {
  const GgufValue* v = find(key);
  const std::string* s = v ? v->as_string() : nullptr;
  if (!s) return std::nullopt;
  return *s;
}

std::optional<int64_t> GgufFile::get_int(std::string_view key) const {
  const GgufValue* v = find(key);
  return v ? v->as_int() : std::nullopt;
}

std::optional<double> GgufFile::get_float(std::string_view key) const {
  const GgufValue* v = find(key);
  return v ? v->as_float() : std::nullopt;
}

std::optional<bool> GgufFile::get_bool(std::string_view key) const {
  const GgufValue* v = find(key);
  const bool* b = v ? std::get_if<bool>(&v->data) : nullptr;
  if (!b) return std::nullopt;
  return *b;
}

const GgufTensorInfo* GgufFile::find_tensor(std::string_view name) const {
  const auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

// --------------------------------------------------------------- GgufWriter

void GgufWriter::set(std::string key, GgufValue value) {
  for (auto& [k, v] : metadata_) {
    if (k == key) {
      v = std::move(value);
      return;
    }
  }
  metadata_.emplace_back(std::move(key), std::move(value));
}

Status GgufWriter::add_tensor(std::string name, TensorType type, std::vector<uint64_t> dims,
                              std::span<const uint8_t> data) {
  const auto bad = [&](const std::string& what) {
    return make_error(ErrorKind::kInvalidArgument, "GGUF writer: tensor '" + name + "': " + what);
  };
  if (name.empty() || name.size() > kMaxWriterTensorName) {
    return bad("name must be 1 to " + std::to_string(kMaxWriterTensorName) +
               " bytes (llama.cpp limit)");
  }
  for (const auto& t : tensors_) {
    if (t.name == name) return bad("a tensor with this name was already added");
  }
  const auto traits = tensor_type_traits(static_cast<uint32_t>(type));
  if (!traits) return bad("unknown tensor type " + std::to_string(static_cast<uint32_t>(type)));
  if (dims.empty() || dims.size() > kMaxDims) {
    return bad("needs 1 to " + std::to_string(kMaxDims) + " dimensions, got " +
               std::to_string(dims.size()));
  }
  uint64_t elements = 1;
  for (uint64_t d : dims) {
    if (d == 0) return bad("has a zero dimension");
    if (__builtin_mul_overflow(elements, d, &elements) ||
        elements > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return bad("element count overflows int64");
    }
  }
  if (dims[0] % traits->block_size != 0) {
    return bad("row length " + std::to_string(dims[0]) + " is not a multiple of the " +
               std::string(traits->name) + " block size " + std::to_string(traits->block_size));
  }
  uint64_t expected = 0;
  if (__builtin_mul_overflow(elements / traits->block_size, uint64_t{traits->block_bytes},
                             &expected) ||
      expected != data.size()) {
    return bad(std::to_string(elements) + " " + std::string(traits->name) + " elements need " +
               std::to_string(expected) + " bytes, got " + std::to_string(data.size()));
  }
  tensors_.push_back({std::move(name), type, std::move(dims), {data.begin(), data.end()}});
  return Status::Ok();
}

namespace {

uint64_t writer_alignment(const std::vector<std::pair<std::string, GgufValue>>& metadata) {
  for (const auto& [k, v] : metadata) {
    if (k != kAlignmentKey) continue;
    const auto a = v.as_int();
    if (v.type == GgufValueType::kUint32 && a && is_valid_alignment(*a)) {
      return static_cast<uint64_t>(*a);
    }
  }
  return kDefaultAlignment;
}

// Everything before the tensor data, padded to the alignment. A template so it
// can take the writer's private tensor list; tensor data is written separately
// so write() never holds a second copy of the weights.
template <typename Tensors>
std::vector<uint8_t> encode_header(const std::vector<std::pair<std::string, GgufValue>>& metadata,
                                   const Tensors& tensors, uint64_t alignment) {
  std::vector<uint8_t> out(std::begin(kMagic), std::end(kMagic));
  put_le<uint32_t>(out, kWriteVersion);
  put_le<uint64_t>(out, tensors.size());
  put_le<uint64_t>(out, metadata.size());
  for (const auto& [key, value] : metadata) {
    put_string(out, key);
    put_le<uint32_t>(out, static_cast<uint32_t>(value.type));
    put_value(out, value);
  }
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    put_string(out, t.name);
    put_le<uint32_t>(out, static_cast<uint32_t>(t.dims.size()));
    for (uint64_t d : t.dims) put_le<uint64_t>(out, d);
    put_le<uint32_t>(out, static_cast<uint32_t>(t.type));
    put_le<uint64_t>(out, offset);
    offset += align_up(t.data.size(), alignment);
  }
  out.resize(static_cast<size_t>(align_up(out.size(), alignment)), 0);
  return out;
}

}  // namespace

std::vector<uint8_t> GgufWriter::to_bytes() const {
  const uint64_t alignment = writer_alignment(metadata_);
  std::vector<uint8_t> out = encode_header(metadata_, tensors_, alignment);
  // Every tensor, the last included, is padded, as llama.cpp and gguf-py do.
  for (const auto& t : tensors_) {
    put_bytes(out, t.data.data(), t.data.size());
    out.resize(static_cast<size_t>(align_up(out.size(), alignment)), 0);
  }
  return out;
}

namespace {

std::string file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a folder";
  if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISLNK(mode)) return "a symbolic link";
  return "something other than a regular file";
}

}  // namespace

Result<std::string> resolve_output_path(const std::string& path) {
  // Writing replaces the file by renaming a temporary onto it, which would
  // turn a symlink, FIFO or device node (say /dev/null, as root) into a plain
  // file; so a link is followed to its target and anything else that is not
  // a regular file is refused.
  std::string current = path;
  for (int hops = 0;; ++hops) {
    struct stat st {};
    if (::lstat(current.c_str(), &st) != 0) {
      if (errno == ENOENT) return current;  // a new file
      return make_error(ErrorKind::kIo, "output '" + path + "': cannot inspect '" + current +
                                            "': " + std::strerror(errno));
    }
    if (S_ISREG(st.st_mode)) return current;
    if (S_ISLNK(st.st_mode)) {
      if (hops >= 40) {
        return make_error(ErrorKind::kInvalidArgument,
                          "output '" + path +
                              "': too many levels of symbolic links; give the "
                              "path of a regular file");
      }
      std::string target(static_cast<size_t>(st.st_size > 0 ? st.st_size : 4096) + 1, '\0');
      const ssize_t n = ::readlink(current.c_str(), target.data(), target.size());
      if (n < 0) {
        return make_error(ErrorKind::kIo, "output '" + path + "': cannot read the link '" +
                                              current + "': " + std::strerror(errno));
      }
      target.resize(static_cast<size_t>(n));
      if (!target.starts_with('/')) {
        const size_t slash = current.rfind('/');
        if (slash != std::string::npos) target = current.substr(0, slash + 1) + target;
      }
      current = std::move(target);
      continue;
    }
    const std::string where =
        current == path ? "'" + path + "'" : "'" + path + "' (a link to '" + current + "')";
    return make_error(ErrorKind::kInvalidArgument,
                      "output " + where + " is " + file_kind(st.st_mode) +
                          ", not a regular file; refusing to replace it; give the path of a "
                          "regular file or of a new one");
  }
}

Status GgufWriter::write(const std::string& path,
                         const std::function<Status(const std::string& written)>& verify) const {
  for (const auto& [key, value] : metadata_) {
    if (key.empty()) {
      return make_error(ErrorKind::kInvalidArgument, "GGUF writer: a metadata key is empty");
    }
    FSH_TRY_STATUS(check_value(key, value, 0));
    if (key == kAlignmentKey) {
      const auto a = value.as_int();
      if (value.type != GgufValueType::kUint32 || !a || !is_valid_alignment(*a)) {
        return invalid_value(key, "must be a uint32 power of two up to 1048576");
      }
    }
  }
  FSH_ASSIGN_OR_RETURN(const std::string target, resolve_output_path(path));
  const uint64_t alignment = writer_alignment(metadata_);
  // Written beside the target and renamed, so a reader never maps a half-written model.
  const std::string tmp = target + ".partial";
  // The temporary is ours to replace, but only as a regular file: O_NOFOLLOW
  // and O_NONBLOCK keep a link or FIFO in its place from being written into.
  struct stat tmp_st {};
  if (::lstat(tmp.c_str(), &tmp_st) == 0 && !S_ISREG(tmp_st.st_mode)) {
    return make_error(ErrorKind::kInvalidArgument,
                      tmp + ": the temporary file's name is taken by " + file_kind(tmp_st.st_mode) +
                          "; remove it and write again");
  }
  const int fd =
      ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0644);
  if (fd < 0) {
    return make_error(ErrorKind::kIo, tmp + ": cannot create: " + std::strerror(errno) +
                                          "; check that the folder exists and is writable");
  }
  const std::vector<uint8_t> header = encode_header(metadata_, tensors_, alignment);
  Status st = write_all(fd, header.data(), header.size(), tmp);
  static constexpr uint8_t kZeros[256] = {};
  for (const auto& t : tensors_) {
    if (!st.ok()) break;
    st = write_all(fd, t.data.data(), t.data.size(), tmp);
    const uint64_t pad = align_up(t.data.size(), alignment) - t.data.size();
    for (uint64_t left = pad; st.ok() && left > 0;) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(left, sizeof kZeros));
      st = write_all(fd, kZeros, n, tmp);
      left -= n;
    }
  }
  if (::close(fd) != 0 && st.ok()) {
    st = make_error(ErrorKind::kIo, tmp + ": close failed: " + std::strerror(errno));
  }
  if (st.ok() && verify) st = verify(tmp);
  if (st.ok() && ::rename(tmp.c_str(), target.c_str()) != 0) {
    st = make_error(ErrorKind::kIo,
                    target + ": cannot rename " + tmp + " into place: " + std::strerror(errno));
  }
  if (!st.ok()) ::unlink(tmp.c_str());
  return st;
}

}  // namespace foreshore::engine
