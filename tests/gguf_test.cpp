#include "engine/gguf.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>

namespace foreshore::engine {
namespace {

namespace fs = std::filesystem;

// Folders that may hold the shared test models: FORESHORE_MODEL_PATH
// (colon-separated) first, then the checkout's shared data.
std::optional<std::string> find_model(const std::string& name) {
  std::vector<std::string> dirs;
  if (const char* env = std::getenv("FORESHORE_MODEL_PATH")) {
    std::string_view rest = env;
    while (!rest.empty()) {
      const size_t colon = rest.find(':');
      if (colon != 0) dirs.emplace_back(rest.substr(0, colon));
      if (colon == std::string_view::npos) break;
      rest.remove_prefix(colon + 1);
    }
  }
  dirs.push_back(std::string(FSH_SHARED_DATA_DIR) + "/models");
  for (const auto& dir : dirs) {
    const fs::path p = fs::path(dir) / name;
    std::error_code ec;
    if (fs::is_regular_file(p, ec)) return p.string();
  }
  return std::nullopt;
}

// A temporary file removed when the test ends.
class TempFile {
 public:
  explicit TempFile(const std::string& stem)
      : path_((fs::temp_directory_path() /
               (stem + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter_++)))
                  .string()) {}
  ~TempFile() {
    std::error_code ec;
    fs::remove(path_, ec);
  }
  const std::string& path() const { return path_; }
  void write(const std::vector<uint8_t>& bytes) const {
    std::ofstream f(path_, std::ios::binary);
    f.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  }

 private:
  static inline int counter_ = 0;
  std::string path_;
};

// Little-endian byte builder for hand-made (often hostile) files.
class Bytes {
 public:
  Bytes& u8(uint8_t v) {
    b_.push_back(v);
    return *this;
  }
  Bytes& u32(uint32_t v) { return le(v, 4); }
  Bytes& u64(uint64_t v) { return le(v, 8); }
  Bytes& str(std::string_view s) {
    u64(s.size());
    b_.insert(b_.end(), s.begin(), s.end());
    return *this;
  }
  Bytes& raw(std::string_view s) {
    b_.insert(b_.end(), s.begin(), s.end());
    return *this;
  }
  Bytes& header(uint64_t tensors, uint64_t kvs, uint32_t version = 3) {
    return raw("GGUF").u32(version).u64(tensors).u64(kvs);
  }
  Bytes& kv_u32(std::string_view key, uint32_t v) { return str(key).u32(4).u32(v); }
  Bytes& tensor(std::string_view name, std::vector<uint64_t> dims, uint32_t type, uint64_t offset) {
    str(name).u32(static_cast<uint32_t>(dims.size()));
    for (uint64_t d : dims) u64(d);
    return u32(type).u64(offset);
  }
  Bytes& pad_to(size_t alignment) {
    while (b_.size() % alignment != 0) b_.push_back(0);
    return *this;
  }
  Bytes& zeros(size_t n) {
    b_.insert(b_.end(), n, 0);
    return *this;
  }
  const std::vector<uint8_t>& bytes() const { return b_; }

 private:
  Bytes& le(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) b_.push_back(static_cast<uint8_t>(v >> (8 * i)));
    return *this;
  }
  std::vector<uint8_t> b_;
};

std::vector<uint8_t> pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed + i * 7);
  return v;
}

GgufValue scalar(GgufValueType type, std::variant<uint64_t, int64_t, double, bool> v) {
  GgufValue out;
  out.type = type;
  std::visit([&](auto x) { out.data = x; }, v);
  return out;
}

GgufValue array_of(GgufValueType element_type, std::vector<GgufValue> items) {
  return {GgufValueType::kArray, GgufValue::Array{element_type, std::move(items)}};
}

// One value of each of the 13 types, arrays (empty, nested, of strings)
// included; the key names its type.
std::vector<std::pair<std::string, GgufValue>> every_value_type() {
  using T = GgufValueType;
  return {
      {"t.u8", scalar(T::kUint8, uint64_t{255})},
      {"t.i8", scalar(T::kInt8, int64_t{-128})},
      {"t.u16", scalar(T::kUint16, uint64_t{65535})},
      {"t.i16", scalar(T::kInt16, int64_t{-32768})},
      {"t.u32", GgufValue::u32(4000000000u)},
      {"t.i32", GgufValue::i32(-2000000000)},
      {"t.f32", GgufValue::f32(1e-5f)},
      {"t.bool", GgufValue::boolean(true)},
      {"t.string", GgufValue::string(std::string("h\xc3\xa9llo\0world", 12))},
      {"t.u64", GgufValue::u64(std::numeric_limits<uint64_t>::max())},
      {"t.i64", scalar(T::kInt64, std::numeric_limits<int64_t>::min())},
      {"t.f64", scalar(T::kFloat64, 3.141592653589793)},
      {"t.empty_string", GgufValue::string("")},
      {"t.strings", GgufValue::string_array({"<unk>", "", "\xe2\x96\x81the"})},
      {"t.floats", GgufValue::f32_array({0.5f, -1.25f, 1e30f})},
      {"t.ints", GgufValue::i32_array({1, -2, 3})},
      {"t.empty_array", array_of(T::kUint8, {})},
      {"t.bools", array_of(T::kBool, {GgufValue::boolean(false), GgufValue::boolean(true)})},
      {"t.nested", array_of(T::kArray, {GgufValue::i32_array({1, 2}), GgufValue::i32_array({}),
                                        array_of(T::kInt32, {GgufValue::i32(3)})})},
      {"t.deep", array_of(T::kArray, {array_of(T::kArray, {GgufValue::string_array({"x"})})})},
  };
}

