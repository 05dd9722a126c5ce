// AVX2/FMA/F16C element-wise and reduction helpers of the forward pass.
// Built with those instructions; reachable only through avx2_vector_ops().
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "engine/kernels.h"
#include "engine/kernels_internal.h"

namespace foreshore::engine::detail {
namespace {

// Repeated from kernels_ops.cpp on purpose: an inline function shared through
// a header would be compiled here with AVX2/FMA and there for baseline x86-64,
// and the linker may keep either copy for both (an ODR trap that puts AVX
// instructions on the baseline path).
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

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

inline __m256 load_f16(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// exp(x) = 2^n * exp(r) with n = round(x / ln 2) and |r| <= ln(2) / 2, where
// a degree-6 Taylor polynomial is within about 2 ulp. Inputs are clamped so
// 2^n stays a normal float; below about -87.3 the result is 0.
inline __m256 exp256(__m256 x) {
  const __m256 underflow = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3f), _CMP_LT_OQ);
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.37f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // ln 2 split in two so n * ln2_hi is exact.
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.0f / 720.0f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i pow2 =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(underflow, _mm256_mul_ps(p, _mm256_castsi256_ps(pow2)));
}

inline __m256 sigmoid_times(__m256 v, __m256 arg) {
  // v * sigmoid(arg) = v / (1 + exp(-arg))
  const __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), arg));
  return _mm256_div_ps(v, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

float dot_f32(const float* a, const float* b, int64_t n) {
  int64_t i = 0;
  __m256 acc0 = _mm256_setzero_ps();
  __m256 acc1 = _mm256_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  for (; i + 8 <= n; i += 8) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  }
  float sum = hsum(_mm256_add_ps(acc0, acc1));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

float dot_f32_f16(const float* a, const uint16_t* b, int64_t n) {
  int64_t i = 0;
  __m256 acc0 = _mm256_setzero_ps();
  __m256 acc1 = _mm256_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load_f16(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), load_f16(b + i + 8), acc1);
  }
  for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load_f16(b + i), acc0);
  float sum = hsum(_mm256_add_ps(acc0, acc1));
  for (; i < n; ++i) sum += a[i] * _cvtsh_ss(b[i]);
  return sum;
}

void axpy_f32(float a, const float* x, float* y, int64_t n) {
  int64_t i = 0;
  const __m256 av = _mm256_set1_ps(a);
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  }
  for (; i < n; ++i) y[i] += a * x[i];
}

void axpy_f16(float a, const uint16_t* x, float* y, int64_t n) {
  int64_t i = 0;
  const __m256 av = _mm256_set1_ps(a);
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, load_f16(x + i), _mm256_loadu_ps(y + i)));
  }
  for (; i < n; ++i) y[i] += a * _cvtsh_ss(x[i]);
}

// Eight int8 of a Q8_0 block as floats.
inline __m256 load_q8(const int8_t* q) {
  return _mm256_cvtepi32_ps(
      _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q))));
}

float dot_f32_q8_0(const float* a, const void* b, int64_t n) {
  const auto* blocks = static_cast<const BlockQ8_0*>(b);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t k = 0; k < n / kQK; ++k, a += kQK) {
    __m256 block = _mm256_mul_ps(_mm256_loadu_ps(a), load_q8(blocks[k].qs));
    for (int j = 8; j < kQK; j += 8) {
      block = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), load_q8(blocks[k].qs + j), block);
    }
    acc = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(blocks[k].d)), block, acc);
  }
  return hsum(acc);
}

void axpy_q8_0(float a, const void* x, float* y, int64_t n) {
  const auto* blocks = static_cast<const BlockQ8_0*>(x);
  for (int64_t k = 0; k < n / kQK; ++k, y += kQK) {
    const __m256 scale = _mm256_set1_ps(a * _cvtsh_ss(blocks[k].d));
    for (int j = 0; j < kQK; j += 8) {
      _mm256_storeu_ps(y + j,
                       _mm256_fmadd_ps(scale, load_q8(blocks[k].qs + j), _mm256_loadu_ps(y + j)));
    }
  }
}

void add_f32(float* y, const float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_loadu_ps(x + i)));
  }
  for (; i < n; ++i) y[i] += x[i];
}

void scale_f32(float* y, float a, int64_t n) {
  int64_t i = 0;
  const __m256 av = _mm256_set1_ps(a);
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(av, _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] *= a;
}

void rmsnorm(const float* x, const float* weight, float* out, int64_t n, float eps) {
  const float mean_square = dot_f32(x, x, n) / static_cast<float>(n);
  const float inv = 1.0f / std::sqrt(mean_square + eps);
  int64_t i = 0;
  const __m256 iv = _mm256_set1_ps(inv);
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), iv);
    _mm256_storeu_ps(out + i, _mm256_mul_ps(v, _mm256_loadu_ps(weight + i)));
  }
  for (; i < n; ++i) out[i] = x[i] * inv * weight[i];
}

void softmax(float* x, int64_t n) {
  int64_t i = 0;
  __m256 mv = _mm256_set1_ps(-INFINITY);
  for (; i + 8 <= n; i += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(x + i));
  float max = hmax(mv);
  for (; i < n; ++i) max = std::max(max, x[i]);

  i = 0;
  const __m256 maxv = _mm256_set1_ps(max);
  __m256 sv = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), maxv));
    _mm256_storeu_ps(x + i, e);
    sv = _mm256_add_ps(sv, e);
  }
  float sum = hsum(sv);
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - max);
    sum += x[i];
  }
  scale_f32(x, 1.0f / sum, n);
}

void silu_mul(float* gate, const float* up, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    _mm256_storeu_ps(gate + i, _mm256_mul_ps(sigmoid_times(g, g), _mm256_loadu_ps(up + i)));
  }
  for (; i < n; ++i) gate[i] = silu(gate[i]) * up[i];
}

void gelu_mul(float* gate, const float* up, int64_t n) {
  int64_t i = 0;
  const __m256 a2 = _mm256_set1_ps(2.0f * kGeluA);
  const __m256 b = _mm256_set1_ps(kGeluB);
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 g3 = _mm256_mul_ps(_mm256_mul_ps(g, g), g);
    const __m256 u2 = _mm256_mul_ps(a2, _mm256_fmadd_ps(b, g3, g));
    _mm256_storeu_ps(gate + i, _mm256_mul_ps(sigmoid_times(g, u2), _mm256_loadu_ps(up + i)));
  }
  for (; i < n; ++i) gate[i] = gelu(gate[i]) * up[i];
}

// F16C rounds as fp32_to_fp16 does, so both paths give the same bits.
void fp32_to_fp16(const float* x, uint16_t* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
  }
  for (; i < n; ++i) y[i] = _cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT);
}

void fp16_to_fp32(const uint16_t* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, load_f16(x + i));
  for (; i < n; ++i) y[i] = _cvtsh_ss(x[i]);
}

}  // namespace

const VectorOps& avx2_vector_ops() {
  static constexpr VectorOps kOps{dot_f32,      dot_f32_f16,  axpy_f32,     axpy_f16, add_f32,
                                  scale_f32,    rmsnorm,      softmax,      silu_mul, gelu_mul,
                                  fp32_to_fp16, fp16_to_fp32, dot_f32_q8_0, axpy_q8_0};
  return kOps;
}

}  // namespace foreshore::engine::detail
