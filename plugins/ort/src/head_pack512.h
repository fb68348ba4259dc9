// AVX-512 BW loops that pack one attention head's operands (HeadData, attention.h): a query row
// copied with its sum, a key row flipped (k ^ 0x80 = k - 128 as int8) and scattered into K^T's
// quads, four tokens' value rows interleaved into V's quads by byte / word unpacks and a 4 x 4
// transpose of 128-bit lanes. Everything past D (and past N) is written as zero, as the scalar
// loops leave it. Compiled for that target only inside these functions; called after
// avx512::Available().
#pragma once

#include <cstdint>

#include "simd.h"

namespace onnxvq {
namespace pack512 {

inline __mmask64 Bytes(int64_t left) {
  return left >= 64 ? ~__mmask64{0} : left <= 0 ? __mmask64{0} : (__mmask64{1} << left) - 1;
}

ONNXVQ_AVX512 inline int32_t Sum64(__m512i sad) {  // the eight 64-bit lanes of a vpsadbw
  const __m256i h = _mm256_add_epi64(_mm512_castsi512_si256(sad),
                                     _mm512_extracti64x4_epi64(sad, 1));
  const __m128i q = _mm_add_epi64(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
  return static_cast<int32_t>(_mm_cvtsi128_si64(_mm_add_epi64(q, _mm_unpackhi_epi64(q, q))));
}

// The cache lines of src[0..d) into L1 (a prefetch never faults).
inline void Prefetch(const uint8_t* src, int64_t d) {
  const uintptr_t end = reinterpret_cast<uintptr_t>(src) + static_cast<uintptr_t>(d);
  for (uintptr_t a = reinterpret_cast<uintptr_t>(src) & ~uintptr_t{63}; a < end; a += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(a), _MM_HINT_T0);
  }
}

// dst[0..d) = src[0..d) (the rest of dst untouched: zero); returns sum_c src[c].
ONNXVQ_AVX512 inline int32_t CopyRow(const uint8_t* src, int64_t d, uint8_t* dst) {
  __m512i sad = _mm512_setzero_si512();
  for (int64_t c = 0; c < d; c += 64) {
    const __mmask64 m = Bytes(d - c);
    const __m512i v = _mm512_maskz_loadu_epi8(m, src + c);
    _mm512_mask_storeu_epi8(dst + c, m, v);
    sad = _mm512_add_epi64(sad, _mm512_sad_epu8(v, _mm512_setzero_si512()));
  }
  return Sum64(sad);
}

// Token j's key row into K^T's quads: word c4 (bytes 4 c4 .. 4 c4 + 3, flipped; zero past d)
// at col + c4 * stride words, for c4 < dq / 4; returns sum_c src[c] (raw codes).
ONNXVQ_AVX512 inline int32_t KeyRow(const uint8_t* src, int64_t d, int64_t dq, int8_t* col,
                                         int64_t stride) {
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  const __m512i index = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,
                                                             11, 12, 13, 14, 15),
                                           _mm512_set1_epi32(static_cast<int32_t>(stride)));
  __m512i sad = _mm512_setzero_si512();
  for (int64_t c = 0; c < dq; c += 64) {
    const __mmask64 m = Bytes(d - c);
    const __m512i v = _mm512_maskz_loadu_epi8(m, src + c);
    sad = _mm512_add_epi64(sad, _mm512_sad_epu8(v, _mm512_setzero_si512()));
    const __m512i w = _mm512_maskz_mov_epi8(m, _mm512_xor_si512(v, flip));
    const auto words = static_cast<__mmask16>(dq - c >= 64 ? 0xffff : (1u << ((dq - c) / 4)) - 1);
    _mm512_mask_i32scatter_epi32(col + (c / 4) * stride * 4, words, index, w, 4);
  }
  return Sum64(sad);
}

// Four tokens' value rows r[t] (nullptr: past N, zero) into V's quads dst[c][t] (flipped) for
// c < dpad (a multiple of 16; zero past d); vsum[c] += sum_t (v_tc - 128) (vpdpbusd by ones).
ONNXVQ_AVX512 inline void ValueQuads(const uint8_t* const r[4], int64_t d, int64_t dpad,
                                          int8_t* dst, int32_t* vsum) {
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  const __m512i ones = _mm512_set1_epi8(1);
  for (int64_t c = 0; c < dpad; c += 64) {
    const __mmask64 m = Bytes(d - c);
    __m512i v[4];
    for (int t = 0; t < 4; ++t) {
      v[t] = r[t] == nullptr ? _mm512_setzero_si512()
                             : _mm512_maskz_mov_epi8(m, _mm512_xor_si512(
                                                            _mm512_maskz_loadu_epi8(m, r[t] + c),
                                                            flip));
    }
    // per 128-bit lane L: w_k holds the quads of c + 16 L + 4 k .. + 3
    const __m512i a = _mm512_unpacklo_epi8(v[0], v[1]), b = _mm512_unpackhi_epi8(v[0], v[1]);
    const __m512i e = _mm512_unpacklo_epi8(v[2], v[3]), f = _mm512_unpackhi_epi8(v[2], v[3]);
    const __m512i w0 = _mm512_unpacklo_epi16(a, e), w1 = _mm512_unpackhi_epi16(a, e);
    const __m512i w2 = _mm512_unpacklo_epi16(b, f), w3 = _mm512_unpackhi_epi16(b, f);
    const __m512i t0 = _mm512_shuffle_i32x4(w0, w1, 0x44), t1 = _mm512_shuffle_i32x4(w2, w3, 0x44);
    const __m512i t2 = _mm512_shuffle_i32x4(w0, w1, 0xee), t3 = _mm512_shuffle_i32x4(w2, w3, 0xee);
    const __m512i out[4] = {_mm512_shuffle_i32x4(t0, t1, 0x88), _mm512_shuffle_i32x4(t0, t1, 0xdd),
                            _mm512_shuffle_i32x4(t2, t3, 0x88), _mm512_shuffle_i32x4(t2, t3, 0xdd)};
    for (int k = 0; k < 4 && c + 16 * k < dpad; ++k) {
      _mm512_storeu_si512(dst + (c + 16 * k) * 4, out[k]);
      int32_t* s = vsum + c + 16 * k;
      _mm512_storeu_si512(s, _mm512_dpbusd_epi32(_mm512_loadu_si512(s), ones, out[k]));
    }
  }
}

}  // namespace pack512
}  // namespace onnxvq
