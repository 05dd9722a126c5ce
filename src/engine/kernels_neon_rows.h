// The quantized row kernels of the ARM64 levels, written once over the
// instruction that multiplies 16 int8 weights by 16 int8 activations into
// four int32 lanes: kernels_neon.cpp instantiates them with the baseline
// widening multiplies (WideningDot there), kernels_dotprod.cpp and
// kernels_i8mm.cpp with SDOT (the latter for single activation rows, and
// its level decoders and helpers for its SMMLA kernels).
// Included by those files only, each built with its own -march: every
// name here is file-local (anonymous namespace), so no copy built with one
// level's instructions can be shared with another or with baseline code.
//
// Every weight level is a signed byte: offsets that keep levels unsigned in
// the file (Q4_0's 8, Q5_0's 16, Q3_K's 4, Q6_K's 32) are subtracted from
// the levels before the multiply, which gives the reference's integer sums
// exactly (the reference subtracts them from the sums instead); Q5_1's and
// Q2_K's minimums come back through the activation sums, as in the
// reference. Products are at most 128 * 127, so neither form can overflow.
// Lane order inside the int32 sums differs between the two instructions;
// the kernels only ever scale or add whole vectors, so it does not matter.
//
// No software prefetch: the AVX2 kernels need it on the x86 VM they were
// tuned on, but ARM speed cannot be measured here (QEMU), so nothing was
// added that could not be shown to help.
#pragma once

#include <arm_neon.h>

#include <cstring>
#include <type_traits>

#include "engine/kernels_internal.h"

namespace foreshore::engine::detail {
namespace {

inline float half_to_float(uint16_t h) {
  return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0);
}

inline int8x16_t as_signed(uint8x16_t v) {
  return vreinterpretq_s8_u8(v);
}

// Dispatches a run-time tile height to the compile-time kernels.
template <template <int> class Kernel>
void run_tile(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  switch (nb) {
    case 1:
      Kernel<1>::run(a, r0, r1, b0);
      break;
    case 2:
      Kernel<2>::run(a, r0, r1, b0);
      break;
    case 3:
      Kernel<3>::run(a, r0, r1, b0);
      break;
    default:
      Kernel<4>::run(a, r0, r1, b0);
      break;
  }
}

// A block's 32 levels as two vectors, elements 0-15 and 16-31.
struct Levels32 {
  int8x16_t first;
  int8x16_t second;
};

// The two halves of a Q4_0-layout block's nibbles: low nibbles are
// elements 0-15, high ones 16-31.
inline Levels32 nibbles(const uint8_t* qs) {
  const uint8x16_t v = vld1q_u8(qs);
  return {as_signed(vandq_u8(v, vdupq_n_u8(0x0F))), as_signed(vshrq_n_u8(v, 4))};
}

// Bit j of a Q5 block's qh as 0x10 in byte j, for elements 0-15 and 16-31.
inline Levels32 fifth_bits(const uint8_t* qh) {
  static constexpr uint8_t kBit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
  const uint8x16_t bit = vld1q_u8(kBit);
  const uint8x16_t fifth = vdupq_n_u8(0x10);
  const uint8x16_t first = vcombine_u8(vdup_n_u8(qh[0]), vdup_n_u8(qh[1]));
  const uint8x16_t second = vcombine_u8(vdup_n_u8(qh[2]), vdup_n_u8(qh[3]));
  return {as_signed(vandq_u8(vtstq_u8(first, bit), fifth)),
          as_signed(vandq_u8(vtstq_u8(second, bit), fifth))};
}

struct Q4_0Levels {
  using Block = BlockQ4_0;
  static constexpr bool kOffset = false;
  static constexpr float kOffsetFactor = 0.0f;
  Levels32 operator()(const Block& w) const {
    const Levels32 q = nibbles(w.qs);
    const int8x16_t eight = vdupq_n_s8(8);
    return {vsubq_s8(q.first, eight), vsubq_s8(q.second, eight)};
  }
  static float offset(const Block&) { return 0.0f; }
};

struct Q8_0Levels {
  using Block = BlockQ8_0;
  static constexpr bool kOffset = false;
  static constexpr float kOffsetFactor = 0.0f;
  Levels32 operator()(const Block& w) const { return {vld1q_s8(w.qs), vld1q_s8(w.qs + 16)}; }
  static float offset(const Block&) { return 0.0f; }
};

struct IQ4_NLLevels {
  using Block = BlockIQ4_NL;
  static constexpr bool kOffset = false;
  static constexpr float kOffsetFactor = 0.0f;
  const int8x16_t grid = vld1q_s8(kIq4nlValues);
  Levels32 operator()(const Block& w) const {
    const Levels32 q = nibbles(w.qs);
    return {vqtbl1q_s8(grid, vreinterpretq_u8_s8(q.first)),
            vqtbl1q_s8(grid, vreinterpretq_u8_s8(q.second))};
  }
  static float offset(const Block&) { return 0.0f; }
};

// Q5_0: symmetric, levels - 16. Q5_1: unsigned levels, and the block
// minimum m times the activation sums added once per row.
template <typename Q5Block>
struct Q5Levels {
  using Block = Q5Block;
  static constexpr bool kOffset = std::is_same_v<Block, BlockQ5_1>;
  static constexpr float kOffsetFactor = kOffset ? 1.0f : 0.0f;
  Levels32 operator()(const Block& w) const {
    const Levels32 low = nibbles(w.qs);
    const Levels32 high = fifth_bits(w.qh);
    int8x16_t first = vorrq_s8(low.first, high.first);
    int8x16_t second = vorrq_s8(low.second, high.second);
    if constexpr (!kOffset) {
      first = vsubq_s8(first, vdupq_n_s8(16));
      second = vsubq_s8(second, vdupq_n_s8(16));
    }
    return {first, second};
  }
  static float offset(const Block& w) {
    if constexpr (kOffset) {
      return half_to_float(w.m);
    } else {
      return 0.0f;
    }
  }
};

// Rows of 32-element blocks: per block one int32 sum per activation row,
// one float multiply-add by the two scales. A single activation row gets two
// accumulators (even and odd blocks) so consecutive blocks do not wait on
// each other's multiply-add.
template <typename Dot, typename Levels>
struct Block32Kernel {
  using Block = typename Levels::Block;

