// Kernels: type conversions, block layouts, quantization error, matmul
// agreement between the vector, scalar and float paths, and the thread pool.
#include "engine/kernels.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <random>
#include <thread>
#include <vector>

#include "engine/kernels_internal.h"
#include "engine/thread_pool.h"

namespace {
std::atomic<long> g_allocations{0};
}  // namespace

// Counts every heap allocation in the process, so tests can check that the
// hot paths allocate nothing. GCC flags malloc/free inside replaced
// operators as mismatched once they are inlined into new/delete pairs.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void* operator new(std::size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size != 0 ? size : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}

namespace foreshore::engine {
namespace {

using detail::BlockQ4_0;
using detail::BlockQ4_K;
using detail::BlockQ6_K;
using detail::BlockQ8_0;

constexpr TensorType kAllTypes[] = {TensorType::kF32,  TensorType::kF16,    TensorType::kBF16,
                                    TensorType::kQ4_0, TensorType::kIQ4_NL, TensorType::kIQ4_XS,
                                    TensorType::kQ8_0, TensorType::kQ5_0,   TensorType::kQ5_1,
                                    TensorType::kQ2_K, TensorType::kQ3_K,   TensorType::kQ4_K,
                                    TensorType::kQ5_K, TensorType::kQ6_K};

const char* name_of(TensorType t) {
  switch (t) {
    case TensorType::kF32:
      return "F32";
    case TensorType::kF16:
      return "F16";
    case TensorType::kBF16:
      return "BF16";
    case TensorType::kQ4_0:
      return "Q4_0";
    case TensorType::kIQ4_NL:
      return "IQ4_NL";
    case TensorType::kIQ4_XS:
      return "IQ4_XS";
    case TensorType::kQ8_0:
      return "Q8_0";
    case TensorType::kQ5_0:
      return "Q5_0";
    case TensorType::kQ5_1:
      return "Q5_1";
    case TensorType::kQ2_K:
      return "Q2_K";
    case TensorType::kQ3_K:
      return "Q3_K";
    case TensorType::kQ4_K:
      return "Q4_K";
    case TensorType::kQ5_K:
      return "Q5_K";
    case TensorType::kQ6_K:
      return "Q6_K";
    default:
      return "?";
  }
}

bool is_quantized(TensorType t) {
  return t != TensorType::kF32 && t != TensorType::kF16 && t != TensorType::kBF16;
}

// Elements covered by one activation scale for a quantized weight type.
int64_t act_block(TensorType t) {
  return tensor_type_traits(static_cast<uint32_t>(t))->block_size == 256 ? 256 : 32;
}

size_t row_bytes(TensorType t, int64_t cols) {
  return tensor_row_bytes(*tensor_type_traits(static_cast<uint32_t>(t)),
                          static_cast<uint64_t>(cols));
}

std::vector<float> gaussian(size_t n, uint32_t seed, float sigma = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

uint32_t bits_of(float f) {
  return std::bit_cast<uint32_t>(f);
}

// ---- fp16 / bf16 -----------------------------------------------------------

TEST(Fp16, KnownValues) {
  EXPECT_EQ(fp32_to_fp16(0.0f), 0x0000);
  EXPECT_EQ(fp32_to_fp16(-0.0f), 0x8000);
  EXPECT_EQ(fp32_to_fp16(1.0f), 0x3C00);
  EXPECT_EQ(fp32_to_fp16(-2.0f), 0xC000);
  EXPECT_EQ(fp32_to_fp16(65504.0f), 0x7BFF);                      // largest finite
  EXPECT_EQ(fp32_to_fp16(65519.99f), 0x7BFF);                     // just below the tie
  EXPECT_EQ(fp32_to_fp16(65520.0f), 0x7C00);                      // tie rounds to even: inf
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1.0f, -14)), 0x0400);         // smallest normal
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1.0f, -24)), 0x0001);         // smallest denormal
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1.0f, -25)), 0x0000);         // tie to even: 0
  EXPECT_EQ(fp32_to_fp16(std::ldexp(3.0f, -26)), 0x0001);         // above the tie
  EXPECT_EQ(fp32_to_fp16(std::ldexp(3.0f, -25)), 0x0002);         // 1.5 units: tie to even 2
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1023.0f, -24)), 0x03FF);      // largest denormal
  EXPECT_EQ(fp32_to_fp16(1.0f + std::ldexp(1.0f, -11)), 0x3C00);  // tie to even
  EXPECT_EQ(fp32_to_fp16(1.0f + std::ldexp(3.0f, -11)), 0x3C02);  // tie to even, up
  EXPECT_EQ(fp32_to_fp16(std::numeric_limits<float>::infinity()), 0x7C00);
  EXPECT_EQ(fp32_to_fp16(-std::numeric_limits<float>::infinity()), 0xFC00);
  EXPECT_EQ(fp32_to_fp16(std::numeric_limits<float>::denorm_min()), 0x0000);
  const uint16_t nan = fp32_to_fp16(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(nan & 0x7C00, 0x7C00);
  EXPECT_NE(nan & 0x03FF, 0);

  EXPECT_EQ(fp16_to_fp32(0x3C00), 1.0f);
  EXPECT_EQ(fp16_to_fp32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(fp16_to_fp32(0x03FF), std::ldexp(1023.0f, -24));
  EXPECT_EQ(fp16_to_fp32(0x7BFF), 65504.0f);
  EXPECT_EQ(bits_of(fp16_to_fp32(0x8000)), 0x80000000u);
  EXPECT_EQ(fp16_to_fp32(0x7C00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(fp16_to_fp32(0xFC00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(fp16_to_fp32(0x7C01)));
  EXPECT_TRUE(std::isnan(fp16_to_fp32(0xFE00)));
}

TEST(Fp16, EveryHalfRoundTrips) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = fp16_to_fp32(static_cast<uint16_t>(h));
    const bool nan = (h & 0x7C00) == 0x7C00 && (h & 0x3FF) != 0;
    if (nan) {
      ASSERT_TRUE(std::isnan(f)) << h;
      // Quieted, payload kept.
      ASSERT_EQ(fp32_to_fp16(f), h | 0x0200) << h;
    } else {
      ASSERT_EQ(fp32_to_fp16(f), h) << h;
    }
  }
}

// The bulk conversions run at the level under test (F16C at avx2), in
// vectors and in the tail; the scalar conversions define the bits.
TEST(Fp16, BulkConversionMatchesScalarOnEveryHalf) {
  std::vector<uint16_t> every(0x10000);
  for (uint32_t h = 0; h < 0x10000; ++h) every[h] = static_cast<uint16_t>(h);
  std::vector<float> wide(every.size());
  ASSERT_TRUE(dequantize_row(TensorType::kF16, every.data(), wide.data(), 0x10000));
  for (uint32_t h = 0; h < 0x10000; ++h) {
    ASSERT_EQ(bits_of(wide[h]), bits_of(fp16_to_fp32(static_cast<uint16_t>(h)))) << h;
  }
  // Random bit patterns cover every exponent, denormals, infinities and NaNs.
  std::vector<float> src(2000000);
  std::mt19937 rng(7);
  for (auto& f : src) f = std::bit_cast<float>(static_cast<uint32_t>(rng()));
  // Every float near the half range's edges and rounding ties.
  for (uint32_t base : {0x33000000u, 0x38800000u, 0x477FE000u, 0x3F800000u}) {
    for (uint32_t d = 0; d < 0x4000; ++d) src.push_back(std::bit_cast<float>(base + d - 0x2000));
  }
  std::vector<uint16_t> narrow(src.size());
  ASSERT_TRUE(
      quantize_row(TensorType::kF16, src.data(), narrow.data(), static_cast<int64_t>(src.size())));
  for (size_t i = 0; i < src.size(); ++i) {
    ASSERT_EQ(narrow[i], fp32_to_fp16(src[i])) << bits_of(src[i]);
  }
}

TEST(Fp16, BulkConversionMatchesScalar) {
  std::vector<float> src(1003);
  std::mt19937 rng(3);
  for (auto& f : src) f = std::bit_cast<float>(static_cast<uint32_t>(rng()));
  std::vector<uint16_t> half(src.size());
  ASSERT_TRUE(quantize_row(TensorType::kF16, src.data(), half.data(), 1003));
  for (size_t i = 0; i < src.size(); ++i) ASSERT_EQ(half[i], fp32_to_fp16(src[i])) << i;
  std::vector<float> back(src.size());
  ASSERT_TRUE(dequantize_row(TensorType::kF16, half.data(), back.data(), 1003));
  for (size_t i = 0; i < src.size(); ++i)
    ASSERT_EQ(bits_of(back[i]), bits_of(fp16_to_fp32(half[i])));
}

TEST(Bf16, KnownValues) {
  EXPECT_EQ(fp32_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(fp32_to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(fp32_to_bf16(std::bit_cast<float>(0x3F808000u)), 0x3F80);  // tie, even stays
  EXPECT_EQ(fp32_to_bf16(std::bit_cast<float>(0x3F818000u)), 0x3F82);  // tie, odd rounds up
  EXPECT_EQ(fp32_to_bf16(std::bit_cast<float>(0x3F808001u)), 0x3F81);  // above the tie
  EXPECT_EQ(fp32_to_bf16(std::bit_cast<float>(0x7F7FFFFFu)), 0x7F80);  // max float: inf
  EXPECT_EQ(fp32_to_bf16(std::numeric_limits<float>::infinity()), 0x7F80);
  EXPECT_EQ(fp32_to_bf16(-std::numeric_limits<float>::infinity()), 0xFF80);
  EXPECT_EQ(fp32_to_bf16(std::bit_cast<float>(0x00012345u)), 0x0001);  // denormal kept
  // A NaN whose payload sits below bf16's mantissa must not become infinity.
  const uint16_t nan = fp32_to_bf16(std::bit_cast<float>(0x7F800001u));
  EXPECT_TRUE(std::isnan(bf16_to_fp32(nan)));
  EXPECT_EQ(bits_of(bf16_to_fp32(0x3F80)), 0x3F800000u);
  EXPECT_EQ(bits_of(bf16_to_fp32(0x0001)), 0x00010000u);
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = bf16_to_fp32(static_cast<uint16_t>(h));
    if (!std::isnan(f)) {
      ASSERT_EQ(fp32_to_bf16(f), h);
    }
  }
}

// ---- block layouts ---------------------------------------------------------

TEST(Layout, Q4_0HandBuiltBlock) {
  BlockQ4_0 b{};
  b.d = 0x3800;  // 0.5
  for (int j = 0; j < 16; ++j) b.qs[j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  float y[32];
  ASSERT_TRUE(dequantize_row(TensorType::kQ4_0, &b, y, 32));
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], (j - 8) * 0.5f);
    EXPECT_EQ(y[j + 16], (7 - j) * 0.5f);
  }
}

// ggml's IQ4_NL: Q4_0's nibble order, each nibble an index into the grid.
TEST(Layout, IQ4_NLHandBuiltBlock) {
  detail::BlockIQ4_NL b{};
  b.d = 0x3800;  // 0.5
  for (int j = 0; j < 16; ++j) b.qs[j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  float y[32];
  ASSERT_TRUE(dequantize_row(TensorType::kIQ4_NL, &b, y, 32));
  const int grid[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], grid[j] * 0.5f);
    EXPECT_EQ(y[j + 16], grid[15 - j] * 0.5f);
  }
  EXPECT_EQ(tensor_type_name(20), "IQ4_NL");
  EXPECT_EQ(tensor_type_traits(20)->block_bytes, 18u);
}

