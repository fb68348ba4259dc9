// AVX-512 (VNNI, BW) inner loops of LogIntAttention (attention_lis.cc), beside QLinearAttention's
// (attention_avx512.h): the scores GEMM with its zero-point terms and int8 score codes in one
// epilogue, the log-code weights by vpermw and cut into bytes for vpdpbusd, the output codes.
// Compiled for that target only inside these functions; called after avx512::Available().
#pragma once

#include "attention_avx512.h"

namespace onnxvq {
namespace lis512 {

// The correctly rounded quotient and the requantization of 16 int32 (attention_avx512.h).
using avx512::FastDivisor;
using avx512::MakeRequant;
using avx512::Requant;

// Codes of the biased scores, sat(rne(clamp((f32(s) * scale + bias) / divisor, +-1024))): the
// bias added after the product's rounding (the _round_ forms are never contracted into an FMA),
// as the reference; rq.fast only where |f32(s) * scale + bias| < 2^70 (attention_lis.cc).
ONNXVQ_AVX512 inline __m512i BiasedCodes(const Requant& rq, __m512i s, __m512 bias) {
  constexpr int kRn = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  const __m512 p = _mm512_add_round_ps(
      _mm512_mul_round_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(rq.scale), kRn), bias, kRn);
  __m512 u = rq.fast ? avx512::DivRn(p, _mm512_set1_ps(rq.divisor), _mm512_set1_ps(rq.inverse))
                     : _mm512_div_ps(p, _mm512_set1_ps(rq.divisor));
  u = _mm512_min_ps(_mm512_max_ps(u, _mm512_set1_ps(-1024.0f)), _mm512_set1_ps(1024.0f));
  return _mm512_cvt_roundps_epi32(u, kRn);
}

// The int8 codes of 16 scores s at columns j .. j + 15 of a row whose bias row is b (n floats;
// nullptr: no bias), columns at or past n padding.
ONNXVQ_AVX512 inline __m128i ScoreCodes(const Requant& rq, __m512i s, const float* b, int64_t j,
                                        int64_t n) {
  if (b == nullptr) return _mm512_cvtsepi32_epi8(rq.Codes(s));
  const auto live = static_cast<__mmask16>(n - j >= 16 ? 0xffff : n <= j ? 0 : (1u << (n - j)) - 1);
  return _mm512_cvtsepi32_epi8(BiasedCodes(rq, s, _mm512_maskz_loadu_ps(live, b + j)));
}

// All 16 * blocks columns of R score rows as int8 codes into x (those past the row's n are
// padding, never read): S_rj = sum_c q_rc (k_jc - 128) + row_term[r] + col_term[j], kt packed
// as HeadData's; with `bias` (R row pointers of n floats each, or nullptr) added to the scaled
// scores. The products by DotRows into dot (R rows of 16 * blocks), then the zero-point terms
// and the codes: with the terms and codes in the same loop as the products, GCC 12 copied every
// accumulator twice per quad (16 register moves beside 8 vpdpbusd; perf annotate on the AMD
// EPYC); the int32 sums are the same in either order.
template <int R>
ONNXVQ_AVX512 inline void ScoreCodeRows(const uint8_t* q, int64_t q_stride, const int8_t* kt,
                                        int64_t quads, int64_t blocks, const int32_t* row_term,
                                        const int32_t* col_term, const Requant& rq, int32_t* dot,
                                        int8_t* x, int64_t x_stride,
                                        const float* const* bias = nullptr, int64_t n = 0) {
  const int64_t width = 16 * blocks;
  avx512::DotRows<R>(q, q_stride, kt, quads, blocks, dot, width);
  for (int r = 0; r < R; ++r) {
    const __m512i rt = _mm512_set1_epi32(row_term[r]);
    const float* br = bias == nullptr ? nullptr : bias[r];
    for (int64_t j = 0; j < width; j += 16) {  // signed saturation to -128..127
      const __m512i terms = _mm512_add_epi32(_mm512_loadu_si512(col_term + j), rt);
      const __m512i s = _mm512_add_epi32(_mm512_loadu_si512(dot + r * width + j), terms);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(x + r * x_stride + j),
                       ScoreCodes(rq, s, br, j, n));
    }
  }
}

// The int8 codes of columns j0 .. j0 + 31 (those < n) of `rows` score rows from their raw
// products c (an AMX block, row stride 32): S_rj = c_rj + row_term[r] + col_term[j] as
// ScoreCodeRows' (col_term padded to j0 + 32); `bias` (`rows` row pointers or nullptr) as its.
ONNXVQ_AVX512 inline void BlockCodes(const int32_t* c, int rows, int64_t j0, int64_t n,
                                     const int32_t* row_term, const int32_t* col_term,
                                     const Requant& rq, int8_t* x, int64_t x_stride,
                                     const float* const* bias = nullptr) {
  const int halves = n - j0 > 16 ? 2 : 1;
  for (int r = 0; r < rows; ++r) {
    const __m512i rt = _mm512_set1_epi32(row_term[r]);
    for (int half = 0; half < halves; ++half) {
      const int64_t j = j0 + 16 * half;
      const __m512i s = _mm512_add_epi32(_mm512_loadu_si512(c + r * 32 + 16 * half),
                                         _mm512_add_epi32(_mm512_loadu_si512(col_term + j), rt));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(x + r * x_stride + j),
                       ScoreCodes(rq, s, bias == nullptr ? nullptr : bias[r], j, n));
    }
  }
}

