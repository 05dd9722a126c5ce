#include "engine/kernels.h"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstring>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/kernels_internal.h"

namespace foreshore::engine {

using detail::ActQ8;
using detail::ActQ8K;
using detail::RowArgs;
using detail::RowKernel;

// The scalar conversions round exactly as F16C does (nearest-even, denormals
// kept, NaNs quieted with their top payload bits), so vector and scalar paths
// give the same bits.
float fp16_to_fp32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1F;
  const uint32_t mant = h & 0x3FF;
  if (exp == 0) {
    // Zero or denormal: mant * 2^-24 is exact in float.
    const float v = static_cast<float>(mant) * 0x1p-24f;
    return sign != 0 ? -v : v;
  }
  uint32_t bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000 | (mant << 13) | (mant != 0 ? 0x00400000 : 0);
  } else {
    bits = sign | ((exp + (127 - 15)) << 23) | (mant << 13);
  }
  return std::bit_cast<float>(bits);
}

uint16_t fp32_to_fp16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint32_t sign = (x >> 16) & 0x8000;
  const uint32_t ax = x & 0x7FFFFFFF;
  if (ax > 0x7F800000) return static_cast<uint16_t>(sign | 0x7E00 | ((ax >> 13) & 0x3FF));
  // 65520 and above round to infinity.
  if (ax >= 0x477FF000) return static_cast<uint16_t>(sign | 0x7C00);
  if (ax < 0x38800000) {
    // Below the smallest normal half: adding 0.5f lines the half's denormal
    // unit (2^-24) up with float's last mantissa bit, so the FPU rounds.
    const float shifted = std::bit_cast<float>(ax) + 0.5f;
    return static_cast<uint16_t>(sign | (std::bit_cast<uint32_t>(shifted) - 0x3F000000));
  }
  // Rebias the exponent and round to nearest-even on the 13 dropped bits; a
  // mantissa carry correctly bumps the exponent.
  const uint32_t odd = (ax >> 13) & 1;
  const uint32_t rounded = ax - ((127 - 15) << 23) + 0xFFF + odd;
  return static_cast<uint16_t>(sign | (rounded >> 13));
}

float bf16_to_fp32(uint16_t h) {
  return std::bit_cast<float>(static_cast<uint32_t>(h) << 16);
}

uint16_t fp32_to_bf16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7FFFFFFF) > 0x7F800000) return static_cast<uint16_t>((x >> 16) | 0x40);
  return static_cast<uint16_t>((x + 0x7FFF + ((x >> 16) & 1)) >> 16);
}

