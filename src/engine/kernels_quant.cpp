// Scalar quantization and dequantization of weight blocks, and the scalar
// activation quantizers that the matmul kernels and their tests share.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "engine/kernels.h"
#include "engine/kernels_internal.h"

namespace foreshore::engine::detail {
namespace {

// Round half to even, as the vector conversions do.
inline int nearest(float v) {
  return static_cast<int>(std::nearbyint(v));
}

// The element of largest magnitude, with its sign (the first of equals), or
// 0 when all are 0: the symmetric quantizers map it to their grid's end.
float signed_max(const float* x, int64_t n) {
  float amax = 0.0f;
  float max = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      max = x[i];
    }
  }
  return max;
}

// Fits x[i] ~= scale * q[i] - min with q in [0, nmax] and min >= 0 (the
// K-quant convention: the offset only moves values down), minimizing the
// squared error weighted by w (all 1 when w is null). Starts from the min/max
// fit and tries nearby grid scalings, refitting scale and min by weighted
// least squares for each candidate assignment of q.
void fit_scale_min(const float* x, const float* w, int n, int nmax, float* scale, float* min) {
  const auto weight = [w](int i) { return w != nullptr ? w[i] : 1.0f; };
  float lo = x[0];
  float hi = x[0];
  for (int i = 1; i < n; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  lo = std::min(lo, 0.0f);
  if (hi == lo) {
    *scale = 0.0f;
    *min = -lo;
    return;
  }
  auto error_of = [&](float a, float b) {
    float err = 0.0f;
    for (int i = 0; i < n; ++i) {
      const int q = std::clamp(nearest((x[i] - b) / a), 0, nmax);
      const float diff = a * static_cast<float>(q) + b - x[i];
      err += weight(i) * diff * diff;
    }
    return err;
  };
  float best_a = (hi - lo) / static_cast<float>(nmax);
  float best_b = lo;
  float best_err = error_of(best_a, best_b);
  for (int step = -10; step <= 10; ++step) {
    const float iscale = (static_cast<float>(nmax) + 0.1f * static_cast<float>(step)) / (hi - lo);
    float sw = 0.0f, sl = 0.0f, sll = 0.0f, sx = 0.0f, sxl = 0.0f;
    for (int i = 0; i < n; ++i) {
      const float l = static_cast<float>(std::clamp(nearest(iscale * (x[i] - lo)), 0, nmax));
      const float wi = weight(i);
      sw += wi;
      sl += wi * l;
      sll += wi * l * l;
      sx += wi * x[i];
      sxl += wi * x[i] * l;
    }
    const float det = sw * sll - sl * sl;
    if (det <= 0.0f) continue;
    float a = (sw * sxl - sl * sx) / det;
    float b = (sll * sx - sl * sxl) / det;
    if (b > 0.0f) {
      b = 0.0f;
      a = sxl / sll;
    }
    if (a <= 0.0f) continue;
    const float err = error_of(a, b);
    if (err < best_err) {
      best_err = err;
      best_a = a;
      best_b = b;
    }
  }
  *scale = best_a;
  *min = -best_b;
}

// Fits x[i] ~= scale * q[i] with q in [-nmax, nmax - 1], maximizing the
// explained weighted energy (sum w*x*q)^2 / sum w*q^2 over a few grid
// scalings (w all 1 when null). The grids include ggml's Q4_0 rule, -nmax /
// (the value of largest magnitude), and refit its scale, so the weighted error
// is never worse than that rule's.
float fit_scale_symmetric(const float* x, const float* w, int n, int nmax) {
  const float max = signed_max(x, n);
  if (max == 0.0f) return 0.0f;
  float best_scale = 0.0f;
  float best_score = -1.0f;
  for (int step = -9; step <= 9; ++step) {
    // Negative so the largest magnitude lands on -nmax, the side with room.
    const float iscale = -(static_cast<float>(nmax) + 0.1f * static_cast<float>(step)) / max;
    float sxl = 0.0f, sll = 0.0f;
    for (int i = 0; i < n; ++i) {
      const float l = static_cast<float>(std::clamp(nearest(iscale * x[i]), -nmax, nmax - 1));
      const float wi = w != nullptr ? w[i] : 1.0f;
      sxl += wi * x[i] * l;
      sll += wi * l * l;
    }
    if (sll == 0.0f) continue;
    const float score = sxl * sxl / sll;
    if (score > best_score) {
      best_score = score;
      best_scale = sxl / sll;
    }
  }
  return best_scale;
}

// Fitting weights for n elements from their columns' importance: each
// element's error counts by how strongly its input column is driven, and a
// little more for large weights (as llama.cpp weighs its importance matrix).
// Null when there is no importance, or it is zero for the whole group (a
// column calibration never drove): then the plain fit applies.
const float* fitting_weights(const float* x, const float* importance, int n, float* w) {
  if (importance == nullptr) return nullptr;
  float sum_x2 = 0.0f;
  float importance_sum = 0.0f;
  for (int i = 0; i < n; ++i) {
    sum_x2 += x[i] * x[i];
    importance_sum += importance[i];
  }
  if (!(importance_sum > 0.0f)) return nullptr;
  const float sigma2 = sum_x2 / static_cast<float>(n);
  for (int i = 0; i < n; ++i) w[i] = importance[i] * std::sqrt(sigma2 + x[i] * x[i]);
  return w;
}

}  // namespace