void expect_same_value(const GgufValue& want, const GgufValue& got, const std::string& where) {
  SCOPED_TRACE(where);
  ASSERT_EQ(want.type, got.type);
  ASSERT_EQ(want.data.index(), got.data.index());
  if (const auto* a = want.as_array()) {
    const auto* b = got.as_array();
    ASSERT_NE(b, nullptr);
    ASSERT_EQ(a->element_type, b->element_type);
    ASSERT_EQ(a->items.size(), b->items.size());
    for (size_t i = 0; i < a->items.size(); ++i) {
      expect_same_value(a->items[i], b->items[i], where + "[" + std::to_string(i) + "]");
    }
  } else if (const auto* str = want.as_string()) {
    EXPECT_EQ(*str, *got.as_string());
  } else if (const auto* b = std::get_if<bool>(&want.data)) {
    EXPECT_EQ(*b, std::get<bool>(got.data));
  } else {
    // Integers compare exactly through double only up to 2^53, so compare both views.
    EXPECT_EQ(want.as_int(), got.as_int());
    EXPECT_EQ(want.as_float(), got.as_float());
    if (const auto* u = std::get_if<uint64_t>(&want.data)) {
      EXPECT_EQ(*u, std::get<uint64_t>(got.data));
    }
  }
}

struct TestTensor {
  std::string name;
  TensorType type;
  std::vector<uint64_t> dims;
  std::vector<uint8_t> data;
};

std::vector<TestTensor> several_tensors() {
  return {
      {"f32.matrix", TensorType::kF32, {4, 3}, pattern(4 * 3 * 4, 1)},
      {"f16.vector", TensorType::kF16, {7}, pattern(7 * 2, 2)},
      {"q8_0.weight", TensorType::kQ8_0, {64, 2}, pattern(2 * 2 * 34, 3)},
      {"q4_k.weight", TensorType::kQ4_K, {256}, pattern(144, 4)},
      {"bf16.4d", TensorType::kBF16, {2, 3, 2, 2}, pattern(24 * 2, 5)},
      {"q6_k.weight", TensorType::kQ6_K, {256, 1, 1}, pattern(210, 6)},
  };
}

GgufWriter full_writer() {
  GgufWriter w;
  w.set("general.architecture", GgufValue::string("llama"));
  for (auto& [k, v] : every_value_type()) w.set(k, v);
  for (const auto& t : several_tensors())
    EXPECT_TRUE(w.add_tensor(t.name, t.type, t.dims, t.data).ok());
  return w;
}

// `base` is the start of the parsed buffer, or null for a mapped file.
void expect_full_contents(const GgufFile& f, const uint8_t* base) {
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  const auto values = every_value_type();
  EXPECT_EQ(f.metadata().size(), values.size() + 1);
  for (const auto& [k, v] : values) {
    const GgufValue* got = f.find(k);
    ASSERT_NE(got, nullptr) << k;
    expect_same_value(v, *got, k);
  }
  const auto tensors = several_tensors();
  ASSERT_EQ(f.tensors().size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TestTensor& want = tensors[i];
    const GgufTensorInfo& got = f.tensors()[i];
    SCOPED_TRACE(want.name);
    EXPECT_EQ(got.name, want.name);
    EXPECT_EQ(got.type, static_cast<uint32_t>(want.type));
    EXPECT_EQ(got.dims, want.dims);
    EXPECT_EQ(got.byte_size, want.data.size());
    EXPECT_EQ(got.offset % 32, 0u);
    if (base != nullptr) {
      EXPECT_EQ(static_cast<size_t>(got.data - base) % 32, 0u);
      ASSERT_LE(got.data + got.byte_size, base + f.file_size());
    }
    EXPECT_EQ(std::memcmp(got.data, want.data.data(), want.data.size()), 0);
    EXPECT_EQ(f.find_tensor(want.name), &got);
  }
  EXPECT_EQ(f.find_tensor("missing"), nullptr);
}

Error parse_error(const std::vector<uint8_t>& bytes, std::string origin = "crafted.gguf") {
  auto r = GgufFile::parse(bytes, std::move(origin));
  if (r.ok()) {
    ADD_FAILURE() << "hostile file parsed without error";
    return {};
  }
  return r.error();
}

// ------------------------------------------------------------ value helpers

TEST(GgufValue, HelpersAndAccessors) {
  EXPECT_EQ(GgufValue::u32(7).as_int(), 7);
  EXPECT_EQ(GgufValue::i32(-7).as_int(), -7);
  EXPECT_EQ(GgufValue::u64(std::numeric_limits<uint64_t>::max()).as_int(), std::nullopt);
  EXPECT_EQ(GgufValue::u64(5).as_float(), 5.0);
  EXPECT_EQ(GgufValue::f32(2.0f).as_int(), 2);  // exact conversions only
  EXPECT_EQ(GgufValue::f32(2.5f).as_int(), std::nullopt);
  EXPECT_EQ(GgufValue::f32(2.5f).as_float(), 2.5);
  EXPECT_EQ(GgufValue::boolean(true).as_int(), std::nullopt);
  EXPECT_EQ(GgufValue::string("x").as_int(), std::nullopt);
  ASSERT_NE(GgufValue::string("x").as_string(), nullptr);
  EXPECT_EQ(*GgufValue::string("x").as_string(), "x");
  EXPECT_EQ(GgufValue::u32(1).as_string(), nullptr);
  const GgufValue a = GgufValue::string_array({"a", "b"});
  EXPECT_EQ(a.type, GgufValueType::kArray);
  ASSERT_NE(a.as_array(), nullptr);
  EXPECT_EQ(a.as_array()->element_type, GgufValueType::kString);
  EXPECT_EQ(a.as_array()->items.size(), 2u);
  EXPECT_EQ(GgufValue::f32_array({1.0f}).as_array()->element_type, GgufValueType::kFloat32);
  EXPECT_EQ(GgufValue::i32_array({1}).as_array()->items[0].as_int(), 1);
}

// ---------------------------------------------------------------- round trip