  // Block i of the row against block i of the NB activation rows.
  template <int NB>
  [[gnu::always_inline]] static void block(const Block& w, const ActQ8* const* x, int64_t i,
                                           float32x4_t* acc, float* off) {
    const Levels32 q = Levels()(w);
    const float dw = half_to_float(w.d);
    [[maybe_unused]] float offset = 0.0f;
    if constexpr (Levels::kOffset) offset = Levels::offset(w);
    for (int k = 0; k < NB; ++k) {
      const ActQ8& xb = x[k][i];
      int32x4_t sum = Dot::add(vdupq_n_s32(0), q.first, vld1q_s8(xb.qs));
      sum = Dot::add(sum, q.second, vld1q_s8(xb.qs + 16));
      acc[k] = vfmaq_n_f32(acc[k], vcvtq_f32_s32(sum), dw * xb.d);
      if constexpr (Levels::kOffset) off[k] += offset * xb.s;
    }
  }

  template <int NB>
  struct Tile {
    static void run(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0) {
      constexpr int kChains = NB == 1 ? 2 : 1;
      const int64_t blocks = a.cols / kQK;
      const ActQ8* x[NB];
      for (int k = 0; k < NB; ++k) x[k] = act_row<ActQ8>(a, b0 + k);
      for (int64_t r = r0; r < r1; ++r) {
        const Block* w = weight_row<Block>(a, r);
        float32x4_t acc[kChains][NB];
        float off[NB] = {};
        for (int c = 0; c < kChains; ++c) {
          for (int k = 0; k < NB; ++k) acc[c][k] = vdupq_n_f32(0.0f);
        }
        int64_t i = 0;
        for (; i + kChains <= blocks; i += kChains) {
          for (int c = 0; c < kChains; ++c) block<NB>(w[i + c], x, i + c, acc[c], off);
        }
        if (i < blocks) block<NB>(w[i], x, i, acc[0], off);
        for (int k = 0; k < NB; ++k) {
          for (int c = 1; c < kChains; ++c) acc[0][k] = vaddq_f32(acc[0][k], acc[c][k]);
          a.y[(b0 + k) * a.y_stride + r] = vaddvq_f32(acc[0][k]) + Levels::kOffsetFactor * off[k];
        }
      }
    }
  };
};

// Runs a 256-element block step over whole rows: step<NB>(w, x, acc, mins)
// adds the block's share of the NB dot products to acc (vectors) and the
// share to subtract to mins (Q4_K's, Q5_K's and Q2_K's minimums).
template <typename Step>
struct SuperBlockKernel {
  template <int NB>
  struct Tile {
    static void run(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0) {
      using Block = typename Step::Block;
      const Step step{};
      const int64_t blocks = a.cols / kQKK;
      const ActQ8K* x[NB];
      for (int k = 0; k < NB; ++k) x[k] = act_row<ActQ8K>(a, b0 + k);
      for (int64_t r = r0; r < r1; ++r) {
        const Block* w = weight_row<Block>(a, r);
        float32x4_t acc[NB];
        float mins[NB] = {};
        for (int k = 0; k < NB; ++k) acc[k] = vdupq_n_f32(0.0f);
        for (int64_t i = 0; i < blocks; ++i) {
          const ActQ8K* xi[NB];
          for (int k = 0; k < NB; ++k) xi[k] = x[k] + i;
          step.template operator()<NB>(w[i], xi, acc, mins);
        }
        for (int k = 0; k < NB; ++k) a.y[(b0 + k) * a.y_stride + r] = vaddvq_f32(acc[k]) - mins[k];
      }
    }
  };
};

// sum over g < 8 of m[g] * (bsums[2g] + bsums[2g + 1]): the minimums of
// eight 32-element sub-blocks against the activation sums.
inline int32_t mins_by_pairs(const uint8_t* m, const int16_t* bsums) {
  const int16x8_t pairs = vpaddq_s16(vld1q_s16(bsums), vld1q_s16(bsums + 8));
  const int16x8_t mv = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(m)));
  return vaddvq_s32(vmlal_high_s16(vmull_s16(vget_low_s16(pairs), vget_low_s16(mv)), pairs, mv));
}

