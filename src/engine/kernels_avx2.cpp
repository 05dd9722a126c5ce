// AVX2/FMA/F16C row kernels and activation quantizers.
//
// Decode is a stream over the weights, so the kernels are written to keep
// the instruction count per weight byte low enough for that stream to run at
// memory speed on one core: nibbles are expanded without cross-lane shuffles,
// integer products stay in int16/int32 until one float FMA per block, and
// constant offsets (Q4_0's 8, Q6_K's 32, Q4_K's mins) are taken out through
// precomputed activation sums instead of per-element subtractions.
//
// Each kernel takes a tile of up to kMaxTile activation rows so that in
// prompt processing each weight block is loaded and expanded once per tile;
// Q4_0, whose per-block float work dominates there, also has a kernel for
// groups of eight interleaved activation rows.
//
// Built with AVX2, FMA and F16C; everything here is file-local and reachable
// only through avx2_kernels(), which the dispatch calls on CPUs that have them.
#include <immintrin.h>

#include <bit>
#include <cstring>
#include <type_traits>

#include "engine/kernels_internal.h"

namespace foreshore::engine::detail {
namespace {

inline float hsum(__m128 s) {
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float hsum(__m256 v) {
  return hsum(_mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)));
}

inline int hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
  return _mm_cvtsi128_si32(s);
}

inline __m256i load256(const void* p) {
  return _mm256_loadu_si256(static_cast<const __m256i*>(p));
}

// While a kernel computes, too few of its loads are in flight for one core to
// pull its share of DRAM bandwidth, and the hardware prefetchers alone did
// not close the gap: on the 2-core dev VM, 2048x8192 matvecs streaming from
// DRAM ran at 4-7 GB/s per core without software prefetch and 9-10 GB/s with
// it (read-bandwidth probe: 12). Of the distances (0.5-8 KiB) and hints
// tried, one prefetch into L2 3 KiB ahead plus one into L1 768 bytes ahead
// did best.
constexpr size_t kPrefetchL1Bytes = 768;
inline void prefetch_ahead(const void* p) {
  _mm_prefetch(static_cast<const char*>(p) + kPrefetchDistance, _MM_HINT_T1);
  _mm_prefetch(static_cast<const char*>(p) + kPrefetchL1Bytes, _MM_HINT_T0);
}

// Prefetches every cache line a block spans, the same distance ahead.
template <typename Block>
inline void prefetch_block(const Block* b) {
  for (size_t off = 0; off < sizeof(Block); off += 64)
    prefetch_ahead(reinterpret_cast<const char*>(b) + off);
}

inline float half(uint16_t h) {
  return _cvtsh_ss(h);
}

// A broadcast of the 16-bit value converts all lanes at once: fewer
// instructions than converting a scalar and broadcasting the float.
inline __m256 broadcast_half(uint16_t h) {
  return _mm256_cvtph_ps(_mm_set1_epi16(static_cast<int16_t>(h)));
}

// Dispatches a runtime tile height to the compile-time kernels.
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

// run_tile for kernels that also take kWideTile rows: 5-7 rows run as a
// tile of four and the rest.
template <template <int> class Kernel>
void run_wide_tile(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  if (nb == kWideTile) {
    Kernel<kWideTile>::run(a, r0, r1, b0);
    return;
  }
  if (nb > kMaxTile) {
    Kernel<kMaxTile>::run(a, r0, r1, b0);
    b0 += kMaxTile;
    nb -= kMaxTile;
  }
  run_tile<Kernel>(a, r0, r1, b0, nb);
}

struct LoadF32 {
  static __m256 load(const uint8_t* w) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(w));
  }
  static float scalar(const uint8_t* w) { return *reinterpret_cast<const float*>(w); }
  static constexpr size_t kBytes = 4;
};
struct LoadF16 {
  static __m256 load(const uint8_t* w) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w)));
  }
  static float scalar(const uint8_t* w) { return half(*reinterpret_cast<const uint16_t*>(w)); }
  static constexpr size_t kBytes = 2;
};
struct LoadBF16 {
  static __m256 load(const uint8_t* w) {
    const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
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
      const int64_t vec_end = a.cols & ~int64_t{15};
      for (int64_t r = r0; r < r1; ++r) {
        const uint8_t* w = a.w + static_cast<size_t>(r) * a.w_row_bytes;
        __m256 acc[NB][2];
        for (int k = 0; k < NB; ++k) acc[k][0] = acc[k][1] = _mm256_setzero_ps();
        for (int64_t c = 0; c < vec_end; c += 16) {
          prefetch_ahead(w + c * Load::kBytes);
          const __m256 w0 = Load::load(w + c * Load::kBytes);
          const __m256 w1 = Load::load(w + (c + 8) * Load::kBytes);
          for (int k = 0; k < NB; ++k) {
            acc[k][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x[k] + c), acc[k][0]);
            acc[k][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x[k] + c + 8), acc[k][1]);
          }
        }
        for (int k = 0; k < NB; ++k) {
          float sum = hsum(_mm256_add_ps(acc[k][0], acc[k][1]));
          for (int64_t c = vec_end; c < a.cols; ++c) {
            sum += Load::scalar(w + c * Load::kBytes) * x[k][c];
          }
          a.y[(b0 + k) * a.y_stride + r] = sum;
        }
      }
    }
  };
};