// ggml's Q5_0 and Q5_1: Q4_0's nibbles, and the fifth bit of element j in
// bit j of the little-endian qh (elements 16-31 in bits 16-31).
TEST(Layout, Q5_0AndQ5_1HandBuiltBlocks) {
  uint8_t qs[16];
  for (int j = 0; j < 16; ++j) qs[j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  const uint8_t qh[4] = {0x49, 0x92, 0x24, 0x49};  // bits 0, 3, 6, 9, ...: every third
  auto level = [&](int j) {
    const int low = j < 16 ? j : 31 - j;
    return low + (j % 3 == 0 ? 16 : 0);
  };
  detail::BlockQ5_0 b0{};
  b0.d = 0x3800;  // 0.5
  std::memcpy(b0.qh, qh, 4);
  std::memcpy(b0.qs, qs, 16);
  detail::BlockQ5_1 b1{};
  b1.d = 0x3800;  // 0.5
  b1.m = 0xC000;  // -2
  std::memcpy(b1.qh, qh, 4);
  std::memcpy(b1.qs, qs, 16);
  float y0[32], y1[32];
  ASSERT_TRUE(dequantize_row(TensorType::kQ5_0, &b0, y0, 32));
  ASSERT_TRUE(dequantize_row(TensorType::kQ5_1, &b1, y1, 32));
  for (int j = 0; j < 32; ++j) {
    EXPECT_EQ(y0[j], (level(j) - 16) * 0.5f) << j;
    EXPECT_EQ(y1[j], level(j) * 0.5f - 2.0f) << j;
  }
  EXPECT_EQ(tensor_type_traits(6)->block_bytes, 22u);
  EXPECT_EQ(tensor_type_traits(7)->block_bytes, 24u);
}

TEST(Layout, Q8_0HandBuiltBlock) {
  BlockQ8_0 b{};
  b.d = 0x3400;  // 0.25
  for (int j = 0; j < 32; ++j) b.qs[j] = static_cast<int8_t>(j * 8 - 128);
  float y[32];
  ASSERT_TRUE(dequantize_row(TensorType::kQ8_0, &b, y, 32));
  for (int j = 0; j < 32; ++j) EXPECT_EQ(y[j], (j * 8 - 128) * 0.25f);
}

TEST(Layout, Q4_KScalePackingAndNibbles) {
  // Sub-block scales and mins, some using the top two of their six bits.
  const int sc[8] = {1, 2, 3, 4, 53, 6, 7, 63};
  const int mn[8] = {9, 10, 11, 12, 13, 40, 15, 16};
  BlockQ4_K b{};
  b.d = 0x3C00;     // 1.0
  b.dmin = 0x3800;  // 0.5
  // Bytes 0-3: scales 0-3, top bits = bits 4-5 of scales 4-7.
  // Bytes 4-7: mins 0-3, top bits = bits 4-5 of mins 4-7.
  // Bytes 8-11: low nibble = scale 4+i bits 0-3, high nibble = min 4+i bits 0-3.
  const uint8_t packed[12] = {0xC1, 0x02, 0x03, 0xC4, 0x09, 0x8A,
                              0x0B, 0x4C, 0xD5, 0x86, 0xF7, 0x0F};
  std::memcpy(b.scales, packed, 12);
  auto q_of = [](int e) { return (e * 7 + 3) % 16; };
  for (int k = 0; k < 4; ++k) {
    for (int l = 0; l < 32; ++l) {
      b.qs[32 * k + l] = static_cast<uint8_t>(q_of(64 * k + l) | (q_of(64 * k + 32 + l) << 4));
    }
  }
  float y[256];
  ASSERT_TRUE(dequantize_row(TensorType::kQ4_K, &b, y, 256));
  for (int e = 0; e < 256; ++e) {
    const int j = e / 32;
    EXPECT_EQ(y[e], 1.0f * sc[j] * q_of(e) - 0.5f * mn[j]) << e;
  }
  uint8_t unpacked[16];
  detail::unpack_q4k_scales(packed, unpacked);
  for (int j = 0; j < 8; ++j) {
    EXPECT_EQ(unpacked[j], sc[j]);
    EXPECT_EQ(unpacked[8 + j], mn[j]);
  }
}

// Q5_K is Q4_K's block plus qh: bit 2k of qh[l] is the fifth bit of element
// 64k + l, bit 2k + 1 that of element 64k + 32 + l (ggml's block_q5_K).
TEST(Layout, Q5_KFifthBitsFromQh) {
  detail::BlockQ5_K b{};
  b.d = 0x3C00;     // 1.0
  b.dmin = 0x3800;  // 0.5
  const uint8_t packed[12] = {0xC1, 0x02, 0x03, 0xC4, 0x09, 0x8A,
                              0x0B, 0x4C, 0xD5, 0x86, 0xF7, 0x0F};
  const int sc[8] = {1, 2, 3, 4, 53, 6, 7, 63};
  const int mn[8] = {9, 10, 11, 12, 13, 40, 15, 16};
  std::memcpy(b.scales, packed, 12);
  auto q_of = [](int e) { return (e * 13 + 5) % 32; };
  for (int k = 0; k < 4; ++k) {
    for (int l = 0; l < 32; ++l) {
      const int lo = q_of(64 * k + l), hi = q_of(64 * k + 32 + l);
      b.qs[32 * k + l] = static_cast<uint8_t>((lo & 0xF) | ((hi & 0xF) << 4));
      b.qh[l] = static_cast<uint8_t>(b.qh[l] | ((lo >> 4) << (2 * k)) | ((hi >> 4) << (2 * k + 1)));
    }
  }
  float y[256];
  ASSERT_TRUE(dequantize_row(TensorType::kQ5_K, &b, y, 256));
  for (int e = 0; e < 256; ++e) {
    const int j = e / 32;
    EXPECT_EQ(y[e], 1.0f * sc[j] * q_of(e) - 0.5f * mn[j]) << e;
  }
}

// Q2_K: element 128h + 32j + l in bits 2j..2j+1 of qs[32h + l]; scale and
// min per 16 elements in the low and high nibbles of scales[e / 16].
TEST(Layout, Q2_KHandBuiltBlock) {
  detail::BlockQ2_K b{};
  b.d = 0x3C00;     // 1.0
  b.dmin = 0x3800;  // 0.5
  auto sc_of = [](int g) { return (g * 5 + 1) % 16; };
  auto mn_of = [](int g) { return (g * 3 + 2) % 16; };
  auto q_of = [](int e) { return (e * 7 + e / 64) % 4; };
  for (int g = 0; g < 16; ++g) b.scales[g] = static_cast<uint8_t>(sc_of(g) | (mn_of(g) << 4));
  for (int e = 0; e < 256; ++e) {
    b.qs[32 * (e / 128) + e % 32] |= static_cast<uint8_t>(q_of(e) << (2 * ((e % 128) / 32)));
  }
  float y[256];
  ASSERT_TRUE(dequantize_row(TensorType::kQ2_K, &b, y, 256));
  for (int e = 0; e < 256; ++e) {
    EXPECT_EQ(y[e], 1.0f * sc_of(e / 16) * q_of(e) - 0.5f * mn_of(e / 16)) << e;
  }
}

// Q3_K: Q2_K's two low bits, a third bit set for +0 and clear for -4 (bit
// e / 32 of hmask[e % 32]), and 6-bit scales stored + 32: the low 4 bits of
// scales 0-7 in the low nibbles of bytes 0-7, of scales 8-15 in the high
// nibbles, the top 2 bits of scales i, 4+i, 8+i, 12+i in byte 8 + i.
TEST(Layout, Q3_KHandBuiltBlock) {
  detail::BlockQ3_K b{};
  b.d = 0x3400;  // 0.25
  auto sc_of = [](int g) { return (g * 11 + 3) % 64 - 32; };
  auto q_of = [](int e) { return (e * 5 + e / 32) % 8 - 4; };
  for (int g = 0; g < 16; ++g) {
    const int stored = sc_of(g) + 32;
    b.scales[g % 8] |= static_cast<uint8_t>((stored & 0xF) << (g < 8 ? 0 : 4));
    b.scales[8 + g % 4] |= static_cast<uint8_t>((stored >> 4) << (2 * (g / 4)));
  }
  for (int e = 0; e < 256; ++e) {
    const int u = q_of(e) + 4;
    b.qs[32 * (e / 128) + e % 32] |= static_cast<uint8_t>((u & 3) << (2 * ((e % 128) / 32)));
    b.hmask[e % 32] |= static_cast<uint8_t>((u >> 2) << (e / 32));
  }
  float y[256];
  ASSERT_TRUE(dequantize_row(TensorType::kQ3_K, &b, y, 256));
  for (int e = 0; e < 256; ++e) EXPECT_EQ(y[e], 0.25f * sc_of(e / 16) * q_of(e)) << e;
}

// IQ4_XS: eight 32-element sub-blocks, each Q4_0's nibble order into the
// IQ4_NL grid, with a 6-bit scale stored + 32: low 4 bits in nibble ib % 2
// of scales_l[ib / 2], top 2 bits in bits 2ib..2ib+1 of scales_h.
TEST(Layout, IQ4_XSHandBuiltBlock) {
  detail::BlockIQ4_XS b{};
  b.d = 0x3400;  // 0.25
  auto sc_of = [](int ib) { return (ib * 19 + 5) % 64 - 32; };
  auto idx_of = [](int e) { return (e * 7 + e / 32) % 16; };
  for (int ib = 0; ib < 8; ++ib) {
    const int stored = sc_of(ib) + 32;
    b.scales_l[ib / 2] |= static_cast<uint8_t>((stored & 0xF) << (4 * (ib % 2)));
    b.scales_h |= static_cast<uint16_t>((stored >> 4) << (2 * ib));
    for (int j = 0; j < 16; ++j) {
      b.qs[16 * ib + j] =
          static_cast<uint8_t>(idx_of(32 * ib + j) | (idx_of(32 * ib + 16 + j) << 4));
    }
  }
  float y[256];
  ASSERT_TRUE(dequantize_row(TensorType::kIQ4_XS, &b, y, 256));
  for (int e = 0; e < 256; ++e) {
    EXPECT_EQ(y[e], 0.25f * sc_of(e / 32) * detail::kIq4nlValues[idx_of(e)]) << e;
  }
}

TEST(Layout, Q6_KHandBuiltBlock) {
  BlockQ6_K b{};
  b.d = 0x3400;  // 0.25
  for (int g = 0; g < 16; ++g) b.scales[g] = static_cast<int8_t>(g * 17 - 128);
  auto q_of = [](int e) { return (e * 13 + 5) % 64; };
  // Per 128 elements: ql[l] holds elements l (low) and l+64 (high nibble),
  // ql[l+32] holds l+32 and l+96; qh[l] holds the top 2 bits of l, l+32,
  // l+64, l+96 at bits 0, 2, 4, 6.
  for (int h = 0; h < 2; ++h) {
    for (int l = 0; l < 32; ++l) {
      const int e = 128 * h + l;
      b.ql[64 * h + l] = static_cast<uint8_t>((q_of(e) & 15) | ((q_of(e + 64) & 15) << 4));
      b.ql[64 * h + 32 + l] =
          static_cast<uint8_t>((q_of(e + 32) & 15) | ((q_of(e + 96) & 15) << 4));
      b.qh[32 * h + l] =
          static_cast<uint8_t>((q_of(e) >> 4) | ((q_of(e + 32) >> 4) << 2) |
                               ((q_of(e + 64) >> 4) << 4) | ((q_of(e + 96) >> 4) << 6));
    }
  }
  float y[256];
  ASSERT_TRUE(dequantize_row(TensorType::kQ6_K, &b, y, 256));
  for (int e = 0; e < 256; ++e) {
    EXPECT_EQ(y[e], 0.25f * static_cast<float>((e / 16) * 17 - 128) * (q_of(e) - 32)) << e;
  }
}

TEST(Layout, Q6_KSingleElementAddresses) {
  // Every element alone: value 1 at position e (q = 33), 0 (q = 32) elsewhere.
  for (int e = 0; e < 256; ++e) {
    BlockQ6_K b{};
    b.d = 0x3C00;
    for (auto& s : b.scales) s = 1;
    // q = 32 everywhere: low nibble 0, high bits 2 -> qh bits 0b10 each.
    std::memset(b.ql, 0, sizeof(b.ql));
    std::memset(b.qh, 0xAA, sizeof(b.qh));
    const int h = e / 128, r = e % 128, quarter = r / 32, l = r % 32;
    uint8_t& ql = b.ql[64 * h + l + (quarter % 2) * 32];
    ql = static_cast<uint8_t>(ql | (1 << (quarter >= 2 ? 4 : 0)));
    float y[256];
    ASSERT_TRUE(dequantize_row(TensorType::kQ6_K, &b, y, 256));
    for (int i = 0; i < 256; ++i) ASSERT_EQ(y[i], i == e ? 1.0f : 0.0f) << e << " " << i;
  }
}

TEST(Layout, QuantizersWriteTheLayoutTheyRead) {
  // Values on a grid of step 1/8 where every 16-element group reaches -4
  // (q = 0) fit Q6_K exactly: all group scales are 1/8, the super-block scale
  // a power of two. Quantizing must reproduce them bit for bit.
  std::vector<float> x(256);
  for (int e = 0; e < 256; ++e) {
    x[e] = e % 16 == 0 ? -4.0f : static_cast<float>((e * 13 + 5) % 64 - 32) * 0.125f;
  }
  BlockQ6_K b;
  ASSERT_TRUE(quantize_row(TensorType::kQ6_K, x.data(), &b, 256));
  std::vector<float> y(256);
  ASSERT_TRUE(dequantize_row(TensorType::kQ6_K, &b, y.data(), 256));
  EXPECT_EQ(y, x);
}

TEST(Layout, UnsupportedTypesAndSizes) {
  float x[64] = {};
  uint8_t buf[256];
  EXPECT_FALSE(quantize_row(TensorType::kQ4_1, x, buf, 64));
  EXPECT_FALSE(dequantize_row(TensorType::kQ8_K, buf, x, 256));
  EXPECT_FALSE(quantize_row(TensorType::kQ4_0, x, buf, 33));
  EXPECT_FALSE(dequantize_row(TensorType::kQ4_K, buf, x, 64));
  EXPECT_EQ(activation_scratch_bytes(TensorType::kF32, 64, 4), 0u);
  EXPECT_GT(activation_scratch_bytes(TensorType::kQ4_0, 64, 4), 0u);
}

// ---- quantization error ----------------------------------------------------

struct RoundTrip {
  double rms_relative;  // RMS error / RMS of the data
  std::vector<float> x, y;
};

RoundTrip round_trip(TensorType t, size_t n, uint32_t seed) {
  RoundTrip r;
  r.x = gaussian(n, seed);
  std::vector<uint8_t> q(row_bytes(t, static_cast<int64_t>(n)));
  EXPECT_TRUE(quantize_row(t, r.x.data(), q.data(), static_cast<int64_t>(n)));
  r.y.resize(n);
  EXPECT_TRUE(dequantize_row(t, q.data(), r.y.data(), static_cast<int64_t>(n)));
  double err = 0.0, sig = 0.0;
  for (size_t i = 0; i < n; ++i) {
    err += (r.x[i] - r.y[i]) * static_cast<double>(r.x[i] - r.y[i]);
    sig += r.x[i] * static_cast<double>(r.x[i]);
  }
  r.rms_relative = std::sqrt(err / sig);
  return r;
}

float block_amax(const std::vector<float>& x, size_t begin, size_t len) {
  float m = 0.0f;
  for (size_t i = begin; i < begin + len; ++i) m = std::max(m, std::fabs(x[i]));
  return m;
}

TEST(RoundTrip, FloatTypes) {
  const auto f16 = round_trip(TensorType::kF16, 4096, 1);
  for (size_t i = 0; i < f16.x.size(); ++i) {
    ASSERT_LE(std::fabs(f16.x[i] - f16.y[i]), std::fabs(f16.x[i]) * 0x1p-11f + 0x1p-25f);
  }
  const auto bf16 = round_trip(TensorType::kBF16, 4096, 2);
  for (size_t i = 0; i < bf16.x.size(); ++i) {
    ASSERT_LE(std::fabs(bf16.x[i] - bf16.y[i]), std::fabs(bf16.x[i]) * 0x1p-8f);
  }
  const auto f32 = round_trip(TensorType::kF32, 64, 3);
  EXPECT_EQ(f32.x, f32.y);
}

// Worst-case bounds per element follow from the rounding rules. The RMS
// bounds (relative to the data's RMS, Gaussian data) sit about 10% above the
// measured values -- Q8_0 0.0053, Q4_0 0.086, Q4_K 0.071, Q6_K 0.017, each
// close to uniform rounding's step/sqrt(12) -- so a quantizer regression
// trips them.
TEST(RoundTrip, Q8_0) {
  const auto r = round_trip(TensorType::kQ8_0, 32 * 256, 4);
  for (size_t b = 0; b < r.x.size(); b += 32) {
    // Rounding to the grid is at most half a step (amax/254); the fp16 scale
    // moves the grid by at most 127 * d * 2^-11.
    const float bound = block_amax(r.x, b, 32) * (1.0f / 254 + 0x1p-11f) * 1.0001f;
    for (size_t i = b; i < b + 32; ++i) ASSERT_LE(std::fabs(r.x[i] - r.y[i]), bound) << i;
  }
  EXPECT_LT(r.rms_relative, 0.006);
}

TEST(RoundTrip, Q4_0) {
  const auto r = round_trip(TensorType::kQ4_0, 32 * 256, 5);
  for (size_t b = 0; b < r.x.size(); b += 32) {
    // Step amax/8; half a step, except values opposite the largest one may
    // clip at +7 steps, a full step off.
    const float bound = block_amax(r.x, b, 32) / 8 * (1.0f + 0x1p-8f);
    for (size_t i = b; i < b + 32; ++i) ASSERT_LE(std::fabs(r.x[i] - r.y[i]), bound) << i;
  }
  EXPECT_LT(r.rms_relative, 0.095);
}

TEST(RoundTrip, Q5_0AndQ5_1) {
  const auto r0 = round_trip(TensorType::kQ5_0, 32 * 256, 6);
  for (size_t b = 0; b < r0.x.size(); b += 32) {
    // Step amax/16; a full step where a value opposite the largest clips at +15.
    const float bound = block_amax(r0.x, b, 32) / 16 * (1.0f + 0x1p-8f);
    for (size_t i = b; i < b + 32; ++i) ASSERT_LE(std::fabs(r0.x[i] - r0.y[i]), bound) << i;
  }
  const auto r1 = round_trip(TensorType::kQ5_1, 32 * 256, 7);
  for (size_t b = 0; b < r1.x.size(); b += 32) {
    const auto [lo, hi] = std::minmax_element(r1.x.begin() + b, r1.x.begin() + b + 32);
    // Half a step of (max - min)/31, plus the fp16 rounding of d and m.
    const float step = (*hi - *lo) / 31;
    const float bound = step / 2 + 31 * step * 0x1p-11f + std::fabs(*lo) * 0x1p-11f + 1e-6f;
    for (size_t i = b; i < b + 32; ++i) ASSERT_LE(std::fabs(r1.x[i] - r1.y[i]), bound) << i;
  }
  // Twice Q4_0's levels, about half its error: measured 0.043 and 0.038.
  EXPECT_LT(r0.rms_relative, 0.047);
  EXPECT_LT(r1.rms_relative, 0.042);
}

// Rounding by importance (calibration's mean squared input per column): the
// importance-weighted error falls well below plain rounding's on uneven
// importance; zero importance and the other types round exactly as quantize_row.
TEST(RoundTrip, WeightedByImportance) {
  const size_t n = 256 * 32;
  const std::vector<float> x = gaussian(n, 11);
  std::vector<float> importance(n);
  std::mt19937 rng(12);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  // A few strongly driven columns, as real activations have.
  for (float& v : importance) v = uniform(rng) < 0.1f ? 100.0f * uniform(rng) : uniform(rng);
  const auto weighted_error = [&](TensorType t, const std::vector<uint8_t>& q) {
    std::vector<float> y(n);
    EXPECT_TRUE(dequantize_row(t, q.data(), y.data(), static_cast<int64_t>(n)));
    double e = 0.0;
    for (size_t i = 0; i < n; ++i) e += importance[i] * (x[i] - y[i]) * double{x[i] - y[i]};
    return e;
  };
  const std::vector<float> zero(n, 0.0f);
  for (const auto& [type, at_most] :
       {std::pair{TensorType::kQ4_0, 0.8}, std::pair{TensorType::kIQ4_NL, 0.9},
        std::pair{TensorType::kIQ4_XS, 0.9}, std::pair{TensorType::kQ2_K, 0.9},
        std::pair{TensorType::kQ3_K, 0.9}, std::pair{TensorType::kQ4_K, 0.9},
        std::pair{TensorType::kQ5_K, 0.9}, std::pair{TensorType::kQ6_K, 0.9}}) {
    SCOPED_TRACE(tensor_type_name(static_cast<uint32_t>(type)));
    std::vector<uint8_t> plain(row_bytes(type, n));
    std::vector<uint8_t> weighted(plain.size());
    ASSERT_TRUE(quantize_row(type, x.data(), plain.data(), static_cast<int64_t>(n)));
    ASSERT_TRUE(quantize_row_weighted(type, x.data(), weighted.data(), static_cast<int64_t>(n),
                                      importance.data()));
    EXPECT_LT(weighted_error(type, weighted), at_most * weighted_error(type, plain));
    ASSERT_TRUE(quantize_row_weighted(type, x.data(), weighted.data(), static_cast<int64_t>(n),
                                      zero.data()));
    EXPECT_EQ(weighted, plain);
  }
  for (TensorType t : {TensorType::kQ8_0, TensorType::kF16}) {
    std::vector<uint8_t> a(row_bytes(t, n)), b(a.size());
    ASSERT_TRUE(quantize_row(t, x.data(), a.data(), static_cast<int64_t>(n)));
    ASSERT_TRUE(
        quantize_row_weighted(t, x.data(), b.data(), static_cast<int64_t>(n), importance.data()));
    EXPECT_EQ(a, b) << tensor_type_name(static_cast<uint32_t>(t));
  }
  EXPECT_FALSE(quantize_row_weighted(TensorType::kQ4_0, x.data(), nullptr, 33, importance.data()));
  EXPECT_FALSE(quantize_row_weighted(TensorType::kQ4_K, x.data(), nullptr, 32, importance.data()));
}

// Same bits as Q4_0, a grid denser near zero: lower error on bell-shaped
// weights. Worst case is half the widest grid gap (24 steps of d = amax/127)
// or clipping past 113.
TEST(RoundTrip, IQ4_NL) {
  const auto r = round_trip(TensorType::kIQ4_NL, 32 * 256, 5);
  const auto q4_0 = round_trip(TensorType::kQ4_0, 32 * 256, 5);
  for (size_t b = 0; b < r.x.size(); b += 32) {
    const float bound = block_amax(r.x, b, 32) * 24.0f / 127.0f;
    for (size_t i = b; i < b + 32; ++i) ASSERT_LE(std::fabs(r.x[i] - r.y[i]), bound) << i;
  }
  EXPECT_LT(r.rms_relative, 0.9 * q4_0.rms_relative);
}

// Q4_K and Q5_K: every element within 1.5 steps of its sub-block's range
// over the type's top level (the 6-bit scale may round down, so a full step
// plus the scale's rounding).
RoundTrip scale_min_round_trip(TensorType t, int top_level) {
  const auto r = round_trip(t, 256 * 32, 6);
  for (size_t b = 0; b < r.x.size(); b += 32) {
    float lo = 0.0f, hi = 0.0f;
    for (size_t i = b; i < b + 32; ++i) {
      lo = std::min(lo, r.x[i]);
      hi = std::max(hi, r.x[i]);
    }
    const float bound = (hi - lo) / static_cast<float>(top_level) * 1.5f;
    for (size_t i = b; i < b + 32; ++i) EXPECT_LE(std::fabs(r.x[i] - r.y[i]), bound) << i;
  }
  return r;
}

// IQ4_XS: IQ4_NL's grid with 6-bit sub-block scales instead of fp16 ones,
// 4.25 bits per weight against 4.5: about IQ4_NL's error.
TEST(RoundTrip, IQ4_XS) {
  const auto r = round_trip(TensorType::kIQ4_XS, 256 * 32, 5);
  const auto nl = round_trip(TensorType::kIQ4_NL, 256 * 32, 5);
  for (size_t b = 0; b < r.x.size(); b += 32) {
    // IQ4_NL's bound, plus the scale's 6-bit rounding.
    const float bound = block_amax(r.x, b, 32) * 24.0f / 127.0f * 1.25f;
    for (size_t i = b; i < b + 32; ++i) ASSERT_LE(std::fabs(r.x[i] - r.y[i]), bound) << i;
  }
  EXPECT_LT(r.rms_relative, 1.15 * nl.rms_relative);
}

TEST(RoundTrip, Q4_K) {
  EXPECT_LT(scale_min_round_trip(TensorType::kQ4_K, 15).rms_relative, 0.078);
}

TEST(RoundTrip, Q5_K) {
  // Twice the levels, about half Q4_K's error.
  EXPECT_LT(scale_min_round_trip(TensorType::kQ5_K, 31).rms_relative,
            0.6 * round_trip(TensorType::kQ4_K, 256 * 32, 6).rms_relative);
}

// Q3_K: symmetric per 16 elements, levels -4..3 (a value opposite the
// largest clips at +3, a full step); Q2_K: scale and min per 16, levels 0..3.
TEST(RoundTrip, Q3_KAndQ2_K) {
  const auto r3 = round_trip(TensorType::kQ3_K, 256 * 32, 8);
  for (size_t b = 0; b < r3.x.size(); b += 16) {
    // A step of amax/4, a full step at the clipped end, plus the 6-bit
    // scale's rounding (up to half of 1/32 of the largest scale).
    const float bound = block_amax(r3.x, b, 16) / 4 * 1.5f;
    for (size_t i = b; i < b + 16; ++i) ASSERT_LE(std::fabs(r3.x[i] - r3.y[i]), bound) << i;
  }
  const auto r2 = round_trip(TensorType::kQ2_K, 256 * 32, 9);
  for (size_t b = 0; b < r2.x.size(); b += 16) {
    float lo = 0.0f, hi = 0.0f;
    for (size_t i = b; i < b + 16; ++i) {
      lo = std::min(lo, r2.x[i]);
      hi = std::max(hi, r2.x[i]);
    }
    // The range over 3 steps; the 4-bit scale and min may each round by
    // half of 1/15 of the block's largest, so allow a step and a half.
    const float bound = (hi - lo) / 3 * 1.5f;
    for (size_t i = b; i < b + 16; ++i) ASSERT_LE(std::fabs(r2.x[i] - r2.y[i]), bound) << i;
  }
  // Each bit about halves the error: measured Q2_K 0.266, Q3_K 0.143
  // (Q4_K 0.071).
  EXPECT_LT(r3.rms_relative, 0.157);
  EXPECT_LT(r2.rms_relative, 0.29);
  EXPECT_LT(r3.rms_relative, 0.6 * r2.rms_relative);
}

TEST(RoundTrip, Q6_K) {
  const auto r = round_trip(TensorType::kQ6_K, 256 * 32, 7);
  for (size_t b = 0; b < r.x.size(); b += 16) {
    const float bound = block_amax(r.x, b, 16) / 31 * 1.5f;
    for (size_t i = b; i < b + 16; ++i) ASSERT_LE(std::fabs(r.x[i] - r.y[i]), bound) << i;
  }
  EXPECT_LT(r.rms_relative, 0.019);
}

TEST(RoundTrip, ZerosAndConstants) {
  for (TensorType t : kAllTypes) {
    for (float v : {0.0f, 0.75f, -3.0f}) {
      std::vector<float> x(256, v);
      std::vector<uint8_t> q(row_bytes(t, 256));
      ASSERT_TRUE(quantize_row(t, x.data(), q.data(), 256));
      std::vector<float> y(256);
      ASSERT_TRUE(dequantize_row(t, q.data(), y.data(), 256));
      for (float e : y) ASSERT_NEAR(e, v, std::fabs(v) * 0.01f) << name_of(t) << " " << v;
    }
  }
}

// ---- matmul ----------------------------------------------------------------

struct Matrix {
  TensorType type;
  int64_t rows, cols;
  std::vector<uint8_t> data;
  std::vector<float> dequantized;  // the exact weights the kernels see
  WeightMatrix view() const {
    return WeightMatrix{type, data.data(), rows, cols, row_bytes(type, cols)};
  }
};

Matrix make_matrix(TensorType t, int64_t rows, int64_t cols, uint32_t seed) {
  Matrix m{t, rows, cols, {}, {}};
  const auto w = gaussian(static_cast<size_t>(rows * cols), seed, 0.05f);
  const size_t rb = row_bytes(t, cols);
  m.data.resize(rb * static_cast<size_t>(rows));
  m.dequantized.resize(w.size());
  for (int64_t r = 0; r < rows; ++r) {
    EXPECT_TRUE(quantize_row(t, w.data() + r * cols, m.data.data() + r * rb, cols));
    EXPECT_TRUE(get_row(m.view(), r, m.dequantized.data() + r * cols));
  }
  return m;
}

// The kernels and the scalar reference sum the same exact per-block integers
// in different float orders, so they agree to a few float ulps of the
// magnitudes summed. Those magnitudes include the unsigned-offset forms (e.g.
// Q4_0 sums q*x with q up to 15 and subtracts 8*sum x), bounded by a few
// times max|w| * sum|x|.
float tight_tolerance(const Matrix& m, const float* x, int64_t r) {
  float wmax = 0.0f, xsum = 0.0f;
  for (int64_t c = 0; c < m.cols; ++c) {
    wmax = std::max(wmax, std::fabs(m.dequantized[r * m.cols + c]));
    xsum += std::fabs(x[c]);
  }
  return 4e-6f * 4.0f * wmax * xsum + 1e-30f;
}

// Quantizing the activation moves each x by at most half its block's step
// (amax/127/2), so the result differs from dequantized-weights-times-float-x
// by at most sum |w| * step/2. That bound is exact, not statistical.
float activation_rounding_bound(const Matrix& m, const float* x, int64_t r) {
  if (!is_quantized(m.type)) return 0.0f;
  const int64_t block = act_block(m.type);
  float bound = 0.0f;
  for (int64_t b = 0; b < m.cols; b += block) {
    float amax = 0.0f, wsum = 0.0f;
    for (int64_t c = b; c < b + block; ++c) {
      amax = std::max(amax, std::fabs(x[c]));
      wsum += std::fabs(m.dequantized[r * m.cols + c]);
    }
    bound += wsum * amax / 127.0f / 2.0f;
  }
  return bound * 1.001f;
}

void check_matmul(TensorType t, int64_t rows, int64_t cols, int64_t batch, ThreadPool& pool) {
  SCOPED_TRACE(testing::Message() << name_of(t) << " " << rows << "x" << cols << " batch " << batch
                                  << " threads " << pool.size());
  const Matrix m = make_matrix(t, rows, cols, static_cast<uint32_t>(rows * 131 + cols + batch));
  const auto x = gaussian(static_cast<size_t>(batch * cols), static_cast<uint32_t>(batch + 99));
  std::vector<uint8_t> scratch(activation_scratch_bytes(t, cols, batch));
  std::vector<float> fast(static_cast<size_t>(batch * rows), NAN);
  std::vector<float> ref(fast.size(), NAN);
  matmul(m.view(), x.data(), batch, fast.data(), scratch, pool);
  matmul_reference(m.view(), x.data(), batch, ref.data());
  for (int64_t b = 0; b < batch; ++b) {
    const float* xb = x.data() + b * cols;
    for (int64_t r = 0; r < rows; ++r) {
      const size_t i = static_cast<size_t>(b * rows + r);
      const float tight = tight_tolerance(m, xb, r);
      ASSERT_NEAR(fast[i], ref[i], tight) << "b=" << b << " r=" << r;
      double exact = 0.0;
      for (int64_t c = 0; c < cols; ++c) {
        exact += static_cast<double>(m.dequantized[r * cols + c]) * xb[c];
      }
      ASSERT_NEAR(fast[i], exact, activation_rounding_bound(m, xb, r) + tight)
          << "b=" << b << " r=" << r;
    }
  }
}

int64_t test_cols(TensorType t) {
  // Odd block counts for the 32-blocks, 2 super blocks for K-quants, and a
  // length with a vector tail for the float types.
  switch (t) {
    case TensorType::kIQ4_XS:
    case TensorType::kQ2_K:
    case TensorType::kQ3_K:
    case TensorType::kQ4_K:
    case TensorType::kQ5_K:
    case TensorType::kQ6_K:
      return 512;
    case TensorType::kQ4_0:
    case TensorType::kIQ4_NL:
    case TensorType::kQ8_0:
    case TensorType::kQ5_0:
    case TensorType::kQ5_1:
      return 352;
    default:
      return 301;
  }
}

TEST(Matmul, VectorMatchesScalarAndFloat) {
  ThreadPool pool(2);
  for (TensorType t : kAllTypes) {
    for (int64_t batch : {1, 3, 17}) {
      for (int64_t rows : {1, 7, 33, 67}) check_matmul(t, rows, test_cols(t), batch, pool);
    }
  }
}

// Every tile height up to eight activation rows (the i8mm level's kernels
// take them in pairs, an odd one paired with itself) with an odd row count
// (the last weight row likewise).
TEST(Matmul, EveryTileHeightMatchesScalar) {
  ThreadPool pool(1);
  for (TensorType t : kAllTypes) {
    for (int64_t batch = 1; batch <= 9; ++batch) check_matmul(t, 5, test_cols(t), batch, pool);
  }
}

// Batches of whole eight-row groups, alone and with tiles after them: the
// group kernels (and their activation layouts) at levels that have them.
TEST(Matmul, EightRowGroupsMatchScalar) {
  ThreadPool pool(2);
  for (TensorType t : kAllTypes) {
    for (int64_t batch : {8, 16, 20}) check_matmul(t, 37, test_cols(t) * 2, batch, pool);
  }
}

// Every tile height (1-4 activation rows, and 5-7 as four plus the rest)
// over an odd count of 32-element blocks: the kernels that take two blocks
// per register then run their paired loop, a lone pair and the last block.
TEST(Matmul, EveryTileHeightWithAnOddBlockCount) {
  ThreadPool pool(2);
  for (TensorType t : kAllTypes) {
    if (!is_quantized(t) || act_block(t) != 32) continue;
    for (int64_t batch = 1; batch <= 7; ++batch) check_matmul(t, 19, 7 * 32, batch, pool);
  }
}

// The repacking of interleave_q4_0x16 puts each element where the layout's
// comment says: row r's element 8c + e in the low nibble of qs[c][r][e], 8c +
// 4 + e in the high one, its block's scale in d[r].
TEST(Interleaved, Q4_0RepackingPutsEveryElementInItsPlace) {
  constexpr int64_t kRows = 32, kCols = 96, kBlocks = kCols / 32;
  const Matrix m = make_matrix(TensorType::kQ4_0, kRows, kCols, 7);
  std::vector<detail::BlockQ4_0x16> packed(kRows / 16 * kBlocks);
  detail::interleave_q4_0x16(m.data.data(), row_bytes(TensorType::kQ4_0, kCols), kRows, kCols,
                             packed.data());
  for (int64_t r = 0; r < kRows; ++r) {
    const auto* row =
        reinterpret_cast<const BlockQ4_0*>(m.data.data() + r * row_bytes(TensorType::kQ4_0, kCols));
    for (int64_t i = 0; i < kBlocks; ++i) {
      const detail::BlockQ4_0x16& b = packed[r / 16 * kBlocks + i];
      ASSERT_EQ(b.d[r % 16], row[i].d);
      for (int e = 0; e < 32; ++e) {
        const int level = e < 16 ? row[i].qs[e] & 0xF : row[i].qs[e - 16] >> 4;
        const uint8_t byte = b.qs[e / 8][r % 16][e % 4];
        ASSERT_EQ(level, (e % 8 < 4 ? byte : byte >> 4) & 0xF) << "r=" << r << " e=" << e;
      }
    }
  }
}

// Q4_0 weights repacked for the running level (interleave_weights) give the
// original layout's bits for the activation rows in eight-row groups (the
// repacked group kernel's float work is the original one's), and the scalar
// reference's results to summation order for all rows (the rows after the
// groups, and decode, sum in another order). Levels without such kernels
// repack nothing.
TEST(Interleaved, Q4_0MatmulMatchesTheOriginalLayout) {
  ThreadPool pool(2);
  for (int64_t rows : {16, 48, 112, 37}) {
    const Matrix m = make_matrix(TensorType::kQ4_0, rows, 704, static_cast<uint32_t>(rows));
    WeightMatrix w = m.view();
    const size_t bytes = interleaved_bytes(w);
    std::vector<uint8_t> packed(bytes);
    if (bytes == 0) {
      EXPECT_FALSE(interleave_weights(w, packed.data()));
      continue;
    }
    EXPECT_EQ(bytes, m.data.size());
    ASSERT_TRUE(interleave_weights(w, packed.data()));
    for (int64_t batch : {1, 8, 16, 20, 35}) {
      SCOPED_TRACE(testing::Message() << rows << " rows, batch " << batch);
      const auto x = gaussian(static_cast<size_t>(batch * w.cols), static_cast<uint32_t>(batch));
      std::vector<uint8_t> scratch(activation_scratch_bytes(w.type, w.cols, batch));
      std::vector<float> original(static_cast<size_t>(batch * rows), NAN);
      std::vector<float> repacked(original.size(), NAN);
      std::vector<float> ref(original.size(), NAN);
      w.interleaved = nullptr;
      matmul(w, x.data(), batch, original.data(), scratch, pool);
      w.interleaved = packed.data();
      matmul(w, x.data(), batch, repacked.data(), scratch, pool);
      const size_t grouped = static_cast<size_t>(batch / 8 * 8 * rows);
      EXPECT_EQ(0, std::memcmp(original.data(), repacked.data(), grouped * sizeof(float)));
      matmul_reference(w, x.data(), batch, ref.data());
      for (int64_t b = 0; b < batch; ++b) {
        for (int64_t r = 0; r < rows; ++r) {
          const size_t i = static_cast<size_t>(b * rows + r);
          ASSERT_NEAR(repacked[i], ref[i], tight_tolerance(m, x.data() + b * w.cols, r))
              << "b=" << b << " r=" << r;
        }
      }
    }
  }
}

// A matrix repacked at one level still multiplies correctly after a switch
// to a level without the repacked kernel: that level reads `data`.
TEST(Interleaved, OtherLevelsIgnoreTheRepackedRows) {
  const Matrix m = make_matrix(TensorType::kQ4_0, 32, 352, 5);
  WeightMatrix w = m.view();
  if (interleaved_bytes(w) == 0) GTEST_SKIP() << "no repacked kernel at this level";
  std::vector<uint8_t> packed(interleaved_bytes(w));
  ASSERT_TRUE(interleave_weights(w, packed.data()));
  w.interleaved = packed.data();
  const CpuLevel initial = cpu_level();
  ThreadPool pool(2);
  constexpr int64_t kBatch = 16;
  const auto x = gaussian(static_cast<size_t>(kBatch * w.cols), 3);
  std::vector<uint8_t> scratch(activation_scratch_bytes(w.type, w.cols, kBatch));
  std::vector<float> y(static_cast<size_t>(kBatch * w.rows)), ref(y.size());
  matmul_reference(w, x.data(), kBatch, ref.data());
  for (const char* level : {"scalar", "avx2"}) {
    ASSERT_TRUE(set_cpu_level(level, "test").ok());
    matmul(w, x.data(), kBatch, y.data(), scratch, pool);
    for (int64_t b = 0; b < kBatch; ++b) {
      for (int64_t r = 0; r < w.rows; ++r) {
        const size_t i = static_cast<size_t>(b * w.rows + r);
        ASSERT_NEAR(y[i], ref[i], tight_tolerance(m, x.data() + b * w.cols, r)) << level;
      }
    }
  }
  ASSERT_TRUE(set_cpu_level(cpu_level_name(initial), "test").ok());
}

TEST(Matmul, LargerShapesAndThreeThreads) {
  ThreadPool pool(3);
  for (TensorType t : kAllTypes) {
    check_matmul(t, 301, 1024, 1, pool);
    check_matmul(t, 131, 768, 6, pool);
  }
}

TEST(Matmul, IdenticalBitsForAnyThreadCount) {
  ThreadPool p1(1), p2(2), p3(3);
  for (TensorType t : kAllTypes) {
    const Matrix m = make_matrix(t, 517, 512, 42);
    for (int64_t batch : {1, 5, 32}) {
      const auto x = gaussian(static_cast<size_t>(batch * 512), 43);
      std::vector<uint8_t> scratch(activation_scratch_bytes(t, 512, batch));
      std::vector<float> y[3];
      ThreadPool* pools[3] = {&p1, &p2, &p3};
      for (int i = 0; i < 3; ++i) {
        y[i].assign(static_cast<size_t>(batch * 517), NAN);
        matmul(m.view(), x.data(), batch, y[i].data(), scratch, *pools[i]);
      }
      EXPECT_EQ(0, std::memcmp(y[0].data(), y[1].data(), y[0].size() * 4)) << name_of(t);
      EXPECT_EQ(0, std::memcmp(y[0].data(), y[2].data(), y[0].size() * 4)) << name_of(t);
    }
  }
}

// The largest sums the kernels' int16 lanes meet: every level at its top
// (31 for Q5, 15 for Q4_0, IQ4_XS's grid plus 128 up to 241 in the avx512
// kernels) times activations all at +127. Eight such steps would overflow
// an int16 for Q5; the eight-row kernel must widen sooner.
TEST(Matmul, ExtremeBlocksDoNotOverflow) {
  ThreadPool pool(2);
  constexpr int64_t kCols = 256, kRows = 4, kBatch = 8;
  std::vector<float> w(kRows * kCols, 1.0f);
  for (int64_t r = 0; r < kRows; ++r) w[r * kCols] = -1.0f;  // sets the scale: +1 maps to the top
  const std::vector<float> x(kBatch * kCols, 1.0f);
  for (TensorType t : {TensorType::kQ4_0, TensorType::kQ5_0, TensorType::kQ5_1, TensorType::kIQ4_XS,
                       TensorType::kQ2_K, TensorType::kQ3_K, TensorType::kQ4_K, TensorType::kQ5_K,
                       TensorType::kQ6_K}) {
    SCOPED_TRACE(name_of(t));
    const size_t rb = row_bytes(t, kCols);
    std::vector<uint8_t> data(rb * kRows);
    for (int64_t r = 0; r < kRows; ++r) {
      ASSERT_TRUE(quantize_row(t, w.data() + r * kCols, data.data() + r * rb, kCols));
    }
    const WeightMatrix m{t, data.data(), kRows, kCols, rb};
    std::vector<uint8_t> scratch(activation_scratch_bytes(t, kCols, kBatch));
    std::vector<float> fast(kBatch * kRows), ref(kBatch * kRows);
    matmul(m, x.data(), kBatch, fast.data(), scratch, pool);
    matmul_reference(m, x.data(), kBatch, ref.data());
    for (size_t i = 0; i < fast.size(); ++i)
      ASSERT_NEAR(fast[i], ref[i], 1e-3f * std::fabs(ref[i]));
  }
}

// ggml never writes -128 into a Q8_0 block, but a file may hold it: the
// kernels that multiply |w| by x with w's sign must still treat it as 128.
TEST(Matmul, Q8_0MinusOneTwentyEightIsExact) {
  ThreadPool pool(2);
  constexpr int64_t kCols = 96, kRows = 3;
  std::vector<BlockQ8_0> blocks(kRows * kCols / 32);
  for (size_t i = 0; i < blocks.size(); ++i) {
    blocks[i].d = fp32_to_fp16(0.5f);
    for (int j = 0; j < 32; ++j) blocks[i].qs[j] = static_cast<int8_t>(j % 3 == 0 ? -128 : 127 - j);
  }
  const WeightMatrix m{TensorType::kQ8_0, blocks.data(), kRows, kCols,
                       kCols / 32 * sizeof(BlockQ8_0)};
  for (int64_t batch : {1, 4, 8}) {
    std::vector<float> x(static_cast<size_t>(batch * kCols));
    for (size_t i = 0; i < x.size(); ++i) x[i] = i % 2 == 0 ? 1.0f : -1.0f;  // at +-127
    std::vector<uint8_t> scratch(activation_scratch_bytes(TensorType::kQ8_0, kCols, batch));
    std::vector<float> fast(static_cast<size_t>(batch * kRows)), ref(fast.size());
    matmul(m, x.data(), batch, fast.data(), scratch, pool);
    matmul_reference(m, x.data(), batch, ref.data());
    for (size_t i = 0; i < fast.size(); ++i) {
      ASSERT_NEAR(fast[i], ref[i], 1e-5f * std::fabs(ref[i]) + 1e-5f) << "batch " << batch;
    }
  }
}

TEST(Matmul, DoesNotAllocate) {
  ThreadPool pool(2);
  const Matrix m = make_matrix(TensorType::kQ4_K, 256, 512, 5);
  const auto x = gaussian(8 * 512, 6);
  std::vector<uint8_t> scratch(activation_scratch_bytes(TensorType::kQ4_K, 512, 8));
  std::vector<float> y(8 * 256);
  matmul(m.view(), x.data(), 8, y.data(), scratch, pool);  // warm up
  const long before = g_allocations.load();
  for (int i = 0; i < 50; ++i) {
    matmul(m.view(), x.data(), 1, y.data(), scratch, pool);
    matmul(m.view(), x.data(), 8, y.data(), scratch, pool);
  }
  EXPECT_EQ(g_allocations.load(), before);
}

TEST(Matmul, ActivationQuantizersAgree) {
  const detail::KernelSet& set = detail::active_kernels();
  auto x = gaussian(1024, 8);
  x[5] = 0.0f;
  std::fill(x.begin() + 256, x.begin() + 512, 0.0f);  // a zero block
  std::vector<detail::ActQ8> a(32), b(32);
  detail::quantize_act_q8_scalar(x.data(), a.data(), 1024);
  set.quantize_act_q8(x.data(), b.data(), 1024);
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), sizeof(detail::ActQ8) * a.size()));
  std::vector<detail::ActQ8K> c(4), d(4);
  detail::quantize_act_q8k_scalar(x.data(), c.data(), 1024);
  set.quantize_act_q8k(x.data(), d.data(), 1024);
  EXPECT_EQ(0, std::memcmp(c.data(), d.data(), sizeof(detail::ActQ8K) * c.size()));
  if (set.quantize_act_q8kx8 == nullptr) return;
  // Eight rows of 256, interleaved: the same scales, sums and bytes.
  auto rows = gaussian(8 * 256, 9);
  std::fill(rows.begin() + 3 * 256, rows.begin() + 4 * 256, 0.0f);
  detail::ActQ8Kx8 group;
  set.quantize_act_q8kx8(rows.data(), 256, &group, 256);
  for (int k = 0; k < 8; ++k) {
    detail::ActQ8K row;
    detail::quantize_act_q8k_scalar(rows.data() + k * 256, &row, 256);
    EXPECT_EQ(group.d[k], row.d) << k;
    for (int g = 0; g < 16; ++g) EXPECT_EQ(group.bsums[g / 2][k][g % 2], row.bsums[g]) << k;
    for (int j = 0; j < 64; ++j) EXPECT_EQ(0, std::memcmp(group.qs[j][k], row.qs + 4 * j, 4)) << k;
  }
}