// sum over g < 16 of m[g] * bsums[g]: Q2_K's minimums of its sixteen
// 16-element groups against the activation sums.
inline int32_t min_dot16(const uint8_t* m, const int16_t* bsums) {
  const int16x8_t m0 = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(m)));
  const int16x8_t m1 = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(m + 8)));
  const int16x8_t b0 = vld1q_s16(bsums), b1 = vld1q_s16(bsums + 8);
  int32x4_t ms = vmull_s16(vget_low_s16(m0), vget_low_s16(b0));
  ms = vmlal_high_s16(ms, m0, b0);
  ms = vmlal_s16(ms, vget_low_s16(m1), vget_low_s16(b1));
  ms = vmlal_high_s16(ms, m1, b1);
  return vaddvq_s32(ms);
}

// Q4_K and Q5_K: eight 32-element sub-blocks with 6-bit scales and mins.
// Each pair of sub-blocks shares 32 bytes of nibbles (the first in the low
// ones); Q5_K's fifth bits are bits 2j and 2j + 1 of qh for pair j.
template <typename Dot, typename ScaleMinBlock>
struct ScaleMinKStep {
  using Block = ScaleMinBlock;
  static constexpr bool kFifthBit = std::is_same_v<Block, BlockQ5_K>;

  template <int NB>
  void operator()(const Block& w, const ActQ8K* const* x, float32x4_t* acc, float* mins) const {
    uint8_t sm[16];
    unpack_q4k_scales(w.scales, sm);
    const uint8x16_t low4 = vdupq_n_u8(0x0F);
    int32x4_t sum[NB];
    for (int k = 0; k < NB; ++k) sum[k] = vdupq_n_s32(0);
    [[maybe_unused]] uint8x16_t high0, high1;
    if constexpr (kFifthBit) {
      high0 = vld1q_u8(w.qh);
      high1 = vld1q_u8(w.qh + 16);
    }
    for (int j = 0; j < 4; ++j) {
      const uint8x16_t v0 = vld1q_u8(w.qs + 32 * j);
      const uint8x16_t v1 = vld1q_u8(w.qs + 32 * j + 16);
      uint8x16_t lo0 = vandq_u8(v0, low4), lo1 = vandq_u8(v1, low4);
      uint8x16_t hi0 = vshrq_n_u8(v0, 4), hi1 = vshrq_n_u8(v1, 4);
      if constexpr (kFifthBit) {
        const uint8x16_t one = vdupq_n_u8(1), two = vdupq_n_u8(2);
        lo0 = vorrq_u8(lo0, vshlq_n_u8(vandq_u8(high0, one), 4));
        lo1 = vorrq_u8(lo1, vshlq_n_u8(vandq_u8(high1, one), 4));
        hi0 = vorrq_u8(hi0, vshlq_n_u8(vandq_u8(high0, two), 3));
        hi1 = vorrq_u8(hi1, vshlq_n_u8(vandq_u8(high1, two), 3));
        high0 = vshrq_n_u8(high0, 2);
        high1 = vshrq_n_u8(high1, 2);
      }
      for (int k = 0; k < NB; ++k) {
        const int8_t* xq = x[k]->qs + 64 * j;
        int32x4_t s_lo = Dot::add(vdupq_n_s32(0), as_signed(lo0), vld1q_s8(xq));
        s_lo = Dot::add(s_lo, as_signed(lo1), vld1q_s8(xq + 16));
        int32x4_t s_hi = Dot::add(vdupq_n_s32(0), as_signed(hi0), vld1q_s8(xq + 32));
        s_hi = Dot::add(s_hi, as_signed(hi1), vld1q_s8(xq + 48));
        sum[k] = vmlaq_n_s32(sum[k], s_lo, sm[2 * j]);
        sum[k] = vmlaq_n_s32(sum[k], s_hi, sm[2 * j + 1]);
      }
    }
    const float d = half_to_float(w.d);
    const float dmin = half_to_float(w.dmin);
    for (int k = 0; k < NB; ++k) {
      acc[k] = vfmaq_n_f32(acc[k], vcvtq_f32_s32(sum[k]), d * x[k]->d);
      mins[k] += dmin * x[k]->d * static_cast<float>(mins_by_pairs(sm + 8, x[k]->bsums));
    }
  }
};