// The 32 nibbles of a Q4_0-layout block as bytes in element order: one
// broadcast load, the upper 128-bit lane shifted right by 4, then masked, gives
// low nibbles (elements 0-15) in lane 0 and high nibbles (16-31) in lane 1.
struct NibbleExpander {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i shift = _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4);
  [[gnu::always_inline]] __m256i operator()(const uint8_t* qs) const {
    const __m256i packed =
        _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs)));
    return _mm256_and_si256(_mm256_srlv_epi32(packed, shift), low4);
  }
};

// 32 unsigned weight levels q (block scale dw) times NB activation blocks,
// with `offset` times each activation block's sum (its s) accumulated
// alongside: how Q4_0 and Q5_0 take back their zero point, and Q5_1 adds its
// block minimum, once per row instead of once per element.
template <int NB>
[[gnu::always_inline]] inline void accumulate_unsigned(__m256i q, __m256 dw, __m256 offset,
                                                       const ActQ8* const* x, __m256* acc,
                                                       __m256* off) {
  const __m256i ones = _mm256_set1_epi16(1);
  for (int k = 0; k < NB; ++k) {
    const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(q, load256(x[k]->qs)), ones);
    const __m256 scale = _mm256_mul_ps(dw, _mm256_broadcast_ss(&x[k]->d));
    acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[k]);
    off[k] = _mm256_fmadd_ps(offset, _mm256_broadcast_ss(&x[k]->s), off[k]);
  }
}

// Q4_0: unsigned nibbles times int8 activations; the -8 comes back as
// -8 * sum over blocks of d_w * (d_x * sum x_q).
struct Q4_0Step {
  using Act = ActQ8;
  using Block = BlockQ4_0;
  const NibbleExpander nibbles;

  template <int NB>
  [[gnu::always_inline]] void operator()(const Block& w, const Act* const* x, __m256* acc,
                                         __m256* off) const {
    const __m256 dw = broadcast_half(w.d);
    accumulate_unsigned<NB>(nibbles(w.qs), dw, dw, x, acc, off);
  }
  // All lanes of off hold the same sum.
  static float finish(__m256 acc, __m256 off) { return hsum(acc) - 8.0f * _mm256_cvtss_f32(off); }
};

// 32 signed int8 weights q (block scale dw) times NB activation blocks:
// maddubs needs one unsigned operand, so |q| times x with q's sign.
template <int NB>
[[gnu::always_inline]] inline void accumulate_signed(__m256i q, __m256 dw, const ActQ8* const* x,
                                                     __m256* acc) {
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i q_abs = _mm256_sign_epi8(q, q);
  for (int k = 0; k < NB; ++k) {
    const __m256i xs = _mm256_sign_epi8(load256(x[k]->qs), q);
    const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(q_abs, xs), ones);
    const __m256 scale = _mm256_mul_ps(dw, _mm256_broadcast_ss(&x[k]->d));
    acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[k]);
  }
}

struct Q8_0Step {
  using Act = ActQ8;
  using Block = BlockQ8_0;

  template <int NB>
  [[gnu::always_inline]] void operator()(const Block& w, const Act* const* x, __m256* acc,
                                         __m256*) const {
    accumulate_signed<NB>(load256(w.qs), broadcast_half(w.d), x, acc);
  }
  static float finish(__m256 acc, __m256) { return hsum(acc); }
};

// Bit j of a Q5 block's 32-bit qh as 0x10 in byte j: element j's fifth bit,
// in the byte order NibbleExpander gives the low four.
struct HighBitExpander {
  // Byte j reads byte j / 8 of qh (both lanes hold all four) and tests bit j % 8.
  const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2,
                                          2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
  const __m256i bit = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ULL));
  const __m256i fifth = _mm256_set1_epi8(0x10);
  [[gnu::always_inline]] __m256i operator()(const uint8_t* qh) const {
    uint32_t bits;
    std::memcpy(&bits, qh, sizeof bits);
    const __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(bits)), spread);
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit), fifth);
  }
};

// Q5_0 and Q5_1: Q4_0's nibbles plus the fifth bit, as unsigned levels 0-31.
// Q5_0 takes back 16 steps of its scale as Q4_0 takes back 8; Q5_1 adds its
// block minimum m instead.
template <typename Q5Block>
struct Q5Step {
  using Act = ActQ8;
  using Block = Q5Block;
  static constexpr bool kHasMin = std::is_same_v<Block, BlockQ5_1>;
  static constexpr float kOffsetFactor = kHasMin ? 1.0f : -16.0f;
  const NibbleExpander nibbles;
  const HighBitExpander high_bits;

