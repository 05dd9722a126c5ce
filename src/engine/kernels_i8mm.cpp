// ARM64 `i8mm` level: the dotprod level with SMMLA (the ARMv8.6-A int8
// matrix multiply, optional from ARMv8.2-A) in every quantized type's row
// kernel when several activation rows are multiplied at once (prompt
// processing, batched decoding). SMMLA multiplies a 2x8 int8 matrix by an
// 8x2 one into a 2x2 int32 tile, 32 products per instruction where SDOT
// makes 16, so two weight rows meet two activation rows per instruction,
// and each row's decoded weights serve twice as many products. A single
// activation row (one sequence decoding) has no second row to pair and
// keeps dotprod's SDOT kernels, as do the float types, the activation
// quantizers and the element-wise helpers.
//
// Built with -march=armv8.2-a+dotprod+i8mm; everything here is file-local
// and reachable only through i8mm_kernels(), which the dispatch calls on
// CPUs whose HWCAP has ASIMDDP and whose HWCAP2 has I8MM.
#include <arm_neon.h>

#include <algorithm>

#include "engine/kernels_internal.h"
#include "engine/kernels_neon_rows.h"

namespace foreshore::engine::detail {
namespace {

struct SdotDot {
  [[gnu::always_inline]] static int32x4_t add(int32x4_t acc, int8x16_t a, int8x16_t b) {
    return vdotq_s32(acc, a, b);
  }
};

// Elements 8k..8k+7 of two rows, k = 0..3, as SMMLA operands: each vector
// holds row a's eight bytes, then row b's.
struct RowPair32 {
  int8x16_t part[4];
};
inline RowPair32 pair_rows(const Levels32& a, const Levels32& b) {
  auto zip_low = [](int8x16_t x, int8x16_t y) {
    return vreinterpretq_s8_s64(vzip1q_s64(vreinterpretq_s64_s8(x), vreinterpretq_s64_s8(y)));
  };
  auto zip_high = [](int8x16_t x, int8x16_t y) {
    return vreinterpretq_s8_s64(vzip2q_s64(vreinterpretq_s64_s8(x), vreinterpretq_s64_s8(y)));
  };
  return {{zip_low(a.first, b.first), zip_high(a.first, b.first), zip_low(a.second, b.second),
           zip_high(a.second, b.second)}};
}

// Elements 0-7 and 8-15 of two rows' 16.
struct RowPair16 {
  int8x16_t part[2];
};
inline RowPair16 pair_rows16(int8x16_t a, int8x16_t b) {
  return {{vreinterpretq_s8_s64(vzip1q_s64(vreinterpretq_s64_s8(a), vreinterpretq_s64_s8(b))),
           vreinterpretq_s8_s64(vzip2q_s64(vreinterpretq_s64_s8(a), vreinterpretq_s64_s8(b)))}};
}

// The sum of the four tiles w.part[k] x x.part[k]: lane 2i + j is weight
// row i of the pair against activation row j, exactly as the reference's
// per-block integer sums. Two chains of two so they overlap.
[[gnu::always_inline]] inline int32x4_t mmla32(const RowPair32& w, const RowPair32& x) {
  const int32x4_t zero = vdupq_n_s32(0);
  const int32x4_t s0 = vmmlaq_s32(vmmlaq_s32(zero, w.part[0], x.part[0]), w.part[1], x.part[1]);
  const int32x4_t s1 = vmmlaq_s32(vmmlaq_s32(zero, w.part[2], x.part[2]), w.part[3], x.part[3]);
  return vaddq_s32(s0, s1);
}

// Two floats as {a, b, a, b}: a value per activation row of a pair, lined
// up with the tile's lanes.
inline float32x4_t per_activation(float a, float b) {
  const float32x2_t ab = vset_lane_f32(b, vdup_n_f32(a), 1);
  return vcombine_f32(ab, ab);
}
// {a, a, b, b}: a value per weight row of a pair.
inline float32x4_t per_weight(float a, float b) {
  return vcombine_f32(vdup_n_f32(a), vdup_n_f32(b));
}

// Runs Step over rows [r0, r1) two weight rows by 2P activation rows at a
// time. An odd activation row is paired with itself and an odd last weight
// row likewise; the duplicate lanes are computed and not stored.
// Step::block<P>(w0, w1, x, acc, extra) adds block i of the weight rows w0
// and w1 against block i of the 2P activation rows x[k] (pointers already at
// block i) to the tiles acc[p] (lane 2i + j: weight row i, activation row
// 2p + j) and any minimums or offsets to extra[p]; a result is acc + extra.
template <typename Step>
struct MmlaKernel {
  using Block = typename Step::Block;
  using Act = typename Step::Act;