namespace {

// ggml's reference rounding for Q4_0 (kLevels 16) and Q5_0 (32), so files
// match llama.cpp's quantizer: the block's largest-magnitude element maps to
// level 0, i.e. -kLevels/2 steps. Writes the 32 levels and returns the scale.
template <int kLevels>
float symmetric_levels(const float* x, int* level) {
  const float d = signed_max(x, kQK) / -(kLevels / 2.0f);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  for (int j = 0; j < kQK; ++j) {
    level[j] = std::min(kLevels - 1, static_cast<int>(x[j] * id + (kLevels / 2.0f + 0.5f)));
  }
  return d;
}

}  // namespace

void quantize_q4_0(const float* x, BlockQ4_0* y, int64_t n) {
  for (int64_t b = 0; b < n / kQK; ++b, x += kQK) {
    int level[kQK];
    y[b].d = fp32_to_fp16(symmetric_levels<16>(x, level));
    for (int j = 0; j < kQK / 2; ++j) {
      y[b].qs[j] = static_cast<uint8_t>(level[j] | (level[j + kQK / 2] << 4));
    }
  }
}

void quantize_q4_0_weighted(const float* x, const float* importance, BlockQ4_0* y, int64_t n) {
  for (int64_t b = 0; b < n / kQK; ++b, x += kQK, importance += kQK) {
    float w[kQK];
    const float* weights = fitting_weights(x, importance, kQK, w);
    if (weights == nullptr) {
      quantize_q4_0(x, y + b, kQK);
      continue;
    }
    y[b].d = fp32_to_fp16(fit_scale_symmetric(x, weights, kQK, 8));
    const float d = fp16_to_fp32(y[b].d);
    const auto level = [d](float v) {
      return d != 0.0f ? std::clamp(nearest(v / d), -8, 7) + 8 : 8;
    };
    for (int j = 0; j < kQK / 2; ++j) {
      y[b].qs[j] = static_cast<uint8_t>(level(x[j]) | (level(x[j + kQK / 2]) << 4));
    }
  }
}

namespace {

// Index of the IQ4_NL grid value nearest to v.
int nearest_iq4nl(float v) {
  if (v <= kIq4nlValues[0]) return 0;
  if (v >= kIq4nlValues[15]) return 15;
  int lo = 0;
  int hi = 15;
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    (v < static_cast<float>(kIq4nlValues[mid]) ? hi : lo) = mid;
  }
  return v - static_cast<float>(kIq4nlValues[lo]) <= static_cast<float>(kIq4nlValues[hi]) - v ? lo
                                                                                              : hi;
}

}  // namespace