  [[gnu::always_inline]] __m256i levels(const Block& w) const {
    return _mm256_or_si256(nibbles(w.qs), high_bits(w.qh));
  }
  [[gnu::always_inline]] static __m256 offset(const Block& w) {
    if constexpr (kHasMin) {
      return broadcast_half(w.m);
    } else {
      return broadcast_half(w.d);
    }
  }
  template <int NB>
  [[gnu::always_inline]] void operator()(const Block& w, const Act* const* x, __m256* acc,
                                         __m256* off) const {
    accumulate_unsigned<NB>(levels(w), broadcast_half(w.d), offset(w), x, acc, off);
  }
  // All lanes of off hold the same sum.
  static float finish(__m256 acc, __m256 off) {
    return hsum(acc) + kOffsetFactor * _mm256_cvtss_f32(off);
  }
};

// IQ4_NL: Q4_0's nibbles index the grid with one byte shuffle per lane.
struct IQ4_NLStep {
  using Act = ActQ8;
  using Block = BlockIQ4_NL;
  const NibbleExpander nibbles;
  const __m256i grid =
      _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4nlValues)));

  template <int NB>
  [[gnu::always_inline]] void operator()(const Block& w, const Act* const* x, __m256* acc,
                                         __m256*) const {
    const __m256i q = _mm256_shuffle_epi8(grid, nibbles(w.qs));
    accumulate_signed<NB>(q, broadcast_half(w.d), x, acc);
  }
  static float finish(__m256 acc, __m256) { return hsum(acc); }
};

// Runs a 256-element block step over whole rows: for each row and each
// super block, step<NB>(w, x, acc) adds the block's share of the NB dot
// products to acc, x pointing at the NB activation rows' matching blocks.
template <typename Step>
struct SuperBlockKernel {
  template <int NB>
  struct Tile {
    static void run(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0) {
      using Block = typename Step::Block;
      const Step step;
      const int64_t blocks = a.cols / kQKK;
      const ActQ8K* x[NB];
      for (int k = 0; k < NB; ++k) x[k] = act_row<ActQ8K>(a, b0 + k);
      for (int64_t r = r0; r < r1; ++r) {
        const Block* w = weight_row<Block>(a, r);
        __m256 acc[NB];
        for (int k = 0; k < NB; ++k) acc[k] = _mm256_setzero_ps();
        for (int64_t i = 0; i < blocks; ++i) {
          prefetch_block(w + i);
          const ActQ8K* xi[NB];
          for (int k = 0; k < NB; ++k) xi[k] = x[k] + i;
          step.template operator()<NB>(w[i], xi, acc);
        }
        for (int k = 0; k < NB; ++k) a.y[(b0 + k) * a.y_stride + r] = hsum(acc[k]);
      }
    }
  };
};

// IQ4_XS: IQ4_NL's grid values per 32-element sub-block against Q8_K
// activations, each sub-block's int16 pair sums weighted by its 6-bit scale
// in one madd, the super block kept in int32 until one float FMA.
struct IQ4_XSStep {
  using Block = BlockIQ4_XS;
  const IQ4_NLStep nl;

  template <int NB>
  [[gnu::always_inline]] void operator()(const Block& w, const ActQ8K* const* x,
                                         __m256* acc) const {
    __m256i sum[NB];
    for (int k = 0; k < NB; ++k) sum[k] = _mm256_setzero_si256();
    for (int ib = 0; ib < 8; ++ib) {
      const __m256i q = _mm256_shuffle_epi8(nl.grid, nl.nibbles(w.qs + 16 * ib));
      const __m256i q_abs = _mm256_sign_epi8(q, q);
      const __m256i scale = _mm256_set1_epi16(static_cast<int16_t>(iq4xs_scale(w, ib)));
      for (int k = 0; k < NB; ++k) {
        const __m256i xs = _mm256_sign_epi8(load256(x[k]->qs + kQK * ib), q);
        sum[k] =
            _mm256_add_epi32(sum[k], _mm256_madd_epi16(_mm256_maddubs_epi16(q_abs, xs), scale));
      }
    }
    const float d = half(w.d);
    for (int k = 0; k < NB; ++k) {
      acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[k]), _mm256_set1_ps(d * x[k]->d), acc[k]);
    }
  }
};