  template <int P>
  static void run(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
    const int64_t blocks = a.cols / Step::kBlockSize;
    const Act* x[2 * P];
    for (int k = 0; k < 2 * P; ++k) x[k] = act_row<Act>(a, b0 + std::min(k, nb - 1));
    const Step step{};
    for (int64_t r = r0; r < r1; r += 2) {
      const bool second_row = r + 1 < r1;
      const Block* w0 = weight_row<Block>(a, r);
      const Block* w1 = weight_row<Block>(a, second_row ? r + 1 : r);
      float32x4_t acc[P], extra[P];
      for (int p = 0; p < P; ++p) acc[p] = extra[p] = vdupq_n_f32(0.0f);
      for (int64_t i = 0; i < blocks; ++i) {
        const Act* xi[2 * P];
        for (int k = 0; k < 2 * P; ++k) xi[k] = x[k] + i;
        step.template block<P>(w0[i], w1[i], xi, acc, extra);
      }
      for (int p = 0; p < P; ++p) {
        float out[4];
        vst1q_f32(out, vaddq_f32(acc[p], extra[p]));
        for (int j = 0; j < 2 && 2 * p + j < nb; ++j) {
          float* y = a.y + (b0 + 2 * p + j) * a.y_stride;
          y[r] = out[j];
          if (second_row) y[r + 1] = out[2 + j];
        }
      }
    }
  }

  // One activation row has nothing to pair with: SDOT's kernel.
  static void rows(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
    switch (nb) {
      case 1:
        Step::Single::template Tile<1>::run(a, r0, r1, b0);
        break;
      case 2:
        run<1>(a, r0, r1, b0, nb);
        break;
      case 3:
      case 4:
        run<2>(a, r0, r1, b0, nb);
        break;
      case 5:
      case 6:
        run<3>(a, r0, r1, b0, nb);
        break;
      default:
        run<4>(a, r0, r1, b0, nb);
        break;
    }
  }
};
static_assert(kWideTile == 8, "MmlaKernel::rows takes up to eight activation rows");

// A 32-element block type: one tile per block, scaled by the two rows'
// scales times the two activation rows'; Q5_1's minimums meet the
// activation sums (ActQ8::s) as in the reference.
template <typename Levels>
struct Block32Step {
  using Block = typename Levels::Block;
  using Act = ActQ8;
  using Single = Block32Kernel<SdotDot, Levels>;
  static constexpr int64_t kBlockSize = kQK;
  const Levels levels{};