TEST(Matmul, GetRowMatchesDequantize) {
  const Matrix m = make_matrix(TensorType::kQ6_K, 5, 256, 9);
  std::vector<float> row(256), expect(256);
  ASSERT_TRUE(get_row(m.view(), 3, row.data()));
  ASSERT_TRUE(dequantize_row(TensorType::kQ6_K, m.data.data() + 3 * 210, expect.data(), 256));
  EXPECT_EQ(row, expect);
  EXPECT_FALSE(get_row(m.view(), 5, row.data()));
}

// ---- vector helpers --------------------------------------------------------

TEST(Ops, DotAxpyAndFriends) {
  for (int64_t n : {1, 7, 8, 31, 32, 100, 256, 1000}) {
    const auto a = gaussian(static_cast<size_t>(n), 10);
    const auto b = gaussian(static_cast<size_t>(n), 11);
    std::vector<uint16_t> bh(b.size());
    ASSERT_TRUE(quantize_row(TensorType::kF16, b.data(), bh.data(), n));
    double exact = 0.0, exact_h = 0.0, mag = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      exact += static_cast<double>(a[i]) * b[i];
      exact_h += static_cast<double>(a[i]) * fp16_to_fp32(bh[i]);
      mag += std::fabs(a[i] * b[i]);
    }
    EXPECT_NEAR(dot_f32(a.data(), b.data(), n), exact, 1e-6 * mag + 1e-7);
    EXPECT_NEAR(dot_f32_f16(a.data(), bh.data(), n), exact_h, 1e-6 * mag + 1e-7);

    std::vector<float> y(b), yh(b);
    axpy_f32(0.5f, a.data(), y.data(), n);
    axpy_f16(0.5f, bh.data(), yh.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_FLOAT_EQ(y[i], b[i] + 0.5f * a[i]);
      EXPECT_FLOAT_EQ(yh[i], b[i] + 0.5f * fp16_to_fp32(bh[i]));
    }
    if (n % 32 == 0) {
      std::vector<uint8_t> bq(static_cast<size_t>(n / 32 * 34));
      std::vector<float> bd(b.size());
      ASSERT_TRUE(quantize_row(TensorType::kQ8_0, b.data(), bq.data(), n));
      ASSERT_TRUE(dequantize_row(TensorType::kQ8_0, bq.data(), bd.data(), n));
      double exact_q = 0.0;
      for (int64_t i = 0; i < n; ++i) exact_q += static_cast<double>(a[i]) * bd[i];
      EXPECT_NEAR(dot_f32_q8_0(a.data(), bq.data(), n), exact_q, 1e-6 * mag + 1e-7);
      std::vector<float> yq(b);
      axpy_q8_0(0.5f, bq.data(), yq.data(), n);
      for (int64_t i = 0; i < n; ++i)
        EXPECT_NEAR(yq[i], b[i] + 0.5f * bd[i], 1e-6f * (1 + std::fabs(b[i])));
    }
    add_f32(y.data(), a.data(), n);
    scale_f32(y.data(), 2.0f, n);
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_NEAR(y[i], 2.0f * (b[i] + 1.5f * a[i]), 1e-6f * (std::fabs(b[i]) + std::fabs(a[i])));
    }
  }
}

