// Block layouts and per-type kernels shared by the kernel translation units.
// Private to fsh_kernels: nothing outside src/engine/kernels*.cpp includes it.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "engine/kernels.h"
#include "engine/tensor_type.h"

namespace foreshore::engine::detail {

inline constexpr int64_t kQK = 32;    // elements per Q4_0 / Q8_0 block
inline constexpr int64_t kQKK = 256;  // elements per K-quant super block

// Weight blocks, byte-for-byte as ggml writes them into GGUF files.
struct BlockQ4_0 {
  uint16_t d;           // fp16 scale
  uint8_t qs[kQK / 2];  // element j in the low nibble of byte j, j+16 in the high
};
// Q4_0's layout, but each nibble indexes kIq4nlValues, a non-uniform grid
// denser near zero, where most weights are.
struct BlockIQ4_NL {
  uint16_t d;
  uint8_t qs[kQK / 2];
};
inline constexpr int8_t kIq4nlValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                            1,    13,   25,  38,  53,  69,  89,  113};
// IQ4_NL's grid with K-quant super blocks: eight 32-element sub-blocks, each
// with a 6-bit scale (stored + 32: low 4 bits in a nibble of scales_l, top
// 2 bits in scales_h) times d, and Q4_0's nibble order inside a sub-block.
struct BlockIQ4_XS {
  uint16_t d;
  uint16_t scales_h;
  uint8_t scales_l[4];
  uint8_t qs[128];
};
// The scale (-32..31) of sub-block ib, and the grid value of element e.
inline int iq4xs_scale(const BlockIQ4_XS& b, int ib) {
  const int low = (b.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF;
  return (low | (((b.scales_h >> (2 * ib)) & 3) << 4)) - 32;
}
inline int iq4xs_value(const BlockIQ4_XS& b, int e) {
  const int j = e % 32;
  return kIq4nlValues[(b.qs[16 * (e / 32) + j % 16] >> (4 * (j / 16))) & 0xF];
}
// Q4_0's nibbles plus a fifth bit per element: bit j of qh for element j
// (elements 16-31 take bits 16-31). Q5_0 is symmetric (value - 16), Q5_1
// has a per-block offset m. llama.cpp writes them where a matrix's rows are
// not a multiple of 256, in place of Q4_K and Q5_K.
struct BlockQ5_0 {
  uint16_t d;
  uint8_t qh[4];
  uint8_t qs[kQK / 2];
};
struct BlockQ5_1 {
  uint16_t d;
  uint16_t m;
  uint8_t qh[4];
  uint8_t qs[kQK / 2];
};
// The 5-bit level of element j (0-31) of a Q5_0 or Q5_1 block.
template <typename Block>
inline int q5_level(const Block& b, int j) {
  uint32_t qh;
  std::memcpy(&qh, b.qh, sizeof qh);
  const int low = j < kQK / 2 ? b.qs[j] & 0xF : b.qs[j - kQK / 2] >> 4;
  return low | static_cast<int>(((qh >> j) & 1u) << 4);
}
struct BlockQ8_0 {
  uint16_t d;
  int8_t qs[kQK];
};
struct BlockQ4_K {
  uint16_t d;            // fp16 scale of the 6-bit sub-block scales
  uint16_t dmin;         // fp16 scale of the 6-bit sub-block mins
  uint8_t scales[12];    // 8 scales and 8 mins, 6 bits each
  uint8_t qs[kQKK / 2];  // per 64 elements: 32 bytes, low nibbles first 32, high the next
};
// Q4_K plus a fifth bit per element: bit 2k of qh[l] belongs to element
// 64k + l, bit 2k+1 to element 64k + 32 + l.
struct BlockQ5_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];
  uint8_t qh[kQKK / 8];
  uint8_t qs[kQKK / 2];
};
// The K-quants with a scale per 16 elements. Both hold 2-bit levels four to
// a byte: element 128h + 32j + l in bits 2j..2j+1 of qs[32h + l].
// Q2_K: 4-bit scale (low nibble) and 4-bit min (high nibble) per 16
// elements, scaled by d and dmin: x = d * sc * q - dmin * m, q in 0..3.
struct BlockQ2_K {
  uint8_t scales[kQKK / 16];
  uint8_t qs[kQKK / 4];
  uint16_t d;
  uint16_t dmin;
};
// Q3_K: a third bit per element, bit e / 32 of hmask[e % 32] (set: +0,
// clear: -4), and 6-bit signed scales (stored + 32) packed into 12 bytes:
// x = d * sc * q, q in -4..3.
struct BlockQ3_K {
  uint8_t hmask[kQKK / 8];
  uint8_t qs[kQKK / 4];
  uint8_t scales[12];
  uint16_t d;
};
struct BlockQ6_K {
  uint8_t ql[kQKK / 2];      // low 4 bits
  uint8_t qh[kQKK / 4];      // high 2 bits
  int8_t scales[kQKK / 16];  // one per 16 elements
  uint16_t d;
};
static_assert(sizeof(BlockQ4_0) == 18);
static_assert(sizeof(BlockQ8_0) == 34);
static_assert(sizeof(BlockQ5_0) == 22);
static_assert(sizeof(BlockQ5_1) == 24);
static_assert(sizeof(BlockIQ4_NL) == 18);
static_assert(sizeof(BlockIQ4_XS) == 136);
static_assert(sizeof(BlockQ4_K) == 144);
static_assert(sizeof(BlockQ2_K) == 84);
static_assert(sizeof(BlockQ3_K) == 110);
static_assert(sizeof(BlockQ5_K) == 176);
static_assert(sizeof(BlockQ6_K) == 210);