namespace {

enum class ActKind { kFloat, kQ8, kQ8K };

// What a weight type's matmul needs besides its kernels, which depend on
// the level (detail::KernelSet).
struct TypeOps {
  TensorType type;
  int64_t block_size;
  ActKind act;
  RowKernel reference;
};

constexpr TypeOps kOps[] = {
    {TensorType::kF32, 1, ActKind::kFloat, detail::rows_f32_scalar},
    {TensorType::kF16, 1, ActKind::kFloat, detail::rows_f16_scalar},
    {TensorType::kBF16, 1, ActKind::kFloat, detail::rows_bf16_scalar},
    {TensorType::kQ4_0, detail::kQK, ActKind::kQ8, detail::rows_q4_0_scalar},
    {TensorType::kQ8_0, detail::kQK, ActKind::kQ8, detail::rows_q8_0_scalar},
    {TensorType::kQ5_0, detail::kQK, ActKind::kQ8, detail::rows_q5_0_scalar},
    {TensorType::kQ5_1, detail::kQK, ActKind::kQ8, detail::rows_q5_1_scalar},
    {TensorType::kIQ4_NL, detail::kQK, ActKind::kQ8, detail::rows_iq4_nl_scalar},
    {TensorType::kIQ4_XS, detail::kQKK, ActKind::kQ8K, detail::rows_iq4_xs_scalar},
    {TensorType::kQ2_K, detail::kQKK, ActKind::kQ8K, detail::rows_q2_k_scalar},
    {TensorType::kQ3_K, detail::kQKK, ActKind::kQ8K, detail::rows_q3_k_scalar},
    {TensorType::kQ4_K, detail::kQKK, ActKind::kQ8K, detail::rows_q4_k_scalar},
    {TensorType::kQ5_K, detail::kQKK, ActKind::kQ8K, detail::rows_q5_k_scalar},
    {TensorType::kQ6_K, detail::kQKK, ActKind::kQ8K, detail::rows_q6_k_scalar},
};
static_assert(std::size(kOps) == detail::kKernelTypes);

const TypeOps* find_ops(TensorType type) {
  for (const auto& ops : kOps) {
    if (ops.type == type) return &ops;
  }
  return nullptr;
}

const TypeOps& ops_for_matmul(const WeightMatrix& w) {
  const TypeOps* ops = find_ops(w.type);
  if (ops == nullptr || w.cols % ops->block_size != 0) {
    throw std::invalid_argument("matmul: no kernel for a " +
                                tensor_type_name(static_cast<uint32_t>(w.type)) + " matrix with " +
                                std::to_string(w.cols) + " columns");
  }
  return *ops;
}

size_t act_row_bytes(ActKind kind, int64_t cols) {
  switch (kind) {
    case ActKind::kQ8:
      return static_cast<size_t>(cols / detail::kQK) * sizeof(ActQ8);
    case ActKind::kQ8K:
      return static_cast<size_t>(cols / detail::kQKK) * sizeof(ActQ8K);
    case ActKind::kFloat:
      break;
  }
  return static_cast<size_t>(cols) * sizeof(float);
}

// Quantizes with `set`'s quantizers, or the scalar ones without a set.
void quantize_activation(ActKind kind, const float* x, uint8_t* out, int64_t cols,
                         const detail::KernelSet* set) {
  if (kind == ActKind::kQ8) {
    auto* y = reinterpret_cast<ActQ8*>(out);
    if (set != nullptr) return set->quantize_act_q8(x, y, cols);
    detail::quantize_act_q8_scalar(x, y, cols);
  } else {
    auto* y = reinterpret_cast<ActQ8K*>(out);
    if (set != nullptr) return set->quantize_act_q8k(x, y, cols);
    detail::quantize_act_q8k_scalar(x, y, cols);
  }
}

RowArgs make_args(const WeightMatrix& w, const TypeOps& ops, const uint8_t* act, float* y) {
  RowArgs args;
  args.w = static_cast<const uint8_t*>(w.data);
  args.w_row_bytes = w.row_bytes;
  args.cols = w.cols;
  args.act = act;
  args.act_row_bytes = act_row_bytes(ops.act, w.cols);
  args.y = y;
  args.y_stride = w.rows;
  return args;
}

// Rows per unit of work, taken dynamically by the threads. Units of at most
// 64 KiB of weights (a few microseconds) leave little idle time at the end of
// a matvec and let a thread that got its core late take fewer; small
// matrices are still cut into several units per thread. Multiples of 16 rows
// keep each unit's outputs on cache lines of their own. With a batch, a
// unit's weights are re-read once per activation tile and stay in L2.
int64_t rows_per_chunk(const WeightMatrix& w, int threads) {
  constexpr int64_t kAlign = 16;
  // Chunks start and end on the repacked layout's sixteen-row boundaries.
  static_assert(kAlign % detail::kInterleavedRows == 0);
  constexpr size_t kChunkBytes = 64 * 1024;
  const int64_t by_count = (w.rows + 8 * threads - 1) / (8 * threads);
  const int64_t by_bytes = static_cast<int64_t>(kChunkBytes / std::max<size_t>(w.row_bytes, 1));
  const int64_t rows = std::min(by_count, by_bytes);
  return std::max(kAlign, (rows + kAlign - 1) / kAlign * kAlign);
}

}  // namespace