namespace {

// The (weighted) least-squares scale of 32 values on the IQ4_NL grid. The
// grid runs from -127 to 113: try the value of largest magnitude at either
// end and scalings around it, each with its least-squares scale.
float iq4nl_scale(const float* x, const float* weights) {
  const float max = signed_max(x, kQK);
  float best_d = 0.0f;
  float best_score = -1.0f;
  if (max == 0.0f) return 0.0f;
  for (float end : {-127.0f, 113.0f}) {
    for (int step = -9; step <= 9; ++step) {
      const float inverse = (end + static_cast<float>(step)) / max;
      float sum_qx = 0.0f;
      float sum_q2 = 0.0f;
      for (int j = 0; j < kQK; ++j) {
        const float q = kIq4nlValues[nearest_iq4nl(inverse * x[j])];
        const float wj = weights != nullptr ? weights[j] : 1.0f;
        sum_qx += wj * q * x[j];
        sum_q2 += wj * q * q;
      }
      if (sum_q2 > 0.0f && sum_qx * sum_qx > best_score * sum_q2) {
        best_score = sum_qx * sum_qx / sum_q2;
        best_d = sum_qx / sum_q2;
      }
    }
  }
  return best_d;
}

// 32 grid indices for scale d, packed as Q4_0 packs its nibbles.
void pack_iq4nl_indices(const float* x, float d, uint8_t qs[kQK / 2]) {
  const auto index = [d](float v) { return d != 0.0f ? nearest_iq4nl(v / d) : 8; };
  for (int j = 0; j < kQK / 2; ++j) {
    qs[j] = static_cast<uint8_t>(index(x[j]) | (index(x[j + kQK / 2]) << 4));
  }
}

}  // namespace

void quantize_iq4_nl(const float* x, BlockIQ4_NL* y, int64_t n, const float* importance) {
  for (int64_t b = 0; b < n / kQK; ++b, x += kQK) {
    float w[kQK];
    const float* weights =
        fitting_weights(x, importance != nullptr ? importance + b * kQK : nullptr, kQK, w);
    y[b].d = fp32_to_fp16(iq4nl_scale(x, weights));
    pack_iq4nl_indices(x, fp16_to_fp32(y[b].d), y[b].qs);
  }
}

void quantize_iq4_xs(const float* x, BlockIQ4_XS* y, int64_t n, const float* importance) {
  for (int64_t b = 0; b < n / kQKK; ++b, x += kQKK) {
    float scales[8];
    float max_scale = 0.0f;
    for (int ib = 0; ib < 8; ++ib) {
      float w[kQK];
      const float* weights = fitting_weights(
          x + kQK * ib, importance != nullptr ? importance + b * kQKK + kQK * ib : nullptr, kQK, w);
      scales[ib] = iq4nl_scale(x + kQK * ib, weights);
      if (std::fabs(scales[ib]) > std::fabs(max_scale)) max_scale = scales[ib];
    }
    // As for Q6_K, the scale of largest magnitude goes to -32.
    const float iscale = max_scale != 0.0f ? -32.0f / max_scale : 0.0f;
    y[b].d = fp32_to_fp16(iscale != 0.0f ? 1.0f / iscale : 0.0f);
    const float d = fp16_to_fp32(y[b].d);
    y[b].scales_h = 0;
    std::memset(y[b].scales_l, 0, sizeof y[b].scales_l);
    for (int ib = 0; ib < 8; ++ib) {
      const int ls = std::clamp(nearest(iscale * scales[ib]), -32, 31) + 32;
      y[b].scales_l[ib / 2] =
          static_cast<uint8_t>(y[b].scales_l[ib / 2] | ((ls & 0xF) << (4 * (ib % 2))));
      y[b].scales_h = static_cast<uint16_t>(y[b].scales_h | ((ls >> 4) << (2 * ib)));
      pack_iq4nl_indices(x + kQK * ib, d * static_cast<float>(ls - 32), y[b].qs + 16 * ib);
    }
  }
}