// Activation blocks live only in matmul scratch, so they are laid out for the
// kernels rather than for ggml compatibility: float scales keep the activation
// error at the 8-bit rounding alone.
struct ActQ8 {
  float d;
  float s;  // d * sum(qs): lets Q4_0 use unsigned nibbles and subtract 8*s once
  int8_t qs[kQK];
};
struct ActQ8K {
  float d;
  int16_t bsums[kQKK / 16];  // sums of qs per 16 elements, for mins and the Q6_K offset
  int8_t qs[kQKK];
};
static_assert(sizeof(ActQ8) == 40);
static_assert(sizeof(ActQ8K) == 292);

// One block of eight activation rows, the rows interleaved four bytes at a
// time: qs[j][k] holds elements 4j..4j+3 of row k. One maddubs then
// multiplies four weights with all eight rows and the float work per block
// is shared by the eight rows, which is what makes prompt processing with
// Q4_0 weights compute-efficient. Same size as eight ActQ8, so a group takes
// the place of its rows in scratch.
struct ActQ8x8 {
  float d[8];
  float s[8];
  int8_t qs[kQK / 4][8][4];
};
static_assert(sizeof(ActQ8x8) == 8 * sizeof(ActQ8));
inline constexpr int kGroupRows = 8;
// Eight ActQ8K rows (same quantization, so the same integers) interleaved
// as ActQ8x8 is, for the K-quants' eight-row kernels: qs[j][k] holds
// elements 4j..4j+3 of row k, and bsums[p][k] the sums of row k's 16-element
// groups 2p and 2p+1 side by side, so one madd weights both with their
// scales (or mins) for all eight rows. Same size as eight ActQ8K.
struct ActQ8Kx8 {
  float d[8];
  int16_t bsums[kQKK / 32][8][2];
  int8_t qs[kQKK / 4][8][4];
};
static_assert(sizeof(ActQ8Kx8) == 8 * sizeof(ActQ8K));

