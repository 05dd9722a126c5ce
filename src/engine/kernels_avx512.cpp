// AVX-512 level: the AVX2 kernels, with AVX-512 VNNI ones for Q8_0, Q4_0,
// Q5_0, Q5_1, IQ4_NL and all the 256-element types (IQ4_XS, Q2_K, Q3_K,
// Q4_K, Q5_K, Q6_K) for prompt processing and batched decode (eight
// activation rows at a time), and 512-bit kernels for decode (one to four
// rows) of Q8_0, IQ4_NL, Q5_0, Q5_1 and the same 256-element types.
//
// vpdpbusd multiplies unsigned by signed bytes and adds each group of four
// products to an int32 lane in one instruction, where AVX2 needs maddubs,
// madd and an add. Q4_0's levels are unsigned already; Q8_0's weights and
// activations are both signed, so, as in the AVX2 kernels, |w| times x with
// w's sign. Nothing can overflow (products at most 128 * 127), so the
// integer sums are the scalar reference's exactly.
//
// Q4_0's kernels read the weights repacked at model load, sixteen rows
// side by side (BlockQ4_0x16, repacked_q4_0): for prompts 1.8x the VNNI
// kernel on the GGUF layout (576x1536, one eight-row group, one thread, in
// cache), for decode 3.3x the AVX2 one in cache and 1.2-1.6x from memory.
//
// Decode of the other 32-element types takes two blocks per 512-bit
// register (rows_signed_tile for Q8_0 and IQ4_NL, rows_q5_tile). A 256-bit
// VNNI version of the Q8_0 kernel (vpdpbusd in place of maddubs + madd,
// the same instruction count otherwise) ran at 0.76x of AVX2; at 512 bits
// the pair's shuffles and float work are shared by 64 elements. Against
// the AVX2 kernels on the AMD EPYC development VM (one thread, medians of
// 4-5 alternated runs under load average 10-12; docs/PERFORMANCE.md has
// the ranges), with the matrix in L2 (256x1536), in L3 (576x1536) and from
// memory (2048x8192): Q8_0 1.08-1.09x, 1.10-1.19x and 1.05x (two sets);
// IQ4_NL 1.06x, 1.27x and 1.14x; Q5_0 1.5x, 1.25x and 1.2x; Q5_1 1.4x,
// 1.4x and 1.03x. Two Q8_0 variants that share the activation's work (its
// loads, scales and, with w + 128 unsigned in place of the sign trick, its
// sums times -128) were faster in L2 (1.3x and 1.15x) but slower from
// memory (0.8x and 0.95-1.0x), so they were not kept: two weight rows read
// side by side, and a per-call table of the activation on the stack. The
// K-quants' decode kernels are 512 bits wide too: each super block's
// expansion then costs half the instructions (Q4_K 1.2x, Q6_K 1.9x the
// AVX2 kernels, 576x1536 in cache). The float types keep the AVX2 kernels
// for all batch sizes.
//
// Q5_K, IQ4_XS, Q2_K and Q3_K (2026-12-07) follow Q4_K and Q6_K: the fifth
// (Q5_K) and third (Q3_K) bits are tested straight from qh / hmask into a
// 64-bit mask under which the bit is added, and IQ4_XS's grid is looked up
// plus 128 (unsigned for vpdpbusd, the 128 taken out through the
// activation sums). Against the AVX2 kernels (one thread, 3-4 alternated
// runs under load average 7.6-10.9, medians' ratio; docs/PERFORMANCE.md has
// the ranges), decode in L2 (256x1536), in L3 (576x1536) and from memory
// (2048x8192), then one eight-row group (576x1536, batch 8): Q5_K 1.38x,
// 1.54x, 1.04x, 1.72x; IQ4_XS 1.20x, 1.38x, 1.33x, 1.76x; Q2_K 1.49x,
// 1.56x, 1.12x, 1.74x; Q3_K 2.05x, 2.14x, 1.67x, 1.73x. Q3_K's decode ran
// at 0.65x while its scales were unpacked through memory (see
// TwoBitLevels::scales), as the AVX2 kernel had found before.
//
// IQ4_NL's group kernel (2026-12-07) looks its grid up plus 128 as IQ4_XS
// does; ActQ8x8 has no integer sums, so a second vpdpbusd per step pair
// sums 128 times the activations. Against the AVX2 kernel (one thread, one
// eight-row group, 576x1536, 3 alternated runs, load average 3.1-4.1,
// medians' ratio) 1.88x, and 2.0x at batch 32 on two threads. Q8_0's sign
// trick in place of the 128 (abs, sign mask and masked negation per step
// pair) ran at 0.77x of this; two groups sharing each block's levels (as
// group_q4_0<2>) gained 4% at batch 32, within the noise, so it was not kept.
//
// Built with AVX-512 F/BW/VL/VNNI (and AVX2/FMA/F16C); everything here is
// file-local and reachable only through avx512_kernels(), which the dispatch
// calls on CPUs that have them.
#include <immintrin.h>

#include <cstring>
#include <type_traits>

#include "engine/kernels_internal.h"

#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's AVX-512 intrinsics pass _mm512_undefined_*() as the merge source
// they ignore, which the uninitialized-use warnings then report once inlined
// (GCC bug 105593, fixed in GCC 13).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace foreshore::engine::detail {
namespace {

inline __m256i load256(const void* p) {
  return _mm256_loadu_si256(static_cast<const __m256i*>(p));
}

inline __m256 broadcast_half(uint16_t h) {
  return _mm256_cvtph_ps(_mm_set1_epi16(static_cast<int16_t>(h)));
}

// As the AVX2 kernels prefetch (kernels_avx2.cpp says why): into L2
// kPrefetchDistance ahead and into L1 768 bytes ahead.
inline void prefetch_ahead(const void* p) {
  _mm_prefetch(static_cast<const char*>(p) + kPrefetchDistance, _MM_HINT_T1);
  _mm_prefetch(static_cast<const char*>(p) + 768, _MM_HINT_T0);
}

// Prefetches every cache line of a block, as the AVX2 kernels do.
template <typename Block>
inline void prefetch_block(const Block* b) {
  for (size_t off = 0; off < sizeof(Block); off += 64)
    prefetch_ahead(reinterpret_cast<const char*>(b) + off);
}

// Weight dword 2p into lanes 0-7 and 2p + 1 into lanes 8-15, for p < 8: the
// weights of step pair p of an ActQ8x8 group (see group_q8_0), or of the
// steps of 64 levels in one register (the K-quants).
struct StepPairs {
  __m512i pick[kQK / 4];
  StepPairs() {
    for (int p = 0; p < kQK / 4; ++p) {
      pick[p] = _mm512_inserti64x4(_mm512_set1_epi32(2 * p), _mm256_set1_epi32(2 * p + 1), 1);
    }
  }
};

// The sums of a 16-lane step-pair accumulator's halves: lane k is row k.
inline __m256i fold(__m512i sum) {
  return _mm256_add_epi32(_mm512_castsi512_si256(sum), _mm512_extracti64x4_epi64(sum, 1));
}

// Q8_0 weights against an ActQ8x8 group (prompt processing). A 512-bit
// register holds two of the group's 4-element steps for all eight rows
// (qs[j] and qs[j + 1] are adjacent), so each block takes four steps of five
// instructions where AVX2 takes eight of six; lane k of the low half is row k
// at even steps, of the high half at odd ones, and the halves are added once
// per block.
void group_q8_0(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0) {
  const int64_t blocks = a.cols / kQK;
  const auto* x = act_row<ActQ8x8>(a, b0);
  const StepPairs pairs;
  const __m512i zero = _mm512_setzero_si512();
  for (int64_t r = r0; r < r1; ++r) {
    const BlockQ8_0* w = weight_row<BlockQ8_0>(a, r);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < blocks; ++i) {
      prefetch_ahead(w + i);
      const __m512i q = _mm512_zextsi256_si512(load256(w[i].qs));
      __m512i sum = zero;
      for (int p = 0; p < kQK / 8; ++p) {
        const __m512i wp = _mm512_permutexvar_epi32(pairs.pick[p], q);
        const __m512i xp = _mm512_loadu_si512(x[i].qs[2 * p]);
        // x with w's sign: negated where w < 0 (where w is 0, |w| is too).
        const __m512i xs = _mm512_mask_sub_epi8(xp, _mm512_movepi8_mask(wp), zero, xp);
        sum = _mm512_dpbusd_epi32(sum, _mm512_abs_epi8(wp), xs);
      }
      const __m256 scale = _mm256_mul_ps(broadcast_half(w[i].d), _mm256_loadu_ps(x[i].d));
      acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(fold(sum)), scale, acc);
    }
    alignas(32) float out[kGroupRows];
    _mm256_store_ps(out, acc);
    for (int k = 0; k < kGroupRows; ++k) a.y[(b0 + k) * a.y_stride + r] = out[k];
  }
}