void quantize_q8_0(const float* x, BlockQ8_0* y, int64_t n) {
  for (int64_t b = 0; b < n / kQK; ++b, x += kQK) {
    float amax = 0.0f;
    for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = fp32_to_fp16(d);
    for (int j = 0; j < kQK; ++j) y[b].qs[j] = static_cast<int8_t>(std::round(x[j] * id));
  }
}

namespace {

// The shared half of Q2_K, Q4_K and Q5_K: fits each of kGroups groups of
// kSize elements a scale and min for levels 0..kMaxLevel, stores them as
// multiples 0..kScaleMax of the block's d and dmin (in scale[] and min[], for
// the caller to pack), and writes the 256 levels.
template <int kGroups, int kMaxLevel, int kScaleMax>
void scale_min_levels(const float* x, const float* importance, uint16_t* d_out, uint16_t* dmin_out,
                      uint8_t scale[kGroups], uint8_t min[kGroups], uint8_t q[kQKK]) {
  constexpr int kSize = kQKK / kGroups;
  float scales[kGroups];
  float mins[kGroups];
  float max_scale = 0.0f;
  float max_min = 0.0f;
  for (int j = 0; j < kGroups; ++j) {
    float w[kSize];
    const float* weights = fitting_weights(
        x + kSize * j, importance != nullptr ? importance + kSize * j : nullptr, kSize, w);
    fit_scale_min(x + kSize * j, weights, kSize, kMaxLevel, &scales[j], &mins[j]);
    max_scale = std::max(max_scale, scales[j]);
    max_min = std::max(max_min, mins[j]);
  }
  *d_out = fp32_to_fp16(max_scale / static_cast<float>(kScaleMax));
  *dmin_out = fp32_to_fp16(max_min / static_cast<float>(kScaleMax));
  const float d = fp16_to_fp32(*d_out);
  const float dmin = fp16_to_fp32(*dmin_out);
  for (int j = 0; j < kGroups; ++j) {
    scale[j] =
        static_cast<uint8_t>(d > 0.0f ? std::clamp(nearest(scales[j] / d), 0, kScaleMax) : 0);
    min[j] =
        static_cast<uint8_t>(dmin > 0.0f ? std::clamp(nearest(mins[j] / dmin), 0, kScaleMax) : 0);
    const float sd = d * static_cast<float>(scale[j]);
    const float sm = dmin * static_cast<float>(min[j]);
    for (int l = 0; l < kSize; ++l) {
      const int v = sd > 0.0f ? std::clamp(nearest((x[kSize * j + l] + sm) / sd), 0, kMaxLevel) : 0;
      q[kSize * j + l] = static_cast<uint8_t>(v);
    }
  }
}

// Packs Q4_K's and Q5_K's eight 6-bit scales and mins as unpack_q4k_scales
// undoes.
void pack_q4k_scales(const uint8_t ls[8], const uint8_t lm[8], uint8_t packed[12]) {
  for (int j = 0; j < 4; ++j) {
    packed[j] = ls[j];
    packed[j + 4] = lm[j];
  }
  for (int j = 4; j < 8; ++j) {
    packed[j + 4] = static_cast<uint8_t>((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
    packed[j - 4] = static_cast<uint8_t>(packed[j - 4] | ((ls[j] >> 4) << 6));
    packed[j] = static_cast<uint8_t>(packed[j] | ((lm[j] >> 4) << 6));
  }
}

}  // namespace

void quantize_q4_k(const float* x, BlockQ4_K* y, int64_t n, const float* importance) {
  for (int64_t b = 0; b < n / kQKK; ++b, x += kQKK) {
    uint8_t q[kQKK], ls[8], lm[8];
    scale_min_levels<8, 15, 63>(x, importance != nullptr ? importance + b * kQKK : nullptr, &y[b].d,
                                &y[b].dmin, ls, lm, q);
    pack_q4k_scales(ls, lm, y[b].scales);
    for (int k = 0; k < 4; ++k) {
      for (int l = 0; l < 32; ++l) {
        y[b].qs[32 * k + l] = static_cast<uint8_t>(q[64 * k + l] | (q[64 * k + 32 + l] << 4));
      }
    }
  }
}

void quantize_q5_k(const float* x, BlockQ5_K* y, int64_t n, const float* importance) {
  for (int64_t b = 0; b < n / kQKK; ++b, x += kQKK) {
    uint8_t q[kQKK], ls[8], lm[8];
    scale_min_levels<8, 31, 63>(x, importance != nullptr ? importance + b * kQKK : nullptr, &y[b].d,
                                &y[b].dmin, ls, lm, q);
    pack_q4k_scales(ls, lm, y[b].scales);
    std::memset(y[b].qh, 0, sizeof y[b].qh);
    for (int k = 0; k < 4; ++k) {
      for (int l = 0; l < 32; ++l) {
        const uint8_t lo = q[64 * k + l];
        const uint8_t hi = q[64 * k + 32 + l];
        y[b].qs[32 * k + l] = static_cast<uint8_t>((lo & 0xF) | ((hi & 0xF) << 4));
        y[b].qh[l] =
            static_cast<uint8_t>(y[b].qh[l] | ((lo >> 4) << (2 * k)) | ((hi >> 4) << (2 * k + 1)));
      }
    }
  }
}

namespace {

// The shared half of Q3_K and Q6_K: fits each 16-element group's scale for
// levels -kLevelHalf..kLevelHalf-1, stores the scales as signed multiples
// (-kScaleHalf..kScaleHalf-1) of the block's d, and writes the 256 levels
// offset by kLevelHalf. Returns d as stored (fp16).
template <int kLevelHalf, int kScaleHalf>
uint16_t signed_scale16_levels(const float* x, const float* importance, int scales_out[16],
                               uint8_t q[kQKK]) {
  float scales[16];
  float max_scale = 0.0f;
  for (int g = 0; g < 16; ++g) {
    float w[16];
    const float* weights =
        fitting_weights(x + 16 * g, importance != nullptr ? importance + 16 * g : nullptr, 16, w);
    scales[g] = fit_scale_symmetric(x + 16 * g, weights, 16, kLevelHalf);
    if (std::fabs(scales[g]) > std::fabs(max_scale)) max_scale = scales[g];
  }
  // As for the values, the scale of largest magnitude goes to -kScaleHalf.
  const float iscale = max_scale != 0.0f ? -static_cast<float>(kScaleHalf) / max_scale : 0.0f;
  const uint16_t d16 = fp32_to_fp16(iscale != 0.0f ? 1.0f / iscale : 0.0f);
  const float d = fp16_to_fp32(d16);
  for (int g = 0; g < 16; ++g) {
    const int sc = std::clamp(nearest(iscale * scales[g]), -kScaleHalf, kScaleHalf - 1);
    scales_out[g] = sc;
    const float sd = d * static_cast<float>(sc);
    for (int l = 0; l < 16; ++l) {
      const int v =
          sd != 0.0f ? std::clamp(nearest(x[16 * g + l] / sd), -kLevelHalf, kLevelHalf - 1) : 0;
      q[16 * g + l] = static_cast<uint8_t>(v + kLevelHalf);
    }
  }
  return d16;
}

// Packs 2-bit levels four to a byte, as two_bit_level reads them.
void pack_two_bit_levels(const uint8_t* q, uint8_t* qs) {
  for (int h = 0; h < 2; ++h) {
    for (int l = 0; l < 32; ++l) {
      uint8_t byte = 0;
      for (int j = 0; j < 4; ++j)
        byte |= static_cast<uint8_t>((q[128 * h + 32 * j + l] & 3) << (2 * j));
      qs[32 * h + l] = byte;
    }
  }
}

}  // namespace

void quantize_q6_k(const float* x, BlockQ6_K* y, int64_t n, const float* importance) {
  for (int64_t b = 0; b < n / kQKK; ++b, x += kQKK) {
    int scales[16];
    uint8_t q[kQKK];
    y[b].d = signed_scale16_levels<32, 128>(
        x, importance != nullptr ? importance + b * kQKK : nullptr, scales, q);
    for (int g = 0; g < 16; ++g) y[b].scales[g] = static_cast<int8_t>(scales[g]);
    for (int half = 0; half < 2; ++half) {
      const uint8_t* qq = q + 128 * half;
      uint8_t* ql = y[b].ql + 64 * half;
      uint8_t* qh = y[b].qh + 32 * half;
      for (int l = 0; l < 32; ++l) {
        ql[l] = static_cast<uint8_t>((qq[l] & 0xF) | ((qq[l + 64] & 0xF) << 4));
        ql[l + 32] = static_cast<uint8_t>((qq[l + 32] & 0xF) | ((qq[l + 96] & 0xF) << 4));
        qh[l] = static_cast<uint8_t>((qq[l] >> 4) | ((qq[l + 32] >> 4) << 2) |
                                     ((qq[l + 64] >> 4) << 4) | ((qq[l + 96] >> 4) << 6));
      }
    }
  }
}

void quantize_q3_k(const float* x, BlockQ3_K* y, int64_t n, const float* importance) {
  for (int64_t b = 0; b < n / kQKK; ++b, x += kQKK) {
    int scales[16];
    uint8_t q[kQKK];
    y[b].d = signed_scale16_levels<4, 32>(
        x, importance != nullptr ? importance + b * kQKK : nullptr, scales, q);
    // The packing unpack_q3k_scales undoes, of the scales stored + 32.
    uint8_t s[16];
    for (int g = 0; g < 16; ++g) s[g] = static_cast<uint8_t>(scales[g] + 32);
    for (int i = 0; i < 4; ++i) {
      y[b].scales[i] = static_cast<uint8_t>((s[i] & 0xF) | ((s[8 + i] & 0xF) << 4));
      y[b].scales[4 + i] = static_cast<uint8_t>((s[4 + i] & 0xF) | ((s[12 + i] & 0xF) << 4));
      y[b].scales[8 + i] = static_cast<uint8_t>((s[i] >> 4) | ((s[4 + i] >> 4) << 2) |
                                                ((s[8 + i] >> 4) << 4) | ((s[12 + i] >> 4) << 6));
    }
    pack_two_bit_levels(q, y[b].qs);
    std::memset(y[b].hmask, 0, sizeof y[b].hmask);
    for (int e = 0; e < kQKK; ++e) {
      y[b].hmask[e % 32] = static_cast<uint8_t>(y[b].hmask[e % 32] | ((q[e] >> 2) << (e / 32)));
    }
  }
}

void quantize_q2_k(const float* x, BlockQ2_K* y, int64_t n, const float* importance) {
  for (int64_t b = 0; b < n / kQKK; ++b, x += kQKK) {
    uint8_t q[kQKK], ls[16], lm[16];
    scale_min_levels<16, 3, 15>(x, importance != nullptr ? importance + b * kQKK : nullptr, &y[b].d,
                                &y[b].dmin, ls, lm, q);
    for (int g = 0; g < 16; ++g) y[b].scales[g] = static_cast<uint8_t>(ls[g] | (lm[g] << 4));
    pack_two_bit_levels(q, y[b].qs);
  }
}

namespace {

// Packs 32 five-bit levels into a Q5 block's nibbles and high bits.
template <typename Block>
void pack_q5(const int* level, Block& y) {
  uint32_t qh = 0;
  for (int j = 0; j < kQK / 2; ++j) {
    y.qs[j] = static_cast<uint8_t>((level[j] & 0xF) | ((level[j + kQK / 2] & 0xF) << 4));
  }
  for (int j = 0; j < kQK; ++j) qh |= static_cast<uint32_t>(level[j] >> 4) << j;
  std::memcpy(y.qh, &qh, sizeof qh);
}

}  // namespace

void quantize_q5_0(const float* x, BlockQ5_0* y, int64_t n) {
  for (int64_t b = 0; b < n / kQK; ++b, x += kQK) {
    int level[kQK];
    y[b].d = fp32_to_fp16(symmetric_levels<32>(x, level));
    pack_q5(level, y[b]);
  }
}

void quantize_q5_1(const float* x, BlockQ5_1* y, int64_t n) {
  // The block's range [min, max] in 31 equal steps.
  for (int64_t b = 0; b < n / kQK; ++b, x += kQK) {
    const auto [lo, hi] = std::minmax_element(x, x + kQK);
    const float d = (*hi - *lo) / 31.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = fp32_to_fp16(d);
    y[b].m = fp32_to_fp16(*lo);
    int level[kQK];
    for (int j = 0; j < kQK; ++j) {
      level[j] = std::clamp(static_cast<int>((x[j] - *lo) * id + 0.5f), 0, 31);
    }
    pack_q5(level, y[b]);
  }
}

void dequantize_q5_0(const BlockQ5_0* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQK; ++b, y += kQK) {
    const float d = fp16_to_fp32(x[b].d);
    for (int j = 0; j < kQK; ++j) y[j] = static_cast<float>(q5_level(x[b], j) - 16) * d;
  }
}

void dequantize_q5_1(const BlockQ5_1* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQK; ++b, y += kQK) {
    const float d = fp16_to_fp32(x[b].d);
    const float m = fp16_to_fp32(x[b].m);
    for (int j = 0; j < kQK; ++j) y[j] = static_cast<float>(q5_level(x[b], j)) * d + m;
  }
}