TEST(GgufRoundTrip, EveryValueTypeAndTensorsInMemory) {
  const std::vector<uint8_t> bytes = full_writer().to_bytes();
  auto f = GgufFile::parse(bytes);
  ASSERT_TRUE(f.ok()) << f.error().message;
  expect_full_contents(**f, bytes.data());
  EXPECT_EQ((*f)->get_int("t.u32"), 4000000000);
  EXPECT_EQ((*f)->get_float("t.f32"), static_cast<double>(1e-5f));
  EXPECT_EQ((*f)->get_bool("t.bool"), true);
  EXPECT_EQ((*f)->get_bool("t.u8"), std::nullopt);
  EXPECT_EQ((*f)->get_string("t.u8"), std::nullopt);
  EXPECT_EQ((*f)->get_int("missing"), std::nullopt);
}

TEST(GgufRoundTrip, WriteThenOpenMapsAlignedData) {
  TempFile tmp("gguf-roundtrip");
  const GgufWriter w = full_writer();
  ASSERT_TRUE(w.write(tmp.path()).ok());
  EXPECT_FALSE(fs::exists(tmp.path() + ".partial"));
  auto f = GgufFile::open(tmp.path());
  ASSERT_TRUE(f.ok()) << f.error().message;
  EXPECT_EQ((*f)->origin(), tmp.path());
  expect_full_contents(**f, nullptr);
  // The mapping is page-aligned, so file alignment is address alignment.
  for (const auto& t : (*f)->tensors()) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % 32, 0u) << t.name;
  }
  // write() streams the data; to_bytes() must produce the same file.
  std::ifstream in(tmp.path(), std::ios::binary);
  const std::vector<uint8_t> on_disk((std::istreambuf_iterator<char>(in)),
                                     std::istreambuf_iterator<char>());
  EXPECT_EQ(on_disk, w.to_bytes());
}

// Released pages read back from the file: the bytes stay the same, for a
// range larger than a page and for one inside a page (nothing to drop).
TEST(GgufRoundTrip, ReleasedTensorBytesReadTheSame) {
  TempFile tmp("gguf-release");
  GgufWriter w;
  const std::vector<uint8_t> big = pattern(3 * 4096 + 100, 7);
  ASSERT_TRUE(w.add_tensor("big", TensorType::kF32, {big.size() / 4}, big).ok());
  ASSERT_TRUE(w.add_tensor("small", TensorType::kF32, {4}, pattern(16, 9)).ok());
  ASSERT_TRUE(w.write(tmp.path()).ok());
  auto f = GgufFile::open(tmp.path());
  ASSERT_TRUE(f.ok()) << f.error().message;
  for (const auto& t : (*f)->tensors()) {
    const std::vector<uint8_t> before(t.data, t.data + t.byte_size);
    (*f)->release(t.data, t.byte_size);
    EXPECT_EQ(std::vector<uint8_t>(t.data, t.data + t.byte_size), before) << t.name;
  }
  // Bytes outside the mapping are left alone.
  const std::vector<uint8_t> outside = pattern(8192, 1);
  (*f)->release(outside.data(), outside.size());
  EXPECT_EQ(outside, pattern(8192, 1));
}

TEST(GgufRoundTrip, VersionTwoReadsTheSame) {
  std::vector<uint8_t> bytes = full_writer().to_bytes();
  bytes[4] = 2;
  auto f = GgufFile::parse(bytes);
  ASSERT_TRUE(f.ok()) << f.error().message;
  EXPECT_EQ((*f)->version(), 2u);
  EXPECT_EQ((*f)->tensors().size(), several_tensors().size());
}

TEST(GgufWriter, ExactBytesFollowTheSpec) {
  GgufWriter w;
  w.set("a", GgufValue::u32(7));
  w.set("b", GgufValue::i32_array({-1}));
  const std::vector<uint8_t> weights = pattern(8, 9);
  ASSERT_TRUE(w.add_tensor("w", TensorType::kF32, {2}, weights).ok());
  Bytes want;
  want.header(1, 2).str("a").u32(4).u32(7);
  want.str("b").u32(9).u32(5).u64(1).u32(0xffffffffu);
  want.str("w").u32(1).u64(2).u32(0).u64(0).pad_to(32);
  for (uint8_t b : weights) want.u8(b);
  want.pad_to(32);
  EXPECT_EQ(w.to_bytes(), want.bytes());
}

TEST(GgufWriter, MetadataInInsertionOrderAndSetReplaces) {
  GgufWriter w;
  w.set("zeta", GgufValue::u32(1));
  w.set("alpha", GgufValue::u32(2));
  w.set("zeta", GgufValue::u32(3));  // replaces in place, keeps its position
  Bytes want;
  want.header(0, 2).str("zeta").u32(4).u32(3).str("alpha").u32(4).u32(2).pad_to(32);
  EXPECT_EQ(w.to_bytes(), want.bytes());
}

TEST(GgufWriter, CustomAlignment) {
  GgufWriter w;
  w.set("general.alignment", GgufValue::u32(256));
  ASSERT_TRUE(w.add_tensor("a", TensorType::kF32, {3}, pattern(12, 1)).ok());
  ASSERT_TRUE(w.add_tensor("b", TensorType::kF32, {5}, pattern(20, 2)).ok());
  const auto bytes = w.to_bytes();
  auto f = GgufFile::parse(bytes);
  ASSERT_TRUE(f.ok()) << f.error().message;
  EXPECT_EQ((*f)->alignment(), 256u);
  EXPECT_EQ((*f)->tensors()[1].offset, 256u);
  EXPECT_EQ(static_cast<size_t>((*f)->tensors()[0].data - bytes.data()) % 256, 0u);
  EXPECT_EQ(bytes.size() % 256, 0u);
}