// Unsigned weight levels (levels(block): a block's 32 in element order)
// against an ActQ8x8 group, as group_q8_0 but with the levels as they are:
// their zero point comes back as offset_factor times offset(block) times the
// activation sums, once per row, as in AVX2 (Q4_0: -8 d; Q5_0: -16 d; Q5_1:
// + m). vpdpbusd widens to int32 at once, so Q5's levels up to 31 need no
// intermediate widening either.
// kGroups groups from b0 (eight rows each) at once: each block's levels are
// expanded and spread over the step pairs once for all of them.
template <typename Block, int kGroups = 1, typename Levels, typename Offset>
void group_unsigned(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, Levels levels,
                    Offset offset, float offset_factor) {
  const int64_t blocks = a.cols / kQK;
  const ActQ8x8* x[kGroups];
  for (int g = 0; g < kGroups; ++g) x[g] = act_row<ActQ8x8>(a, b0 + g * kGroupRows);
  const StepPairs pairs;
  for (int64_t r = r0; r < r1; ++r) {
    const Block* w = weight_row<Block>(a, r);
    __m256 acc[kGroups], off[kGroups];
    for (int g = 0; g < kGroups; ++g) acc[g] = off[g] = _mm256_setzero_ps();
    for (int64_t i = 0; i < blocks; ++i) {
      prefetch_ahead(w + i);
      const __m512i q = _mm512_zextsi256_si512(levels(w[i]));
      __m512i wp[kQK / 8];
      for (int p = 0; p < kQK / 8; ++p) wp[p] = _mm512_permutexvar_epi32(pairs.pick[p], q);
      const __m256 dw = broadcast_half(w[i].d);
      const __m256 ow = offset(w[i]);
      for (int g = 0; g < kGroups; ++g) {
        __m512i sum = _mm512_setzero_si512();
        for (int p = 0; p < kQK / 8; ++p) {
          sum = _mm512_dpbusd_epi32(sum, wp[p], _mm512_loadu_si512(x[g][i].qs[2 * p]));
        }
        acc[g] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(fold(sum)),
                                 _mm256_mul_ps(dw, _mm256_loadu_ps(x[g][i].d)), acc[g]);
        off[g] = _mm256_fmadd_ps(ow, _mm256_loadu_ps(x[g][i].s), off[g]);
      }
    }
    for (int g = 0; g < kGroups; ++g) {
      alignas(32) float out[kGroupRows];
      _mm256_store_ps(out, _mm256_fmadd_ps(_mm256_set1_ps(offset_factor), off[g], acc[g]));
      for (int k = 0; k < kGroupRows; ++k) {
        a.y[(b0 + g * kGroupRows + k) * a.y_stride + r] = out[k];
      }
    }
  }
}

// Q4_0's nibbles in element order: the low ones (elements 0-15) in the low
// 128 bits, the high ones (16-31) above.
struct Nibbles {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i shift = _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4);
  [[gnu::always_inline]] __m256i operator()(const uint8_t* qs) const {
    const __m256i packed =
        _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs)));
    return _mm256_and_si256(_mm256_srlv_epi32(packed, shift), low4);
  }
};

template <int kGroups>
void group_q4_0(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0) {
  const Nibbles nibbles;
  group_unsigned<BlockQ4_0, kGroups>(
      a, r0, r1, b0, [nibbles](const BlockQ4_0& w) { return nibbles(w.qs); },
      [](const BlockQ4_0& w) { return broadcast_half(w.d); }, -8.0f);
}

// Q4_0 weights repacked sixteen rows at a time (BlockQ4_0x16) against NB
// activation rows. Lane r of a 512-bit register is weight row r: a load and
// a mask (or a shift and a mask) give one 4-element step of all sixteen
// rows, and each activation row's same step, four bytes broadcast from
// memory, meets them in one vpdpbusd; lane r of the sums is output r, so
// there is no permute and no fold. The float work of a block and activation
// row (scale, zero point) then covers sixteen weight rows, where the kernels
// on the GGUF layout spend it on one. Acts says where activation row k's
// block i keeps its scale d, its sum s and step j's four bytes.
template <int NB, typename Acts>
[[gnu::always_inline]] inline void repacked_q4_0(const RowArgs& a, int64_t r0, int64_t r1,
                                                 int64_t b0, const Acts& acts) {
  const int64_t blocks = a.cols / kQK;
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  for (int64_t s = r0; s < r1; s += kInterleavedRows) {
    const auto* w = reinterpret_cast<const BlockQ4_0x16*>(a.w + s * a.w_row_bytes);
    __m512 acc[NB], off[NB];
    for (int k = 0; k < NB; ++k) acc[k] = off[k] = _mm512_setzero_ps();
    for (int64_t i = 0; i < blocks; ++i) {
      prefetch_block(w + i);
      const __m512 dw = _mm512_cvtph_ps(load256(w[i].d));
      __m512i q[kQK / 4];
      for (int c = 0; c < kQK / 8; ++c) {
        const __m512i packed = _mm512_loadu_si512(w[i].qs[c]);
        q[2 * c] = _mm512_and_si512(packed, low4);
        q[2 * c + 1] = _mm512_and_si512(_mm512_srli_epi16(packed, 4), low4);
      }
      for (int k = 0; k < NB; ++k) {
        __m512i sum = _mm512_setzero_si512();
        for (int j = 0; j < kQK / 4; ++j) {
          int32_t xq;
          std::memcpy(&xq, acts.step(k, i, j), sizeof xq);
          sum = _mm512_dpbusd_epi32(sum, q[j], _mm512_set1_epi32(xq));
        }
        acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum),
                                 _mm512_mul_ps(dw, _mm512_set1_ps(acts.d(k, i))), acc[k]);
        off[k] = _mm512_fmadd_ps(dw, _mm512_set1_ps(acts.s(k, i)), off[k]);
      }
    }
    const __m512 minus8 = _mm512_set1_ps(-8.0f);
    for (int k = 0; k < NB; ++k) {
      _mm512_storeu_ps(a.y + (b0 + k) * a.y_stride + s, _mm512_fmadd_ps(minus8, off[k], acc[k]));
    }
  }
}

// An ActQ8x8 group. Per lane the float operations are group_q4_0's, in its
// order, so the results are its bits.
struct GroupActs {
  const ActQ8x8* x;
  const int8_t* step(int k, int64_t i, int j) const { return x[i].qs[j][k]; }
  float d(int k, int64_t i) const { return x[i].d[k]; }
  float s(int k, int64_t i) const { return x[i].s[k]; }
};
void group_q4_0x16(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0) {
  repacked_q4_0<kGroupRows>(a, r0, r1, b0, GroupActs{act_row<ActQ8x8>(a, b0)});
}

// Runs tile(std::integral_constant<int, NB>) for the tile height nb of a
// RowKernel call (1-4 activation rows; kMaxTile is 4).
template <typename Tile>
void for_tile_height(int nb, Tile&& tile) {
  switch (nb) {
    case 1:
      return tile(std::integral_constant<int, 1>{});
    case 2:
      return tile(std::integral_constant<int, 2>{});
    case 3:
      return tile(std::integral_constant<int, 3>{});
    default:
      return tile(std::integral_constant<int, 4>{});
  }
}

// Up to kMaxTile ActQ8 rows (decode, and the rows after the groups). The
// AVX2 kernel on the GGUF layout sums eight lanes per row instead, so the
// results differ from it in float summation order only.
template <int NB>
struct RowActs {
  const ActQ8* x[NB];
  const int8_t* step(int k, int64_t i, int j) const { return x[k][i].qs + 4 * j; }
  float d(int k, int64_t i) const { return x[k][i].d; }
  float s(int k, int64_t i) const { return x[k][i].s; }
};
template <int NB>
void rows_q4_0x16_tile(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0) {
  RowActs<NB> acts;
  for (int k = 0; k < NB; ++k) acts.x[k] = act_row<ActQ8>(a, b0 + k);
  repacked_q4_0<NB>(a, r0, r1, b0, acts);
}
void rows_q4_0x16(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  for_tile_height(nb, [&](auto height) { rows_q4_0x16_tile<height()>(a, r0, r1, b0); });
}