void dequantize_q4_0(const BlockQ4_0* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQK; ++b, y += kQK) {
    const float d = fp16_to_fp32(x[b].d);
    for (int j = 0; j < kQK / 2; ++j) {
      y[j] = static_cast<float>((x[b].qs[j] & 0xF) - 8) * d;
      y[j + kQK / 2] = static_cast<float>((x[b].qs[j] >> 4) - 8) * d;
    }
  }
}

void dequantize_iq4_nl(const BlockIQ4_NL* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQK; ++b, y += kQK) {
    const float d = fp16_to_fp32(x[b].d);
    for (int j = 0; j < kQK / 2; ++j) {
      y[j] = static_cast<float>(kIq4nlValues[x[b].qs[j] & 0xF]) * d;
      y[j + kQK / 2] = static_cast<float>(kIq4nlValues[x[b].qs[j] >> 4]) * d;
    }
  }
}

void dequantize_iq4_xs(const BlockIQ4_XS* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQKK; ++b, y += kQKK) {
    const float d = fp16_to_fp32(x[b].d);
    for (int e = 0; e < kQKK; ++e) {
      const float sd = d * static_cast<float>(iq4xs_scale(x[b], e / kQK));
      y[e] = sd * static_cast<float>(iq4xs_value(x[b], e));
    }
  }
}