// Signed levels of the K-quants with a scale per 16 elements, for elements
// 128h + 32j + l: q[2j] holds l < 16, q[2j + 1] l >= 16.
struct Q6_KLevels {
  using Block = BlockQ6_K;
  void operator()(const Block& w, int h, int8x16_t q[8]) const {
    const uint8x16_t low4 = vdupq_n_u8(0x0F);
    const int8x16_t offset = vdupq_n_s8(32);
    for (int half = 0; half < 2; ++half) {
      const uint8x16_t ql0 = vld1q_u8(w.ql + 64 * h + 16 * half);
      const uint8x16_t ql1 = vld1q_u8(w.ql + 64 * h + 32 + 16 * half);
      const uint8x16_t qh = vld1q_u8(w.qh + 32 * h + 16 * half);
      const uint8x16_t levels[4] = {
          vorrq_u8(vandq_u8(ql0, low4), vshlq_n_u8(vandq_u8(qh, vdupq_n_u8(0x03)), 4)),
          vorrq_u8(vandq_u8(ql1, low4), vshlq_n_u8(vandq_u8(qh, vdupq_n_u8(0x0C)), 2)),
          vorrq_u8(vshrq_n_u8(ql0, 4), vandq_u8(qh, vdupq_n_u8(0x30))),
          vorrq_u8(vshrq_n_u8(ql1, 4), vshrq_n_u8(vandq_u8(qh, vdupq_n_u8(0xC0)), 2)),
      };
      for (int j = 0; j < 4; ++j) q[2 * j + half] = vsubq_s8(as_signed(levels[j]), offset);
    }
  }
  static void scales(const Block& w, int8_t out[16], uint8_t*) { std::memcpy(out, w.scales, 16); }
};