// Runs a 32-element block step over whole rows. A single activation row gets
// two accumulator chains (even and odd blocks) so block i+1 does not wait on
// the FMA latency of block i; with more rows the rows provide that overlap.
template <typename Step>
struct Block32Kernel {
  template <int NB>
  struct Tile {
    static void run(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0) {
      using Act = typename Step::Act;
      using Block = typename Step::Block;
      constexpr int kChains = NB == 1 ? 2 : 1;
      const Step step;
      const int64_t blocks = a.cols / kQK;
      const Act* x[NB];
      for (int k = 0; k < NB; ++k) x[k] = act_row<Act>(a, b0 + k);
      for (int64_t r = r0; r < r1; ++r) {
        const Block* w = weight_row<Block>(a, r);
        __m256 acc[kChains][NB];
        __m256 off[kChains][NB];
        for (int c = 0; c < kChains; ++c) {
          for (int k = 0; k < NB; ++k) acc[c][k] = off[c][k] = _mm256_setzero_ps();
        }
        const Act* xi[NB];
        int64_t i = 0;
        for (; i + kChains <= blocks; i += kChains) {
          // At least one prefetch per 64 bytes.
          prefetch_ahead(w + i);
          if constexpr (sizeof(Block) * kChains > 64) {
            prefetch_ahead(reinterpret_cast<const char*>(w + i) + 64);
          }
          for (int c = 0; c < kChains; ++c) {
            for (int k = 0; k < NB; ++k) xi[k] = x[k] + i + c;
            step.template operator()<NB>(w[i + c], xi, acc[c], off[c]);
          }
        }
        if (i < blocks) {
          for (int k = 0; k < NB; ++k) xi[k] = x[k] + i;
          step.template operator()<NB>(w[i], xi, acc[0], off[0]);
        }
        for (int k = 0; k < NB; ++k) {
          for (int c = 1; c < kChains; ++c) {
            acc[0][k] = _mm256_add_ps(acc[0][k], acc[c][k]);
            off[0][k] = _mm256_add_ps(off[0][k], off[c][k]);
          }
          a.y[(b0 + k) * a.y_stride + r] = Step::finish(acc[0][k], off[0][k]);
        }
      }
    }
  };
};

// Q4_K and Q5_K: per 32 elements, maddubs then madd against the sub-block
// scale (broadcast with a byte shuffle) keeps the super block in int32; the
// mins meet the per-32 activation sums in one 8-lane madd. Q5_K's fifth bits
// (levels up to 31: a maddubs pair sum stays below 2 * 31 * 127, far from
// int16 saturation) come from qh, two bits per pair of sub-blocks.
template <typename ScaleMinBlock>
struct ScaleMinKStep {
  using Block = ScaleMinBlock;
  static constexpr bool kFifthBit = std::is_same_v<Block, BlockQ5_K>;
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i fifth = _mm256_set1_epi8(0x10);

  template <int NB>
  [[gnu::always_inline]] void operator()(const Block& w, const ActQ8K* const* x,
                                         __m256* acc) const {
    alignas(16) uint8_t sm[16];
    unpack_q4k_scales(w.scales, sm);
    const __m128i sm128 = _mm_load_si128(reinterpret_cast<const __m128i*>(sm));
    const __m256i scales = _mm256_broadcastsi128_si256(sm128);
    const __m128i mins = _mm_cvtepu8_epi16(_mm_srli_si128(sm128, 8));
    // Byte pairs (j, 0x80) pick scale j into the low byte of each int16
    // and zero the high byte.
    __m256i pick = _mm256_set1_epi16(static_cast<int16_t>(0x8000));
    const __m256i next = _mm256_set1_epi16(1);
    __m256i sum[NB];
    for (int k = 0; k < NB; ++k) sum[k] = _mm256_setzero_si256();
    [[maybe_unused]] __m256i high_bits;
    if constexpr (kFifthBit) high_bits = load256(w.qh);
    for (int j = 0; j < 4; ++j) {
      const __m256i q = load256(w.qs + 32 * j);
      __m256i lo = _mm256_and_si256(q, low4);
      __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low4);
      if constexpr (kFifthBit) {
        // Bits 0 and 1 of each byte, moved to bit 4; the next pair of
        // sub-blocks then reads the next two bits. The 16-bit shifts
        // carry the high byte's bits no lower than bit 6 of the low one.
        lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(high_bits, 4), fifth));
        hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(high_bits, 3), fifth));
        high_bits = _mm256_srli_epi16(high_bits, 2);
      }
      const __m256i s_lo = _mm256_shuffle_epi8(scales, pick);
      pick = _mm256_add_epi16(pick, next);
      const __m256i s_hi = _mm256_shuffle_epi8(scales, pick);
      pick = _mm256_add_epi16(pick, next);
      for (int k = 0; k < NB; ++k) {
        const __m256i p_lo =
            _mm256_madd_epi16(_mm256_maddubs_epi16(lo, load256(x[k]->qs + 64 * j)), s_lo);
        const __m256i p_hi =
            _mm256_madd_epi16(_mm256_maddubs_epi16(hi, load256(x[k]->qs + 64 * j + 32)), s_hi);
        sum[k] = _mm256_add_epi32(sum[k], _mm256_add_epi32(p_lo, p_hi));
      }
    }
    const float d = half(w.d);
    const float dmin = half(w.dmin);
    for (int k = 0; k < NB; ++k) {
      const __m128i bs_lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x[k]->bsums));
      const __m128i bs_hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x[k]->bsums + 8));
      const __m128i pm = _mm_madd_epi16(mins, _mm_hadd_epi16(bs_lo, bs_hi));
      acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[k]), _mm256_set1_ps(d * x[k]->d), acc[k]);
      acc[k] = _mm256_fnmadd_ps(_mm256_zextps128_ps256(_mm_cvtepi32_ps(pm)),
                                _mm256_set1_ps(dmin * x[k]->d), acc[k]);
    }
  }
};

