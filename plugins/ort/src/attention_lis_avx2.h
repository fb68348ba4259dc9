// AVX2 loops of LogIntAttention (attention_lis.cc) for CPUs without AVX-512 VNNI (most x86 CPUs
// deployed: Zen 2/3, Skylake client, older Xeons), beside QLinearAttention's (attention_avx2.h,
// whose int16-pair packing and vpmaddwd row groups compute both products here): the scores
// S = (q - z_q)(k - z_k)^T (|S| <= 256 * 255^2 < 2^24), and Y = sum_j (-w_j)(v_jd - z_v) with the
// negated weights as the int16 rows (-w >= -2^15 fits int16; a pair sums below 2^24 and
// |Y| < 2^24: the softmax codes' weights sum to at most 2^(1/2) 2^15, attention_lis.cc). Here:
// the int8 score codes and the weights of the softmax codes. The score codes take the plain
// loops' float32 steps one for one (the product rounded, the bias added, the IEEE quotient (a
// checked multiply where it decides the rounding, quotient_avx2.h), round to nearest even),
// never contracted into an FMA, so every path gives the same codes. Called after
// avx2::Available() (ONNXVQ_NO_AVX2=1 keeps the plain loops, attention_lis_portable.h).
#pragma once

#include "quotient_avx2.h"
#include "simd.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace onnxvq {
namespace lis2 {

// Eight int32 in -128..127 (saturated on the way) as eight bytes in order.
inline void StoreInt8x8(__m256i v, int8_t* x) {
  const __m256i h = _mm256_packs_epi32(v, v);
  const __m256i w = _mm256_packs_epi16(h, h);  // per lane: its 4 codes first
  const __m128i lo = _mm256_castsi256_si128(w), hi = _mm256_extracti128_si256(w, 1);
  const int64_t both = _mm_cvtsi128_si64(_mm_unpacklo_epi32(lo, hi));
  std::memcpy(x, &both, 8);
}

// x[j] = sat(rne(clamp((f32(s_j) * scale + bias_j) / divisor, +-1024))) for j < n, 8 at a time
// (x has room for n rounded up to 8; the codes past n are padding): the plain loops' ScoreCode,
// the bias (nullptr: none) added after the product's rounding.
__attribute__((optimize("fp-contract=off"))) inline void ScoreCodesRow(const int32_t* s, int64_t n,
                                                                      float scale, float divisor,
                                                                      const float* bias,
                                                                      int8_t* x) {
  const __m256 vscale = _mm256_set1_ps(scale);
  const avx2::Quotient quotient(divisor);
  const __m256 lo = _mm256_set1_ps(-1024.0f), hi = _mm256_set1_ps(1024.0f);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t j = 0; j < n; j += 8) {
    __m256 p = _mm256_mul_ps(
        _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + j))), vscale);
    if (bias != nullptr) {  // the row holds n floats: a masked load for the last ones
      const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(
                                                  std::min<int64_t>(n - j, 8))), lane);
      p = _mm256_add_ps(p, _mm256_maskload_ps(bias + j, live));
    }
    // clamp(rne(t)) = rne(clamp(t)) for the integer bounds
    const __m256 u = _mm256_min_ps(_mm256_max_ps(quotient.Rne(p), lo), hi);
    StoreInt8x8(_mm256_cvtps_epi32(u), x + j);
  }
}

// w[j] = table16[codes[j]] for j < n (codes >= 16 weigh 0: bits <= 4 puts every code above 15
// past the largest live code), 0 up to jpad (>= n; codes readable and w writable up to n rounded
// up to 16). The int16 table split into its low and high bytes, 16 lookups per pshufb pair.
inline void WeightsRow(const uint8_t* codes, int64_t n, int64_t jpad, const int16_t* table16,
                       int16_t* w) {
  alignas(16) uint8_t lo_bytes[16], hi_bytes[16];
  for (int a = 0; a < 16; ++a) {
    lo_bytes[a] = static_cast<uint8_t>(table16[a] & 255);
    hi_bytes[a] = static_cast<uint8_t>((table16[a] >> 8) & 255);
  }
  const __m128i tlo = _mm_load_si128(reinterpret_cast<const __m128i*>(lo_bytes));
  const __m128i thi = _mm_load_si128(reinterpret_cast<const __m128i*>(hi_bytes));
  const __m128i c16 = _mm_set1_epi8(16), top = _mm_set1_epi8(static_cast<char>(0x80));
  int64_t j = 0;
  for (; j < n; j += 16) {
    __m128i idx = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + j));
    // pshufb gives 0 where the index byte's top bit is set: mark codes >= 16 so
    idx = _mm_or_si128(idx, _mm_and_si128(_mm_cmpeq_epi8(_mm_max_epu8(idx, c16), idx), top));
    const __m128i l = _mm_shuffle_epi8(tlo, idx), h = _mm_shuffle_epi8(thi, idx);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(w + j), _mm_unpacklo_epi8(l, h));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(w + j + 8), _mm_unpackhi_epi8(l, h));
  }
  std::fill(w + n, w + jpad, int16_t{0});
}

}  // namespace lis2
}  // namespace onnxvq