TEST(Ops, RmsNorm) {
  const auto x = gaussian(333, 12, 3.0f);
  const auto w = gaussian(333, 13);
  std::vector<float> out(333);
  rmsnorm(x.data(), w.data(), out.data(), 333, 1e-5f);
  double ss = 0.0;
  for (float v : x) ss += static_cast<double>(v) * v;
  const double inv = 1.0 / std::sqrt(ss / 333 + 1e-5);
  for (int i = 0; i < 333; ++i)
    EXPECT_NEAR(out[i], x[i] * inv * w[i], 1e-5 * std::fabs(x[i] * inv * w[i]) + 1e-7);
  std::vector<float> in_place(x);
  rmsnorm(in_place.data(), w.data(), in_place.data(), 333, 1e-5f);
  EXPECT_EQ(in_place, out);
}

TEST(Ops, SoftmaxMatchesExpAndMasks) {
  for (int64_t n : {1, 5, 8, 77, 1024}) {
    auto x = gaussian(static_cast<size_t>(n), 14, 10.0f);
    if (n > 2) x[1] = -std::numeric_limits<float>::infinity();
    const std::vector<float> in(x);
    std::vector<double> expect(x.size());
    const double max = *std::max_element(x.begin(), x.end());
    double sum = 0.0;
    for (size_t i = 0; i < x.size(); ++i) sum += expect[i] = std::exp(x[i] - max);
    softmax(x.data(), n);
    double total = 0.0;
    for (size_t i = 0; i < x.size(); ++i) {
      // Beyond the exp's own few ulps, x - max is rounded to float, which
      // costs |x - max| * 2^-24 relative after exponentiation.
      const double p = expect[i] / sum;
      const double rel = 1e-6 + std::fabs(in[i] - max) * 0x1p-24;
      EXPECT_NEAR(x[i], p, p == 0.0 ? 0.0 : rel * p) << n << " " << i;
      total += x[i];
    }
    if (n > 2) {
      EXPECT_EQ(x[1], 0.0f);
    }
    EXPECT_NEAR(total, 1.0, 1e-5);
  }
}