// Q4_0 weights repacked at load for kernels that take sixteen weight rows at
// once (TypeKernels::interleaved_group): block i of rows 16s .. 16s + 15
// side by side, the blocks of each sixteen rows one after another, so the
// repacked matrix has the original's size and row offsets that are
// multiples of 16 stay where they were. qs[c][r][b] holds element 8c + b of
// row r in its low nibble and element 8c + 4 + b in its high one: a 64-byte
// load, masked or shifted and masked, is one 4-element step of all sixteen
// rows, dword r being row r's.
inline constexpr int64_t kInterleavedRows = kInterleavedRowGroup;
struct BlockQ4_0x16 {
  uint16_t d[kInterleavedRows];
  uint8_t qs[kQK / 8][kInterleavedRows][4];
};
static_assert(sizeof(BlockQ4_0x16) == kInterleavedRows * sizeof(BlockQ4_0));
// Repacks `rows` (a multiple of kInterleavedRows) Q4_0 rows of `cols`
// elements, row_bytes apart, into dst.
void interleave_q4_0x16(const uint8_t* src, size_t row_bytes, int64_t rows, int64_t cols,
                        BlockQ4_0x16* dst);

// Weight quantization (file writing) and dequantization, scalar. n is a
// multiple of the type's block size.
void quantize_q4_0(const float* x, BlockQ4_0* y, int64_t n);
void quantize_q4_0_weighted(const float* x, const float* importance, BlockQ4_0* y, int64_t n);
void quantize_iq4_nl(const float* x, BlockIQ4_NL* y, int64_t n, const float* importance = nullptr);
void quantize_iq4_xs(const float* x, BlockIQ4_XS* y, int64_t n, const float* importance = nullptr);
void quantize_q8_0(const float* x, BlockQ8_0* y, int64_t n);
void quantize_q5_0(const float* x, BlockQ5_0* y, int64_t n);
void quantize_q5_1(const float* x, BlockQ5_1* y, int64_t n);
// With importance (one value per element), the K-quants fit their sub-block
// scales by weighted least squares (see quantize_row_weighted).
void quantize_q4_k(const float* x, BlockQ4_K* y, int64_t n, const float* importance = nullptr);
void quantize_q2_k(const float* x, BlockQ2_K* y, int64_t n, const float* importance = nullptr);
void quantize_q3_k(const float* x, BlockQ3_K* y, int64_t n, const float* importance = nullptr);
void quantize_q5_k(const float* x, BlockQ5_K* y, int64_t n, const float* importance = nullptr);
void quantize_q6_k(const float* x, BlockQ6_K* y, int64_t n, const float* importance = nullptr);
void dequantize_q4_0(const BlockQ4_0* x, float* y, int64_t n);
void dequantize_iq4_nl(const BlockIQ4_NL* x, float* y, int64_t n);
void dequantize_iq4_xs(const BlockIQ4_XS* x, float* y, int64_t n);
void dequantize_q8_0(const BlockQ8_0* x, float* y, int64_t n);
void dequantize_q5_0(const BlockQ5_0* x, float* y, int64_t n);
void dequantize_q5_1(const BlockQ5_1* x, float* y, int64_t n);
void dequantize_q4_k(const BlockQ4_K* x, float* y, int64_t n);
void dequantize_q2_k(const BlockQ2_K* x, float* y, int64_t n);
void dequantize_q3_k(const BlockQ3_K* x, float* y, int64_t n);
void dequantize_q5_k(const BlockQ5_K* x, float* y, int64_t n);
void dequantize_q6_k(const BlockQ6_K* x, float* y, int64_t n);

// Unpacks the 12 scale bytes of a Q4_K block: out[0..7] are the sub-block
// scales, out[8..15] the mins (all 6-bit). Scales and mins 0-3 are the low 6
// bits of bytes 0-3 and 4-7; 4-7 have their low 4 bits in bytes 8-11 and
// their top 2 bits in the spare top bits of bytes 0-7. Whole-word masks move
// four lanes at once.
inline void unpack_q4k_scales(const uint8_t* packed, uint8_t out[16]) {
  uint32_t w[3];
  std::memcpy(w, packed, 12);
  constexpr uint32_t kLow6 = 0x3f3f3f3f, kLow4 = 0x0f0f0f0f, kLow2 = 0x03030303;
  const uint32_t r[4] = {
      w[0] & kLow6,
      (w[2] & kLow4) | (((w[0] >> 6) & kLow2) << 4),
      w[1] & kLow6,
      ((w[2] >> 4) & kLow4) | (((w[1] >> 6) & kLow2) << 4),
  };
  std::memcpy(out, r, 16);
}