TEST(GgufWriter, RejectsInconsistentTensors) {
  GgufWriter w;
  const auto expect_invalid = [](const Status& s, std::string_view needle) {
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.error().kind, ErrorKind::kInvalidArgument);
    EXPECT_NE(s.error().message.find(needle), std::string::npos) << s.error().message;
  };
  expect_invalid(w.add_tensor("t", TensorType::kF32, {4}, pattern(15, 0)), "need 16 bytes");
  expect_invalid(w.add_tensor("t", TensorType::kQ8_0, {33}, pattern(34, 0)), "block size 32");
  expect_invalid(w.add_tensor("t", TensorType::kF32, {}, {}), "dimensions");
  expect_invalid(w.add_tensor("t", TensorType::kF32, {1, 1, 1, 1, 1}, pattern(4, 0)), "dimensions");
  expect_invalid(w.add_tensor("t", TensorType::kF32, {0}, {}), "zero");
  expect_invalid(w.add_tensor("t", TensorType::kF32, {uint64_t{1} << 32, uint64_t{1} << 32}, {}),
                 "overflow");
  expect_invalid(w.add_tensor("", TensorType::kF32, {1}, pattern(4, 0)), "name");
  expect_invalid(w.add_tensor(std::string(64, 'x'), TensorType::kF32, {1}, pattern(4, 0)), "name");
  expect_invalid(w.add_tensor("t", static_cast<TensorType>(99), {1}, pattern(4, 0)), "type 99");
  ASSERT_TRUE(w.add_tensor("t", TensorType::kF32, {1}, pattern(4, 0)).ok());
  expect_invalid(w.add_tensor("t", TensorType::kF32, {1}, pattern(4, 0)), "already");
}

TEST(GgufWriter, WriteRejectsValuesThatDoNotMatchTheirType) {
  TempFile tmp("gguf-bad-value");
  const auto expect_rejected = [&](GgufValue v, std::string_view needle) {
    GgufWriter w;
    w.set("k", std::move(v));
    const Status s = w.write(tmp.path());
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.error().kind, ErrorKind::kInvalidArgument);
    EXPECT_NE(s.error().message.find("'k'"), std::string::npos) << s.error().message;
    EXPECT_NE(s.error().message.find(needle), std::string::npos) << s.error().message;
    EXPECT_FALSE(fs::exists(tmp.path()));
  };
  expect_rejected(scalar(GgufValueType::kUint8, uint64_t{256}), "uint8");
  expect_rejected(scalar(GgufValueType::kInt8, int64_t{-129}), "int8");
  expect_rejected(scalar(GgufValueType::kUint32, int64_t{-1}), "uint32");
  expect_rejected({GgufValueType::kString, uint64_t{1}}, "string");
  expect_rejected(array_of(GgufValueType::kInt32, {GgufValue::u32(1)}), "holds a uint32");
  expect_rejected(scalar(static_cast<GgufValueType>(13), uint64_t{0}), "not a GGUF type");
  GgufWriter w;
  w.set("general.alignment", GgufValue::u32(48));
  EXPECT_EQ(w.write(tmp.path()).error().kind, ErrorKind::kInvalidArgument);
  GgufWriter huge;
  huge.set("general.alignment", GgufValue::u32(1u << 30));
  EXPECT_EQ(huge.write(tmp.path()).error().kind, ErrorKind::kInvalidArgument);
  GgufWriter w64;
  w64.set("general.alignment", GgufValue::u64(64));
  EXPECT_EQ(w64.write(tmp.path()).error().kind, ErrorKind::kInvalidArgument);
}

TEST(GgufWriter, WriteToMissingFolderIsIoError) {
  GgufWriter w;
  const Status s = w.write("/nonexistent-dir-for-gguf-test/out.gguf");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().kind, ErrorKind::kIo);
  EXPECT_NE(s.error().message.find("/nonexistent-dir-for-gguf-test/out.gguf"), std::string::npos);
}

TEST(GgufWriter, WritesThroughASymlinkAndKeepsTheLink) {
  GgufWriter w;
  w.set("general.name", GgufValue::string("through"));
  TempFile target("gguf-link-target");
  TempFile link("gguf-link");
  target.write({1, 2, 3});
  fs::create_symlink(target.path(), link.path());
  const Status s = w.write(link.path());
  ASSERT_TRUE(s.ok()) << s.error().message;
  EXPECT_TRUE(fs::is_symlink(fs::symlink_status(link.path())));
  auto f = GgufFile::open(target.path());
  ASSERT_TRUE(f.ok()) << f.error().message;
  EXPECT_EQ((*f)->get_string("general.name"), "through");
  EXPECT_FALSE(fs::exists(target.path() + ".partial"));

  // A dangling link gets its target created.
  TempFile dangling("gguf-dangling");
  const std::string missing = target.path() + "-new";
  fs::create_symlink(missing, dangling.path());
  ASSERT_TRUE(w.write(dangling.path()).ok());
  EXPECT_TRUE(fs::is_symlink(fs::symlink_status(dangling.path())));
  EXPECT_TRUE(fs::is_regular_file(fs::symlink_status(missing)));
  fs::remove(missing);
}

TEST(GgufWriter, AFailedVerificationLeavesTheTargetUntouched) {
  GgufWriter w;
  w.set("general.name", GgufValue::string("new"));
  TempFile target("gguf-verify");
  target.write({7, 7, 7});
  std::string seen;
  const Status s = w.write(target.path(), [&](const std::string& written) -> Status {
    seen = written;
    EXPECT_TRUE(GgufFile::open(written).ok());
    return make_error(ErrorKind::kInternal, "rejected by the test");
  });
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().message, "rejected by the test");
  EXPECT_EQ(seen, target.path() + ".partial");
  EXPECT_FALSE(fs::exists(seen));
  EXPECT_EQ(fs::file_size(target.path()), 3u);

  ASSERT_TRUE(w.write(target.path(), [](const std::string&) { return Status::Ok(); }).ok());
  EXPECT_TRUE(GgufFile::open(target.path()).ok());
}

