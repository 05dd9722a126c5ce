// Scalar row kernels. They define the arithmetic the vector kernels must
// reproduce: the same exact integer sums per block, combined in float in a
// different order, so the two agree to float rounding.
#include <type_traits>

#include "engine/kernels.h"
#include "engine/kernels_internal.h"

namespace foreshore::engine::detail {
namespace {

inline void store(const RowArgs& a, int64_t b, int64_t r, float v) {
  a.y[b * a.y_stride + r] = v;
}

template <typename Convert>
void rows_float(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb, size_t elem_bytes,
                Convert convert) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* w = a.w + static_cast<size_t>(r) * a.w_row_bytes;
    for (int64_t b = b0; b < b0 + nb; ++b) {
      const float* x = act_row<float>(a, b);
      float acc = 0.0f;
      for (int64_t c = 0; c < a.cols; ++c) acc += convert(w + c * elem_bytes) * x[c];
      store(a, b, r, acc);
    }
  }
}

// Rows of 32-element blocks of integer levels, level(block, j), times the
// block's fp16 scale, plus offset(block) times each activation block's sum
// (its s), scaled by `offset_factor` once per row: Q4_0's and Q5_0's zero
// points (-8, -16 times the scale) and Q5_1's block minimum. Signed levels
// (Q8_0, IQ4_NL) have no offset.
template <typename Block, typename Level, typename Offset>
void rows_level_blocks(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb, Level level,
                       Offset offset, float offset_factor) {
  const int64_t blocks = a.cols / kQK;
  for (int64_t r = r0; r < r1; ++r) {
    const Block* w = weight_row<Block>(a, r);
    for (int64_t b = b0; b < b0 + nb; ++b) {
      const ActQ8* x = act_row<ActQ8>(a, b);
      float acc = 0.0f;
      float offsets = 0.0f;
      for (int64_t i = 0; i < blocks; ++i) {
        int sum = 0;
        for (int j = 0; j < kQK; ++j) sum += level(w[i], j) * x[i].qs[j];
        acc += fp16_to_fp32(w[i].d) * x[i].d * static_cast<float>(sum);
        offsets += offset(w[i]) * x[i].s;
      }
      store(a, b, r, acc + offset_factor * offsets);
    }
  }
}

template <typename Block, typename Level>
void rows_signed_blocks(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb, Level level) {
  rows_level_blocks<Block>(
      a, r0, r1, b0, nb, level, [](const Block&) { return 0.0f; }, 0.0f);
}

}  // namespace

void rows_f32_scalar(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  rows_float(a, r0, r1, b0, nb, 4,
             [](const uint8_t* p) { return *reinterpret_cast<const float*>(p); });
}

void rows_f16_scalar(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  rows_float(a, r0, r1, b0, nb, 2,
             [](const uint8_t* p) { return fp16_to_fp32(*reinterpret_cast<const uint16_t*>(p)); });
}

void rows_bf16_scalar(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  rows_float(a, r0, r1, b0, nb, 2,
             [](const uint8_t* p) { return bf16_to_fp32(*reinterpret_cast<const uint16_t*>(p)); });
}

void rows_q4_0_scalar(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  rows_level_blocks<BlockQ4_0>(
      a, r0, r1, b0, nb,
      [](const BlockQ4_0& w, int j) {
        return j < kQK / 2 ? w.qs[j] & 0xF : w.qs[j - kQK / 2] >> 4;
      },
      [](const BlockQ4_0& w) { return fp16_to_fp32(w.d); }, -8.0f);
}

void rows_iq4_nl_scalar(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  rows_signed_blocks<BlockIQ4_NL>(a, r0, r1, b0, nb, [](const BlockIQ4_NL& w, int j) {
    return int{kIq4nlValues[j < kQK / 2 ? w.qs[j] & 0xF : w.qs[j - kQK / 2] >> 4]};
  });
}

void rows_q8_0_scalar(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  rows_signed_blocks<BlockQ8_0>(a, r0, r1, b0, nb,
                                [](const BlockQ8_0& w, int j) { return int{w.qs[j]}; });
}

void rows_q5_0_scalar(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  rows_level_blocks<BlockQ5_0>(
      a, r0, r1, b0, nb, [](const BlockQ5_0& w, int j) { return q5_level(w, j); },
      [](const BlockQ5_0& w) { return fp16_to_fp32(w.d); }, -16.0f);
}

void rows_q5_1_scalar(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  rows_level_blocks<BlockQ5_1>(
      a, r0, r1, b0, nb, [](const BlockQ5_1& w, int j) { return q5_level(w, j); },
      [](const BlockQ5_1& w) { return fp16_to_fp32(w.m); }, 1.0f);
}