bool quantize_row(TensorType type, const float* src, void* dst, int64_t n) {
  const TypeOps* ops = find_ops(type);
  if (ops == nullptr || n % ops->block_size != 0) return false;
  switch (type) {
    case TensorType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      return true;
    case TensorType::kF16: {
      detail::active_kernels().ops.fp32_to_fp16(src, static_cast<uint16_t*>(dst), n);
      return true;
    }
    case TensorType::kBF16: {
      auto* out = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) out[i] = fp32_to_bf16(src[i]);
      return true;
    }
    case TensorType::kQ4_0:
      detail::quantize_q4_0(src, static_cast<detail::BlockQ4_0*>(dst), n);
      return true;
    case TensorType::kQ8_0:
      detail::quantize_q8_0(src, static_cast<detail::BlockQ8_0*>(dst), n);
      return true;
    case TensorType::kIQ4_NL:
      detail::quantize_iq4_nl(src, static_cast<detail::BlockIQ4_NL*>(dst), n);
      return true;
    case TensorType::kQ5_0:
      detail::quantize_q5_0(src, static_cast<detail::BlockQ5_0*>(dst), n);
      return true;
    case TensorType::kQ5_1:
      detail::quantize_q5_1(src, static_cast<detail::BlockQ5_1*>(dst), n);
      return true;
    case TensorType::kQ4_K:
      detail::quantize_q4_k(src, static_cast<detail::BlockQ4_K*>(dst), n);
      return true;
    case TensorType::kIQ4_XS:
      detail::quantize_iq4_xs(src, static_cast<detail::BlockIQ4_XS*>(dst), n);
      return true;
    case TensorType::kQ2_K:
      detail::quantize_q2_k(src, static_cast<detail::BlockQ2_K*>(dst), n);
      return true;
    case TensorType::kQ3_K:
      detail::quantize_q3_k(src, static_cast<detail::BlockQ3_K*>(dst), n);
      return true;
    case TensorType::kQ5_K:
      detail::quantize_q5_k(src, static_cast<detail::BlockQ5_K*>(dst), n);
      return true;
    case TensorType::kQ6_K:
      detail::quantize_q6_k(src, static_cast<detail::BlockQ6_K*>(dst), n);
      return true;
    default:
      return false;
  }
}

bool quantize_row_weighted(TensorType type, const float* src, void* dst, int64_t n,
                           const float* importance) {
  switch (type) {
    case TensorType::kQ4_0:
      if (n % detail::kQK != 0) return false;
      detail::quantize_q4_0_weighted(src, importance, static_cast<detail::BlockQ4_0*>(dst), n);
      return true;
    case TensorType::kIQ4_NL:
      if (n % detail::kQK != 0) return false;
      detail::quantize_iq4_nl(src, static_cast<detail::BlockIQ4_NL*>(dst), n, importance);
      return true;
    case TensorType::kQ4_K:
      if (n % detail::kQKK != 0) return false;
      detail::quantize_q4_k(src, static_cast<detail::BlockQ4_K*>(dst), n, importance);
      return true;
    case TensorType::kIQ4_XS:
      if (n % detail::kQKK != 0) return false;
      detail::quantize_iq4_xs(src, static_cast<detail::BlockIQ4_XS*>(dst), n, importance);
      return true;
    case TensorType::kQ2_K:
      if (n % detail::kQKK != 0) return false;
      detail::quantize_q2_k(src, static_cast<detail::BlockQ2_K*>(dst), n, importance);
      return true;
    case TensorType::kQ3_K:
      if (n % detail::kQKK != 0) return false;
      detail::quantize_q3_k(src, static_cast<detail::BlockQ3_K*>(dst), n, importance);
      return true;
    case TensorType::kQ5_K:
      if (n % detail::kQKK != 0) return false;
      detail::quantize_q5_k(src, static_cast<detail::BlockQ5_K*>(dst), n, importance);
      return true;
    case TensorType::kQ6_K:
      if (n % detail::kQKK != 0) return false;
      detail::quantize_q6_k(src, static_cast<detail::BlockQ6_K*>(dst), n, importance);
      return true;
    default:
      return quantize_row(type, src, dst, n);
  }
}

bool dequantize_row(TensorType type, const void* src, float* dst, int64_t n) {
  const TypeOps* ops = find_ops(type);
  if (ops == nullptr || n % ops->block_size != 0) return false;
  switch (type) {
    case TensorType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      return true;
    case TensorType::kF16: {
      detail::active_kernels().ops.fp16_to_fp32(static_cast<const uint16_t*>(src), dst, n);
      return true;
    }
    case TensorType::kBF16: {
      const auto* in = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_fp32(in[i]);
      return true;
    }
    case TensorType::kQ4_0:
      detail::dequantize_q4_0(static_cast<const detail::BlockQ4_0*>(src), dst, n);
      return true;
    case TensorType::kQ8_0:
      detail::dequantize_q8_0(static_cast<const detail::BlockQ8_0*>(src), dst, n);
      return true;
    case TensorType::kIQ4_NL:
      detail::dequantize_iq4_nl(static_cast<const detail::BlockIQ4_NL*>(src), dst, n);
      return true;
    case TensorType::kQ5_0:
      detail::dequantize_q5_0(static_cast<const detail::BlockQ5_0*>(src), dst, n);
      return true;
    case TensorType::kQ5_1:
      detail::dequantize_q5_1(static_cast<const detail::BlockQ5_1*>(src), dst, n);
      return true;
    case TensorType::kQ4_K:
      detail::dequantize_q4_k(static_cast<const detail::BlockQ4_K*>(src), dst, n);
      return true;
    case TensorType::kIQ4_XS:
      detail::dequantize_iq4_xs(static_cast<const detail::BlockIQ4_XS*>(src), dst, n);
      return true;
    case TensorType::kQ2_K:
      detail::dequantize_q2_k(static_cast<const detail::BlockQ2_K*>(src), dst, n);
      return true;
    case TensorType::kQ3_K:
      detail::dequantize_q3_k(static_cast<const detail::BlockQ3_K*>(src), dst, n);
      return true;
    case TensorType::kQ5_K:
      detail::dequantize_q5_k(static_cast<const detail::BlockQ5_K*>(src), dst, n);
      return true;
    case TensorType::kQ6_K:
      detail::dequantize_q6_k(static_cast<const detail::BlockQ6_K*>(src), dst, n);
      return true;
    default:
      return false;
  }
}