TEST(Ops, GatedActivations) {
  std::vector<float> g(203);
  for (size_t i = 0; i < g.size(); ++i) g[i] = -100.0f + static_cast<float>(i);  // covers the tails
  const auto up = gaussian(g.size(), 15);
  std::vector<float> s(g), e(g);
  silu_mul(s.data(), up.data(), static_cast<int64_t>(g.size()));
  gelu_mul(e.data(), up.data(), static_cast<int64_t>(g.size()));
  for (size_t i = 0; i < g.size(); ++i) {
    const double v = g[i];
    const double silu = v / (1.0 + std::exp(-v)) * up[i];
    // 0.5 v (1 + tanh u) written as v * sigmoid(2u): no cancellation for v << 0.
    const double u = 0.7978845608 * (v + 0.044715 * v * v * v);
    const double gelu = v / (1.0 + std::exp(-2.0 * u)) * up[i];
    // exp's argument is rounded to float first: |arg| * 2^-24 relative.
    EXPECT_NEAR(s[i], silu, (1e-6 + std::fabs(v) * 0x1p-24) * std::fabs(silu) + 1e-30) << v;
    EXPECT_NEAR(e[i], gelu, (1e-6 + std::fabs(2 * u) * 0x1p-22) * std::fabs(gelu) + 1e-30) << v;
  }
}