namespace {

// The row loop of the 256-element types: block_dot(w, x) is one super
// block's contribution to a row's dot product.
template <typename Block, typename BlockDot>
void rows_super_blocks(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb,
                       BlockDot block_dot) {
  const int64_t blocks = a.cols / kQKK;
  for (int64_t r = r0; r < r1; ++r) {
    const Block* w = weight_row<Block>(a, r);
    for (int64_t b = b0; b < b0 + nb; ++b) {
      const ActQ8K* x = act_row<ActQ8K>(a, b);
      float acc = 0.0f;
      for (int64_t i = 0; i < blocks; ++i) acc += block_dot(w[i], x[i]);
      store(a, b, r, acc);
    }
  }
}

// Q4_K and Q5_K: unsigned levels times 6-bit sub-block scales, the mins
// taken out once per sub-block through the activation sums.
template <typename Block>
float scale_min_k_dot(const Block& w, const ActQ8K& x) {
  uint8_t sm[16];
  unpack_q4k_scales(w.scales, sm);
  int sum = 0;
  int sum_mins = 0;
  for (int j = 0; j < 8; ++j) {
    int s = 0;
    for (int l = 0; l < 32; ++l) s += scale_min_level(w, 32 * j + l) * x.qs[32 * j + l];
    sum += sm[j] * s;
    sum_mins += sm[8 + j] * (x.bsums[2 * j] + x.bsums[2 * j + 1]);
  }
  return fp16_to_fp32(w.d) * x.d * static_cast<float>(sum) -
         fp16_to_fp32(w.dmin) * x.d * static_cast<float>(sum_mins);
}

// Q2_K, Q3_K and Q6_K: unsigned levels times per-16 scales; the level offset
// (Q3_K's 4, Q6_K's 32) and Q2_K's minimums are taken out once per group
// through the activation sums, so the whole block stays an exact integer.
template <typename Block>
float scale16_k_dot(const Block& w, const ActQ8K& x) {
  int scale[16];
  int min[16];
  scale16_scales(w, scale, min);
  int sum = 0;
  int sum_mins = 0;
  for (int g = 0; g < 16; ++g) {
    int s = 0;
    for (int l = 0; l < 16; ++l) s += scale16_level(w, 16 * g + l) * x.qs[16 * g + l];
    sum += scale[g] * (s - scale16_offset(w) * x.bsums[g]);
    sum_mins += min[g] * x.bsums[g];
  }
  float dot = fp16_to_fp32(w.d) * x.d * static_cast<float>(sum);
  if constexpr (std::is_same_v<Block, BlockQ2_K>) {
    dot -= fp16_to_fp32(w.dmin) * x.d * static_cast<float>(sum_mins);
  }
  return dot;
}

// IQ4_XS: grid values times 6-bit signed sub-block scales.
float iq4_xs_dot(const BlockIQ4_XS& w, const ActQ8K& x) {
  int sum = 0;
  for (int ib = 0; ib < 8; ++ib) {
    int s = 0;
    for (int l = 0; l < kQK; ++l) s += iq4xs_value(w, kQK * ib + l) * x.qs[kQK * ib + l];
    sum += iq4xs_scale(w, ib) * s;
  }
  return fp16_to_fp32(w.d) * x.d * static_cast<float>(sum);
}

}  // namespace

void rows_iq4_xs_scalar(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  rows_super_blocks<BlockIQ4_XS>(a, r0, r1, b0, nb, iq4_xs_dot);
}

void rows_q4_k_scalar(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  rows_super_blocks<BlockQ4_K>(a, r0, r1, b0, nb, scale_min_k_dot<BlockQ4_K>);
}

void rows_q5_k_scalar(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  rows_super_blocks<BlockQ5_K>(a, r0, r1, b0, nb, scale_min_k_dot<BlockQ5_K>);
}

void rows_q2_k_scalar(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  rows_super_blocks<BlockQ2_K>(a, r0, r1, b0, nb, scale16_k_dot<BlockQ2_K>);
}

void rows_q3_k_scalar(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  rows_super_blocks<BlockQ3_K>(a, r0, r1, b0, nb, scale16_k_dot<BlockQ3_K>);
}

void rows_q6_k_scalar(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  rows_super_blocks<BlockQ6_K>(a, r0, r1, b0, nb, scale16_k_dot<BlockQ6_K>);
}

const KernelSet& scalar_kernels() {
  static const KernelSet set{
      .level = CpuLevel::kScalar,
      .types = {{TensorType::kF32, rows_f32_scalar},
                {TensorType::kF16, rows_f16_scalar},
                {TensorType::kBF16, rows_bf16_scalar},
                {TensorType::kQ4_0, rows_q4_0_scalar},
                {TensorType::kQ8_0, rows_q8_0_scalar},
                {TensorType::kQ5_0, rows_q5_0_scalar},
                {TensorType::kQ5_1, rows_q5_1_scalar},
                {TensorType::kIQ4_NL, rows_iq4_nl_scalar},
                {TensorType::kIQ4_XS, rows_iq4_xs_scalar},
                {TensorType::kQ2_K, rows_q2_k_scalar},
                {TensorType::kQ3_K, rows_q3_k_scalar},
                {TensorType::kQ4_K, rows_q4_k_scalar},
                {TensorType::kQ5_K, rows_q5_k_scalar},
                {TensorType::kQ6_K, rows_q6_k_scalar}},
      .quantize_act_q8 = quantize_act_q8_scalar,
      .quantize_act_q8k = quantize_act_q8k_scalar,
      .ops = scalar_vector_ops(),
  };
  return set;
}

}  // namespace foreshore::engine::detail
