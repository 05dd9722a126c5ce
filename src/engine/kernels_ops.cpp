// Element-wise and reduction helpers of the forward pass: the entry points,
// which run the chosen level's helpers, and the scalar helpers.
#include <algorithm>
#include <cmath>

#include "engine/kernels.h"
#include "engine/kernels_internal.h"

namespace foreshore::engine {
namespace {

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

float dot_f32_scalar(const float* a, const float* b, int64_t n) {
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

float dot_f32_f16_scalar(const float* a, const uint16_t* b, int64_t n) {
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) sum += a[i] * fp16_to_fp32(b[i]);
  return sum;
}

void axpy_f32_scalar(float a, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

void axpy_f16_scalar(float a, const uint16_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * fp16_to_fp32(x[i]);
}

float dot_f32_q8_0_scalar(const float* a, const void* b, int64_t n) {
  const auto* blocks = static_cast<const detail::BlockQ8_0*>(b);
  float sum = 0.0f;
  for (int64_t k = 0; k < n / detail::kQK; ++k) {
    float block = 0.0f;
    for (int64_t i = 0; i < detail::kQK; ++i) block += a[k * detail::kQK + i] * blocks[k].qs[i];
    sum += block * fp16_to_fp32(blocks[k].d);
  }
  return sum;
}

void axpy_q8_0_scalar(float a, const void* x, float* y, int64_t n) {
  const auto* blocks = static_cast<const detail::BlockQ8_0*>(x);
  for (int64_t k = 0; k < n / detail::kQK; ++k) {
    const float scale = a * fp16_to_fp32(blocks[k].d);
    for (int64_t i = 0; i < detail::kQK; ++i) y[k * detail::kQK + i] += scale * blocks[k].qs[i];
  }
}

void add_f32_scalar(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

void scale_f32_scalar(float* y, float a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] *= a;
}

void rmsnorm_scalar(const float* x, const float* weight, float* out, int64_t n, float eps) {
  const float mean_square = dot_f32_scalar(x, x, n) / static_cast<float>(n);
  const float inv = 1.0f / std::sqrt(mean_square + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * inv * weight[i];
}

void softmax_scalar(float* x, int64_t n) {
  float max = -INFINITY;
  for (int64_t i = 0; i < n; ++i) max = std::max(max, x[i]);
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - max);
    sum += x[i];
  }
  scale_f32_scalar(x, 1.0f / sum, n);
}

void silu_mul_scalar(float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) gate[i] = silu(gate[i]) * up[i];
}

void gelu_mul_scalar(float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) gate[i] = gelu(gate[i]) * up[i];
}

void fp32_to_fp16_scalar(const float* x, uint16_t* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = fp32_to_fp16(x[i]);
}

void fp16_to_fp32_scalar(const uint16_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = fp16_to_fp32(x[i]);
}

const detail::VectorOps& ops() {
  return detail::active_kernels().ops;
}

}  // namespace

namespace detail {

const VectorOps& scalar_vector_ops() {
  static constexpr VectorOps kOps{dot_f32_scalar,      dot_f32_f16_scalar,  axpy_f32_scalar,
                                  axpy_f16_scalar,     add_f32_scalar,      scale_f32_scalar,
                                  rmsnorm_scalar,      softmax_scalar,      silu_mul_scalar,
                                  gelu_mul_scalar,     fp32_to_fp16_scalar, fp16_to_fp32_scalar,
                                  dot_f32_q8_0_scalar, axpy_q8_0_scalar};
  return kOps;
}

}  // namespace detail

float dot_f32(const float* a, const float* b, int64_t n) {
  return ops().dot_f32(a, b, n);
}

float dot_f32_f16(const float* a, const uint16_t* b, int64_t n) {
  return ops().dot_f32_f16(a, b, n);
}

void axpy_f32(float a, const float* x, float* y, int64_t n) {
  ops().axpy_f32(a, x, y, n);
}

void axpy_f16(float a, const uint16_t* x, float* y, int64_t n) {
  ops().axpy_f16(a, x, y, n);
}

float dot_f32_q8_0(const float* a, const void* b, int64_t n) {
  return ops().dot_f32_q8_0(a, b, n);
}

void axpy_q8_0(float a, const void* x, float* y, int64_t n) {
  ops().axpy_q8_0(a, x, y, n);
}

void add_f32(float* y, const float* x, int64_t n) {
  ops().add_f32(y, x, n);
}

void scale_f32(float* y, float a, int64_t n) {
  ops().scale_f32(y, a, n);
}

void rmsnorm(const float* x, const float* weight, float* out, int64_t n, float eps) {
  ops().rmsnorm(x, weight, out, n, eps);
}

void softmax(float* x, int64_t n) {
  ops().softmax(x, n);
}

void silu_mul(float* gate, const float* up, int64_t n) {
  ops().silu_mul(gate, up, n);
}

void gelu_mul(float* gate, const float* up, int64_t n) {
  ops().gelu_mul(gate, up, n);
}

}  // namespace foreshore::engine