void dequantize_q8_0(const BlockQ8_0* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQK; ++b, y += kQK) {
    const float d = fp16_to_fp32(x[b].d);
    for (int j = 0; j < kQK; ++j) y[j] = static_cast<float>(x[b].qs[j]) * d;
  }
}

namespace {

template <typename Block>
void dequantize_scale_min_k(const Block* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQKK; ++b, y += kQKK) {
    const float d = fp16_to_fp32(x[b].d);
    const float dmin = fp16_to_fp32(x[b].dmin);
    uint8_t sm[16];
    unpack_q4k_scales(x[b].scales, sm);
    for (int e = 0; e < kQKK; ++e) {
      const int j = e / 32;
      y[e] = d * sm[j] * static_cast<float>(scale_min_level(x[b], e)) - dmin * sm[8 + j];
    }
  }
}

}  // namespace

void dequantize_q4_k(const BlockQ4_K* x, float* y, int64_t n) {
  dequantize_scale_min_k(x, y, n);
}

void dequantize_q5_k(const BlockQ5_K* x, float* y, int64_t n) {
  dequantize_scale_min_k(x, y, n);
}

namespace {

// Q2_K, Q3_K and Q6_K: d * scale * (level - offset), less Q2_K's minimum.
template <typename Block>
void dequantize_scale16_k(const Block* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQKK; ++b, y += kQKK) {
    int scale[16];
    int min[16];
    scale16_scales(x[b], scale, min);
    float dmin = 0.0f;
    if constexpr (std::is_same_v<Block, BlockQ2_K>) dmin = fp16_to_fp32(x[b].dmin);
    const float d = fp16_to_fp32(x[b].d);
    for (int e = 0; e < kQKK; ++e) {
      const int level = scale16_level(x[b], e) - scale16_offset(x[b]);
      y[e] = d * static_cast<float>(scale[e / 16]) * static_cast<float>(level) -
             dmin * static_cast<float>(min[e / 16]);
    }
  }
}

}  // namespace