// Q5_0 and Q5_1: the nibbles plus the fifth bit, which a byte mask moves
// straight from qh (bit j for element j) into bit 4 of byte j.
template <typename Block>
void group_q5(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0) {
  constexpr bool kHasMin = std::is_same_v<Block, BlockQ5_1>;
  const Nibbles nibbles;
  const __m256i fifth = _mm256_set1_epi8(0x10);
  group_unsigned<Block>(
      a, r0, r1, b0,
      [nibbles, fifth](const Block& w) {
        uint32_t qh;
        std::memcpy(&qh, w.qh, sizeof qh);
        return _mm256_or_si256(nibbles(w.qs), _mm256_maskz_mov_epi8(qh, fifth));
      },
      [](const Block& w) {
        if constexpr (kHasMin) {
          return broadcast_half(w.m);
        } else {
          return broadcast_half(w.d);
        }
      },
      kHasMin ? 1.0f : -16.0f);
}

// The sums of level dwords [2 * p0, 2 * p0 + 2 * n) of `levels` with the
// same steps of the eight rows from xq (an ActQ8Kx8's qs at the first of
// them): lanes 0-7 the even steps, 8-15 the odd ones.
template <int kPairs>
[[gnu::always_inline]] inline __m512i dot_steps(__m512i levels, const StepPairs& pairs, int p0,
                                                const int8_t* xq) {
  __m512i sum = _mm512_setzero_si512();
  for (int p = 0; p < kPairs; ++p) {
    sum = _mm512_dpbusd_epi32(sum, _mm512_permutexvar_epi32(pairs.pick[p0 + p], levels),
                              _mm512_loadu_si512(xq + 64 * p));
  }
  return sum;
}

// A super block's eight 32-element sub-blocks against an ActQ8Kx8 group,
// each times its sub-block scale (scale[sub]), summed per lane: the step
// pairs of sub-blocks 2j and 2j + 1 come from expand(w, j), 64 levels.
template <typename Expand, typename Block, typename Scale>
[[gnu::always_inline]] inline __m512i scaled_sub_blocks(const Expand& expand, const Block& w,
                                                        const StepPairs& pairs, const ActQ8Kx8& x,
                                                        const Scale* scale) {
  __m512i sum = _mm512_setzero_si512();
  for (int j = 0; j < 4; ++j) {
    const __m512i levels = expand(w, j);
    for (int h = 0; h < 2; ++h) {
      const int sub = 2 * j + h;
      const __m512i dot = dot_steps<4>(levels, pairs, 4 * h, x.qs[8 * sub][0]);
      sum = _mm512_add_epi32(sum, _mm512_mullo_epi32(dot, _mm512_set1_epi32(scale[sub])));
    }
  }
  return sum;
}

// The group's activation sums per 32-element sub-block, each times
// scale[p] for sub-block p (mins, or a grid offset): lane k is row k.
template <typename Scale>
[[gnu::always_inline]] inline __m256i scaled_bsums(const ActQ8Kx8& x, const Scale* scale) {
  __m256i total = _mm256_setzero_si256();
  for (int p = 0; p < kQKK / 32; ++p) {
    total = _mm256_add_epi32(total,
                             _mm256_madd_epi16(load256(x.bsums[p]), _mm256_set1_epi16(scale[p])));
  }
  return total;
}

// Stores a group's eight results of row r.
inline void store_group(const RowArgs& a, int64_t r, int64_t b0, __m256 result) {
  alignas(32) float out[kGroupRows];
  _mm256_store_ps(out, result);
  for (int k = 0; k < kGroupRows; ++k) a.y[(b0 + k) * a.y_stride + r] = out[k];
}

// The levels of a Q4_K or Q5_K super block, 64 at a time in element
// order: each 32 bytes of nibbles hold two sub-blocks (low nibbles the
// first), so one broadcast, shift and mask gives elements 64j .. 64j + 63.
// Q5_K's fifth bits (bit 2j of qh[l] for element 64j + l, bit 2j + 1 for
// 64j + 32 + l) are tested straight into a 64-bit mask, under which bit 4
// is added.
template <typename Block>
struct ScaleMinLevels {
  static constexpr bool kFifthBit = std::is_same_v<Block, BlockQ5_K>;
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  const __m512i shift = _mm512_setr_epi64(0, 0, 0, 0, 4, 4, 4, 4);
  const __m512i fifth = _mm512_set1_epi8(0x10);
  __m512i fifth_bit[4];  // bit 2j in the low half's bytes, 2j + 1 in the high half's
  ScaleMinLevels() {
    for (int j = 0; j < 4; ++j) {
      fifth_bit[j] = _mm512_inserti64x4(_mm512_set1_epi8(static_cast<char>(1 << (2 * j))),
                                        _mm256_set1_epi8(static_cast<char>(2 << (2 * j))), 1);
    }
  }
  [[gnu::always_inline]] __m512i operator()(const Block& w, int j) const {
    const __m512i packed = _mm512_broadcast_i64x4(load256(w.qs + 32 * j));
    const __m512i levels = _mm512_and_si512(_mm512_srlv_epi64(packed, shift), low4);
    if constexpr (kFifthBit) {
      const __m512i qh = _mm512_broadcast_i64x4(load256(w.qh));
      return _mm512_mask_add_epi8(levels, _mm512_test_epi8_mask(qh, fifth_bit[j]), levels, fifth);
    } else {
      return levels;
    }
  }
};

// Q4_K and Q5_K weights against an ActQ8Kx8 group: the steps of each 64
// levels meet all eight rows as in group_q4_0. Each sub-block's int32 sums
// are multiplied by its 6-bit scale, so the super block stays in integers
// (the reference's) until one float FMA; the mins meet the activations'
// 32-element sums in one madd per sub-block. Q5_K's levels up to 31 are as
// unsigned for vpdpbusd as Q4_K's.
template <typename Block>
void group_scale_min_k(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0) {
  const int64_t blocks = a.cols / kQKK;
  const auto* x = act_row<ActQ8Kx8>(a, b0);
  const StepPairs pairs;
  const ScaleMinLevels<Block> expand;
  for (int64_t r = r0; r < r1; ++r) {
    const Block* w = weight_row<Block>(a, r);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < blocks; ++i) {
      prefetch_block(w + i);
      uint8_t sm[16];
      unpack_q4k_scales(w[i].scales, sm);
      const __m512i sum = scaled_sub_blocks(expand, w[i], pairs, x[i], sm);
      const __m256i min_sum = scaled_bsums(x[i], sm + 8);
      const __m256 dx = _mm256_loadu_ps(x[i].d);
      acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(fold(sum)),
                            _mm256_mul_ps(broadcast_half(w[i].d), dx), acc);
      acc = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(min_sum),
                             _mm256_mul_ps(broadcast_half(w[i].dmin), dx), acc);
    }
    store_group(a, r, b0, acc);
  }
}