TEST(GgufWriter, RefusesToReplaceAFifoOrAFolder) {
  GgufWriter w;
  TempFile fifo("gguf-fifo");
  ASSERT_EQ(::mkfifo(fifo.path().c_str(), 0600), 0);
  Status s = w.write(fifo.path());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().kind, ErrorKind::kInvalidArgument);
  EXPECT_NE(s.error().message.find("FIFO"), std::string::npos) << s.error().message;
  EXPECT_NE(s.error().message.find("not a regular file"), std::string::npos);
  EXPECT_TRUE(fs::is_fifo(fs::symlink_status(fifo.path())));
  EXPECT_FALSE(fs::exists(fifo.path() + ".partial"));

  // Through a link too: the FIFO it points to stays.
  TempFile link("gguf-fifo-link");
  fs::create_symlink(fifo.path(), link.path());
  s = w.write(link.path());
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message.find("a link to"), std::string::npos) << s.error().message;
  EXPECT_TRUE(fs::is_fifo(fs::symlink_status(fifo.path())));
  EXPECT_TRUE(fs::is_symlink(fs::symlink_status(link.path())));

  const std::string dir = fs::temp_directory_path().string();
  s = w.write(dir);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message.find("a folder"), std::string::npos) << s.error().message;
  EXPECT_TRUE(fs::is_directory(dir));

  // A device node: /dev/null is one wherever the tests run.
  auto resolved = resolve_output_path("/dev/null");
  ASSERT_FALSE(resolved.ok());
  EXPECT_NE(resolved.error().message.find("character device"), std::string::npos);
}

// --------------------------------------------------------------- real files

TEST(GgufRealFiles, Stories260K) {
  const auto path = find_model("stories260K.gguf");
  if (!path) GTEST_SKIP() << "stories260K.gguf not found; set FORESHORE_MODEL_PATH";
  auto r = GgufFile::open(*path);
  ASSERT_TRUE(r.ok()) << r.error().message;
  const GgufFile& f = **r;
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.tensors().size(), 48u);
  EXPECT_EQ(f.get_int("llama.embedding_length"), 64);
  EXPECT_EQ(f.get_int("llama.block_count"), 5);
  EXPECT_NEAR(*f.get_float("llama.attention.layer_norm_rms_epsilon"), 1e-5, 1e-9);
  EXPECT_EQ(f.get_int("tokenizer.ggml.seperator_token_id"), 4294967295);
  const GgufValue* tokens = f.find("tokenizer.ggml.tokens");
  ASSERT_NE(tokens, nullptr);
  ASSERT_NE(tokens->as_array(), nullptr);
  EXPECT_EQ(tokens->as_array()->items.size(), 512u);
  EXPECT_EQ(*tokens->as_array()->items[1].as_string(), "<s>");
  const GgufTensorInfo* emb = f.find_tensor("token_embd.weight");
  ASSERT_NE(emb, nullptr);
  EXPECT_EQ(emb->dims, (std::vector<uint64_t>{64, 512}));
  EXPECT_EQ(emb->type, static_cast<uint32_t>(TensorType::kF32));
  EXPECT_EQ(emb->byte_size, 64u * 512u * 4u);
  EXPECT_EQ(emb->element_count, 64u * 512u);
  EXPECT_EQ(f.find_tensor("blk.4.ffn_down.weight")->dims, (std::vector<uint64_t>{172, 64}));
}

TEST(GgufRealFiles, LlamaTinyRandom) {
  const auto path = find_model("llama-2-tiny-random.gguf");
  if (!path) GTEST_SKIP() << "llama-2-tiny-random.gguf not found; set FORESHORE_MODEL_PATH";
  auto r = GgufFile::open(*path);
  ASSERT_TRUE(r.ok()) << r.error().message;
  const GgufFile& f = **r;
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  const GgufValue* tokens = f.find("tokenizer.ggml.tokens");
  ASSERT_NE(tokens, nullptr);
  ASSERT_NE(tokens->as_array(), nullptr);
  EXPECT_EQ(tokens->as_array()->element_type, GgufValueType::kString);
  EXPECT_EQ(tokens->as_array()->items.size(), 32000u);
  EXPECT_EQ(f.find("tokenizer.ggml.scores")->as_array()->items.size(), 32000u);
  const GgufTensorInfo* emb = f.find_tensor("token_embd.weight");
  ASSERT_NE(emb, nullptr);
  EXPECT_EQ(emb->type, static_cast<uint32_t>(TensorType::kF16));
  EXPECT_EQ(emb->dims, (std::vector<uint64_t>{8, 32000}));
  size_t f16 = 0;
  for (const auto& t : f.tensors()) f16 += t.type == static_cast<uint32_t>(TensorType::kF16);
  EXPECT_GT(f16, 0u);
  EXPECT_EQ(f.find_tensor("output_norm.weight")->type, static_cast<uint32_t>(TensorType::kF32));
}

// Rewriting a real model with the writer yields a file our reader sees as identical.
TEST(GgufRealFiles, RewriteRoundTrip) {
  const auto path = find_model("stories260K.gguf");
  if (!path) GTEST_SKIP() << "stories260K.gguf not found; set FORESHORE_MODEL_PATH";
  auto orig = GgufFile::open(*path);
  ASSERT_TRUE(orig.ok()) << orig.error().message;
  GgufWriter w;
  for (const auto& [k, v] : (*orig)->metadata()) w.set(k, v);
  for (const auto& t : (*orig)->tensors()) {
    ASSERT_TRUE(w.add_tensor(t.name, static_cast<TensorType>(t.type), t.dims,
                             {t.data, static_cast<size_t>(t.byte_size)})
                    .ok());
  }
  TempFile tmp("gguf-rewrite");
  ASSERT_TRUE(w.write(tmp.path()).ok());
  auto copy = GgufFile::open(tmp.path());
  ASSERT_TRUE(copy.ok()) << copy.error().message;
  EXPECT_EQ((*copy)->file_size(), (*orig)->file_size());
  ASSERT_EQ((*copy)->metadata().size(), (*orig)->metadata().size());
  for (const auto& [k, v] : (*orig)->metadata()) expect_same_value(v, *(*copy)->find(k), k);
  ASSERT_EQ((*copy)->tensors().size(), (*orig)->tensors().size());
  for (size_t i = 0; i < (*orig)->tensors().size(); ++i) {
    const auto& a = (*orig)->tensors()[i];
    const auto& b = (*copy)->tensors()[i];
    EXPECT_EQ(a.name, b.name);
    EXPECT_EQ(a.offset, b.offset);
    EXPECT_EQ(a.dims, b.dims);
    EXPECT_EQ(std::memcmp(a.data, b.data, a.byte_size), 0) << a.name;
  }
}