void dequantize_q2_k(const BlockQ2_K* x, float* y, int64_t n) {
  dequantize_scale16_k(x, y, n);
}

void dequantize_q3_k(const BlockQ3_K* x, float* y, int64_t n) {
  dequantize_scale16_k(x, y, n);
}

void dequantize_q6_k(const BlockQ6_K* x, float* y, int64_t n) {
  dequantize_scale16_k(x, y, n);
}

void quantize_act_q8_scalar(const float* x, ActQ8* y, int64_t n) {
  for (int64_t b = 0; b < n / kQK; ++b, x += kQK) {
    float amax = 0.0f;
    for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    int sum = 0;
    for (int j = 0; j < kQK; ++j) {
      const int q = nearest(x[j] * id);
      y[b].qs[j] = static_cast<int8_t>(q);
      sum += q;
    }
    y[b].d = d;
    y[b].s = d * static_cast<float>(sum);
  }
}

void quantize_act_q8k_scalar(const float* x, ActQ8K* y, int64_t n) {
  for (int64_t b = 0; b < n / kQKK; ++b, x += kQKK) {
    float amax = 0.0f;
    for (int j = 0; j < kQKK; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int g = 0; g < 16; ++g) {
      int sum = 0;
      for (int j = 16 * g; j < 16 * g + 16; ++j) {
        const int q = nearest(x[j] * id);
        y[b].qs[j] = static_cast<int8_t>(q);
        sum += q;
      }
      y[b].bsums[g] = static_cast<int16_t>(sum);
    }
    y[b].d = d;
  }
}

}  // namespace foreshore::engine::detail