// Unsigned levels of the K-quants with a scale per 16 elements, 32 elements
// (one chunk) per vector, in element order: chunk j of half h covers
// elements 128h + 32j .. + 31.
struct Q6_KLevels {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i m2 = _mm256_set1_epi8(0x03);
  const __m256i m2_2 = _mm256_set1_epi8(0x0C);
  const __m256i m2_4 = _mm256_set1_epi8(0x30);
  const __m256i m2_6 = _mm256_set1_epi8(static_cast<char>(0xC0));
  [[gnu::always_inline]] void operator()(const BlockQ6_K& w, int h, __m256i q[4]) const {
    const __m256i ql0 = load256(w.ql + 64 * h);
    const __m256i ql1 = load256(w.ql + 64 * h + 32);
    const __m256i qh = load256(w.qh + 32 * h);
    q[0] = _mm256_or_si256(_mm256_and_si256(ql0, low4),
                           _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4));
    q[1] = _mm256_or_si256(_mm256_and_si256(ql1, low4),
                           _mm256_slli_epi16(_mm256_and_si256(qh, m2_2), 2));
    q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low4),
                           _mm256_and_si256(qh, m2_4));
    q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), low4),
                           _mm256_srli_epi16(_mm256_and_si256(qh, m2_6), 2));
  }
};
// Two bits per element, four chunks in one 32-byte load, plus Q3_K's third
// bit from hmask: bit 4h + j of each byte, shifted to bit 2.
template <bool kThirdBit>
struct TwoBitLevels {
  const __m256i m2 = _mm256_set1_epi8(0x03);
  const __m256i bit2 = _mm256_set1_epi8(0x04);
  template <typename Block>
  [[gnu::always_inline]] void operator()(const Block& w, int h, __m256i q[4]) const {
    __m256i bits = load256(w.qs + 32 * h);
    [[maybe_unused]] __m256i high;
    if constexpr (kThirdBit) high = _mm256_srli_epi16(load256(w.hmask), 4 * h);
    for (int j = 0; j < 4; ++j) {
      q[j] = _mm256_and_si256(bits, m2);
      bits = _mm256_srli_epi16(bits, 2);
      if constexpr (kThirdBit) {
        q[j] = _mm256_or_si256(q[j], _mm256_and_si256(_mm256_slli_epi16(high, 2), bit2));
        high = _mm256_srli_epi16(high, 1);
      }
    }
  }
};

// Q2_K, Q3_K and Q6_K: unsigned levels, scales per 16 elements as int16
// lanes (a byte shuffle picks scale 2c for the low 128-bit lane and 2c+1 for
// the high one), and the level offset (Q3_K's 4, Q6_K's 32) subtracted once
// per block from the activation sums, as Q2_K's minimums are.
template <typename Scale16Block, typename Levels>
struct Scale16KStep {
  using Block = Scale16Block;
  static constexpr bool kMins = std::is_same_v<Block, BlockQ2_K>;
  static constexpr int kOffset = scale16_offset(Block{});
  const Levels levels;
  // Bytes 2c in the low lane and 2c+1 in the high lane, advanced by 2 per chunk.
  const __m256i pick0 = _mm256_setr_epi64x(0, 0, 0x0101010101010101, 0x0101010101010101);
  const __m256i two = _mm256_set1_epi8(2);