// w[j] = table[codes[j]] for j < n and 0 up to jpad (a multiple of 16): codes < 32 (bits <= 4),
// 32 lookups per vpermw. Also the row's largest weight and the OR of its weights.
ONNXVQ_AVX512 inline void WeightsRow(const uint8_t* codes, int64_t n, int64_t jpad,
                                     const uint16_t* table32, uint16_t* w, uint32_t& wmax,
                                     uint32_t& wor) {
  const __m512i table = _mm512_loadu_si512(table32);
  __m512i vmax = _mm512_setzero_si512(), vor = vmax;
  for (int64_t j0 = 0; j0 < jpad; j0 += 32) {
    const auto live = static_cast<__mmask32>(n - j0 >= 32 ? ~0u : n <= j0 ? 0u
                                                             : (1u << (n - j0)) - 1);
    const auto room = static_cast<__mmask32>(jpad - j0 >= 32 ? ~0u : (1u << (jpad - j0)) - 1);
    const __m512i idx = _mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(live, codes + j0));
    const __m512i v = _mm512_maskz_permutexvar_epi16(live, idx, table);
    vmax = _mm512_max_epu16(vmax, v);
    vor = _mm512_or_si512(vor, v);
    _mm512_mask_storeu_epi16(w + j0, room, v);
  }
  const __m512i low = _mm512_set1_epi32(0xffff);
  wmax = static_cast<uint32_t>(_mm512_reduce_max_epu32(
      _mm512_max_epu32(_mm512_and_si512(vmax, low), _mm512_srli_epi32(vmax, 16))));
  const auto o = static_cast<uint32_t>(_mm512_reduce_or_epi32(vor));
  wor = (o | (o >> 16)) & 0xffff;
}

// u[j] = (w[j] >> shift) & 255 as bytes for j < jpad (a multiple of 16), and sum_j u[j].
ONNXVQ_AVX512 inline int32_t ByteWeights(const uint16_t* w, int64_t jpad, int shift, uint8_t* u) {
  const __m128i count = _mm_cvtsi32_si128(shift);
  __m256i sum = _mm256_setzero_si256();
  for (int64_t j0 = 0; j0 < jpad; j0 += 32) {
    const auto room = static_cast<__mmask32>(jpad - j0 >= 32 ? ~0u : (1u << (jpad - j0)) - 1);
    const __m512i v = _mm512_srl_epi16(_mm512_maskz_loadu_epi16(room, w + j0), count);
    const __m256i bytes = _mm512_cvtepi16_epi8(v);  // truncation: the low byte
    _mm256_mask_storeu_epi8(u + j0, room, bytes);
    sum = _mm256_add_epi64(sum, _mm256_sad_epu8(_mm256_maskz_mov_epi8(room, bytes),
                                                _mm256_setzero_si256()));
  }
  const __m128i h = _mm_add_epi64(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
  return static_cast<int32_t>(_mm_cvtsi128_si64(_mm_add_epi64(h, _mm_unpackhi_epi64(h, h))));
}

// Output codes of one row, Y = ((a1 + c1) << s1) + (a2 + c2) (a2 null: no second term), then
// sat(Codes(Y) + zo) for d < dim; a1, a2 padded to a multiple of 16.
ONNXVQ_AVX512 inline void OutputCodes(const int32_t* a1, int32_t c1, int s1, const int32_t* a2,
                                      int32_t c2, int64_t dim, const Requant& rq, int32_t zo,
                                      uint8_t* y) {
  const __m128i count = _mm_cvtsi32_si128(s1);
  for (int64_t c0 = 0; c0 < dim; c0 += 16) {
    const auto m = static_cast<__mmask16>(dim - c0 >= 16 ? 0xffff : (1u << (dim - c0)) - 1);
    __m512i v = _mm512_sll_epi32(
        _mm512_add_epi32(_mm512_loadu_si512(a1 + c0), _mm512_set1_epi32(c1)), count);
    if (a2 != nullptr) {
      v = _mm512_add_epi32(v, _mm512_add_epi32(_mm512_loadu_si512(a2 + c0), _mm512_set1_epi32(c2)));
    }
    __m512i c = _mm512_add_epi32(rq.Codes(v), _mm512_set1_epi32(zo));
    c = _mm512_max_epi32(c, _mm512_setzero_si512());
    _mm512_mask_cvtusepi32_storeu_epi8(y + c0, m, c);
  }
}

}  // namespace lis512
}  // namespace onnxvq