// Two bits per element (bits 2j of qs[32h + l]), plus Q3_K's third bit
// (bit 4h + j of hmask[l]; set: +0, clear: -4, so level - 4 with it).
template <typename TwoBitBlock>
struct TwoBitLevels {
  using Block = TwoBitBlock;
  static constexpr bool kThirdBit = std::is_same_v<Block, BlockQ3_K>;
  void operator()(const Block& w, int h, int8x16_t q[8]) const {
    const uint8x16_t m2 = vdupq_n_u8(0x03);
    for (int half = 0; half < 2; ++half) {
      uint8x16_t bits = vld1q_u8(w.qs + 32 * h + 16 * half);
      [[maybe_unused]] uint8x16_t high;
      if constexpr (kThirdBit) high = vld1q_u8(w.hmask + 16 * half);
      for (int j = 0; j < 4; ++j) {
        uint8x16_t level = vandq_u8(bits, m2);
        bits = vshrq_n_u8(bits, 2);
        if constexpr (kThirdBit) {
          const uint8x16_t bit = vdupq_n_u8(static_cast<uint8_t>(1u << (4 * h + j)));
          level = vorrq_u8(level, vandq_u8(vtstq_u8(high, bit), vdupq_n_u8(0x04)));
          q[2 * j + half] = vsubq_s8(as_signed(level), vdupq_n_s8(4));
        } else {
          q[2 * j + half] = as_signed(level);
        }
      }
    }
  }
  // The 16 scales, and Q2_K's minimums.
  static void scales(const Block& w, int8_t out[16], uint8_t* min) {
    if constexpr (kThirdBit) {
      uint8_t stored[16];
      unpack_q3k_scales(w.scales, stored);
      vst1q_s8(out, vsubq_s8(vreinterpretq_s8_u8(vld1q_u8(stored)), vdupq_n_s8(32)));
    } else {
      const uint8x16_t packed = vld1q_u8(w.scales);
      vst1q_s8(out, as_signed(vandq_u8(packed, vdupq_n_u8(0x0F))));
      vst1q_u8(min, vshrq_n_u8(packed, 4));
    }
  }
};

// Q2_K, Q3_K and Q6_K: signed levels per 16 elements times their scale,
// summed in int32 for the whole block; Q2_K's minimums meet the activation
// sums once per block.
template <typename Dot, typename Levels>
struct Scale16KStep {
  using Block = typename Levels::Block;
  static constexpr bool kMins = std::is_same_v<Block, BlockQ2_K>;
  const Levels levels{};

  template <int NB>
  void operator()(const Block& w, const ActQ8K* const* x, float32x4_t* acc, float* mins) const {
    int8_t scale[16];
    [[maybe_unused]] uint8_t min[16];
    Levels::scales(w, scale, min);
    int32x4_t sum[NB];
    for (int k = 0; k < NB; ++k) sum[k] = vdupq_n_s32(0);
    for (int h = 0; h < 2; ++h) {
      int8x16_t q[8];
      levels(w, h, q);
      for (int g = 0; g < 8; ++g) {
        for (int k = 0; k < NB; ++k) {
          const int32x4_t s = Dot::add(vdupq_n_s32(0), q[g], vld1q_s8(x[k]->qs + 128 * h + 16 * g));
          sum[k] = vmlaq_n_s32(sum[k], s, scale[8 * h + g]);
        }
      }
    }
    const float d = half_to_float(w.d);
    for (int k = 0; k < NB; ++k) {
      acc[k] = vfmaq_n_f32(acc[k], vcvtq_f32_s32(sum[k]), d * x[k]->d);
      if constexpr (kMins) {
        mins[k] +=
            half_to_float(w.dmin) * x[k]->d * static_cast<float>(min_dot16(min, x[k]->bsums));
      }
    }
  }
};

