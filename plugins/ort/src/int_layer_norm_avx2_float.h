// IntLayerNorm and AddIntLayerNorm rows on AVX2 with the float32 output pass of the AVX-512 rows
// (int_layer_norm_avx512_out.h), 8 lanes instead of 16: the same float32 operations, so the same
// proof, and the same per-call constants (iln512::Consts, portable data). Per row:
//
//   front   xt_c (README step 1) as exact floats into a per-thread scratch row, S1 and S2;
//           for AddIntLayerNorm from A + B (S written), quantized as AddMulQuantizeLinear does
//   output  y = fma(fma(xt, C, -S1), k_row * gq, bq), n = rne(y), taken where |y - n| < room;
//           the exact integer steps (CodesOfXt8) for any 8 channels where the check fails
//
// The integer-only AVX2 output (int_layer_norm_avx2.h, ~40 vector operations per 8 channels of
// 64-bit lanes, blends and compares) cost AddIntLayerNorm half again AddLayerNormQuantize's time
// on DeiT-S; the float pass is ~12.
//
// Sums (plugins/README.md bounds): |xt| <= 2040 is exact in float, xt^2 < 2^22 too. Two sets of
// 8 lanes over at most 8192 channels: a lane adds <= 512 values, so S1's float lanes stay below
// 2^21 (exact) and S2's uint32 lanes below 2^31.
//
// Channels [0, vec) (vec = RowParams::vector_channels, a multiple of 16) run here; the rest take
// the scalar steps of int_layer_norm.h / add_mul_quantize.h on the same scratch row.
#pragma once

#if defined(__AVX2__)
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "add_mul_quantize.h"
#include "int_layer_norm.h"
#include "int_layer_norm_avx2.h"
#include "int_layer_norm_avx512.h"
#include "quotient_avx2.h"

namespace onnxvq {
namespace avx2 {

struct FloatSums {
  __m256 s1[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
  __m256i s2[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};

  void Add(int h, __m256 xt) {
    s1[h] = _mm256_add_ps(s1[h], xt);
    s2[h] = _mm256_add_epi32(s2[h], _mm256_cvtps_epi32(_mm256_mul_ps(xt, xt)));
  }

  void Finish(int64_t& sum1, int64_t& sum2) const {
    alignas(32) float l1[16];
    alignas(32) uint32_t l2[16];
    for (int h = 0; h < 2; ++h) {
      _mm256_store_ps(l1 + 8 * h, s1[h]);
      _mm256_store_si256(reinterpret_cast<__m256i*>(l2 + 8 * h), s2[h]);
    }
    sum1 = 0;
    sum2 = 0;
    for (int j = 0; j < 16; ++j) {
      sum1 += static_cast<int64_t>(l1[j]);
      sum2 += l2[j];
    }
  }
};

// IntLayerNorm's front: xt of the codes X over [0, count).
template <class TIn>
inline void FrontCodes(const TIn* x, float* xt_row, int32_t count, const iln512::Consts& k,
                       FloatSums& acc) {
  const __m256i zp = _mm256_set1_epi32(k.zero_point);
  for (int32_t i = 0; i < count; i += 16) {
    for (int h = 0; h < 2; ++h) {
      const int32_t j = i + 8 * h;
      const __m256i sh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(k.shift.data() + j));
      const __m256 xt =
          _mm256_cvtepi32_ps(_mm256_sllv_epi32(_mm256_sub_epi32(Widen8(x + j), zp), sh));
      _mm256_storeu_ps(xt_row + j, xt);
      acc.Add(h, xt);
    }
  }
}

// AddIntLayerNorm's front over [0, count): S = A + B written, code - zp =
// clamp(rne(S * M / scale), lo - zp, hi - zp) (AddMulQuantizeLinear's float32 operations; the
// clamp of integers commutes with adding zp; a NaN gives lo as the clamp order does; the
// division as Quotient's checked multiply), xt = (code - zp) 2^alpha.
inline void FrontSum(const float* a, const float* b, float* s, float* xt_row, int32_t count,
                     const iln512::Consts& k, FloatSums& acc) {
  const Quotient quotient(k.scale);
  const __m256 lo = _mm256_set1_ps(k.in_lo - k.zero_point_f);
  const __m256 hi = _mm256_set1_ps(k.in_hi - k.zero_point_f);
  for (int32_t i = 0; i < count; i += 16) {
    for (int h = 0; h < 2; ++h) {
      const int32_t j = i + 8 * h;
      const __m256 v = _mm256_add_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j));
      _mm256_storeu_ps(s + j, v);
      const __m256 r = quotient.Rne(_mm256_mul_ps(v, _mm256_loadu_ps(k.mult.data() + j)));
      const __m256 code = _mm256_min_ps(_mm256_max_ps(r, lo), hi);
      const __m256 xt = _mm256_mul_ps(code, _mm256_loadu_ps(k.pow2.data() + j));
      _mm256_storeu_ps(xt_row + j, xt);
      acc.Add(h, xt);
    }
  }
}