// ---- thread pool -----------------------------------------------------------

// ctest runs this program once per level with FORESHORE_CPU_LEVEL set: the
// run must be at that level, or it would check another level twice.
TEST(CpuLevel, RunsTheLevelTheOverrideNames) {
  const char* env = std::getenv("FORESHORE_CPU_LEVEL");
  if (env == nullptr) GTEST_SKIP() << "FORESHORE_CPU_LEVEL not set";
  const auto supported = supported_cpu_levels();
  const bool has = std::any_of(supported.begin(), supported.end(),
                               [&](CpuLevel l) { return cpu_level_name(l) == env; });
  if (!has) GTEST_SKIP() << "this CPU lacks that level: " << env;
  EXPECT_EQ(cpu_level_name(cpu_level()), env);
}

TEST(CpuLevel, SetAcceptsSupportedLevelsAndRefusesOthers) {
  const CpuLevel initial = cpu_level();
  const auto supported = supported_cpu_levels();
  ASSERT_FALSE(supported.empty());
  EXPECT_EQ(supported.front(), CpuLevel::kScalar);
  for (CpuLevel level : supported) {
    ASSERT_TRUE(set_cpu_level(cpu_level_name(level), "test").ok());
    EXPECT_EQ(cpu_level(), level);
  }
  const Status unknown = set_cpu_level("sse9", "--cpu-level");
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.error().kind, ErrorKind::kInvalidArgument);
  EXPECT_NE(unknown.error().message.find("--cpu-level=sse9"), std::string::npos);
  EXPECT_NE(unknown.error().message.find("scalar"), std::string::npos);
  EXPECT_EQ(cpu_level(), supported.back());  // unchanged by the failures
  ASSERT_TRUE(set_cpu_level(cpu_level_name(initial), "test").ok());
}