// IQ4_XS: IQ4_NL's grid per 32-element sub-block (Q4_0's nibble order)
// times its 6-bit signed scale.
template <typename Dot>
struct IQ4_XSStep {
  using Block = BlockIQ4_XS;
  const int8x16_t grid = vld1q_s8(kIq4nlValues);

  template <int NB>
  void operator()(const Block& w, const ActQ8K* const* x, float32x4_t* acc, float*) const {
    int32x4_t sum[NB];
    for (int k = 0; k < NB; ++k) sum[k] = vdupq_n_s32(0);
    for (int ib = 0; ib < 8; ++ib) {
      const Levels32 n = nibbles(w.qs + 16 * ib);
      const int8x16_t q0 = vqtbl1q_s8(grid, vreinterpretq_u8_s8(n.first));
      const int8x16_t q1 = vqtbl1q_s8(grid, vreinterpretq_u8_s8(n.second));
      const int scale = iq4xs_scale(w, ib);
      for (int k = 0; k < NB; ++k) {
        int32x4_t s = Dot::add(vdupq_n_s32(0), q0, vld1q_s8(x[k]->qs + kQK * ib));
        s = Dot::add(s, q1, vld1q_s8(x[k]->qs + kQK * ib + 16));
        sum[k] = vmlaq_n_s32(sum[k], s, scale);
      }
    }
    const float d = half_to_float(w.d);
    for (int k = 0; k < NB; ++k) {
      acc[k] = vfmaq_n_f32(acc[k], vcvtq_f32_s32(sum[k]), d * x[k]->d);
    }
  }
};

// The row kernel of every quantized type with Dot's multiply, or null for
// the float types.
template <typename Dot>
RowKernel quantized_rows(TensorType type) {
  switch (type) {
    case TensorType::kQ4_0:
      return run_tile<Block32Kernel<Dot, Q4_0Levels>::template Tile>;
    case TensorType::kQ8_0:
      return run_tile<Block32Kernel<Dot, Q8_0Levels>::template Tile>;
    case TensorType::kQ5_0:
      return run_tile<Block32Kernel<Dot, Q5Levels<BlockQ5_0>>::template Tile>;
    case TensorType::kQ5_1:
      return run_tile<Block32Kernel<Dot, Q5Levels<BlockQ5_1>>::template Tile>;
    case TensorType::kIQ4_NL:
      return run_tile<Block32Kernel<Dot, IQ4_NLLevels>::template Tile>;
    case TensorType::kIQ4_XS:
      return run_tile<SuperBlockKernel<IQ4_XSStep<Dot>>::template Tile>;
    case TensorType::kQ2_K:
      return run_tile<SuperBlockKernel<Scale16KStep<Dot, TwoBitLevels<BlockQ2_K>>>::template Tile>;
    case TensorType::kQ3_K:
      return run_tile<SuperBlockKernel<Scale16KStep<Dot, TwoBitLevels<BlockQ3_K>>>::template Tile>;
    case TensorType::kQ4_K:
      return run_tile<SuperBlockKernel<ScaleMinKStep<Dot, BlockQ4_K>>::template Tile>;
    case TensorType::kQ5_K:
      return run_tile<SuperBlockKernel<ScaleMinKStep<Dot, BlockQ5_K>>::template Tile>;
    case TensorType::kQ6_K:
      return run_tile<SuperBlockKernel<Scale16KStep<Dot, Q6_KLevels>>::template Tile>;
    default:
      return nullptr;
  }
}

}  // namespace
}  // namespace foreshore::engine::detail