// Q6_K weights against an ActQ8Kx8 group, as group_scale_min_k with a signed
// scale per 16 elements. Its levels (0-63) are built 64 at a time: the low
// nibbles of a 64-byte ql load, with the 2-bit pairs of qh shifted by 0 (low
// half) and 2 (high half) into bits 4-5, give elements 0-63 of a 128-element
// half; the high nibbles with the next pairs give 64-127. The 32 offset
// comes back as 32 times the scaled activation sums, once per block.
void group_q6_k(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0) {
  const int64_t blocks = a.cols / kQKK;
  const auto* x = act_row<ActQ8Kx8>(a, b0);
  const StepPairs pairs;
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  const __m512i bits45 = _mm512_set1_epi8(0x30);
  const __m512i qh_shift = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
  for (int64_t r = r0; r < r1; ++r) {
    const BlockQ6_K* w = weight_row<BlockQ6_K>(a, r);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < blocks; ++i) {
      prefetch_block(w + i);
      const int8_t* sc = w[i].scales;
      __m512i sum = _mm512_setzero_si512();
      for (int h = 0; h < 2; ++h) {
        const __m512i ql = _mm512_loadu_si512(w[i].ql + 64 * h);
        const __m512i qh =
            _mm512_srlv_epi16(_mm512_broadcast_i64x4(load256(w[i].qh + 32 * h)), qh_shift);
        const __m512i levels[2] = {
            _mm512_or_si512(_mm512_and_si512(ql, low4),
                            _mm512_and_si512(_mm512_slli_epi16(qh, 4), bits45)),
            _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), low4),
                            _mm512_and_si512(qh, bits45)),
        };
        for (int c = 0; c < 2; ++c) {
          for (int q = 0; q < 4; ++q) {
            const int g = 8 * h + 4 * c + q;  // 16-element group: four steps
            const __m512i dot = dot_steps<2>(levels[c], pairs, 2 * q, x[i].qs[4 * g][0]);
            sum = _mm512_add_epi32(sum, _mm512_mullo_epi32(dot, _mm512_set1_epi32(sc[g])));
          }
        }
      }
      __m256i offset = _mm256_setzero_si256();
      for (int p = 0; p < kQKK / 32; ++p) {
        const uint32_t pair = static_cast<uint16_t>(sc[2 * p]) |
                              static_cast<uint32_t>(static_cast<uint16_t>(sc[2 * p + 1])) << 16;
        offset = _mm256_add_epi32(
            offset,
            _mm256_madd_epi16(load256(x[i].bsums[p]), _mm256_set1_epi32(static_cast<int>(pair))));
      }
      const __m256i total = _mm256_sub_epi32(fold(sum), _mm256_slli_epi32(offset, 5));
      acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total),
                            _mm256_mul_ps(broadcast_half(w[i].d), _mm256_loadu_ps(x[i].d)), acc);
    }
    store_group(a, r, b0, acc);
  }
}

// Both halves of a 512-bit vector set to v.
inline __m512 widen(__m256 v) {
  return _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(v)));
}

// Decode and the rows left over after the groups: 512-bit versions of the
// AVX2 K-quant tile kernels (up to kMaxTile activation rows), 64 elements
// per vector where AVX2 takes 32. The levels are expanded as in the group
// kernels; each 16-bit lane pair of a maddubs meets its sub-block's scale in
// one madd (a vpermw spreads the scales over the lanes), so a super block
// stays in int32 until one float FMA.
//
// Q4_K and Q5_K: levels as in group_scale_min_k (Q5_K's up to 31: a
// maddubs pair sum stays below 2 * 31 * 128, far from int16 saturation).
template <typename ScaleMinBlock>
struct ScaleMinKRows {
  using Block = ScaleMinBlock;
  const ScaleMinLevels<Block> expand;
  // Scale 2j in the low 256 bits' int16 lanes, 2j + 1 in the high ones.
  __m512i pick[4];
  ScaleMinKRows() {
    for (int j = 0; j < 4; ++j) {
      pick[j] = _mm512_inserti64x4(_mm512_set1_epi16(static_cast<int16_t>(2 * j)),
                                   _mm256_set1_epi16(static_cast<int16_t>(2 * j + 1)), 1);
    }
  }

  template <int NB>
  [[gnu::always_inline]] void operator()(const Block& w, const ActQ8K* const* x, __m512* acc,
                                         __m256* acc_min) const {
    alignas(16) uint8_t sm[16];
    unpack_q4k_scales(w.scales, sm);
    const __m128i sm128 = _mm_load_si128(reinterpret_cast<const __m128i*>(sm));
    const __m512i scales = _mm512_castsi256_si512(_mm256_cvtepu8_epi16(sm128));
    const __m128i mins = _mm_cvtepu8_epi16(_mm_srli_si128(sm128, 8));
    __m512i sum[NB];
    for (int k = 0; k < NB; ++k) sum[k] = _mm512_setzero_si512();
    for (int j = 0; j < 4; ++j) {
      const __m512i q = expand(w, j);
      const __m512i s = _mm512_permutexvar_epi16(pick[j], scales);
      for (int k = 0; k < NB; ++k) {
        const __m512i xq = _mm512_loadu_si512(x[k]->qs + 64 * j);
        sum[k] = _mm512_add_epi32(sum[k], _mm512_madd_epi16(_mm512_maddubs_epi16(q, xq), s));
      }
    }
    const __m256 d = broadcast_half(w.d);
    const __m256 dmin = broadcast_half(w.dmin);
    for (int k = 0; k < NB; ++k) {
      const __m128i bs_lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x[k]->bsums));
      const __m128i bs_hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x[k]->bsums + 8));
      const __m128i pm = _mm_madd_epi16(mins, _mm_hadd_epi16(bs_lo, bs_hi));
      const __m256 dx = _mm256_broadcast_ss(&x[k]->d);
      acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[k]), widen(_mm256_mul_ps(d, dx)), acc[k]);
      acc_min[k] = _mm256_fmadd_ps(_mm256_zextps128_ps256(_mm_cvtepi32_ps(pm)),
                                   _mm256_mul_ps(dmin, dx), acc_min[k]);
    }
  }
};

// Q6_K: levels as in group_q6_k, a signed scale per 16 elements (eight
// int16 lanes of a maddubs), the 32 offset taken out of the integer sums
// through the activation sums.
struct Q6_KRows {
  using Block = BlockQ6_K;
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  const __m512i bits45 = _mm512_set1_epi8(0x30);
  const __m512i qh_shift = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
  // Scales 4v .. 4v + 3, each over eight int16 lanes, for the v-th 64 elements.
  __m512i pick[4];
  Q6_KRows() {
    alignas(64) int16_t idx[32];
    for (int v = 0; v < 4; ++v) {
      for (int t = 0; t < 32; ++t) idx[t] = static_cast<int16_t>(4 * v + t / 8);
      pick[v] = _mm512_load_si512(idx);
    }
  }

  template <int NB>
  [[gnu::always_inline]] void operator()(const Block& w, const ActQ8K* const* x, __m512* acc,
                                         __m256*) const {
    const __m256i sc16 =
        _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.scales)));
    const __m512i scales = _mm512_castsi256_si512(sc16);
    __m512i sum[NB];
    for (int k = 0; k < NB; ++k) sum[k] = _mm512_setzero_si512();
    for (int h = 0; h < 2; ++h) {
      const __m512i ql = _mm512_loadu_si512(w.ql + 64 * h);
      const __m512i qh =
          _mm512_srlv_epi16(_mm512_broadcast_i64x4(load256(w.qh + 32 * h)), qh_shift);
      const __m512i levels[2] = {
          _mm512_or_si512(_mm512_and_si512(ql, low4),
                          _mm512_and_si512(_mm512_slli_epi16(qh, 4), bits45)),
          _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), low4),
                          _mm512_and_si512(qh, bits45)),
      };
      for (int c = 0; c < 2; ++c) {
        const __m512i s = _mm512_permutexvar_epi16(pick[2 * h + c], scales);
        for (int k = 0; k < NB; ++k) {
          const __m512i xq = _mm512_loadu_si512(x[k]->qs + 128 * h + 64 * c);
          sum[k] =
              _mm512_add_epi32(sum[k], _mm512_madd_epi16(_mm512_maddubs_epi16(levels[c], xq), s));
        }
      }
    }
    const __m256 d = broadcast_half(w.d);
    for (int k = 0; k < NB; ++k) {
      const __m256i offset = _mm256_slli_epi32(_mm256_madd_epi16(sc16, load256(x[k]->bsums)), 5);
      const __m512i total = _mm512_sub_epi32(sum[k], _mm512_zextsi256_si512(offset));
      const __m256 scale = _mm256_mul_ps(d, _mm256_broadcast_ss(&x[k]->d));
      acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(total), widen(scale), acc[k]);
    }
  }
};