// Codes - lo of channels [j, j + 8) (Quantize4's form) from the float estimate, or from the exact
// integer steps where its rounding is not decided (|y - n| >= room, or a NaN: never, see there).
inline __m256i OutputCodes8(const float* xt_row, int32_t j, const __m256 c, const __m256 neg_s1,
                            const __m256 kr, const iln512::Consts& k, const LnOut& p,
                            const RowConsts& rk, const Quantizer& q) {
  const __m256 xt = _mm256_loadu_ps(xt_row + j);
  const __m256 num = _mm256_fmadd_ps(xt, c, neg_s1);
  const __m256 f = _mm256_mul_ps(kr, _mm256_loadu_ps(k.gq.data() + j));
  const __m256 v = _mm256_fmadd_ps(num, f, _mm256_loadu_ps(k.bq.data() + j));
  const __m256 n = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 dist = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), _mm256_sub_ps(v, n));
  const __m256 undecided = _mm256_cmp_ps(dist, _mm256_loadu_ps(k.room.data() + j), _CMP_NLT_UQ);
  if (_mm256_movemask_ps(undecided) != 0) return CodesOfXt8(_mm256_cvtps_epi32(xt), j, p, rk, q);
  const __m256 lo = _mm256_set1_ps(static_cast<float>(k.lo));
  const __m256 clamped = _mm256_min_ps(_mm256_max_ps(n, lo), _mm256_set1_ps(static_cast<float>(k.hi)));
  return _mm256_cvtps_epi32(_mm256_sub_ps(clamped, lo));
}

// Y over [0, count) from the scratch xt, the row's S1 and reciprocal R.
template <class TOut>
inline void FloatOutput(const float* xt_row, TOut* y, int32_t count, int64_t s1, int64_t r,
                        const iln512::Consts& k, const LnOut& p) {
  const __m256 c = _mm256_set1_ps(static_cast<float>(k.channels));
  const __m256 neg_s1 = _mm256_set1_ps(-static_cast<float>(s1));  // |S1| < 2^24: exact
  const __m256 kr = _mm256_set1_ps(std::ldexp(static_cast<float>(r), -32));
  const RowConsts rk = MakeRowConsts(p, s1, r);
  const Quantizer q = MakeQuantizer(p);
  for (int32_t i = 0; i < count; i += 16) {
    StoreCodes16(y + i, OutputCodes8(xt_row, i, c, neg_s1, kr, k, p, rk, q),
                 OutputCodes8(xt_row, i + 8, c, neg_s1, kr, k, p, rk, q));
  }
}

// The scalar steps for channels [vec, C) of a row whose xt sits in xt_row.
template <class TOut>
inline void ScalarTail(const float* xt_row, TOut* y, int64_t s1, int64_t r,
                       const iln::RowParams& p) {
  const int32_t c = static_cast<int32_t>(p.channels);
  for (int32_t i = p.vector_channels; i < c; ++i) {
    y[i] = static_cast<TOut>(iln::Code1(static_cast<int32_t>(xt_row[i]), c,
                                        static_cast<int32_t>(s1), r, p.gamma[i], p.beta[i],
                                        p.out_shift, p.lo, p.hi));
  }
}

// One IntLayerNorm row of codes X.
template <class TIn, class TOut>
inline void NormalizeRowFloat(const TIn* x, TOut* y, float* xt_row, const iln::RowParams& p,
                              const iln512::Consts& k) {
  FloatSums acc;
  FrontCodes(x, xt_row, p.vector_channels, k, acc);
  int64_t s1 = 0, s2 = 0;
  acc.Finish(s1, s2);
  for (int32_t i = p.vector_channels; i < p.channels; ++i) {
    const int32_t xt = (static_cast<int32_t>(x[i]) - p.zero_point) * p.mult[i];
    xt_row[i] = static_cast<float>(xt);
    s1 += xt;
    s2 += static_cast<int64_t>(xt) * xt;
  }
  const int64_t r = iln::RowReciprocal(s1, s2, p.channels, p.epsilon);
  FloatOutput(xt_row, y, p.vector_channels, s1, r, k, p.out);
  ScalarTail(xt_row, y, s1, r, p);
}

// One AddIntLayerNorm row: S = A + B, its codes (TIn) and their IntLayerNorm.
template <class TIn, class TOut>
inline void AddNormalizeRowFloat(const float* a, const float* b, float* s, TOut* y,
                                 float* xt_row, const amq::AmqParams& q, const iln::RowParams& p,
                                 const iln512::Consts& k) {
  FloatSums acc;
  FrontSum(a, b, s, xt_row, p.vector_channels, k, acc);
  int64_t s1 = 0, s2 = 0;
  acc.Finish(s1, s2);
  for (int32_t i = p.vector_channels; i < p.channels; ++i) {
    s[i] = a[i] + b[i];
    const int32_t code = static_cast<int32_t>(amq::Code1<TIn>(s[i], q.mult[i], q));
    const int32_t xt = (code - p.zero_point) * p.mult[i];
    xt_row[i] = static_cast<float>(xt);
    s1 += xt;
    s2 += static_cast<int64_t>(xt) * xt;
  }
  const int64_t r = iln::RowReciprocal(s1, s2, p.channels, p.epsilon);
  FloatOutput(xt_row, y, p.vector_channels, s1, r, k, p.out);
  ScalarTail(xt_row, y, s1, r, p);
}

}  // namespace avx2
}  // namespace onnxvq

#endif  // __AVX2__