// A level of this architecture that the CPU lacks (dotprod under
// `qemu-aarch64 -cpu cortex-a72`, i8mm under `-cpu neoverse-n1`, avx512 on
// an AVX2-only CPU) is refused, and the message names the levels it has.
TEST(CpuLevel, RefusesALevelThisCpuLacksNamingTheLevelsItHas) {
#if defined(__x86_64__)
  const char* const names[] = {"scalar", "avx2", "avx512"};
#elif defined(__aarch64__) && defined(FSH_KERNELS_I8MM)
  const char* const names[] = {"scalar", "neon", "dotprod", "i8mm"};
#elif defined(__aarch64__)
  const char* const names[] = {"scalar", "neon", "dotprod"};
#else
  const char* const names[] = {"scalar"};
#endif
  const CpuLevel initial = cpu_level();
  const auto supported = supported_cpu_levels();
  int refused = 0;
  for (const char* name : names) {
    if (std::any_of(supported.begin(), supported.end(),
                    [&](CpuLevel l) { return cpu_level_name(l) == name; })) {
      continue;
    }
    SCOPED_TRACE(name);
    const Status status = set_cpu_level(name, "--cpu-level");
    ASSERT_FALSE(status.ok());
    EXPECT_EQ(status.error().kind, ErrorKind::kUnsupported);
    EXPECT_NE(status.error().message.find(std::string("--cpu-level=") + name), std::string::npos);
    for (CpuLevel level : supported) {
      EXPECT_NE(status.error().message.find(cpu_level_name(level)), std::string::npos)
          << status.error().message;
    }
    ++refused;
  }
  EXPECT_EQ(cpu_level(), initial);
  if (refused == 0) GTEST_SKIP() << "this CPU has every level of its architecture";
}

