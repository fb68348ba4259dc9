// IntLayerNorm's output pass on AVX-512 (README steps 7-10), 16 channels at a time: a float32
// estimate whose rounding is checked, and the exact integer steps where the check fails.
//
// Float estimate, per channel: y = fl(fl(C xt - S1) * fl(k * gq) + bq) with k = f32(R) 2^-32,
// gq = f32(gamma) 2^-G', bq = f32(beta 2^-G') (one fma each for num and y). The exact result is
// Y = clamp(rnd(T)), T = (z gamma + beta) / 2^G' with z = rnd(num R, 32). With u = 2^-24 and
// P = num R 2^-32 gamma 2^-G':
//   |y - (P + beta 2^-G')| <= |P| ((1+u)^5 - 1) + |beta 2^-G'| ((1+u)^2 - 1)     (six roundings)
//   |T - (P + beta 2^-G')| <= |gamma| 2^-G' / 2                                    (z's rounding)
// and |num| R 2^-32 <= U = sqrt(C - 1) 2^16 64/63 for every row: Samuelson's inequality gives
// |num| <= sqrt((C - 1) D), and sig >= 63 sqrt(D) when D >= 1 (num = 0 when D = 0), R <= 2^54 /
// sig. So |y - T| <= U |gq| 5.01u + |bq| 2.01u + |gq| / 2 =: E, the same for every row:
// room = 1/2 - E is a per-channel constant (FloatOutputConsts: a 1.001 margin, and 2^-23 for its
// own rounding). Every value is >= 2^-50 or 0 and |y| < 2^40: no underflow, overflow or NaN.
// With n = rne(y), |y - n| is exact, and |y - n| < room gives |T - n| < 1/2: rnd(T) = n,
// whatever the rounding mode (no tie). Clamping commutes with rounding (lo, hi are integers).
// Estimated from the bound: gamma / s_out ~ 30 gives E ~ 5e-4, the integer steps for ~1.5 % of
// the vectors.
#pragma once

#include <cstdint>

#include "int_layer_norm_avx512.h"

namespace onnxvq {
namespace iln512 {

// a + 2^(G'-1) of 8 channels (int64 lanes) to clamp(rnd(a, G'), lo, hi).
ONNXVQ_LN512 inline __m512i Round8(__m512i a, __m512i half, __m128i shift, __m512i lo,
                                   __m512i hi) {
  a = _mm512_mask_sub_epi64(a, _mm512_cmplt_epi64_mask(a, half), a, _mm512_set1_epi64(1));
  return _mm512_min_epi64(_mm512_max_epi64(_mm512_sra_epi64(a, shift), lo), hi);
}

// The exact steps 7-10 for channels [i, i + 16): codes as int32 lanes in channel order.
ONNXVQ_LN512 inline __m512i Exact16(__m512 xt_f, int32_t i, int64_t s1, int64_t r,
                                    const Consts& k) {
  const __m512i zero = _mm512_setzero_si512(), round = _mm512_set1_epi64(int64_t{1} << 31);
  const __m512i r_lo = _mm512_set1_epi64(static_cast<uint32_t>(r));
  const __m512i r_hi = _mm512_set1_epi32(static_cast<int32_t>(static_cast<uint64_t>(r) >> 32));
  const __m512i xt = _mm512_cvtps_epi32(xt_f);  // an exact integer
  const __m512i num = _mm512_sub_epi32(_mm512_mullo_epi32(xt, _mm512_set1_epi32(k.channels)),
                                       _mm512_set1_epi32(static_cast<int32_t>(s1)));
  const __m512i mag = _mm512_abs_epi32(num);
  const __m512i even = _mm512_add_epi64(_mm512_mul_epu32(mag, r_lo), round);
  const __m512i odd = _mm512_add_epi64(_mm512_mul_epu32(_mm512_srli_epi64(mag, 32), r_lo), round);
  const __m512i low = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
  const __m512i zmag = _mm512_add_epi32(_mm512_mullo_epi32(mag, r_hi), low);
  const __m512i z = _mm512_mask_sub_epi32(zmag, _mm512_cmplt_epi32_mask(num, zero), zero, zmag);
  const __m512i g = _mm512_loadu_si512(k.gamma.data() + i);
  const int64_t* be = k.beta_eo.data() + i;
  const __m512i half = _mm512_set1_epi64(int64_t{1} << (k.out_shift - 1));
  const __m512i lo = _mm512_set1_epi64(k.lo), hi = _mm512_set1_epi64(k.hi);
  const __m128i shift = _mm_cvtsi32_si128(k.out_shift);
  const __m512i ye = Round8(_mm512_add_epi64(_mm512_mul_epi32(z, g), _mm512_loadu_si512(be)),
                            half, shift, lo, hi);
  const __m512i yo = Round8(
      _mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64(z, 32), _mm512_srli_epi64(g, 32)),
                       _mm512_loadu_si512(be + 8)),
      half, shift, lo, hi);
  return _mm512_mask_blend_epi32(0xAAAA, ye, _mm512_slli_epi64(yo, 32));
}

// Output pass: Y from the scratch xt, the row's stats and reciprocal R.
template <class TOut>
ONNXVQ_LN512 void Output(const float* scratch, TOut* y, const RowStats& st, int64_t r,
                         const Consts& k, const float* next_a = nullptr,
                         const float* next_b = nullptr) {
  const __m512 c = _mm512_set1_ps(static_cast<float>(k.channels));
  const __m512 neg_s1 = _mm512_set1_ps(-static_cast<float>(st.s1));  // |S1| < 2^24: exact
  const __m512 kr = _mm512_set1_ps(std::ldexp(static_cast<float>(r), -32));
  const __m512 lo = _mm512_set1_ps(static_cast<float>(k.lo));
  const __m512 hi = _mm512_set1_ps(static_cast<float>(k.hi));
  for (int32_t i = 0; i < k.channels; i += 16) {
    if (next_a != nullptr) {  // the next row's inputs, while this loop computes
      _mm_prefetch(reinterpret_cast<const char*>(next_a + i), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(next_b + i), _MM_HINT_T0);
    }
    const __m512 xt = _mm512_loadu_ps(scratch + i);
    const __m512 num = _mm512_fmadd_ps(xt, c, neg_s1);
    const __m512 f = _mm512_mul_ps(kr, _mm512_loadu_ps(k.gq.data() + i));
    const __m512 v = _mm512_fmadd_ps(num, f, _mm512_loadu_ps(k.bq.data() + i));
    const __m512 room = _mm512_loadu_ps(k.room.data() + i);  // 1/2 - E
    const __m512 n = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __mmask16 ok = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(v, n)), room, _CMP_LT_OQ);
    const __mmask16 tail = TailMask(i, k.channels);
    __m512i codes = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(n, lo), hi));
    if (static_cast<__mmask16>(ok & tail) != tail) codes = Exact16(xt, i, st.s1, r, k);
    _mm_mask_storeu_epi8(y + i, tail, _mm512_cvtepi32_epi8(codes));
  }
}

}  // namespace iln512
}  // namespace onnxvq