  // The 16 scales as signed bytes; with kMins, the minimums as int16 lanes.
  [[gnu::always_inline]] static __m128i scales(const Block& w, __m256i* mins) {
    if constexpr (kMins) {
      const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.scales));
      const __m128i low4 = _mm_set1_epi8(0x0F);
      *mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(packed, 4), low4));
      return _mm_and_si128(packed, low4);
    } else if constexpr (std::is_same_v<Block, BlockQ3_K>) {
      // unpack_q3k_scales in registers. Through a buffer in memory (byte
      // stores, one vector load) the whole kernel ran at half this speed:
      // 776 against 362-376 us for 2048x8192 with 2 threads. The 12 bytes
      // are read as 8 + 4, never past the field.
      const __m128i low4 = _mm_set1_epi8(0x0F);
      const __m128i low2 = _mm_set1_epi8(0x03);
      const __m128i nibbles = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w.scales));
      uint32_t top_bits;
      std::memcpy(&top_bits, w.scales + 8, sizeof top_bits);
      const __m128i top = _mm_cvtsi32_si128(static_cast<int>(top_bits));
      const __m128i low = _mm_unpacklo_epi64(_mm_and_si128(nibbles, low4),
                                             _mm_and_si128(_mm_srli_epi16(nibbles, 4), low4));
      const __m128i pairs =
          _mm_unpacklo_epi64(_mm_unpacklo_epi32(top, _mm_srli_epi32(top, 2)),
                             _mm_unpacklo_epi32(_mm_srli_epi32(top, 4), _mm_srli_epi32(top, 6)));
      const __m128i stored = _mm_or_si128(low, _mm_slli_epi16(_mm_and_si128(pairs, low2), 4));
      return _mm_sub_epi8(stored, _mm_set1_epi8(32));
    } else {
      return _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.scales));
    }
  }

  template <int NB>
  [[gnu::always_inline]] void operator()(const Block& w, const ActQ8K* const* x,
                                         __m256* acc) const {
    [[maybe_unused]] __m256i mins;
    const __m128i sc128 = scales(w, &mins);
    const __m256i scales = _mm256_broadcastsi128_si256(sc128);
    __m256i sum[NB];
    [[maybe_unused]] __m256i min_sum[NB];
    for (int k = 0; k < NB; ++k) {
      sum[k] = _mm256_setzero_si256();
      if constexpr (kOffset != 0) {
        static_assert(std::has_single_bit(static_cast<unsigned>(kOffset)));
        const __m256i offset = _mm256_madd_epi16(_mm256_cvtepi8_epi16(sc128), load256(x[k]->bsums));
        sum[k] = _mm256_sub_epi32(
            _mm256_setzero_si256(),
            _mm256_slli_epi32(offset, std::countr_zero(static_cast<unsigned>(kOffset))));
      }
      if constexpr (kMins) min_sum[k] = _mm256_madd_epi16(mins, load256(x[k]->bsums));
    }
    __m256i pick = pick0;
    for (int h = 0; h < 2; ++h) {
      __m256i q[4];
      levels(w, h, q);
      for (int j = 0; j < 4; ++j) {
        // Each int16 lane holds the scale byte twice; the arithmetic shift
        // leaves it sign-extended.
        const __m256i s = _mm256_srai_epi16(_mm256_shuffle_epi8(scales, pick), 8);
        pick = _mm256_add_epi8(pick, two);
        for (int k = 0; k < NB; ++k) {
          const __m256i xq = load256(x[k]->qs + 128 * h + 32 * j);
          sum[k] = _mm256_add_epi32(sum[k], _mm256_madd_epi16(_mm256_maddubs_epi16(q[j], xq), s));
        }
      }
    }
    const float d = half(w.d);
    for (int k = 0; k < NB; ++k) {
      acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[k]), _mm256_set1_ps(d * x[k]->d), acc[k]);
      if constexpr (kMins) {
        acc[k] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(min_sum[k]),
                                  _mm256_set1_ps(half(w.dmin) * x[k]->d), acc[k]);
      }
    }
  }
};

// Unsigned weight levels against an ActQ8x8 group: each dword of levels (4
// elements) is broadcast and multiplied with the same 4 elements of all eight
// rows; after widening, lane k of every vector is activation row k. The int16
// sums must stay below 2^15: kSteps steps of 2 * max level * 127 each, so
// Q4_0 (levels to 15) widens once per block and Q5 (to 31) every four steps.
// offset(block) times the activation sums, times offset_factor, is added once
// per row, as in accumulate_unsigned.
template <typename Block, int kSteps, typename Levels, typename Offset>
void group_unsigned(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, Levels levels,
                    Offset offset, float offset_factor) {
  static_assert((kQK / 4) % kSteps == 0);
  const int64_t blocks = a.cols / kQK;
  const __m256i ones = _mm256_set1_epi16(1);
  const auto* x = act_row<ActQ8x8>(a, b0);
  for (int64_t r = r0; r < r1; ++r) {
    const Block* w = weight_row<Block>(a, r);
    __m256 acc = _mm256_setzero_ps();
    __m256 off = _mm256_setzero_ps();
    for (int64_t i = 0; i < blocks; ++i) {
      const __m256i q = levels(w[i]);
      __m256i sum32 = _mm256_setzero_si256();
      for (int j0 = 0; j0 < kQK / 4; j0 += kSteps) {
        __m256i sum16 = _mm256_setzero_si256();
        for (int j = j0; j < j0 + kSteps; ++j) {
          const __m256i wj = _mm256_permutevar8x32_epi32(q, _mm256_set1_epi32(j));
          sum16 = _mm256_add_epi16(sum16, _mm256_maddubs_epi16(wj, load256(x[i].qs[j])));
        }
        sum32 = _mm256_add_epi32(sum32, _mm256_madd_epi16(sum16, ones));
      }
      const __m256 scale = _mm256_mul_ps(broadcast_half(w[i].d), _mm256_loadu_ps(x[i].d));
      acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum32), scale, acc);
      off = _mm256_fmadd_ps(offset(w[i]), _mm256_loadu_ps(x[i].s), off);
    }
    alignas(32) float out[kGroupRows];
    _mm256_store_ps(out, _mm256_fmadd_ps(_mm256_set1_ps(offset_factor), off, acc));
    for (int k = 0; k < kGroupRows; ++k) a.y[(b0 + k) * a.y_stride + r] = out[k];
  }
}