size_t activation_scratch_bytes(TensorType weight_type, int64_t cols, int64_t batch) {
  const TypeOps* ops = find_ops(weight_type);
  if (ops == nullptr || ops->act == ActKind::kFloat) return 0;
  return act_row_bytes(ops->act, cols) * static_cast<size_t>(batch);
}

void matmul(const WeightMatrix& w, const float* x, int64_t batch, float* y,
            std::span<uint8_t> scratch, ThreadPool& pool) {
  const TypeOps& ops = ops_for_matmul(w);
  if (batch <= 0 || w.rows <= 0) return;
  // Read once, so a level change during the call cannot mix two sets.
  const detail::KernelSet& set = detail::active_kernels();
  const detail::TypeKernels& kernels = *set.find(w.type);
  const uint8_t* act = reinterpret_cast<const uint8_t*>(x);
  // Groups of rows take the place of their rows in scratch; the rest follow
  // in the plain layout.
  const int64_t groups = kernels.group != nullptr ? batch / detail::kGroupRows : 0;
  const int64_t grouped_rows = groups * detail::kGroupRows;
  if (ops.act != ActKind::kFloat) {
    const size_t row_bytes = act_row_bytes(ops.act, w.cols);
    if (scratch.size() < row_bytes * static_cast<size_t>(batch)) {
      throw std::invalid_argument("matmul: activation scratch too small");
    }
    // Unit u < groups is a group, later ones single rows.
    auto quantize_units = [&](int64_t begin, int64_t end) {
      for (int64_t u = begin; u < end; ++u) {
        const int64_t b = u < groups ? u * detail::kGroupRows : grouped_rows + (u - groups);
        uint8_t* out = scratch.data() + b * row_bytes;
        if (u < groups && ops.act == ActKind::kQ8K) {
          set.quantize_act_q8kx8(x + b * w.cols, w.cols, reinterpret_cast<detail::ActQ8Kx8*>(out),
                                 w.cols);
          continue;
        }
        if (u < groups) {
          set.quantize_act_q8x8(x + b * w.cols, w.cols, reinterpret_cast<detail::ActQ8x8*>(out),
                                w.cols);
          continue;
        }
        quantize_activation(ops.act, x + b * w.cols, out, w.cols, &set);
      }
    };
    const int64_t units = groups + (batch - grouped_rows);
    // A single row costs about as much as waking the pool.
    if (units > 1) {
      pool.parallel_for(units, quantize_units);
    } else {
      quantize_units(0, units);
    }
    act = scratch.data();
  }
  const RowArgs args = make_args(w, ops, act, y);
  // The repacked rows, where the level has kernels for them.
  const bool interleaved = w.interleaved != nullptr && kernels.interleaved_group != nullptr;
  RowArgs interleaved_args = args;
  if (interleaved) interleaved_args.w = static_cast<const uint8_t*>(w.interleaved);
  const int64_t chunk = rows_per_chunk(w, pool.size());
  const int64_t chunks = (w.rows + chunk - 1) / chunk;
  auto run_chunk = [&](int64_t c) {
    const int64_t r0 = c * chunk;
    const int64_t r1 = std::min(w.rows, r0 + chunk);
    // The kernels prefetch a fixed distance ahead of their reads; a chunk that
    // starts a new stream (a range's first, or one taken from another range)
    // requests its first lines here instead of waiting on them.
    const uint8_t* first = args.w + static_cast<size_t>(r0) * w.row_bytes;
    const size_t lead =
        std::min(detail::kPrefetchDistance, static_cast<size_t>(r1 - r0) * w.row_bytes);
    for (size_t off = 0; off < lead; off += 64) __builtin_prefetch(first + off, 0, 2);
    int64_t g0 = 0;
    if (interleaved) {
      for (; g0 < grouped_rows; g0 += detail::kGroupRows) {
        kernels.interleaved_group(interleaved_args, r0, r1, g0);
      }
    }
    if (kernels.group_pair != nullptr) {
      for (; g0 + 2 * detail::kGroupRows <= grouped_rows; g0 += 2 * detail::kGroupRows) {
        kernels.group_pair(args, r0, r1, g0);
      }
    }
    for (; g0 < grouped_rows; g0 += detail::kGroupRows) kernels.group(args, r0, r1, g0);
    for (int64_t b0 = grouped_rows; b0 < batch; b0 += kernels.max_tile) {
      const int nb = static_cast<int>(std::min<int64_t>(kernels.max_tile, batch - b0));
      if (interleaved) {
        kernels.interleaved_rows(interleaved_args, r0, r1, b0, nb);
      } else {
        kernels.rows(args, r0, r1, b0, nb);
      }
    }
  };
  if (chunks == 1 || pool.size() == 1) {
    for (int64_t c = 0; c < chunks; ++c) run_chunk(c);
    return;
  }
  // Each slot owns a contiguous range of chunks, so each core streams one
  // long run of weights (interleaving chunks across cores cost bandwidth);
  // a slot that finishes early then takes chunks from the others' ranges.
  struct alignas(64) Range {
    std::atomic<int64_t> next;
    int64_t end;
  };
  constexpr int kMaxRanges = 64;
  Range ranges[kMaxRanges];
  const int range_count = std::min(pool.size(), kMaxRanges);
  for (int i = 0; i < range_count; ++i) {
    ranges[i].next.store(chunks * i / range_count, std::memory_order_relaxed);
    ranges[i].end = chunks * (i + 1) / range_count;
  }
  pool.run_on_all([&](int slot, int) {
    for (int k = 0; k < range_count; ++k) {
      Range& range = ranges[(slot + k) % range_count];
      for (int64_t c = range.next.fetch_add(1, std::memory_order_relaxed); c < range.end;
           c = range.next.fetch_add(1, std::memory_order_relaxed)) {
        run_chunk(c);
      }
    }
  });
}