// ------------------------------------------------------------ hostile files

TEST(GgufOpen, MissingFileIsNotFoundWithPath) {
  const std::string path = "/nonexistent/dir/model-that-is-not-here.gguf";
  auto r = GgufFile::open(path);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind, ErrorKind::kNotFound);
  EXPECT_NE(r.error().message.find(path), std::string::npos) << r.error().message;
}

TEST(GgufOpen, DirectoryFifoAndEmptyFile) {
  auto dir = GgufFile::open(fs::temp_directory_path().string());
  ASSERT_FALSE(dir.ok());
  EXPECT_EQ(dir.error().kind, ErrorKind::kInvalidArgument);
  TempFile fifo("gguf-fifo");
  ASSERT_EQ(::mkfifo(fifo.path().c_str(), 0600), 0);
  auto pipe = GgufFile::open(fifo.path());  // must not block waiting for a writer
  ASSERT_FALSE(pipe.ok());
  EXPECT_EQ(pipe.error().kind, ErrorKind::kInvalidArgument);
  TempFile empty("gguf-empty");
  empty.write({});
  auto r = GgufFile::open(empty.path());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind, ErrorKind::kCorrupt);
  EXPECT_NE(r.error().message.find(empty.path()), std::string::npos);
  EXPECT_NE(r.error().message.find("empty"), std::string::npos);
}

// A small file touching every part of the format whose last tensor ends exactly
// at the end of the file, so that every strict prefix is missing something.
std::vector<uint8_t> small_valid_file() {
  GgufWriter w;
  w.set("general.architecture", GgufValue::string("llama"));
  w.set("general.alignment", GgufValue::u32(32));
  w.set("n", GgufValue::u32(5));
  w.set("b", GgufValue::boolean(false));
  w.set("eps", GgufValue::f32(1e-5f));
  w.set("tokens", GgufValue::string_array({"a", "bc"}));
  w.set("nested", array_of(GgufValueType::kArray, {GgufValue::i32_array({1, 2})}));
  EXPECT_TRUE(w.add_tensor("x", TensorType::kF16, {3}, pattern(6, 1)).ok());
  EXPECT_TRUE(w.add_tensor("y", TensorType::kQ8_0, {32}, pattern(34, 2)).ok());
  EXPECT_TRUE(w.add_tensor("z", TensorType::kF32, {8}, pattern(32, 3)).ok());
  return w.to_bytes();
}

TEST(GgufHostile, TruncationAtEveryOffset) {
  const std::vector<uint8_t> bytes = small_valid_file();
  ASSERT_TRUE(GgufFile::parse(bytes).ok());
  for (size_t n = 0; n < bytes.size(); ++n) {
    auto r = GgufFile::parse(std::span(bytes.data(), n), "cut.gguf");
    ASSERT_FALSE(r.ok()) << "prefix of " << n << " bytes parsed";
    EXPECT_EQ(r.error().kind, ErrorKind::kCorrupt) << r.error().message;
    EXPECT_EQ(r.error().message.rfind("cut.gguf: ", 0), 0u) << r.error().message;
    EXPECT_NE(r.error().message.find("byte offset"), std::string::npos) << r.error().message;
    EXPECT_NE(r.error().message.find("re-download"), std::string::npos) << r.error().message;
  }
}

TEST(GgufHostile, TruncatedFileOnDisk) {
  std::vector<uint8_t> bytes = small_valid_file();
  bytes.resize(bytes.size() - 1);
  TempFile tmp("gguf-truncated");
  tmp.write(bytes);
  auto r = GgufFile::open(tmp.path());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind, ErrorKind::kCorrupt);
  EXPECT_NE(r.error().message.find(tmp.path()), std::string::npos);
  EXPECT_NE(r.error().message.find("tensor #2 'z'"), std::string::npos) << r.error().message;
}

TEST(GgufHostile, HeaderBitFlips) {
  const std::vector<uint8_t> good = small_valid_file();
  // Magic (0-3), version (4-7), and the high 7 bytes of both counts: any flip
  // there makes the file invalid, except version 3 -> 2, which has the same layout.
  std::vector<size_t> offsets = {0, 1, 2, 3, 4, 5, 6, 7};
  for (size_t i = 9; i < 16; ++i) offsets.push_back(i);
  for (size_t i = 17; i < 24; ++i) offsets.push_back(i);
  for (size_t off : offsets) {
    for (int bit = 0; bit < 8; ++bit) {
      std::vector<uint8_t> bytes = good;
      bytes[off] ^= static_cast<uint8_t>(1u << bit);
      if (off == 4 && bytes[4] == 2) continue;
      SCOPED_TRACE("byte " + std::to_string(off) + " bit " + std::to_string(bit));
      const Error e = parse_error(bytes);
      EXPECT_NE(e.message.find("crafted.gguf: "), std::string::npos) << e.message;
    }
  }
}