// Signed weight levels (IQ4_NL's grid values, Q8_0's bytes; levels(w) gives
// a block's 32) against an ActQ8x8 group, as group_unsigned: |w| times x with
// w's sign, widened to int32 at every step, since two products of 127 * 127
// already fill an int16.
template <typename Block, typename Levels>
void group_signed(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, Levels levels) {
  const int64_t blocks = a.cols / kQK;
  const __m256i ones = _mm256_set1_epi16(1);
  const auto* x = act_row<ActQ8x8>(a, b0);
  for (int64_t r = r0; r < r1; ++r) {
    const Block* w = weight_row<Block>(a, r);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < blocks; ++i) {
      const __m256i q = levels(w[i]);
      __m256i sum32 = _mm256_setzero_si256();
      for (int j = 0; j < kQK / 4; ++j) {
        const __m256i wj = _mm256_permutevar8x32_epi32(q, _mm256_set1_epi32(j));
        const __m256i xs = _mm256_sign_epi8(load256(x[i].qs[j]), wj);
        sum32 = _mm256_add_epi32(
            sum32, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(wj, wj), xs), ones));
      }
      const __m256 scale = _mm256_mul_ps(broadcast_half(w[i].d), _mm256_loadu_ps(x[i].d));
      acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum32), scale, acc);
    }
    alignas(32) float out[kGroupRows];
    _mm256_store_ps(out, acc);
    for (int k = 0; k < kGroupRows; ++k) a.y[(b0 + k) * a.y_stride + r] = out[k];
  }
}

template <typename Load>
void rows_float_avx2(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  run_tile<FloatKernel<Load>::template Tile>(a, r0, r1, b0, nb);
}

struct HalfSums {
  __m256i first;   // lanes sum to q[0] + ... + q[15]
  __m256i second;  // lanes sum to q[16] + ... + q[31]
};

// Quantizes 32 floats with scale 1/id into q.
inline HalfSums quantize32(const float* x, float id, int8_t* q) {
  const __m256 idv = _mm256_set1_ps(id);
  const __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x), idv));
  const __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 8), idv));
  const __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 16), idv));
  const __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 24), idv));
  // The packs interleave 128-bit lanes; the permute restores element order.
  const __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
  _mm256_storeu_si256(
      reinterpret_cast<__m256i*>(q),
      _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
  return {_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3)};
}

inline __m256 abs_max(__m256 m, const float* x) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  return _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x)));
}

inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

void rows_f32_avx2(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  rows_float_avx2<LoadF32>(a, r0, r1, b0, nb);
}
void rows_f16_avx2(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  rows_float_avx2<LoadF16>(a, r0, r1, b0, nb);
}
void rows_bf16_avx2(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  rows_float_avx2<LoadBF16>(a, r0, r1, b0, nb);
}
void rows_q4_0_avx2(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  run_tile<Block32Kernel<Q4_0Step>::Tile>(a, r0, r1, b0, nb);
}
void group_q4_0_avx2(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0) {
  const NibbleExpander nibbles;
  group_unsigned<BlockQ4_0, 8>(
      a, r0, r1, b0, [&](const BlockQ4_0& w) { return nibbles(w.qs); },
      [](const BlockQ4_0& w) { return broadcast_half(w.d); }, -8.0f);
}
template <typename Block>
void group_q5(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0) {
  const Q5Step<Block> step;
  group_unsigned<Block, 4>(
      a, r0, r1, b0, [&](const Block& w) { return step.levels(w); },
      [](const Block& w) { return Q5Step<Block>::offset(w); }, Q5Step<Block>::kOffsetFactor);
}
void group_q5_0_avx2(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0) {
  group_q5<BlockQ5_0>(a, r0, r1, b0);
}
void group_q5_1_avx2(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0) {
  group_q5<BlockQ5_1>(a, r0, r1, b0);
}
void group_iq4_nl_avx2(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0) {
  // By value: a captured reference would be re-read after every store of a
  // result, which may alias it.
  const IQ4_NLStep step;
  group_signed<BlockIQ4_NL>(a, r0, r1, b0, [step](const BlockIQ4_NL& w) {
    return _mm256_shuffle_epi8(step.grid, step.nibbles(w.qs));
  });
}
void group_q8_0_avx2(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0) {
  group_signed<BlockQ8_0>(a, r0, r1, b0, [](const BlockQ8_0& w) { return load256(w.qs); });
}
void rows_iq4_nl_avx2(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  run_tile<Block32Kernel<IQ4_NLStep>::Tile>(a, r0, r1, b0, nb);
}
void rows_iq4_xs_avx2(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  run_wide_tile<SuperBlockKernel<IQ4_XSStep>::Tile>(a, r0, r1, b0, nb);
}
void rows_q8_0_avx2(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  run_tile<Block32Kernel<Q8_0Step>::Tile>(a, r0, r1, b0, nb);
}
void rows_q5_0_avx2(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  run_tile<Block32Kernel<Q5Step<BlockQ5_0>>::Tile>(a, r0, r1, b0, nb);
}
void rows_q5_1_avx2(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  run_tile<Block32Kernel<Q5Step<BlockQ5_1>>::Tile>(a, r0, r1, b0, nb);
}
void rows_q4_k_avx2(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  run_wide_tile<SuperBlockKernel<ScaleMinKStep<BlockQ4_K>>::Tile>(a, r0, r1, b0, nb);
}
void rows_q5_k_avx2(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  run_wide_tile<SuperBlockKernel<ScaleMinKStep<BlockQ5_K>>::Tile>(a, r0, r1, b0, nb);
}
void rows_q2_k_avx2(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  run_wide_tile<SuperBlockKernel<Scale16KStep<BlockQ2_K, TwoBitLevels<false>>>::Tile>(a, r0, r1, b0,
                                                                                      nb);
}
void rows_q3_k_avx2(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  run_wide_tile<SuperBlockKernel<Scale16KStep<BlockQ3_K, TwoBitLevels<true>>>::Tile>(a, r0, r1, b0,
                                                                                     nb);
}
void rows_q6_k_avx2(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  run_wide_tile<SuperBlockKernel<Scale16KStep<BlockQ6_K, Q6_KLevels>>::Tile>(a, r0, r1, b0, nb);
}