  template <int P>
  [[gnu::always_inline]] void block(const Block& w0, const Block& w1, const ActQ8* const* x,
                                    float32x4_t* acc, float32x4_t* extra) const {
    const RowPair32 w = pair_rows(levels(w0), levels(w1));
    const float32x4_t dw = per_weight(half_to_float(w0.d), half_to_float(w1.d));
    [[maybe_unused]] float32x4_t mw;
    if constexpr (Levels::kOffset) mw = per_weight(Levels::offset(w0), Levels::offset(w1));
    for (int p = 0; p < P; ++p) {
      const ActQ8& xa = *x[2 * p];
      const ActQ8& xb = *x[2 * p + 1];
      const RowPair32 xq = pair_rows({vld1q_s8(xa.qs), vld1q_s8(xa.qs + 16)},
                                     {vld1q_s8(xb.qs), vld1q_s8(xb.qs + 16)});
      const float32x4_t scale = vmulq_f32(dw, per_activation(xa.d, xb.d));
      acc[p] = vfmaq_f32(acc[p], vcvtq_f32_s32(mmla32(w, xq)), scale);
      if constexpr (Levels::kOffset) extra[p] = vfmaq_f32(extra[p], mw, per_activation(xa.s, xb.s));
    }
  }
};

// {a, a, b, b} in int32: a sub-block scale per weight row.
inline int32x4_t per_weight_int(int a, int b) {
  return vcombine_s32(vdup_n_s32(a), vdup_n_s32(b));
}
// Elements from `offset` of two ActQ8K rows, 32 of them, as SMMLA operands.
inline RowPair32 act_pair32(const ActQ8K& xa, const ActQ8K& xb, int offset) {
  return pair_rows({vld1q_s8(xa.qs + offset), vld1q_s8(xa.qs + offset + 16)},
                   {vld1q_s8(xb.qs + offset), vld1q_s8(xb.qs + offset + 16)});
}

// The super-block scales times the two activation rows' scales, and the
// minimums: acc += d * sum, extra -= dmin * mins, per lane.
template <int P>
[[gnu::always_inline]] inline void finish_super_block(float d0, float d1, const int32x4_t* sum,
                                                      const ActQ8K* const* x, float32x4_t* acc) {
  const float32x4_t d = per_weight(d0, d1);
  for (int p = 0; p < P; ++p) {
    const float32x4_t xd = per_activation(x[2 * p]->d, x[2 * p + 1]->d);
    acc[p] = vfmaq_f32(acc[p], vcvtq_f32_s32(sum[p]), vmulq_f32(d, xd));
  }
}
template <int P, typename MinDot>
[[gnu::always_inline]] inline void subtract_mins(float dmin0, float dmin1, const ActQ8K* const* x,
                                                 float32x4_t* extra, MinDot min_dot) {
  const float32x4_t dmin = per_weight(dmin0, dmin1);
  for (int p = 0; p < P; ++p) {
    const ActQ8K& xa = *x[2 * p];
    const ActQ8K& xb = *x[2 * p + 1];
    const int32_t m[4] = {min_dot(0, xa), min_dot(0, xb), min_dot(1, xa), min_dot(1, xb)};
    const float32x4_t xd = per_activation(xa.d, xb.d);
    extra[p] = vfmsq_f32(extra[p], vcvtq_f32_s32(vld1q_s32(m)), vmulq_f32(dmin, xd));
  }
}

// Q4_K and Q5_K: a tile per 32-element sub-block times the two rows'
// 6-bit scales, summed in int32 over the super block. Sub-blocks 2j and
// 2j + 1 share 32 bytes of nibbles; Q5_K's fifth bits are bits 2j and
// 2j + 1 of qh.
template <typename ScaleMinBlock>
struct ScaleMinKMmlaStep {
  using Block = ScaleMinBlock;
  using Act = ActQ8K;
  using Single = SuperBlockKernel<ScaleMinKStep<SdotDot, Block>>;
  static constexpr int64_t kBlockSize = kQKK;
  static constexpr bool kFifthBit = std::is_same_v<Block, BlockQ5_K>;

  // Sub-blocks 2j (low) and 2j + 1 (high) of one row.
  static void sub_blocks(const Block& w, int j, Levels32& low, Levels32& high) {
    const uint8x16_t low4 = vdupq_n_u8(0x0F);
    const uint8x16_t v0 = vld1q_u8(w.qs + 32 * j);
    const uint8x16_t v1 = vld1q_u8(w.qs + 32 * j + 16);
    uint8x16_t lo0 = vandq_u8(v0, low4), lo1 = vandq_u8(v1, low4);
    uint8x16_t hi0 = vshrq_n_u8(v0, 4), hi1 = vshrq_n_u8(v1, 4);
    if constexpr (kFifthBit) {
      const uint8x16_t qh0 = vld1q_u8(w.qh), qh1 = vld1q_u8(w.qh + 16);
      const uint8x16_t bit_lo = vdupq_n_u8(static_cast<uint8_t>(1u << (2 * j)));
      const uint8x16_t bit_hi = vdupq_n_u8(static_cast<uint8_t>(2u << (2 * j)));
      const uint8x16_t fifth = vdupq_n_u8(0x10);
      lo0 = vorrq_u8(lo0, vandq_u8(vtstq_u8(qh0, bit_lo), fifth));
      lo1 = vorrq_u8(lo1, vandq_u8(vtstq_u8(qh1, bit_lo), fifth));
      hi0 = vorrq_u8(hi0, vandq_u8(vtstq_u8(qh0, bit_hi), fifth));
      hi1 = vorrq_u8(hi1, vandq_u8(vtstq_u8(qh1, bit_hi), fifth));
    }
    low = {as_signed(lo0), as_signed(lo1)};
    high = {as_signed(hi0), as_signed(hi1)};
  }

