// ARM64 `i8mm` level: the dotprod level with SMMLA (the ARMv8.6-A int8
// matrix multiply, optional from ARMv8.2-A) in the row kernels of the
// 32-element block types (Q4_0, Q8_0, Q5_0, Q5_1, IQ4_NL) when several
// activation rows are multiplied at once (prompt processing, batched
// decoding). SMMLA multiplies a 2x8 int8 matrix by an 8x2 one into a 2x2
// int32 tile, 32 products per instruction where SDOT makes 16, so two
// weight rows meet two activation rows per instruction. A single
// activation row (one sequence decoding) has no second row to pair and
// keeps dotprod's SDOT kernels, as do the 256-element block types and
// everything else dotprod has.
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

// Rows of 32-element blocks, two weight rows by 2P activation rows at a
// time. An odd activation row is paired with itself and an odd last weight
// row likewise; the duplicate lanes are computed and not stored.
template <typename Levels>
struct MmlaBlock32Kernel {
  using Block = typename Levels::Block;

  template <int P>
  static void run(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
    const int64_t blocks = a.cols / kQK;
    const ActQ8* x[2 * P];
    for (int k = 0; k < 2 * P; ++k) x[k] = act_row<ActQ8>(a, b0 + std::min(k, nb - 1));
    const Levels levels{};
    for (int64_t r = r0; r < r1; r += 2) {
      const bool second_row = r + 1 < r1;
      const Block* w0 = weight_row<Block>(a, r);
      const Block* w1 = weight_row<Block>(a, second_row ? r + 1 : r);
      float32x4_t acc[P];
      [[maybe_unused]] float32x4_t off[P];
      for (int p = 0; p < P; ++p) acc[p] = off[p] = vdupq_n_f32(0.0f);
      for (int64_t i = 0; i < blocks; ++i) {
        const RowPair32 w = pair_rows(levels(w0[i]), levels(w1[i]));
        const float32x4_t dw = per_weight(half_to_float(w0[i].d), half_to_float(w1[i].d));
        [[maybe_unused]] float32x4_t mw;
        if constexpr (Levels::kOffset) {
          mw = per_weight(Levels::offset(w0[i]), Levels::offset(w1[i]));
        }
        for (int p = 0; p < P; ++p) {
          const ActQ8& xa = x[2 * p][i];
          const ActQ8& xb = x[2 * p + 1][i];
          const RowPair32 xq = pair_rows({vld1q_s8(xa.qs), vld1q_s8(xa.qs + 16)},
                                         {vld1q_s8(xb.qs), vld1q_s8(xb.qs + 16)});
          const float32x4_t scale = vmulq_f32(dw, per_activation(xa.d, xb.d));
          acc[p] = vfmaq_f32(acc[p], vcvtq_f32_s32(mmla32(w, xq)), scale);
          if constexpr (Levels::kOffset) {
            off[p] = vfmaq_f32(off[p], mw, per_activation(xa.s, xb.s));
          }
        }
      }
      for (int p = 0; p < P; ++p) {
        float out[4];
        if constexpr (Levels::kOffset) {
          vst1q_f32(out, vaddq_f32(acc[p], off[p]));
        } else {
          vst1q_f32(out, acc[p]);
        }
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
        Block32Kernel<SdotDot, Levels>::template Tile<1>::run(a, r0, r1, b0);
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
static_assert(kWideTile == 8, "MmlaBlock32Kernel::rows takes up to eight activation rows");

RowKernel mmla_rows(TensorType type) {
  switch (type) {
    case TensorType::kQ4_0:
      return MmlaBlock32Kernel<Q4_0Levels>::rows;
    case TensorType::kQ8_0:
      return MmlaBlock32Kernel<Q8_0Levels>::rows;
    case TensorType::kQ5_0:
      return MmlaBlock32Kernel<Q5Levels<BlockQ5_0>>::rows;
    case TensorType::kQ5_1:
      return MmlaBlock32Kernel<Q5Levels<BlockQ5_1>>::rows;
    case TensorType::kIQ4_NL:
      return MmlaBlock32Kernel<IQ4_NLLevels>::rows;
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