namespace foreshore::engine::detail {

void interleave_q4_0x16(const uint8_t* src, size_t row_bytes, int64_t rows, int64_t cols,
                        BlockQ4_0x16* dst) {
  // Bytes 0-3 and 4-7 of qs hold elements 0-3 and 4-7 in their low nibbles
  // and 16-23 in their high ones; bytes 8-15 the same for 8-15 and 24-31. So
  // four bytes at a time: step pair c = 0, 1 from the low nibbles, 2, 3
  // from the high ones.
  constexpr uint32_t kLow = 0x0F0F0F0F, kHigh = 0xF0F0F0F0;
  const int64_t blocks = cols / kQK;
  for (int64_t s = 0; s < rows / kInterleavedRows; ++s) {
    for (int64_t r = 0; r < kInterleavedRows; ++r) {
      const auto* row =
          reinterpret_cast<const BlockQ4_0*>(src + (s * kInterleavedRows + r) * row_bytes);
      for (int64_t i = 0; i < blocks; ++i) {
        BlockQ4_0x16& out = dst[s * blocks + i];
        out.d[r] = row[i].d;
        uint32_t q[4];
        std::memcpy(q, row[i].qs, sizeof q);
        const uint32_t packed[4] = {
            (q[0] & kLow) | (q[1] & kLow) << 4,
            (q[2] & kLow) | (q[3] & kLow) << 4,
            (q[0] >> 4 & kLow) | (q[1] & kHigh),
            (q[2] >> 4 & kLow) | (q[3] & kHigh),
        };
        for (int c = 0; c < kQK / 8; ++c) std::memcpy(out.qs[c][r], &packed[c], 4);
      }
    }
  }
}

}  // namespace foreshore::engine::detail
