// Advanced SIMD element-wise and reduction helpers of the forward pass, for
// the ARM64 levels (neon and dotprod share them). Built with -march=armv8-a;
// reachable only through neon_vector_ops().
#include <arm_neon.h>

#include <algorithm>
#include <cmath>

#include "engine/kernels.h"
#include "engine/kernels_internal.h"

namespace foreshore::engine::detail {
namespace {

// Repeated from kernels_ops.cpp on purpose, as in kernels_avx2_ops.cpp: an
// inline function shared through a header could reach baseline code as this
// file's copy.
inline float silu(float v) {
  return v / (1.0f + std::exp(-v));
}

// gelu_tanh(v) = 0.5 v (1 + tanh(u)) = v * sigmoid(2u).
constexpr float kGeluA = 0.7978845608f;  // sqrt(2 / pi)
constexpr float kGeluB = 0.044715f;
inline float gelu(float v) {
  const float u2 = 2.0f * kGeluA * (v + kGeluB * v * v * v);
  return v / (1.0f + std::exp(-u2));
}

inline float32x4_t load_f16(const uint16_t* p) {
  return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)));
}

inline float half_to_float(uint16_t h) {
  return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0);
}

// exp(x) = 2^n * exp(r) with n = round(x / ln 2) and |r| <= ln(2) / 2, where
// a degree-6 Taylor polynomial is within about 2 ulp (as kernels_avx2_ops.cpp).
// Inputs are clamped so 2^n stays a normal float; below about -87.3 the
// result is 0.
inline float32x4_t exp4(float32x4_t x) {
  const uint32x4_t underflow = vcltq_f32(x, vdupq_n_f32(-87.3f));
  x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-87.3f)), vdupq_n_f32(88.37f));
  const float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(1.44269504f)));
  // ln 2 split in two so n * ln2_hi is exact.
  float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0.693359375f));
  r = vfmsq_f32(r, n, vdupq_n_f32(-2.12194440e-4f));
  float32x4_t p = vdupq_n_f32(1.0f / 720.0f);
  p = vfmaq_f32(vdupq_n_f32(1.0f / 120.0f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.0f / 24.0f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.0f / 6.0f), p, r);
  p = vfmaq_f32(vdupq_n_f32(0.5f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
  const int32x4_t pow2 = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
  const float32x4_t e = vmulq_f32(p, vreinterpretq_f32_s32(pow2));
  return vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(e), underflow));
}

// v * sigmoid(arg) = v / (1 + exp(-arg)).
inline float32x4_t sigmoid_times(float32x4_t v, float32x4_t arg) {
  return vdivq_f32(v, vaddq_f32(vdupq_n_f32(1.0f), exp4(vnegq_f32(arg))));
}

float dot_f32(const float* a, const float* b, int64_t n) {
  int64_t i = 0;
  float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
  for (; i + 8 <= n; i += 8) {
    acc0 = vfmaq_f32(acc0, vld1q_f32(a + i), vld1q_f32(b + i));
    acc1 = vfmaq_f32(acc1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
  }
  for (; i + 4 <= n; i += 4) acc0 = vfmaq_f32(acc0, vld1q_f32(a + i), vld1q_f32(b + i));
  float sum = vaddvq_f32(vaddq_f32(acc0, acc1));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

float dot_f32_f16(const float* a, const uint16_t* b, int64_t n) {
  int64_t i = 0;
  float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
  for (; i + 8 <= n; i += 8) {
    acc0 = vfmaq_f32(acc0, vld1q_f32(a + i), load_f16(b + i));
    acc1 = vfmaq_f32(acc1, vld1q_f32(a + i + 4), load_f16(b + i + 4));
  }
  for (; i + 4 <= n; i += 4) acc0 = vfmaq_f32(acc0, vld1q_f32(a + i), load_f16(b + i));
  float sum = vaddvq_f32(vaddq_f32(acc0, acc1));
  for (; i < n; ++i) sum += a[i] * half_to_float(b[i]);
  return sum;
}

void axpy_f32(float a, const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), vld1q_f32(x + i), a));
  for (; i < n; ++i) y[i] += a * x[i];
}

void axpy_f16(float a, const uint16_t* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), load_f16(x + i), a));
  for (; i < n; ++i) y[i] += a * half_to_float(x[i]);
}

// Sixteen int8 of a Q8_0 block as four float vectors.
inline void load_q8(const int8_t* q, float32x4_t out[4]) {
  const int8x16_t v = vld1q_s8(q);
  const int16x8_t lo = vmovl_s8(vget_low_s8(v));
  const int16x8_t hi = vmovl_high_s8(v);
  out[0] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo)));
  out[1] = vcvtq_f32_s32(vmovl_high_s16(lo));
  out[2] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi)));
  out[3] = vcvtq_f32_s32(vmovl_high_s16(hi));
}