// Runs a 512-bit super-block step over whole rows for NB activation rows:
// the result is the sum of acc's lanes less the sum of acc_min's.
template <typename Step>
struct SuperBlockRows {
  template <int NB>
  static void run(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0) {
    using Block = typename Step::Block;
    const Step step;
    const int64_t blocks = a.cols / kQKK;
    const ActQ8K* x[NB];
    for (int k = 0; k < NB; ++k) x[k] = act_row<ActQ8K>(a, b0 + k);
    for (int64_t r = r0; r < r1; ++r) {
      const Block* w = weight_row<Block>(a, r);
      __m512 acc[NB];
      __m256 acc_min[NB];
      for (int k = 0; k < NB; ++k) {
        acc[k] = _mm512_setzero_ps();
        acc_min[k] = _mm256_setzero_ps();
      }
      for (int64_t i = 0; i < blocks; ++i) {
        prefetch_block(w + i);
        const ActQ8K* xi[NB];
        for (int k = 0; k < NB; ++k) xi[k] = x[k] + i;
        step.template operator()<NB>(w[i], xi, acc, acc_min);
      }
      for (int k = 0; k < NB; ++k) {
        const __m256 total = _mm256_sub_ps(
            _mm256_add_ps(_mm512_castps512_ps256(acc[k]),
                          _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[k]), 1))),
            acc_min[k]);
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(total), _mm256_extractf128_ps(total, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        a.y[(b0 + k) * a.y_stride + r] = _mm_cvtss_f32(s);
      }
    }
  }
};

template <typename Step>
void rows_super_blocks(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  for_tile_height(
      nb, [&](auto height) { SuperBlockRows<Step>::template run<height()>(a, r0, r1, b0); });
}

// Two 32-byte runs (of adjacent blocks) in one 512-bit register, the first
// in the low half.
inline __m512i load_pair(const void* lo, const void* hi) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(load256(lo)), load256(hi), 1);
}

// Permute indexes: element lo into lanes 0-7, hi into lanes 8-15 (words of
// the low 256 bits, or dwords).
inline __m512i pick_words(int lo, int hi) {
  const __m128i l = _mm_set1_epi16(static_cast<int16_t>(lo));
  const __m128i h = _mm_set1_epi16(static_cast<int16_t>(hi));
  return _mm512_castsi256_si512(_mm256_inserti128_si256(_mm256_castsi128_si256(l), h, 1));
}
inline __m512i pick_dwords(int lo, int hi) {
  return _mm512_inserti64x4(_mm512_set1_epi32(lo), _mm256_set1_epi32(hi), 1);
}

// The 16-bit words of blocks w[0] and w[1], and none past them.
template <typename Block>
inline __m512i pair_words(const Block* w) {
  constexpr int kWords = sizeof(Block);  // two blocks of sizeof / 2 words
  if constexpr (kWords >= 32) {
    return _mm512_loadu_si512(w);
  } else {
    return _mm512_maskz_loadu_epi16((1u << kWords) - 1, w);
  }
}

// Two Q4_0-layout blocks' nibbles in element order: block lo's low nibbles
// (elements 0-15), its high ones, then block hi's.
struct NibblePairs {
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  const __m512i shift = _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4);
  [[gnu::always_inline]] __m512i operator()(const uint8_t* lo, const uint8_t* hi) const {
    const __m512i packed = _mm512_mask_broadcast_i32x4(
        _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(lo))), 0xFF00,
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(hi)));
    return _mm512_and_si512(_mm512_srlv_epi64(packed, shift), low4);
  }
};

// Signed weight levels of two blocks (pair) or one (single).
struct Q8_0Levels {
  using Block = BlockQ8_0;
  [[gnu::always_inline]] __m512i pair(const Block* w) const { return load_pair(w[0].qs, w[1].qs); }
  [[gnu::always_inline]] __m256i single(const Block& w) const { return load256(w.qs); }
};
// IQ4_NL: the nibbles index the grid with one byte shuffle per 128 bits.
struct IQ4_NLLevels {
  using Block = BlockIQ4_NL;
  const NibblePairs nibble_pairs;
  const Nibbles nibbles;
  const __m512i grid =
      _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4nlValues)));
  [[gnu::always_inline]] __m512i pair(const Block* w) const {
    return _mm512_shuffle_epi8(grid, nibble_pairs(w[0].qs, w[1].qs));
  }
  [[gnu::always_inline]] __m256i single(const Block& w) const {
    return _mm256_shuffle_epi8(_mm512_castsi512_si256(grid), nibbles(w.qs));
  }
};

// IQ4_NL weights against an ActQ8x8 group, as group_q8_0 but with the
// grid looked up plus 128 (1-241, unsigned for vpdpbusd) as IQ4_XS's is.
// ActQ8x8 keeps no integer sums, so each step pair's 128 times the eight
// rows' activations is summed by a second vpdpbusd beside the dot and taken
// out before the one float FMA: the reference's integer, at most 32 * 241 *
// 127 on the way.
void group_iq4_nl(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0) {
  const int64_t blocks = a.cols / kQK;
  const auto* x = act_row<ActQ8x8>(a, b0);
  const StepPairs pairs;
  const Nibbles nibbles;
  const __m256i grid = _mm256_xor_si256(
      _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4nlValues))),
      _mm256_set1_epi8(static_cast<char>(0x80)));
  const __m512i offset = _mm512_set1_epi8(static_cast<char>(0x80));
  for (int64_t r = r0; r < r1; ++r) {
    const BlockIQ4_NL* w = weight_row<BlockIQ4_NL>(a, r);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < blocks; ++i) {
      prefetch_ahead(w + i);
      const __m512i q = _mm512_zextsi256_si512(_mm256_shuffle_epi8(grid, nibbles(w[i].qs)));
      __m512i sum = _mm512_setzero_si512();
      __m512i shifted = _mm512_setzero_si512();
      for (int p = 0; p < kQK / 8; ++p) {
        const __m512i xp = _mm512_loadu_si512(x[i].qs[2 * p]);
        sum = _mm512_dpbusd_epi32(sum, _mm512_permutexvar_epi32(pairs.pick[p], q), xp);
        shifted = _mm512_dpbusd_epi32(shifted, offset, xp);
      }
      const __m256 scale = _mm256_mul_ps(broadcast_half(w[i].d), _mm256_loadu_ps(x[i].d));
      acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(fold(sum), fold(shifted))), scale,
                            acc);
    }
    store_group(a, r, b0, acc);
  }
}

// Q8_0 and IQ4_NL decode and the rows after the groups (up to kMaxTile
// activation rows): two blocks per 512-bit register, |w| times x with w's
// sign in one vpdpbusd as in group_q8_0, each block's eight int32 lanes
// scaled by its own d_w * d_x in one FMA per pair. Both blocks' scales lie
// within 64 bytes of the first, so one load and one permute spread them
// over the lanes. One activation row gets two accumulators so a pair does
// not wait on the previous pair's FMA.
template <typename Levels, int NB>
void rows_signed_tile(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0) {
  using Block = typename Levels::Block;
  constexpr int kChains = NB == 1 ? 2 : 1;
  const Levels levels;
  const int64_t blocks = a.cols / kQK;
  const ActQ8* x[NB];
  for (int k = 0; k < NB; ++k) x[k] = act_row<ActQ8>(a, b0 + k);
  const __m512i zero = _mm512_setzero_si512();
  const __m512i pick_dw = pick_words(0, sizeof(Block) / 2);
  const __m512i pick_dx = pick_dwords(0, sizeof(ActQ8) / sizeof(float));
  // Blocks i and i + 1 into acc.
  const auto pair = [&](const Block* w, int64_t i, __m512* acc) {
    const __m512i q = levels.pair(w + i);
    const __m512i q_abs = _mm512_abs_epi8(q);
    const __mmask64 negative = _mm512_movepi8_mask(q);
    const __m512 dw = _mm512_cvtph_ps(
        _mm512_castsi512_si256(_mm512_permutexvar_epi16(pick_dw, pair_words(w + i))));
    for (int k = 0; k < NB; ++k) {
      const __m512i xq = load_pair(x[k][i].qs, x[k][i + 1].qs);
      // x with w's sign: negated where w < 0 (where w is 0, |w| is too).
      const __m512i xs = _mm512_mask_sub_epi8(xq, negative, zero, xq);
      const __m512i p = _mm512_dpbusd_epi32(zero, q_abs, xs);
      const __m512 dx = _mm512_permutexvar_ps(pick_dx, _mm512_loadu_ps(&x[k][i].d));
      acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(dw, dx), acc[k]);
    }
  };
  // The last block of an odd count, in the low half.
  const auto single = [&](const Block& w, int64_t i, __m512* acc) {
    const __m512i q = _mm512_zextsi256_si512(levels.single(w));
    const __m512i q_abs = _mm512_abs_epi8(q);
    const __mmask64 negative = _mm512_movepi8_mask(q);
    const __m512 dw = _mm512_castps256_ps512(broadcast_half(w.d));
    for (int k = 0; k < NB; ++k) {
      const __m512i xq = _mm512_zextsi256_si512(load256(x[k][i].qs));
      const __m512i xs = _mm512_mask_sub_epi8(xq, negative, zero, xq);
      const __m512i p = _mm512_dpbusd_epi32(zero, q_abs, xs);
      const __m512 scale = _mm512_maskz_mul_ps(0xFF, dw, _mm512_set1_ps(x[k][i].d));
      acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), scale, acc[k]);
    }
  };
  for (int64_t r = r0; r < r1; ++r) {
    const Block* w = weight_row<Block>(a, r);
    __m512 acc[kChains][NB];
    for (int c = 0; c < kChains; ++c) {
      for (int k = 0; k < NB; ++k) acc[c][k] = _mm512_setzero_ps();
    }
    int64_t i = 0;
    for (; i + 2 * kChains <= blocks; i += 2 * kChains) {
      for (size_t off = 0; off < 2 * kChains * sizeof(Block); off += 64) {
        prefetch_ahead(reinterpret_cast<const char*>(w + i) + off);
      }
      for (int c = 0; c < kChains; ++c) pair(w, i + 2 * c, acc[c]);
    }
    for (; i + 2 <= blocks; i += 2) pair(w, i, acc[0]);
    if (i < blocks) single(w[i], i, acc[0]);
    for (int k = 0; k < NB; ++k) {
      for (int c = 1; c < kChains; ++c) acc[0][k] = _mm512_add_ps(acc[0][k], acc[c][k]);
      a.y[(b0 + k) * a.y_stride + r] = _mm512_reduce_add_ps(acc[0][k]);
    }
  }
}