void matmul_reference(const WeightMatrix& w, const float* x, int64_t batch, float* y) {
  const TypeOps& ops = ops_for_matmul(w);
  const uint8_t* act = reinterpret_cast<const uint8_t*>(x);
  std::vector<uint8_t> quantized;
  if (ops.act != ActKind::kFloat) {
    const size_t row_bytes = act_row_bytes(ops.act, w.cols);
    quantized.resize(row_bytes * static_cast<size_t>(batch));
    for (int64_t b = 0; b < batch; ++b) {
      quantize_activation(ops.act, x + b * w.cols, quantized.data() + b * row_bytes, w.cols,
                          nullptr);
    }
    act = quantized.data();
  }
  const RowArgs args = make_args(w, ops, act, y);
  for (int64_t b = 0; b < batch; ++b) ops.reference(args, 0, w.rows, b, 1);
}

size_t interleaved_bytes(const WeightMatrix& w) {
  const detail::TypeKernels* kernels = detail::active_kernels().find(w.type);
  if (w.type != TensorType::kQ4_0 || kernels == nullptr || kernels->interleaved_group == nullptr ||
      w.rows <= 0 || w.rows % detail::kInterleavedRows != 0 || w.cols % detail::kQK != 0) {
    return 0;
  }
  return w.row_bytes * static_cast<size_t>(w.rows);
}

bool interleave_weights(const WeightMatrix& w, void* out) {
  if (interleaved_bytes(w) == 0) return false;
  detail::interleave_q4_0x16(static_cast<const uint8_t*>(w.data), w.row_bytes, w.rows, w.cols,
                             static_cast<detail::BlockQ4_0x16*>(out));
  return true;
}

bool get_row(const WeightMatrix& w, int64_t row, float* out) {
  if (row < 0 || row >= w.rows) return false;
  return dequantize_row(w.type, static_cast<const uint8_t*>(w.data) + row * w.row_bytes, out,
                        w.cols);
}

}  // namespace foreshore::engine
