// ARM64 `neon` level: Advanced SIMD (baseline ARMv8-A) row kernels for every
// weight type, and the activation quantizers, which the dotprod level
// shares. The quantized kernels are kernels_neon_rows.h's with int8
// products widened to int16 and pairwise added into int32 (WideningDot),
// where ARMv8.2's SDOT does all of it in one instruction.
//
// Built with -march=armv8-a; everything here is file-local and reachable
// only through neon_kernels().
#include <arm_neon.h>

#include "engine/kernels_internal.h"
#include "engine/kernels_neon_rows.h"

namespace foreshore::engine::detail {
namespace {

// Adds the 16 products a[i] * b[i] to acc, four per lane. A product is at
// most 128 * 128, so it fits an int16 lane before the widening add.
struct WideningDot {
  [[gnu::always_inline]] static int32x4_t add(int32x4_t acc, int8x16_t a, int8x16_t b) {
    const int16x8_t low = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    const int16x8_t high = vmull_high_s8(a, b);
    return vpadalq_s16(vpadalq_s16(acc, low), high);
  }
};

struct LoadF32 {
  static float32x4_t load(const uint8_t* w) { return vld1q_f32(reinterpret_cast<const float*>(w)); }
  static float scalar(const uint8_t* w) { return *reinterpret_cast<const float*>(w); }
  static constexpr size_t kBytes = 4;
};
struct LoadF16 {
  static float32x4_t load(const uint8_t* w) {
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(reinterpret_cast<const uint16_t*>(w))));
  }
  static float scalar(const uint8_t* w) {
    return half_to_float(*reinterpret_cast<const uint16_t*>(w));
  }
  static constexpr size_t kBytes = 2;
};
struct LoadBF16 {
  static float32x4_t load(const uint8_t* w) {
    return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(reinterpret_cast<const uint16_t*>(w)), 16));
  }
  static float scalar(const uint8_t* w) {
    const uint32_t bits = static_cast<uint32_t>(*reinterpret_cast<const uint16_t*>(w)) << 16;
    float f;
    __builtin_memcpy(&f, &bits, 4);
    return f;
  }
  static constexpr size_t kBytes = 2;
};

// Float weights: two accumulators per activation row hide the FMA latency.
template <typename Load>
struct FloatKernel {
  template <int NB>
  struct Tile {
    static void run(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0) {
      const float* x[NB];
      for (int k = 0; k < NB; ++k) x[k] = act_row<float>(a, b0 + k);
      const int64_t vec_end = a.cols & ~int64_t{7};
      for (int64_t r = r0; r < r1; ++r) {
        const uint8_t* w = a.w + static_cast<size_t>(r) * a.w_row_bytes;
        float32x4_t acc[NB][2];
        for (int k = 0; k < NB; ++k) acc[k][0] = acc[k][1] = vdupq_n_f32(0.0f);
        for (int64_t c = 0; c < vec_end; c += 8) {
          const float32x4_t w0 = Load::load(w + c * Load::kBytes);
          const float32x4_t w1 = Load::load(w + (c + 4) * Load::kBytes);
          for (int k = 0; k < NB; ++k) {
            acc[k][0] = vfmaq_f32(acc[k][0], w0, vld1q_f32(x[k] + c));
            acc[k][1] = vfmaq_f32(acc[k][1], w1, vld1q_f32(x[k] + c + 4));
          }
        }
        for (int k = 0; k < NB; ++k) {
          float sum = vaddvq_f32(vaddq_f32(acc[k][0], acc[k][1]));
          for (int64_t c = vec_end; c < a.cols; ++c) {
            sum += Load::scalar(w + c * Load::kBytes) * x[k][c];
          }
          a.y[(b0 + k) * a.y_stride + r] = sum;
        }
      }
    }
  };
};

void rows_f32_neon(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  run_tile<FloatKernel<LoadF32>::Tile>(a, r0, r1, b0, nb);
}
void rows_f16_neon(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  run_tile<FloatKernel<LoadF16>::Tile>(a, r0, r1, b0, nb);
}
void rows_bf16_neon(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  run_tile<FloatKernel<LoadBF16>::Tile>(a, r0, r1, b0, nb);
}

// The largest |x| of n floats (a multiple of 4).
inline float abs_max(const float* x, int n) {
  float32x4_t m = vdupq_n_f32(0.0f);
  for (int j = 0; j < n; j += 4) m = vmaxq_f32(m, vabsq_f32(vld1q_f32(x + j)));
  return vmaxvq_f32(m);
}

// Quantizes 16 floats with scale 1/id into q (round to nearest even, as the
// scalar quantizers' nearbyint) and returns their sum.
inline int32_t quantize16(const float* x, float32x4_t id, int8_t* q) {
  int32x4_t v[4];
  for (int j = 0; j < 4; ++j) v[j] = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(x + 4 * j), id));
  const int16x8_t lo = vcombine_s16(vqmovn_s32(v[0]), vqmovn_s32(v[1]));
  const int16x8_t hi = vcombine_s16(vqmovn_s32(v[2]), vqmovn_s32(v[3]));
  vst1q_s8(q, vcombine_s8(vqmovn_s16(lo), vqmovn_s16(hi)));
  return vaddvq_s32(vaddq_s32(vaddq_s32(v[0], v[1]), vaddq_s32(v[2], v[3])));
}

// The scale and its inverse are computed exactly as in the scalar path, so
// both produce the same bytes.
void quantize_act_q8_neon(const float* x, ActQ8* y, int64_t n) {
  for (int64_t b = 0; b < n / kQK; ++b, x += kQK) {
    const float d = abs_max(x, kQK) / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const float32x4_t idv = vdupq_n_f32(id);
    const int32_t sum = quantize16(x, idv, y[b].qs) + quantize16(x + 16, idv, y[b].qs + 16);
    y[b].d = d;
    y[b].s = d * static_cast<float>(sum);
  }
}

void quantize_act_q8k_neon(const float* x, ActQ8K* y, int64_t n) {
  for (int64_t b = 0; b < n / kQKK; ++b, x += kQKK) {
    const float d = abs_max(x, kQKK) / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const float32x4_t idv = vdupq_n_f32(id);
    for (int g = 0; g < kQKK / 16; ++g) {
      y[b].bsums[g] = static_cast<int16_t>(quantize16(x + 16 * g, idv, y[b].qs + 16 * g));
    }
    y[b].d = d;
  }
}

KernelSet make_set() {
  KernelSet set{
      .level = CpuLevel::kNeon,
      .types = {{TensorType::kF32, rows_f32_neon},
                {TensorType::kF16, rows_f16_neon},
                {TensorType::kBF16, rows_bf16_neon},
                {TensorType::kQ4_0},
                {TensorType::kQ8_0},
                {TensorType::kQ5_0},
                {TensorType::kQ5_1},
                {TensorType::kIQ4_NL},
                {TensorType::kIQ4_XS},
                {TensorType::kQ2_K},
                {TensorType::kQ3_K},
                {TensorType::kQ4_K},
                {TensorType::kQ5_K},
                {TensorType::kQ6_K}},
      .quantize_act_q8 = quantize_act_q8_neon,
      .quantize_act_q8k = quantize_act_q8k_neon,
      .ops = neon_vector_ops(),
  };
  for (TypeKernels& k : set.types) {
    if (RowKernel rows = quantized_rows<WideningDot>(k.type)) k.rows = rows;
  }
  return set;
}

}  // namespace

const KernelSet& neon_kernels() {
  static const KernelSet set = make_set();
  return set;
}

}  // namespace foreshore::engine::detail