float dot_f32_q8_0(const float* a, const void* b, int64_t n) {
  const auto* blocks = static_cast<const BlockQ8_0*>(b);
  float32x4_t acc = vdupq_n_f32(0.0f);
  for (int64_t k = 0; k < n / kQK; ++k, a += kQK) {
    float32x4_t block = vdupq_n_f32(0.0f);
    for (int h = 0; h < kQK; h += 16) {
      float32x4_t q[4];
      load_q8(blocks[k].qs + h, q);
      for (int j = 0; j < 4; ++j) block = vfmaq_f32(block, vld1q_f32(a + h + 4 * j), q[j]);
    }
    acc = vfmaq_n_f32(acc, block, half_to_float(blocks[k].d));
  }
  return vaddvq_f32(acc);
}

void axpy_q8_0(float a, const void* x, float* y, int64_t n) {
  const auto* blocks = static_cast<const BlockQ8_0*>(x);
  for (int64_t k = 0; k < n / kQK; ++k, y += kQK) {
    const float scale = a * half_to_float(blocks[k].d);
    for (int h = 0; h < kQK; h += 16) {
      float32x4_t q[4];
      load_q8(blocks[k].qs + h, q);
      for (int j = 0; j < 4; ++j) {
        float* yj = y + h + 4 * j;
        vst1q_f32(yj, vfmaq_n_f32(vld1q_f32(yj), q[j], scale));
      }
    }
  }
}

void add_f32(float* y, const float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vaddq_f32(vld1q_f32(y + i), vld1q_f32(x + i)));
  for (; i < n; ++i) y[i] += x[i];
}

void scale_f32(float* y, float a, int64_t n) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vmulq_n_f32(vld1q_f32(y + i), a));
  for (; i < n; ++i) y[i] *= a;
}

void rmsnorm(const float* x, const float* weight, float* out, int64_t n, float eps) {
  const float mean_square = dot_f32(x, x, n) / static_cast<float>(n);
  const float inv = 1.0f / std::sqrt(mean_square + eps);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    vst1q_f32(out + i, vmulq_f32(vmulq_n_f32(vld1q_f32(x + i), inv), vld1q_f32(weight + i)));
  }
  for (; i < n; ++i) out[i] = x[i] * inv * weight[i];
}

void softmax(float* x, int64_t n) {
  int64_t i = 0;
  float32x4_t mv = vdupq_n_f32(-INFINITY);
  for (; i + 4 <= n; i += 4) mv = vmaxq_f32(mv, vld1q_f32(x + i));
  float max = vmaxvq_f32(mv);
  for (; i < n; ++i) max = std::max(max, x[i]);

  i = 0;
  const float32x4_t maxv = vdupq_n_f32(max);
  float32x4_t sv = vdupq_n_f32(0.0f);
  for (; i + 4 <= n; i += 4) {
    const float32x4_t e = exp4(vsubq_f32(vld1q_f32(x + i), maxv));
    vst1q_f32(x + i, e);
    sv = vaddq_f32(sv, e);
  }
  float sum = vaddvq_f32(sv);
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - max);
    sum += x[i];
  }
  scale_f32(x, 1.0f / sum, n);
}

void silu_mul(float* gate, const float* up, int64_t n) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const float32x4_t g = vld1q_f32(gate + i);
    vst1q_f32(gate + i, vmulq_f32(sigmoid_times(g, g), vld1q_f32(up + i)));
  }
  for (; i < n; ++i) gate[i] = silu(gate[i]) * up[i];
}

void gelu_mul(float* gate, const float* up, int64_t n) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const float32x4_t g = vld1q_f32(gate + i);
    const float32x4_t g3 = vmulq_f32(vmulq_f32(g, g), g);
    const float32x4_t u2 = vmulq_n_f32(vfmaq_n_f32(g, g3, kGeluB), 2.0f * kGeluA);
    vst1q_f32(gate + i, vmulq_f32(sigmoid_times(g, u2), vld1q_f32(up + i)));
  }
  for (; i < n; ++i) gate[i] = gelu(gate[i]) * up[i];
}

// FCVTN and FCVTL round and quiet NaNs as fp32_to_fp16 and fp16_to_fp32 do
// (nearest-even under Linux's default FPCR, denormals kept), so both paths
// give the same bits.
void fp32_to_fp16(const float* x, uint16_t* y, int64_t n) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) vst1_u16(y + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(x + i))));
  for (; i < n; ++i) {
    y[i] = vget_lane_u16(vreinterpret_u16_f16(vcvt_f16_f32(vdupq_n_f32(x[i]))), 0);
  }
}

void fp16_to_fp32(const uint16_t* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) vst1q_f32(y + i, load_f16(x + i));
  for (; i < n; ++i) y[i] = half_to_float(x[i]);
}

}  // namespace

const VectorOps& neon_vector_ops() {
  static constexpr VectorOps kOps{dot_f32,      dot_f32_f16,  axpy_f32,     axpy_f16, add_f32,
                                  scale_f32,    rmsnorm,      softmax,      silu_mul, gelu_mul,
                                  fp32_to_fp16, fp16_to_fp32, dot_f32_q8_0, axpy_q8_0};
  return kOps;
}

}  // namespace foreshore::engine::detail
