// AVX-512 level: the AVX2 kernels, with AVX-512 VNNI ones for Q8_0, Q4_0,
// Q5_0 and Q5_1 prompt processing and batched decode (eight activation rows
// at a time).
//
// vpdpbusd multiplies unsigned by signed bytes and adds each group of four
// products to an int32 lane in one instruction, where AVX2 needs maddubs,
// madd and an add. Q4_0's levels are unsigned already; Q8_0's weights and
// activations are both signed, so, as in the AVX2 kernels, |w| times x with
// w's sign. Nothing can overflow (products at most 128 * 127), so the
// integer sums are the scalar reference's exactly.
//
// Decode (one activation row) keeps the AVX2 kernels: a 256-bit VNNI
// version of the Q8_0 one (vpdpbusd in place of maddubs + madd, the same
// instruction count otherwise) ran at 0.76x of it on the AMD EPYC
// development VM (576x1536, one thread, best of 800 runs in cache), and
// decode reads its weights from memory anyway.
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

// Weight dword 2p into lanes 0-7 and 2p + 1 into lanes 8-15, for p < 4: the
// weights of step pair p of an ActQ8x8 group (see group_q8_0).
struct StepPairs {
  __m512i pick[kQK / 8];
  StepPairs() {
    for (int p = 0; p < kQK / 8; ++p) {
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
template <typename Block, typename Levels, typename Offset>
void group_unsigned(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0, Levels levels,
                    Offset offset, float offset_factor) {
  const int64_t blocks = a.cols / kQK;
  const auto* x = act_row<ActQ8x8>(a, b0);
  const StepPairs pairs;
  for (int64_t r = r0; r < r1; ++r) {
    const Block* w = weight_row<Block>(a, r);
    __m256 acc = _mm256_setzero_ps();
    __m256 off = _mm256_setzero_ps();
    for (int64_t i = 0; i < blocks; ++i) {
      prefetch_ahead(w + i);
      const __m512i q = _mm512_zextsi256_si512(levels(w[i]));
      __m512i sum = _mm512_setzero_si512();
      for (int p = 0; p < kQK / 8; ++p) {
        sum = _mm512_dpbusd_epi32(sum, _mm512_permutexvar_epi32(pairs.pick[p], q),
                                  _mm512_loadu_si512(x[i].qs[2 * p]));
      }
      acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(fold(sum)),
                            _mm256_mul_ps(broadcast_half(w[i].d), _mm256_loadu_ps(x[i].d)), acc);
      off = _mm256_fmadd_ps(offset(w[i]), _mm256_loadu_ps(x[i].s), off);
    }
    alignas(32) float out[kGroupRows];
    _mm256_store_ps(out, _mm256_fmadd_ps(_mm256_set1_ps(offset_factor), off, acc));
    for (int k = 0; k < kGroupRows; ++k) a.y[(b0 + k) * a.y_stride + r] = out[k];
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

void group_q4_0(const RowArgs& a, int64_t r0, int64_t r1, int64_t b0) {
  const Nibbles nibbles;
  group_unsigned<BlockQ4_0>(
      a, r0, r1, b0, [nibbles](const BlockQ4_0& w) { return nibbles(w.qs); },
      [](const BlockQ4_0& w) { return broadcast_half(w.d); }, -8.0f);
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

KernelSet make_set() {
  KernelSet set = avx2_kernels();
  set.level = CpuLevel::kAvx512;
  for (TypeKernels& k : set.types) {
    if (k.type == TensorType::kQ8_0) k.group = group_q8_0;
    if (k.type == TensorType::kQ4_0) k.group = group_q4_0;
    if (k.type == TensorType::kQ5_0) k.group = group_q5<BlockQ5_0>;
    if (k.type == TensorType::kQ5_1) k.group = group_q5<BlockQ5_1>;
  }
  return set;
}

}  // namespace

const KernelSet& avx512_kernels() {
  static const KernelSet set = make_set();
  return set;
}

}  // namespace foreshore::engine::detail