template <typename Levels>
void rows_signed(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  for_tile_height(nb, [&](auto height) { rows_signed_tile<Levels, height()>(a, r0, r1, b0); });
}

// Q5_0 and Q5_1 decode and the rows after the groups, as rows_signed_tile:
// two blocks per register, their nibbles broadcast into place (low nibbles
// of block i, high ones, then block i + 1's) and the fifth bits added under
// a 64-bit mask of both qh, as unsigned levels for vpdpbusd; the zero point
// (Q5_0's -16 d, Q5_1's m) comes back through the activation sums, once
// per block (lanes 0 and 8 of the offset accumulator), as in AVX2.
template <typename Block, int NB>
void rows_q5_tile(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0) {
  constexpr bool kHasMin = std::is_same_v<Block, BlockQ5_1>;
  constexpr float kOffsetFactor = kHasMin ? 1.0f : -16.0f;
  constexpr int kChains = NB == 1 ? 2 : 1;
  constexpr int kWords = sizeof(Block) / 2;  // block i + 1's d is word kWords
  const int64_t blocks = a.cols / kQK;
  const ActQ8* x[NB];
  for (int k = 0; k < NB; ++k) x[k] = act_row<ActQ8>(a, b0 + k);
  const NibblePairs nibble_pairs;
  const __m512i fifth = _mm512_set1_epi8(0x10);
  const __m512i pick_d = pick_words(0, kWords);
  const __m512i pick_m = pick_words(1, kWords + 1);  // Q5_1's m follows d
  const __m512i pick_dx = pick_dwords(0, sizeof(ActQ8) / sizeof(float));
  const __m512i pick_s = pick_dwords(1, sizeof(ActQ8) / sizeof(float) + 1);
  // Blocks i and i + 1 into acc and off.
  const auto pair = [&](const Block* w, int64_t i, __m512* acc, __m512* off) {
    uint32_t qh[2];
    std::memcpy(&qh[0], w[i].qh, 4);
    std::memcpy(&qh[1], w[i + 1].qh, 4);
    const __m512i nib = nibble_pairs(w[i].qs, w[i + 1].qs);
    const __m512i q =
        _mm512_mask_add_epi8(nib, qh[0] | static_cast<uint64_t>(qh[1]) << 32, nib, fifth);
    const __m512i halves = pair_words(w + i);
    const __m512 dw =
        _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(pick_d, halves)));
    __m512 ow = dw;
    if constexpr (kHasMin) {
      ow = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(pick_m, halves)));
    }
    for (int k = 0; k < NB; ++k) {
      const __m512i xq = load_pair(x[k][i].qs, x[k][i + 1].qs);
      const __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, xq);
      const __m512 xd = _mm512_loadu_ps(&x[k][i].d);
      const __m512 scale = _mm512_mul_ps(dw, _mm512_permutexvar_ps(pick_dx, xd));
      acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), scale, acc[k]);
      off[k] = _mm512_mask3_fmadd_ps(ow, _mm512_permutexvar_ps(pick_s, xd), off[k], 0x0101);
    }
  };
  // The last block of an odd count, in the low half.
  const Nibbles nibbles;
  const auto single = [&](const Block& w, int64_t i, __m512* acc, __m512* off) {
    uint32_t qh;
    std::memcpy(&qh, w.qh, sizeof qh);
    const __m512i q = _mm512_zextsi256_si512(
        _mm256_or_si256(nibbles(w.qs), _mm256_maskz_mov_epi8(qh, _mm512_castsi512_si256(fifth))));
    const __m256 dw = broadcast_half(w.d);
    __m256 ow = dw;
    if constexpr (kHasMin) ow = broadcast_half(w.m);
    for (int k = 0; k < NB; ++k) {
      const __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q,
                                            _mm512_zextsi256_si512(load256(x[k][i].qs)));
      const __m256 scale = _mm256_mul_ps(dw, _mm256_set1_ps(x[k][i].d));
      acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_zextps256_ps512(scale), acc[k]);
      off[k] = _mm512_mask3_fmadd_ps(_mm512_zextps256_ps512(ow), _mm512_set1_ps(x[k][i].s), off[k],
                                     0x0001);
    }
  };
  for (int64_t r = r0; r < r1; ++r) {
    const Block* w = weight_row<Block>(a, r);
    __m512 acc[kChains][NB], off[kChains][NB];
    for (int c = 0; c < kChains; ++c) {
      for (int k = 0; k < NB; ++k) acc[c][k] = off[c][k] = _mm512_setzero_ps();
    }
    int64_t i = 0;
    for (; i + 2 * kChains <= blocks; i += 2 * kChains) {
      for (size_t o = 0; o < 2 * kChains * sizeof(Block); o += 64) {
        prefetch_ahead(reinterpret_cast<const char*>(w + i) + o);
      }
      for (int c = 0; c < kChains; ++c) pair(w, i + 2 * c, acc[c], off[c]);
    }
    for (; i + 2 <= blocks; i += 2) pair(w, i, acc[0], off[0]);
    if (i < blocks) single(w[i], i, acc[0], off[0]);
    for (int k = 0; k < NB; ++k) {
      for (int c = 1; c < kChains; ++c) {
        acc[0][k] = _mm512_add_ps(acc[0][k], acc[c][k]);
        off[0][k] = _mm512_add_ps(off[0][k], off[c][k]);
      }
      a.y[(b0 + k) * a.y_stride + r] =
          _mm512_reduce_add_ps(acc[0][k]) + kOffsetFactor * _mm512_reduce_add_ps(off[0][k]);
    }
  }
}

template <typename Block>
void rows_q5(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, int nb) {
  for_tile_height(nb, [&](auto height) { rows_q5_tile<Block, height()>(a, r0, r1, b0); });
}

// IQ4_XS's eight signed sub-block scales (-32..31) in the low eight bytes:
// scales_l's nibbles and scales_h's bit pairs, each spread to a byte per
// sub-block by shifts and masks within one 64-bit word.
inline __m128i iq4xs_scales(const BlockIQ4_XS& w) {
  uint32_t packed_low;
  std::memcpy(&packed_low, w.scales_l, sizeof packed_low);
  uint64_t low = packed_low;
  low = (low | low << 16) & 0x0000FFFF0000FFFFull;
  low = (low | low << 8) & 0x00FF00FF00FF00FFull;
  low = (low | low << 4) & 0x0F0F0F0F0F0F0F0Full;
  uint64_t high = w.scales_h;
  high = (high | high << 24) & 0x000000FF000000FFull;
  high = (high | high << 12) & 0x000F000F000F000Full;
  high = (high | high << 6) & 0x0303030303030303ull;
  return _mm_sub_epi8(_mm_cvtsi64_si128(static_cast<int64_t>(low | high << 4)), _mm_set1_epi8(32));
}