// Random damage anywhere must never crash, and whatever parses must be safe to
// use: every tensor's bytes lie inside the buffer and match its type and dims.
TEST(GgufHostile, RandomCorruptionNeverCrashes) {
  const std::vector<uint8_t> good = small_valid_file();
  std::mt19937 rng(12345);
  int parsed = 0;
  for (int iter = 0; iter < 20000; ++iter) {
    std::vector<uint8_t> bytes = good;
    const int edits = 1 + static_cast<int>(rng() % 8);
    for (int e = 0; e < edits; ++e) {
      const size_t at = rng() % bytes.size();
      switch (rng() % 3) {
        case 0:
          bytes[at] ^= static_cast<uint8_t>(1u << (rng() % 8));
          break;
        case 1:
          bytes[at] = static_cast<uint8_t>(rng());
          break;
        default:
          bytes[at] = (rng() % 2) ? 0xff : 0x00;
          break;
      }
    }
    if (rng() % 4 == 0) bytes.resize(rng() % bytes.size());
    auto r = GgufFile::parse(bytes, "fuzzed.gguf");
    if (!r.ok()) {
      ASSERT_EQ(r.error().message.rfind("fuzzed.gguf: ", 0), 0u) << r.error().message;
      continue;
    }
    ++parsed;
    for (const auto& t : (*r)->tensors()) {
      ASSERT_GE(t.data, bytes.data());
      ASSERT_LE(t.data + t.byte_size, bytes.data() + bytes.size());
      const auto traits = tensor_type_traits(t.type);
      ASSERT_TRUE(traits.has_value());
      uint64_t n = 1;
      for (uint64_t d : t.dims) n *= d;
      ASSERT_EQ(n, t.element_count);
      ASSERT_EQ(t.byte_size, n / traits->block_size * traits->block_bytes);
    }
  }
  EXPECT_GT(parsed, 0);  // some damage (inside strings or weights) is harmless
}

struct HostileCase {
  const char* name;
  std::vector<uint8_t> bytes;
  ErrorKind kind;
  std::vector<std::string> needles;  // each must appear in the message
};

// A header plus one valid F32 tensor info, its data padded to 32.
Bytes one_tensor(std::string_view name, std::vector<uint64_t> dims, uint32_t type, uint64_t offset,
                 uint64_t kvs = 0) {
  Bytes b;
  b.header(1, kvs);
  b.tensor(name, std::move(dims), type, offset);
  return b;
}

std::vector<HostileCase> hostile_cases() {
  using K = ErrorKind;
  const uint64_t huge = std::numeric_limits<uint64_t>::max();
  std::vector<HostileCase> c;
  c.push_back({"empty", {}, K::kCorrupt, {"magic", "0 left"}});
  c.push_back({"bad magic",
               Bytes().raw("GGML").u32(3).u64(0).u64(0).bytes(),
               K::kCorrupt,
               {"not a GGUF file", "GGML", "re-convert"}});
  c.push_back({"v1", Bytes().header(0, 0, 1).bytes(), K::kUnsupported, {"version 1"}});
  c.push_back({"v4", Bytes().header(0, 0, 4).bytes(), K::kUnsupported, {"version 4"}});
  c.push_back({"v0", Bytes().header(0, 0, 0).bytes(), K::kCorrupt, {"version 0"}});
  c.push_back(
      {"big endian", Bytes().header(0, 0, 0x03000000).bytes(), K::kUnsupported, {"big-endian"}});
  c.push_back({"huge tensor count",
               Bytes().header(uint64_t{1} << 63, 0).bytes(),
               K::kCorrupt,
               {"tensor count 9223372036854775808", "byte offset 8"}});
  c.push_back({"huge kv count",
               Bytes().header(0, huge).bytes(),
               K::kCorrupt,
               {"metadata count", "byte offset 16"}});
  c.push_back({"huge key length",
               Bytes().header(0, 1).u64(huge).zeros(16).bytes(),
               K::kCorrupt,
               {"metadata key #0", "key claims"}});
  c.push_back({"huge string",
               Bytes().header(0, 1).str("k").u32(8).u64(huge).zeros(8).bytes(),
               K::kCorrupt,
               {"'k'", "string value claims"}});
  c.push_back({"huge array",
               Bytes().header(0, 1).str("k").u32(9).u32(0).u64(huge / 2).zeros(8).bytes(),
               K::kCorrupt,
               {"'k'", "elements"}});
  c.push_back({"huge array of arrays",
               Bytes().header(0, 1).str("k").u32(9).u32(9).u64(1000).zeros(999).bytes(),
               K::kCorrupt,
               {"'k'", "1000 elements"}});
  c.push_back({"unknown value type",
               Bytes().header(0, 1).str("k").u32(13).zeros(8).bytes(),
               K::kCorrupt,
               {"'k'", "unknown value type 13"}});
  c.push_back({"unknown element type",
               Bytes().header(0, 1).str("k").u32(9).u32(0xffffffffu).u64(0).bytes(),
               K::kCorrupt,
               {"'k'", "unknown element type 4294967295"}});
  {
    Bytes b;
    b.header(0, 1).str("deep").u32(9);
    for (int i = 0; i < 100; ++i) b.u32(9).u64(1);
    b.u32(0).u64(0);
    c.push_back({"deep nesting", b.bytes(), K::kCorrupt, {"'deep'", "nested"}});
  }
  c.push_back({"bool 2",
               Bytes().header(0, 1).str("k").u32(7).u8(2).bytes(),
               K::kCorrupt,
               {"'k'", "bool value is 2"}});
  c.push_back({"duplicate key",
               Bytes().header(0, 2).kv_u32("k", 1).kv_u32("k", 2).bytes(),
               K::kCorrupt,
               {"metadata key #1 'k'", "more than once"}});
  c.push_back(
      {"empty key", Bytes().header(0, 1).kv_u32("", 1).bytes(), K::kCorrupt, {"key is empty"}});
  for (uint32_t a : {0u, 3u, 48u, 1u << 30}) {
    c.push_back({"alignment",
                 Bytes().header(0, 1).kv_u32("general.alignment", a).bytes(),
                 K::kCorrupt,
                 {"general.alignment", "power of two", std::to_string(a)}});
  }
  c.push_back({"alignment u64",
               Bytes().header(0, 1).str("general.alignment").u32(10).u64(32).bytes(),
               K::kCorrupt,
               {"general.alignment", "uint64"}});
  c.push_back({"5 dims",
               one_tensor("t", {1, 1, 1, 1, 1}, 0, 0).bytes(),
               K::kCorrupt,
               {"tensor #0 't'", "5 dimensions"}});
  c.push_back({"0 dims",
               one_tensor("t", {}, 0, 0).zeros(32).bytes(),
               K::kCorrupt,
               {"tensor #0 't'", "0 dimensions"}});
  c.push_back({"huge n_dims",
               Bytes().header(1, 0).str("t").u32(0xffffffffu).zeros(64).bytes(),
               K::kCorrupt,
               {"4294967295 dimensions"}});
  c.push_back({"zero dim",
               one_tensor("t", {4, 0}, 0, 0).zeros(32).bytes(),
               K::kCorrupt,
               {"tensor #0 't'", "dimension 1 is 0"}});
  c.push_back({"element overflow",
               one_tensor("t", {uint64_t{1} << 32, uint64_t{1} << 32, 2}, 0, 0).zeros(32).bytes(),
               K::kCorrupt,
               {"tensor #0 't'", "overflow"}});
  c.push_back({"byte overflow",
               one_tensor("t", {uint64_t{1} << 62}, 0, 0).zeros(32).bytes(),
               K::kCorrupt,
               {"tensor #0 't'", "overflows"}});
  c.push_back({"foreign type",
               one_tensor("t", {256}, 16, 0).zeros(64).bytes(),
               K::kUnsupported,
               {"tensor #0 't'", "IQ2_XXS", "whose weights are"}});
  c.push_back({"unknown type",
               one_tensor("t", {1}, 99, 0).zeros(32).bytes(),
               K::kUnsupported,
               {"tensor #0 't'", "99"}});
  c.push_back({"block size",
               one_tensor("t", {33}, 8, 0).zeros(64).bytes(),
               K::kCorrupt,
               {"tensor #0 't'", "Q8_0 block size 32"}});
  c.push_back({"unaligned offset",
               one_tensor("t", {1}, 0, 4).zeros(64).bytes(),
               K::kCorrupt,
               {"tensor #0 't'", "offset 4", "alignment 32"}});
  c.push_back({"offset past end",
               one_tensor("t", {1}, 0, 64).pad_to(32).zeros(32).bytes(),
               K::kCorrupt,
               {"tensor #0 't'", "past the end"}});
  c.push_back({"data past end",
               one_tensor("t", {16}, 0, 0).pad_to(32).zeros(32).bytes(),
               K::kCorrupt,
               {"tensor #0 't'", "past the end"}});
  c.push_back({"offset wraps",
               one_tensor("t", {8}, 0, huge - 31).pad_to(32).zeros(32).bytes(),
               K::kCorrupt,
               {"tensor #0 't'", "past the end"}});
  c.push_back(
      {"no data section", one_tensor("t", {1}, 0, 0).bytes(), K::kCorrupt, {"data section"}});
  {
    Bytes b;
    b.header(2, 0).tensor("a", {16}, 0, 0).tensor("b", {8}, 0, 32).pad_to(32).zeros(64);
    c.push_back({"overlap", b.bytes(), K::kCorrupt, {"tensor #1 'b'", "overlaps tensor 'a'"}});
  }
  {
    Bytes b;
    b.header(2, 0).tensor("a", {8}, 0, 0).tensor("a", {8}, 0, 32).pad_to(32).zeros(64);
    c.push_back({"duplicate tensor", b.bytes(), K::kCorrupt, {"tensor #1 'a'", "more than once"}});
  }
  c.push_back({"empty tensor name",
               one_tensor("", {1}, 0, 0).pad_to(32).zeros(32).bytes(),
               K::kCorrupt,
               {"tensor #0", "name is empty"}});
  return c;
}