void quantize_act_q8_avx2(const float* x, ActQ8* y, int64_t n) {
  for (int64_t b = 0; b < n / kQK; ++b, x += kQK) {
    __m256 m = _mm256_setzero_ps();
    for (int j = 0; j < kQK; j += 8) m = abs_max(m, x + j);
    // The scale and its inverse are computed exactly as in the scalar path,
    // so both produce the same bytes.
    const float d = hmax(m) / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const auto [first, second] = quantize32(x, id, y[b].qs);
    const int sum = hsum_epi32(_mm256_add_epi32(first, second));
    y[b].d = d;
    y[b].s = d * static_cast<float>(sum);
  }
}

void quantize_act_q8x8_avx2(const float* x, int64_t stride, ActQ8x8* y, int64_t n) {
  for (int64_t b = 0; b < n / kQK; ++b) {
    for (int k = 0; k < kGroupRows; ++k) {
      ActQ8 row;
      quantize_act_q8_avx2(x + k * stride + b * kQK, &row, kQK);
      y[b].d[k] = row.d;
      y[b].s[k] = row.s;
      for (int j = 0; j < kQK / 4; ++j) std::memcpy(y[b].qs[j][k], row.qs + 4 * j, 4);
    }
  }
}

void quantize_act_q8k_avx2(const float* x, ActQ8K* y, int64_t n) {
  for (int64_t b = 0; b < n / kQKK; ++b, x += kQKK) {
    __m256 m = _mm256_setzero_ps();
    for (int j = 0; j < kQKK; j += 8) m = abs_max(m, x + j);
    const float d = hmax(m) / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < kQKK; j += 32) {
      const auto [first, second] = quantize32(x + j, id, y[b].qs + j);
      y[b].bsums[j / 16] = static_cast<int16_t>(hsum_epi32(first));
      y[b].bsums[j / 16 + 1] = static_cast<int16_t>(hsum_epi32(second));
    }
    y[b].d = d;
  }
}

}  // namespace

const KernelSet& avx2_kernels() {
  static const KernelSet set{
      .level = CpuLevel::kAvx2,
      .types = {{TensorType::kF32, rows_f32_avx2},
                {TensorType::kF16, rows_f16_avx2},
                {TensorType::kBF16, rows_bf16_avx2},
                {TensorType::kQ4_0, rows_q4_0_avx2, group_q4_0_avx2},
                {TensorType::kQ8_0, rows_q8_0_avx2, group_q8_0_avx2},
                {TensorType::kQ5_0, rows_q5_0_avx2, group_q5_0_avx2},
                {TensorType::kQ5_1, rows_q5_1_avx2, group_q5_1_avx2},
                {TensorType::kIQ4_NL, rows_iq4_nl_avx2, group_iq4_nl_avx2},
                {TensorType::kIQ4_XS, rows_iq4_xs_avx2, nullptr, kWideTile},
                {TensorType::kQ2_K, rows_q2_k_avx2, nullptr, kWideTile},
                {TensorType::kQ3_K, rows_q3_k_avx2, nullptr, kWideTile},
                {TensorType::kQ4_K, rows_q4_k_avx2, nullptr, kWideTile},
                {TensorType::kQ5_K, rows_q5_k_avx2, nullptr, kWideTile},
                {TensorType::kQ6_K, rows_q6_k_avx2, nullptr, kWideTile}},
      .quantize_act_q8 = quantize_act_q8_avx2,
      .quantize_act_q8k = quantize_act_q8k_avx2,
      .quantize_act_q8x8 = quantize_act_q8x8_avx2,
      .ops = avx2_vector_ops(),
  };
  return set;
}

}  // namespace foreshore::engine::detail