// IQ4_XS's levels 64 at a time in element order (sub-blocks 2j and
// 2j + 1, each in Q4_0's nibble order), as unsigned grid values plus 128
// (1-241) for vpdpbusd: the 128 comes back through the activation sums, 128
// times each sub-block's scale times its 32-element sum, once per block.
struct IQ4_XSLevels {
  const NibblePairs nibble_pairs;
  const __m512i grid = _mm512_xor_si512(
      _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4nlValues))),
      _mm512_set1_epi8(static_cast<char>(0x80)));
  [[gnu::always_inline]] __m512i operator()(const BlockIQ4_XS& w, int j) const {
    return _mm512_shuffle_epi8(grid, nibble_pairs(w.qs + 32 * j, w.qs + 32 * j + 16));
  }
};

// IQ4_XS weights against an ActQ8Kx8 group, as group_scale_min_k: the
// int32 sums of each sub-block times its scale, less the 128 offset, make
// the reference's integer until one float FMA. At most 8 * 32 * 32 * 241 *
// 128 (the dots) and 128 * 8 * 32 * 32 * 128 (the offset): within int32.
void group_iq4_xs(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0) {
  const int64_t blocks = a.cols / kQKK;
  const auto* x = act_row<ActQ8Kx8>(a, b0);
  const StepPairs pairs;
  const IQ4_XSLevels expand;
  for (int64_t r = r0; r < r1; ++r) {
    const BlockIQ4_XS* w = weight_row<BlockIQ4_XS>(a, r);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < blocks; ++i) {
      prefetch_block(w + i);
      alignas(16) int8_t sc[16];
      _mm_store_si128(reinterpret_cast<__m128i*>(sc), iq4xs_scales(w[i]));
      const __m512i sum = scaled_sub_blocks(expand, w[i], pairs, x[i], sc);
      const __m256i offset = scaled_bsums(x[i], sc);
      const __m256i total = _mm256_sub_epi32(fold(sum), _mm256_slli_epi32(offset, 7));
      acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total),
                            _mm256_mul_ps(broadcast_half(w[i].d), _mm256_loadu_ps(x[i].d)), acc);
    }
    store_group(a, r, b0, acc);
  }
}

// IQ4_XS decode and the rows after the groups: the levels of
// group_iq4_xs, each 64 elements against a row in one vpdpbusd (lanes 0-7
// sub-block 2j, 8-15 sub-block 2j + 1), times the two scales in one
// multiply; the offset is taken out of the integer sums as Q6_K's is.
struct IQ4_XSRows {
  using Block = BlockIQ4_XS;
  const IQ4_XSLevels expand;
  const StepPairs pairs;

  template <int NB>
  [[gnu::always_inline]] void operator()(const Block& w, const ActQ8K* const* x, __m512* acc,
                                         __m256*) const {
    const __m128i sc8 = iq4xs_scales(w);
    const __m128i sc16 = _mm_cvtepi8_epi16(sc8);
    const __m512i sc32 = _mm512_castsi256_si512(_mm256_cvtepi8_epi32(sc8));
    __m512i sum[NB];
    for (int k = 0; k < NB; ++k) sum[k] = _mm512_setzero_si512();
    for (int j = 0; j < 4; ++j) {
      const __m512i q = expand(w, j);
      const __m512i s = _mm512_permutexvar_epi32(pairs.pick[j], sc32);
      for (int k = 0; k < NB; ++k) {
        const __m512i dot =
            _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, _mm512_loadu_si512(x[k]->qs + 64 * j));
        sum[k] = _mm512_add_epi32(sum[k], _mm512_mullo_epi32(dot, s));
      }
    }
    const __m256 d = broadcast_half(w.d);
    for (int k = 0; k < NB; ++k) {
      const __m128i bs_lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x[k]->bsums));
      const __m128i bs_hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x[k]->bsums + 8));
      const __m128i offset = _mm_slli_epi32(_mm_madd_epi16(sc16, _mm_hadd_epi16(bs_lo, bs_hi)), 7);
      const __m512i total = _mm512_sub_epi32(sum[k], _mm512_zextsi128_si512(offset));
      const __m256 scale = _mm256_mul_ps(d, _mm256_broadcast_ss(&x[k]->d));
      acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(total), widen(scale), acc[k]);
    }
  }
};

// Q2_K's and Q3_K's levels 64 at a time in element order: the 32 bytes of
// a 128-element half hold four 32-element chunks two bits each, so one
// broadcast, shift (chunks 2c and 2c + 1 of elements 64v .. 64v + 63, v =
// 2h + c) and mask gives them. Q3_K's third bits (bit 2v of hmask[l] for
// the low half's element l, 2v + 1 for the high half's) are tested into a
// byte mask as Q5_K's fifth bits are, and add 4 (its offset, taken out
// through the activation sums as Q6_K's 32 is).
template <typename Block>
struct TwoBitLevels {
  static constexpr bool kThirdBit = std::is_same_v<Block, BlockQ3_K>;
  const __m512i m2 = _mm512_set1_epi8(0x03);
  const __m512i bit2 = _mm512_set1_epi8(0x04);
  __m512i shift[2];
  __m512i third_bit[4];
  TwoBitLevels() {
    for (int c = 0; c < 2; ++c) {
      shift[c] = _mm512_inserti64x4(_mm512_set1_epi64(4 * c), _mm256_set1_epi64x(4 * c + 2), 1);
    }
    for (int v = 0; v < 4; ++v) {
      third_bit[v] = _mm512_inserti64x4(_mm512_set1_epi8(static_cast<char>(1 << (2 * v))),
                                        _mm256_set1_epi8(static_cast<char>(2 << (2 * v))), 1);
    }
  }
  [[gnu::always_inline]] __m512i operator()(const Block& w, int v) const {
    const __m512i packed = _mm512_broadcast_i64x4(load256(w.qs + 32 * (v / 2)));
    const __m512i levels = _mm512_and_si512(_mm512_srlv_epi64(packed, shift[v % 2]), m2);
    if constexpr (kThirdBit) {
      const __m512i hmask = _mm512_broadcast_i64x4(load256(w.hmask));
      return _mm512_mask_add_epi8(levels, _mm512_test_epi8_mask(hmask, third_bit[v]), levels, bit2);
    } else {
      return levels;
    }
  }
  // The 16 scales as signed bytes (Q3_K's stored values less 32, Q2_K's
  // low nibbles), and Q2_K's minimums (its high nibbles). Q3_K's are
  // unpack_q3k_scales' words, built in one register: unpacked through memory
  // instead, its 16-byte load waits on the narrower stores (store forwarding
  // fails), which made the decode kernel 0.65x the AVX2 one.
  [[gnu::always_inline]] static __m128i scales(const Block& w) {
    if constexpr (kThirdBit) {
      const __m128i packed = _mm_maskz_loadu_epi8(0x0FFF, w.scales);  // words 0-2
      const __m128i low =
          _mm_and_si128(_mm_unpacklo_epi64(packed, _mm_srli_epi32(packed, 4)), _mm_set1_epi8(0x0F));
      const __m128i high =
          _mm_and_si128(_mm_srlv_epi32(_mm_shuffle_epi32(packed, 0xAA), _mm_setr_epi32(0, 2, 4, 6)),
                        _mm_set1_epi8(0x03));
      return _mm_sub_epi8(_mm_or_si128(low, _mm_slli_epi32(high, 4)), _mm_set1_epi8(32));
    } else {
      return _mm_and_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.scales)),
                           _mm_set1_epi8(0x0F));
    }
  }
  [[gnu::always_inline]] static __m128i mins(const Block& w) {
    return _mm_and_si128(
        _mm_srli_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.scales)), 4),
        _mm_set1_epi8(0x0F));
  }
};

// Int16 pairs (a, b) of 16 bytes, as one madd's weights for the sums of
// 16-element groups 2p and 2p + 1 (an ActQ8Kx8's bsums[p]).
inline uint32_t byte_pair(const int8_t* bytes, int p) {
  return static_cast<uint16_t>(bytes[2 * p]) |
         static_cast<uint32_t>(static_cast<uint16_t>(bytes[2 * p + 1])) << 16;
}