TEST(GgufHostile, CraftedFilesGiveUsefulErrors) {
  for (const HostileCase& hc : hostile_cases()) {
    SCOPED_TRACE(hc.name);
    const Error e = parse_error(hc.bytes);
    EXPECT_EQ(e.kind, hc.kind) << e.message;
    EXPECT_EQ(e.message.rfind("crafted.gguf: ", 0), 0u) << e.message;
    EXPECT_NE(e.message.find("byte offset"), std::string::npos) << e.message;
    for (const auto& needle : hc.needles) {
      EXPECT_NE(e.message.find(needle), std::string::npos)
          << "want '" << needle << "' in: " << e.message;
    }
  }
}

// Names from a hostile file are shortened and escaped before they reach a log.
TEST(GgufHostile, NamesInMessagesAreBoundedAndEscaped) {
  const std::string key = "bad\nkey\x01" + std::string(100000, 'k');
  const Error e = parse_error(Bytes().header(0, 2).kv_u32(key, 1).kv_u32(key, 2).bytes());
  EXPECT_NE(e.message.find("'bad\\x0akey\\x01kkk"), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("...'"), std::string::npos) << e.message;
  EXPECT_LT(e.message.size(), 400u);
}

// An array that honestly fits in the file but would cost ~48 bytes per
// one-byte item is refused before it is allocated.
TEST(GgufHostile, MetadataValueCap) {
  const uint64_t items = (uint64_t{1} << 22) + 1;
  Bytes b;
  b.header(0, 1).str("big").u32(9).u32(0).u64(items).zeros(static_cast<size_t>(items));
  const Error e = parse_error(b.bytes());
  EXPECT_EQ(e.kind, ErrorKind::kUnsupported) << e.message;
  EXPECT_NE(e.message.find("'big'"), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("4194304 values"), std::string::npos) << e.message;
}

// The crafted builders themselves are right: fixing the one bad field parses.
TEST(GgufHostile, CraftedBaselinesParse) {
  EXPECT_TRUE(GgufFile::parse(Bytes().header(0, 0).bytes()).ok());
  EXPECT_TRUE(GgufFile::parse(Bytes().header(0, 1).kv_u32("general.alignment", 64).bytes()).ok());
  EXPECT_TRUE(GgufFile::parse(one_tensor("t", {8}, 0, 0).pad_to(32).zeros(32).bytes()).ok());
  Bytes b;
  b.header(2, 0).tensor("a", {8}, 0, 0).tensor("b", {8}, 0, 32).pad_to(32).zeros(64);
  EXPECT_TRUE(GgufFile::parse(b.bytes()).ok());
}

}  // namespace
}  // namespace foreshore::engine