// The level of element e (0-255) of a Q4_K or Q5_K super block. Each pair of
// sub-blocks shares 32 bytes of nibbles, the first sub-block in the low ones;
// Q5_K keeps sub-block e / 32's fifth bits in bit e / 32 of qh.
// Element e's 4 bits in the Q4_K/Q5_K nibble layout of qs.
inline int q4k_nibble(const uint8_t* qs, int e) {
  return (qs[32 * (e / 64) + e % 32] >> (4 * ((e / 32) % 2))) & 0xF;
}
inline int scale_min_level(const BlockQ4_K& b, int e) {
  return q4k_nibble(b.qs, e);
}
inline int scale_min_level(const BlockQ5_K& b, int e) {
  return q4k_nibble(b.qs, e) | (((b.qh[e % 32] >> (e / 32)) & 1) << 4);
}

// The unsigned level of element e (0-255) of a K-quant with a scale per 16
// elements, and the offset that level carries: Q2_K 0..3 (offset 0), Q3_K
// 0..7 (offset 4), Q6_K 0..63 (offset 32). Q6_K keeps the low 4 bits of
// chunk j of half h in the low (j < 2) or high nibbles of ql[64h + 32(j%2) +
// l], and the top 2 bits in bits 2j..2j+1 of qh[32h + l].
inline int two_bit_level(const uint8_t* qs, int e) {
  return (qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
}
inline int scale16_level(const BlockQ2_K& b, int e) {
  return two_bit_level(b.qs, e);
}
inline int scale16_level(const BlockQ3_K& b, int e) {
  return two_bit_level(b.qs, e) | (((b.hmask[e % 32] >> (e / 32)) & 1) << 2);
}
inline int scale16_level(const BlockQ6_K& b, int e) {
  const int h = e / 128, j = (e % 128) / 32, l = e % 32;
  const int low = (b.ql[64 * h + 32 * (j % 2) + l] >> (4 * (j / 2))) & 0xF;
  return low | (((b.qh[32 * h + l] >> (2 * j)) & 3) << 4);
}
inline constexpr int scale16_offset(const BlockQ2_K&) {
  return 0;
}
inline constexpr int scale16_offset(const BlockQ3_K&) {
  return 4;
}
inline constexpr int scale16_offset(const BlockQ6_K&) {
  return 32;
}

// Unpacks Q3_K's 12 scale bytes into its 16 scales as stored (0-63; the
// scale is the stored value - 32). Scales 0-7 keep their low 4 bits in the
// low nibbles of bytes 0-7, scales 8-15 in the high nibbles; the top 2 bits
// of scales i, 4+i, 8+i, 12+i (i < 4) are the four bit pairs of byte 8 + i.
// Whole-word masks move four bytes at once, as in unpack_q4k_scales.
inline void unpack_q3k_scales(const uint8_t* packed, uint8_t out[16]) {
  uint32_t w[3];
  std::memcpy(w, packed, 12);
  constexpr uint32_t kLow4 = 0x0f0f0f0f, kLow2 = 0x03030303;
  const uint32_t r[4] = {
      (w[0] & kLow4) | ((w[2] & kLow2) << 4),
      (w[1] & kLow4) | (((w[2] >> 2) & kLow2) << 4),
      ((w[0] >> 4) & kLow4) | (((w[2] >> 4) & kLow2) << 4),
      ((w[1] >> 4) & kLow4) | (((w[2] >> 6) & kLow2) << 4),
  };
  std::memcpy(out, r, 16);
}

// The 16 scales of a Q2_K, Q3_K or Q6_K block, and Q2_K's minimums (zero for
// the others).
template <typename Block>
inline void scale16_scales(const Block& b, int scale[16], int min[16]) {
  for (int g = 0; g < 16; ++g) min[g] = 0;
  if constexpr (std::is_same_v<Block, BlockQ2_K>) {
    for (int g = 0; g < 16; ++g) {
      scale[g] = b.scales[g] & 0xF;
      min[g] = b.scales[g] >> 4;
    }
  } else if constexpr (std::is_same_v<Block, BlockQ3_K>) {
    uint8_t stored[16];
    unpack_q3k_scales(b.scales, stored);
    for (int g = 0; g < 16; ++g) scale[g] = stored[g] - 32;
  } else {
    for (int g = 0; g < 16; ++g) scale[g] = b.scales[g];
  }
}

// Activation quantization, scalar; every level's quantizers produce the
// same bytes.
void quantize_act_q8_scalar(const float* x, ActQ8* y, int64_t n);
void quantize_act_q8k_scalar(const float* x, ActQ8K* y, int64_t n);

// Arguments of a row kernel: y[b * y_stride + r] = W[r] . act[b].
struct RowArgs {
  const uint8_t* w = nullptr;
  size_t w_row_bytes = 0;
  int64_t cols = 0;
  const uint8_t* act = nullptr;  // floats, or activation blocks in scratch
  size_t act_row_bytes = 0;
  float* y = nullptr;
  int64_t y_stride = 0;
};

template <typename T>
inline const T* weight_row(const RowArgs& a, int64_t r) {
  return reinterpret_cast<const T*>(a.w + static_cast<size_t>(r) * a.w_row_bytes);
}
template <typename T>
inline const T* act_row(const RowArgs& a, int64_t b) {
  return reinterpret_cast<const T*>(a.act + static_cast<size_t>(b) * a.act_row_bytes);
}

// Computes rows [r0, r1) for activation rows [b0, b0 + nb), nb in 1 to its
// type's TypeKernels::max_tile.
using RowKernel = void (*)(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb);
inline constexpr int kMaxTile = 4;
// The tile of the super-block kernels without a group kernel: expanding a
// K-quant block costs more than its products, so eight decoding sequences
// expand it once instead of twice. The i8mm level's SMMLA kernels take
// this many too, as four pairs of activation rows.
inline constexpr int kWideTile = 8;
// How far ahead of the weights being read the kernels prefetch; a unit of
// work starting on new rows prefetches its first this many bytes at once.
inline constexpr size_t kPrefetchDistance = 3072;
// Computes rows [r0, r1) for the kGroupRows activation rows from b0, stored
// as ActQ8x8 blocks (ActQ8Kx8 for the types with 256-element blocks).
using GroupKernel = void (*)(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0);

// Scalar kernels: the reference, and the scalar level's kernels.
void rows_f32_scalar(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb);
void rows_f16_scalar(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb);
void rows_bf16_scalar(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb);
void rows_q4_0_scalar(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb);
void rows_iq4_nl_scalar(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb);
void rows_iq4_xs_scalar(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb);
void rows_q8_0_scalar(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb);
void rows_q5_0_scalar(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb);
void rows_q5_1_scalar(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb);
void rows_q4_k_scalar(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb);
void rows_q2_k_scalar(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb);
void rows_q3_k_scalar(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb);
void rows_q5_k_scalar(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb);
void rows_q6_k_scalar(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb);

// The element-wise helpers of kernels.h, one entry each; fp32_to_fp16 and
// fp16_to_fp32 convert n values (quantize_row and dequantize_row of F16).
struct VectorOps {
  float (*dot_f32)(const float* a, const float* b, int64_t n);
  float (*dot_f32_f16)(const float* a, const uint16_t* b, int64_t n);
  void (*axpy_f32)(float a, const float* x, float* y, int64_t n);
  void (*axpy_f16)(float a, const uint16_t* x, float* y, int64_t n);
  void (*add_f32)(float* y, const float* x, int64_t n);
  void (*scale_f32)(float* y, float a, int64_t n);
  void (*rmsnorm)(const float* x, const float* weight, float* out, int64_t n, float eps);
  void (*softmax)(float* x, int64_t n);
  void (*silu_mul)(float* gate, const float* up, int64_t n);
  void (*gelu_mul)(float* gate, const float* up, int64_t n);
  void (*fp32_to_fp16)(const float* x, uint16_t* y, int64_t n);
  void (*fp16_to_fp32)(const uint16_t* x, float* y, int64_t n);
  float (*dot_f32_q8_0)(const float* a, const void* b, int64_t n);
  void (*axpy_q8_0)(float a, const void* x, float* y, int64_t n);
};

// A weight type's kernels at one level. `group` (kGroupRows interleaved
// activation rows) is null where it does not pay off or the level lacks it.
struct TypeKernels {
  TensorType type = TensorType::kF32;
  RowKernel rows = nullptr;
  GroupKernel group = nullptr;
  int max_tile = kMaxTile;  // most activation rows `rows` takes at once
  // Two groups (2 * kGroupRows rows from b0) at once, where sharing the
  // weights' expansion pays; null elsewhere.
  GroupKernel group_pair = nullptr;
  // `group` and `rows` reading the weights repacked by interleave_q4_0x16
  // (a.w points at them; r0 and r1 multiples of kInterleavedRows), where the
  // level has such kernels: only Q4_0 at avx512. interleaved_group gives
  // `group`'s bits; interleaved_rows takes max_tile rows as `rows` does.
  GroupKernel interleaved_group = nullptr;
  RowKernel interleaved_rows = nullptr;
};
inline constexpr size_t kKernelTypes = 14;  // the types with kernels (kernels.cpp, kOps)

// Everything that differs between instruction-set levels. Each level's file
// (kernels_<level>*.cpp, the only ones built with its instructions) exports
// nothing but its set, so no code of a level is reachable except through
// the set the dispatch chose.
struct KernelSet {
  CpuLevel level = CpuLevel::kScalar;
  TypeKernels types[kKernelTypes];
  void (*quantize_act_q8)(const float* x, ActQ8* y, int64_t n) = nullptr;
  void (*quantize_act_q8k)(const float* x, ActQ8K* y, int64_t n) = nullptr;
  // Quantizes kGroupRows rows of n floats, `stride` floats apart; null when
  // no type has a group kernel.
  void (*quantize_act_q8x8)(const float* x, int64_t stride, ActQ8x8* y, int64_t n) = nullptr;
  // The same for the K-quants' groups; null when none of them has a group kernel.
  void (*quantize_act_q8kx8)(const float* x, int64_t stride, ActQ8Kx8* y, int64_t n) = nullptr;
  VectorOps ops{};

  const TypeKernels* find(TensorType type) const {
    for (const auto& k : types) {
      if (k.type == type && k.rows != nullptr) return &k;
    }
    return nullptr;
  }
};

// The set the kernels run with now (kernels_dispatch.cpp): null until the
// first kernel call, which chooses it, or set_cpu_level.
extern std::atomic<const KernelSet*> g_active_kernels;
const KernelSet& choose_kernels();
// Inline because the element-wise helpers pass through it on every call
// (attention calls them per head and position); only baseline files call
// it, so no level file holds a copy the linker could share.
inline const KernelSet& active_kernels() {
  const KernelSet* set = g_active_kernels.load(std::memory_order_acquire);
  return set != nullptr ? *set : choose_kernels();
}
// Each level's set, and the element-wise helpers they share.
const KernelSet& scalar_kernels();     // kernels_scalar.cpp
const VectorOps& scalar_vector_ops();  // kernels_ops.cpp
#if defined(__x86_64__)
const KernelSet& avx2_kernels();     // kernels_avx2.cpp
const VectorOps& avx2_vector_ops();  // kernels_avx2_ops.cpp
const KernelSet& avx512_kernels();   // kernels_avx512.cpp
#endif
#if defined(__aarch64__)
const KernelSet& neon_kernels();     // kernels_neon.cpp
const VectorOps& neon_vector_ops();  // kernels_neon_ops.cpp
const KernelSet& dotprod_kernels();  // kernels_dotprod.cpp
#if defined(FSH_KERNELS_I8MM)
const KernelSet& i8mm_kernels();  // kernels_i8mm.cpp
#endif
#endif

}  // namespace foreshore::engine::detail