// Q2_K and Q3_K weights against an ActQ8Kx8 group, as group_q6_k: each
// 16-element group's int32 sums times its scale; Q3_K's offset 4 and
// Q2_K's minimums through the activations' 16-element sums, once per block.
template <typename Block>
void group_two_bit_k(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0) {
  using Levels = TwoBitLevels<Block>;
  const int64_t blocks = a.cols / kQKK;
  const auto* x = act_row<ActQ8Kx8>(a, b0);
  const StepPairs pairs;
  const Levels expand;
  for (int64_t r = r0; r < r1; ++r) {
    const Block* w = weight_row<Block>(a, r);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < blocks; ++i) {
      prefetch_block(w + i);
      alignas(16) int8_t sc[16];
      _mm_store_si128(reinterpret_cast<__m128i*>(sc), Levels::scales(w[i]));
      __m512i sum = _mm512_setzero_si512();
      for (int v = 0; v < 4; ++v) {
        const __m512i levels = expand(w[i], v);
        for (int q = 0; q < 4; ++q) {
          const int g = 4 * v + q;  // 16-element group: four steps
          const __m512i dot = dot_steps<2>(levels, pairs, 2 * q, x[i].qs[4 * g][0]);
          sum = _mm512_add_epi32(sum, _mm512_mullo_epi32(dot, _mm512_set1_epi32(sc[g])));
        }
      }
      alignas(16) int8_t weights[16];
      if constexpr (Levels::kThirdBit) {
        std::memcpy(weights, sc, sizeof weights);
      } else {
        _mm_store_si128(reinterpret_cast<__m128i*>(weights), Levels::mins(w[i]));
      }
      __m256i offset = _mm256_setzero_si256();
      for (int p = 0; p < kQKK / 32; ++p) {
        offset = _mm256_add_epi32(
            offset, _mm256_madd_epi16(load256(x[i].bsums[p]),
                                      _mm256_set1_epi32(static_cast<int>(byte_pair(weights, p)))));
      }
      const __m256 dx = _mm256_loadu_ps(x[i].d);
      const __m256 scale = _mm256_mul_ps(broadcast_half(w[i].d), dx);
      if constexpr (Levels::kThirdBit) {
        const __m256i total = _mm256_sub_epi32(fold(sum), _mm256_slli_epi32(offset, 2));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total), scale, acc);
      } else {
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(fold(sum)), scale, acc);
        acc = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(offset),
                               _mm256_mul_ps(broadcast_half(w[i].dmin), dx), acc);
      }
    }
    store_group(a, r, b0, acc);
  }
}

// Q2_K and Q3_K decode and the rows after the groups, as Q6_KRows: the
// levels of group_two_bit_k (at most 7: a maddubs pair sum is far from
// int16 saturation), a scale per eight int16 lanes in one madd.
template <typename TwoBitBlock>
struct TwoBitKRows {
  using Block = TwoBitBlock;
  using Levels = TwoBitLevels<Block>;
  const Levels expand;
  // Scales 4v .. 4v + 3, each over eight int16 lanes, for the v-th 64 elements.
  __m512i pick[4];
  TwoBitKRows() {
    alignas(64) int16_t idx[32];
    for (int v = 0; v < 4; ++v) {
      for (int t = 0; t < 32; ++t) idx[t] = static_cast<int16_t>(4 * v + t / 8);
      pick[v] = _mm512_load_si512(idx);
    }
  }

  template <int NB>
  [[gnu::always_inline]] void operator()(const Block& w, const ActQ8K* const* x, __m512* acc,
                                         __m256* acc_min) const {
    const __m256i sc16 = _mm256_cvtepi8_epi16(Levels::scales(w));
    const __m512i scales = _mm512_castsi256_si512(sc16);
    __m512i sum[NB];
    for (int k = 0; k < NB; ++k) sum[k] = _mm512_setzero_si512();
    for (int v = 0; v < 4; ++v) {
      const __m512i q = expand(w, v);
      const __m512i s = _mm512_permutexvar_epi16(pick[v], scales);
      for (int k = 0; k < NB; ++k) {
        const __m512i xq = _mm512_loadu_si512(x[k]->qs + 64 * v);
        sum[k] = _mm512_add_epi32(sum[k], _mm512_madd_epi16(_mm512_maddubs_epi16(q, xq), s));
      }
    }
    const __m256 d = broadcast_half(w.d);
    for (int k = 0; k < NB; ++k) {
      const __m256i bsums = load256(x[k]->bsums);
      const __m256 dx = _mm256_broadcast_ss(&x[k]->d);
      if constexpr (Levels::kThirdBit) {
        const __m256i offset = _mm256_slli_epi32(_mm256_madd_epi16(sc16, bsums), 2);
        const __m512i total = _mm512_sub_epi32(sum[k], _mm512_zextsi256_si512(offset));
        acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(total), widen(_mm256_mul_ps(d, dx)), acc[k]);
      } else {
        const __m256i pm = _mm256_madd_epi16(_mm256_cvtepu8_epi16(Levels::mins(w)), bsums);
        acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[k]), widen(_mm256_mul_ps(d, dx)), acc[k]);
        acc_min[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(pm),
                                     _mm256_mul_ps(broadcast_half(w.dmin), dx), acc_min[k]);
      }
    }
  }
};

// Quantizes eight rows as quantize_act_q8k does (the AVX2 one, whose bytes
// are the scalar reference's) and interleaves them.
void quantize_act_q8kx8(const float* x, int64_t stride, ActQ8Kx8* y, int64_t n) {
  const auto quantize_row = avx2_kernels().quantize_act_q8k;
  for (int64_t b = 0; b < n / kQKK; ++b) {
    for (int k = 0; k < kGroupRows; ++k) {
      ActQ8K row;
      quantize_row(x + k * stride + b * kQKK, &row, kQKK);
      y[b].d[k] = row.d;
      for (int p = 0; p < kQKK / 32; ++p) {
        y[b].bsums[p][k][0] = row.bsums[2 * p];
        y[b].bsums[p][k][1] = row.bsums[2 * p + 1];
      }
      for (int j = 0; j < kQKK / 4; ++j) std::memcpy(y[b].qs[j][k], row.qs + 4 * j, 4);
    }
  }
}

KernelSet make_set() {
  KernelSet set = avx2_kernels();
  set.level = CpuLevel::kAvx512;
  for (TypeKernels& k : set.types) {
    if (k.type == TensorType::kQ8_0) {
      k.rows = rows_signed<Q8_0Levels>;
      k.group = group_q8_0;
    }
    if (k.type == TensorType::kIQ4_NL) {
      k.rows = rows_signed<IQ4_NLLevels>;
      k.group = group_iq4_nl;
    }
    if (k.type == TensorType::kQ4_0) {
      k.group = group_q4_0<1>;
      k.group_pair = group_q4_0<2>;
      k.interleaved_group = group_q4_0x16;
      k.interleaved_rows = rows_q4_0x16;
    }
    if (k.type == TensorType::kQ5_0) {
      k.rows = rows_q5<BlockQ5_0>;
      k.group = group_q5<BlockQ5_0>;
    }
    if (k.type == TensorType::kQ5_1) {
      k.rows = rows_q5<BlockQ5_1>;
      k.group = group_q5<BlockQ5_1>;
    }
    if (k.type == TensorType::kIQ4_XS) {
      k = {k.type, rows_super_blocks<IQ4_XSRows>, group_iq4_xs};
    }
    if (k.type == TensorType::kQ2_K) {
      k = {k.type, rows_super_blocks<TwoBitKRows<BlockQ2_K>>, group_two_bit_k<BlockQ2_K>};
    }
    if (k.type == TensorType::kQ3_K) {
      k = {k.type, rows_super_blocks<TwoBitKRows<BlockQ3_K>>, group_two_bit_k<BlockQ3_K>};
    }
    if (k.type == TensorType::kQ4_K) {
      k = {k.type, rows_super_blocks<ScaleMinKRows<BlockQ4_K>>, group_scale_min_k<BlockQ4_K>};
    }
    if (k.type == TensorType::kQ5_K) {
      k = {k.type, rows_super_blocks<ScaleMinKRows<BlockQ5_K>>, group_scale_min_k<BlockQ5_K>};
    }
    if (k.type == TensorType::kQ6_K) k = {k.type, rows_super_blocks<Q6_KRows>, group_q6_k};
  }
  set.quantize_act_q8kx8 = quantize_act_q8kx8;
  return set;
}

}  // namespace

const KernelSet& avx512_kernels() {
  static const KernelSet set = make_set();
  return set;
}

}  // namespace foreshore::engine::detail