TEST(ThreadPool, ParallelForCoversEveryIndexOnce) {
  for (int threads : {1, 2, 3, 4}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.size(), threads);
    for (int64_t n : {0, 1, 2, 3, 5, 100, 1001}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      pool.parallel_for(n, [&](int64_t begin, int64_t end) {
        ASSERT_LT(begin, end);
        for (int64_t i = begin; i < end; ++i) hits[static_cast<size_t>(i)]++;
      });
      for (auto& h : hits) ASSERT_EQ(h.load(), 1);
    }
  }
}

TEST(ThreadPool, RunOnAllAndStdFunctionOverloads) {
  ThreadPool pool(3);
  std::atomic<int> mask{0};
  const std::function<void(int, int)> fn = [&](int thread, int count) {
    EXPECT_EQ(count, 3);
    mask |= 1 << thread;
  };
  pool.run_on_all(fn);
  EXPECT_EQ(mask.load(), 0b111);
  std::atomic<int64_t> sum{0};
  const std::function<void(int64_t, int64_t)> range = [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) sum += i;
  };
  pool.parallel_for(1000, range);
  EXPECT_EQ(sum.load(), 999 * 1000 / 2);
}

TEST(ThreadPool, ManyDispatchesAndWakeUpsAfterSleep) {
  ThreadPool pool(2);
  int64_t total = 0;
  std::vector<int64_t> per_thread(2);
  for (int round = 0; round < 20000; ++round) {
    pool.run_on_all([&](int t, int) { per_thread[static_cast<size_t>(t)] += 1; });
  }
  total = per_thread[0] + per_thread[1];
  EXPECT_EQ(total, 40000);
  // Long enough for the workers to stop spinning and block.
  for (int round = 0; round < 5; ++round) {
    std::this_thread::sleep_for(std::chrono::milliseconds(3));
    std::atomic<int> count{0};
    pool.run_on_all([&](int, int) { count++; });
    EXPECT_EQ(count.load(), 2);
  }
}

TEST(ThreadPool, CallerWaitsForSlowWorker) {
  ThreadPool pool(2);
  std::atomic<bool> done{false};
  pool.run_on_all([&](int t, int) {
    if (t == 1) {
      // Longer than the caller's spin, so it blocks and must be woken.
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      done = true;
    }
  });
  EXPECT_TRUE(done.load());
}

TEST(ThreadPool, DispatchDoesNotAllocate) {
  ThreadPool pool(2);
  std::atomic<int64_t> sum{0};
  int a = 1, b = 2, c = 3;  // captures beyond std::function's small buffer
  pool.parallel_for(10, [&](int64_t, int64_t) { sum += a + b + c; });
  const long before = g_allocations.load();
  for (int i = 0; i < 1000; ++i) {
    pool.parallel_for(10, [&](int64_t, int64_t) { sum += a + b + c; });
    pool.run_on_all([&](int, int) { sum += a + b + c; });
  }
  EXPECT_EQ(g_allocations.load(), before);
}

}  // namespace
}  // namespace foreshore::engine