  template <int P>
  [[gnu::always_inline]] void block(const Block& w0, const Block& w1, const ActQ8K* const* x,
                                    float32x4_t* acc, float32x4_t* extra) const {
    uint8_t sm[2][16];
    unpack_q4k_scales(w0.scales, sm[0]);
    unpack_q4k_scales(w1.scales, sm[1]);
    int32x4_t sum[P];
    for (int p = 0; p < P; ++p) sum[p] = vdupq_n_s32(0);
    for (int j = 0; j < 4; ++j) {
      Levels32 low0, high0, low1, high1;
      sub_blocks(w0, j, low0, high0);
      sub_blocks(w1, j, low1, high1);
      const RowPair32 low = pair_rows(low0, low1);
      const RowPair32 high = pair_rows(high0, high1);
      const int32x4_t scale_low = per_weight_int(sm[0][2 * j], sm[1][2 * j]);
      const int32x4_t scale_high = per_weight_int(sm[0][2 * j + 1], sm[1][2 * j + 1]);
      for (int p = 0; p < P; ++p) {
        const ActQ8K& xa = *x[2 * p];
        const ActQ8K& xb = *x[2 * p + 1];
        sum[p] = vmlaq_s32(sum[p], mmla32(low, act_pair32(xa, xb, 64 * j)), scale_low);
        sum[p] = vmlaq_s32(sum[p], mmla32(high, act_pair32(xa, xb, 64 * j + 32)), scale_high);
      }
    }
    finish_super_block<P>(half_to_float(w0.d), half_to_float(w1.d), sum, x, acc);
    subtract_mins<P>(
        half_to_float(w0.dmin), half_to_float(w1.dmin), x, extra,
        [&](int row, const ActQ8K& xr) { return mins_by_pairs(sm[row] + 8, xr.bsums); });
  }
};

// Q2_K, Q3_K and Q6_K: a tile per 16-element group (two SMMLA) times the
// two rows' scales; Q2_K's minimums meet the activation sums per group.
template <typename Levels>
struct Scale16KMmlaStep {
  using Block = typename Levels::Block;
  using Act = ActQ8K;
  using Single = SuperBlockKernel<Scale16KStep<SdotDot, Levels>>;
  static constexpr int64_t kBlockSize = kQKK;
  static constexpr bool kMins = std::is_same_v<Block, BlockQ2_K>;
  const Levels levels{};

  template <int P>
  [[gnu::always_inline]] void block(const Block& w0, const Block& w1, const ActQ8K* const* x,
                                    float32x4_t* acc, float32x4_t* extra) const {
    int8_t scale[2][16];
    [[maybe_unused]] uint8_t min[2][16];
    Levels::scales(w0, scale[0], min[0]);
    Levels::scales(w1, scale[1], min[1]);
    int32x4_t sum[P];
    for (int p = 0; p < P; ++p) sum[p] = vdupq_n_s32(0);
    for (int h = 0; h < 2; ++h) {
      int8x16_t q0[8], q1[8];
      levels(w0, h, q0);
      levels(w1, h, q1);
      for (int g = 0; g < 8; ++g) {
        const RowPair16 w = pair_rows16(q0[g], q1[g]);
        const int32x4_t sc = per_weight_int(scale[0][8 * h + g], scale[1][8 * h + g]);
        for (int p = 0; p < P; ++p) {
          const RowPair16 xq = pair_rows16(vld1q_s8(x[2 * p]->qs + 128 * h + 16 * g),
                                           vld1q_s8(x[2 * p + 1]->qs + 128 * h + 16 * g));
          const int32x4_t tile =
              vmmlaq_s32(vmmlaq_s32(vdupq_n_s32(0), w.part[0], xq.part[0]), w.part[1], xq.part[1]);
          sum[p] = vmlaq_s32(sum[p], tile, sc);
        }
      }
    }
    finish_super_block<P>(half_to_float(w0.d), half_to_float(w1.d), sum, x, acc);
    if constexpr (kMins) {
      subtract_mins<P>(half_to_float(w0.dmin), half_to_float(w1.dmin), x, extra,
                       [&](int row, const ActQ8K& xr) { return min_dot16(min[row], xr.bsums); });
    }
  }
};

// IQ4_XS: IQ4_NL's grid per 32-element sub-block times the two rows'
// 6-bit signed scales.
struct IQ4_XSMmlaStep {
  using Block = BlockIQ4_XS;
  using Act = ActQ8K;
  using Single = SuperBlockKernel<IQ4_XSStep<SdotDot>>;
  static constexpr int64_t kBlockSize = kQKK;
  const int8x16_t grid = vld1q_s8(kIq4nlValues);

  Levels32 sub_block(const Block& w, int ib) const {
    const Levels32 n = nibbles(w.qs + 16 * ib);
    return {vqtbl1q_s8(grid, vreinterpretq_u8_s8(n.first)),
            vqtbl1q_s8(grid, vreinterpretq_u8_s8(n.second))};
  }

  template <int P>
  [[gnu::always_inline]] void block(const Block& w0, const Block& w1, const ActQ8K* const* x,
                                    float32x4_t* acc, float32x4_t*) const {
    int32x4_t sum[P];
    for (int p = 0; p < P; ++p) sum[p] = vdupq_n_s32(0);
    for (int ib = 0; ib < 8; ++ib) {
      const RowPair32 w = pair_rows(sub_block(w0, ib), sub_block(w1, ib));
      const int32x4_t scale = per_weight_int(iq4xs_scale(w0, ib), iq4xs_scale(w1, ib));
      for (int p = 0; p < P; ++p) {
        sum[p] =
            vmlaq_s32(sum[p], mmla32(w, act_pair32(*x[2 * p], *x[2 * p + 1], kQK * ib)), scale);
      }
    }
    finish_super_block<P>(half_to_float(w0.d), half_to_float(w1.d), sum, x, acc);
  }
};

RowKernel mmla_rows(TensorType type) {
  switch (type) {
    case TensorType::kQ4_0:
      return MmlaKernel<Block32Step<Q4_0Levels>>::rows;
    case TensorType::kQ8_0:
      return MmlaKernel<Block32Step<Q8_0Levels>>::rows;
    case TensorType::kQ5_0:
      return MmlaKernel<Block32Step<Q5Levels<BlockQ5_0>>>::rows;
    case TensorType::kQ5_1:
      return MmlaKernel<Block32Step<Q5Levels<BlockQ5_1>>>::rows;
    case TensorType::kIQ4_NL:
      return MmlaKernel<Block32Step<IQ4_NLLevels>>::rows;
    case TensorType::kIQ4_XS:
      return MmlaKernel<IQ4_XSMmlaStep>::rows;
    case TensorType::kQ4_K:
      return MmlaKernel<ScaleMinKMmlaStep<BlockQ4_K>>::rows;
    case TensorType::kQ5_K:
      return MmlaKernel<ScaleMinKMmlaStep<BlockQ5_K>>::rows;
    case TensorType::kQ2_K:
      return MmlaKernel<Scale16KMmlaStep<TwoBitLevels<BlockQ2_K>>>::rows;
    case TensorType::kQ3_K:
      return MmlaKernel<Scale16KMmlaStep<TwoBitLevels<BlockQ3_K>>>::rows;
    case TensorType::kQ6_K:
      return MmlaKernel<Scale16KMmlaStep<Q6_KLevels>>::rows;
    default:
      return nullptr;
  }
}

KernelSet make_set() {
  KernelSet set = dotprod_kernels();
  set.level = CpuLevel::kI8mm;
  for (TypeKernels& k : set.types) {
    if (RowKernel rows = mmla_rows(k.type)) {
      k.rows = rows;
      k.max_tile = kWideTile;
    }
  }
  return set;
}

}  // namespace

const KernelSet& i8mm_kernels() {
  static const KernelSet set = make_set();
  return set;
}

}  // namespace foreshore::engine::detail
