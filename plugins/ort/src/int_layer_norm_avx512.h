// IntLayerNorm rows on AVX-512 (F, BW, VL), 16 channels per step, the row tail by masks, so a row
// of any width runs in vector code. Compiled for that target only inside these functions (the
// library targets x86-64-v3); callers check Available() at run time, else take the AVX2 rows.
//
// A row is two passes. The front computes xt_c (README step 1) into a per-thread int32 scratch
// row and the sums S1, S2: either from the PTS codes (IntLayerNorm) or from A + B, whose float32
// sum it also writes, quantized as AddMulQuantizeLinear does (AddIntLayerNorm). The output pass
// reads xt back (from L1) and writes Y (steps 7-10).
//
// Exactness (plugins/README.md bounds): |xt| <= 2040, so a lane of S2 adds at most
// 8192 / 16 = 512 squares < 2^22 each: < 2^31; |S1| < 2^24. |num| = |C xt - S1| < 2^25 fits int32,
// and |z| = |num| * R_hi + ((|num| * R_lo + 2^31) >> 32) is (|num| * R + 2^31) >> 32 split at the
// multiple of 2^32, |num| * R_hi < 2^23 exact in 32 bits. z * gamma (signed 32x32->64) + beta
// < 2^56 in int64 lanes; rnd(a, G') = (a + 2^(G'-1) - [a < 0]) >> G' (arithmetic), the 2^(G'-1)
// folded into beta once per call.
//
// The output pass first tries float32 (int_layer_norm_avx512_out.h): it is exact whenever its
// rounding is decided, and falls back to the integer steps for any 16 channels where it is not.
#pragma once

#include "simd.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <type_traits>
#include <vector>

namespace onnxvq {
namespace iln512 {

// ONNXVQ_NO_AVX512=1 forces the AVX2 rows (to test them on an AVX-512 machine).
inline bool Available() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0 && __builtin_cpu_supports("avx512bw") != 0 &&
           __builtin_cpu_supports("avx512vl") != 0 && std::getenv("ONNXVQ_NO_AVX512") == nullptr;
  }();
  return has;
}

inline int64_t Padded(int64_t c) { return (c + 15) & ~int64_t{15}; }

// This thread's scratch row of at least Padded(c) floats, reused across calls and kernels (no
// allocation per call).
inline float* ScratchRow(int64_t c) {
  thread_local std::vector<float> scratch;
  scratch.resize(std::max(scratch.size(), static_cast<size_t>(Padded(c))));
  return scratch.data();
}

// Per-call constants, the [C] arrays zero-padded to a multiple of 16 channels.
struct Consts {
  std::vector<int32_t> shift, gamma;  // alpha_c, gamma_c
  std::vector<float> pow2;            // 2^alpha_c
  std::vector<int64_t> beta_eo;       // per 16 channels: beta + 2^(G'-1) of 0,2,..,14, then 1,..,15
  std::vector<float> mult;            // M_c (AddIntLayerNorm's input quantizer), else empty
  std::vector<float> gq, bq, room;    // the float output's gamma, beta and 1/2 - its error bound
  int32_t channels = 0, zero_point = 0;
  int out_shift = 0;
  int64_t lo = 0, hi = 0;
  float scale = 1, zero_point_f = 0, in_lo = 0, in_hi = 0;  // the input quantizer's
};

// The float output pass of int_layer_norm_avx512_out.h: y = n * (k_row * gq) + bq, with
// gq = f32(gamma) 2^-G', bq = f32(beta 2^-G'), its rounding decided where |y - rne(y)| < room.
// room = 1/2 - E (rounded down) for E = U |gq| 5.01u + |bq| 2.01u + |gq| / 2 with a 1.001 margin,
// U = sqrt(C - 1) 2^16 64/63 (see there); a room <= 0 sends the channel to the integer steps.
inline void FloatOutputConsts(int32_t gamma, int64_t beta, int out_shift, int64_t c, float& gq,
                              float& bq, float& room) {
  constexpr double kU = 1.0 / (1 << 24);  // float32's unit roundoff
  gq = std::ldexp(static_cast<float>(gamma), -out_shift);
  bq = static_cast<float>(std::ldexp(static_cast<double>(beta), -out_shift));
  const double g = std::fabs(static_cast<double>(gq)), b = std::fabs(static_cast<double>(bq));
  const double u = std::sqrt(static_cast<double>(c - 1)) * 65536.0 * 64.0 / 63.0;
  const double e = (u * g * 5.01 * kU + b * 2.01 * kU + 0.5 * g * 1.0001) * 1.001;
  room = static_cast<float>(0.5 - e - std::ldexp(1.0, -23));  // 2^-23: room's own rounding
}

inline Consts MakeConsts(const int32_t* shift, const int32_t* gamma, const int64_t* beta,
                         int64_t c, int32_t zero_point, int out_shift, int64_t lo, int64_t hi) {
  Consts k;
  const size_t cp = static_cast<size_t>(Padded(c));
  k.shift.assign(cp, 0);
  k.gamma.assign(cp, 0);
  k.beta_eo.assign(cp, 0);
  for (auto* v : {&k.pow2, &k.gq, &k.bq, &k.room}) v->assign(cp, 0.0f);
  const int64_t half = int64_t{1} << (out_shift - 1);
  for (int64_t i = 0; i < c; ++i) {
    k.shift[i] = shift[i];
    k.gamma[i] = gamma[i];
    k.pow2[i] = static_cast<float>(1 << shift[i]);
    FloatOutputConsts(gamma[i], beta[i], out_shift, c, k.gq[i], k.bq[i], k.room[i]);
    const int64_t base = i & ~int64_t{15}, j = i & 15;
    k.beta_eo[static_cast<size_t>(base + (j & 1) * 8 + j / 2)] = beta[i] + half;
  }
  k.channels = static_cast<int32_t>(c);
  k.zero_point = zero_point;
  k.out_shift = out_shift;
  k.lo = lo;
  k.hi = hi;
  return k;
}

ONNXVQ_LN512 inline __mmask16 TailMask(int32_t i, int32_t c) {
  return c - i >= 16 ? static_cast<__mmask16>(0xFFFF)
                     : static_cast<__mmask16>((1u << (c - i)) - 1u);
}

// What the output pass needs of a row besides xt.
struct RowStats {
  int64_t s1 = 0, s2 = 0;
};

// Lanes of S1 (float: each a sum of <= 512 values |xt| <= 2040, < 2^24, so exact) and S2
// (uint32: the squares, exact in float, converted).
struct Sums {
  __m512 a1;
  __m512i a2;
};

ONNXVQ_LN512 inline Sums NewSums() { return {_mm512_setzero_ps(), _mm512_setzero_si512()}; }

// Adds xt (exact integers as floats) to the sums and stores it to the scratch row (masked-off
// lanes hold xt = 0).
ONNXVQ_LN512 inline void Accumulate(__m512 xt, float* scratch, Sums& a) {
  _mm512_storeu_ps(scratch, xt);
  a.a1 = _mm512_add_ps(a.a1, xt);
  a.a2 = _mm512_add_epi32(a.a2, _mm512_cvtps_epi32(_mm512_mul_ps(xt, xt)));
}

// Lane sums through memory: GCC 12's reduce/extract intrinsics trip -Wuninitialized.
ONNXVQ_LN512 inline RowStats Finish(const Sums& a) {
  alignas(64) float l1[16];
  alignas(64) uint32_t l2[16];
  _mm512_store_ps(l1, a.a1);
  _mm512_store_si512(l2, a.a2);
  RowStats st;
  for (int j = 0; j < 16; ++j) {
    st.s1 += static_cast<int64_t>(l1[j]);
    st.s2 += l2[j];
  }
  return st;
}

// Front of IntLayerNorm: xt from the codes X (README step 1), sums S1, S2.
template <class TIn>
ONNXVQ_LN512 RowStats FrontCodes(const TIn* x, float* scratch, const Consts& k) {
  const __m512i zp = _mm512_set1_epi32(k.zero_point);
  Sums acc = NewSums();
  for (int32_t i = 0; i < k.channels; i += 16) {
    const __mmask16 m = TailMask(i, k.channels);
    const __m128i b = _mm_maskz_loadu_epi8(m, x + i);
    const __m512i v = std::is_signed_v<TIn> ? _mm512_cvtepi8_epi32(b) : _mm512_cvtepu8_epi32(b);
    const __m512i sh = _mm512_loadu_si512(k.shift.data() + i);
    const __m512i xt = _mm512_maskz_sllv_epi32(m, _mm512_sub_epi32(v, zp), sh);
    Accumulate(_mm512_cvtepi32_ps(xt), scratch + i, acc);
  }
  return Finish(acc);
}

// Sets the input quantizer of AddIntLayerNorm's front.
inline void SetInputQuantizer(Consts& k, const float* mult, float scale, float zero_point,
                              float lo, float hi) {
  k.mult.assign(static_cast<size_t>(Padded(k.channels)), 0.0f);
  for (int32_t i = 0; i < k.channels; ++i) k.mult[i] = mult[i];
  k.scale = scale;
  k.zero_point_f = zero_point;
  k.in_lo = lo;
  k.in_hi = hi;
}

// Front of AddIntLayerNorm: S = A + B written, the codes saturate(rne(S * M / scale) + zp) (the
// same float32 operations as AddMulQuantizeLinear) and xt, all in float: code - zp is
// clamp(rne(...), lo - zp, hi - zp) (exact integers; a NaN gives lo as the clamp order does).
ONNXVQ_LN512 inline RowStats FrontSum(const float* a, const float* b, float* s, float* scratch,
                                      const Consts& k) {
  const __m512 scale = _mm512_set1_ps(k.scale);
  const __m512 lo = _mm512_set1_ps(k.in_lo - k.zero_point_f);
  const __m512 hi = _mm512_set1_ps(k.in_hi - k.zero_point_f);
  Sums acc = NewSums();
  for (int32_t i = 0; i < k.channels; i += 16) {
    const __mmask16 m = TailMask(i, k.channels);
    const __m512 v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i));
    _mm512_mask_storeu_ps(s + i, m, v);
    const __m512 t = _mm512_div_ps(_mm512_mul_ps(v, _mm512_loadu_ps(k.mult.data() + i)), scale);
    const __m512 r = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 code = _mm512_min_ps(_mm512_max_ps(r, lo), hi);  // minus zp
    Accumulate(_mm512_mul_ps(code, _mm512_loadu_ps(k.pow2.data() + i)), scratch + i, acc);
  }
  return Finish(acc);
}

}  // namespace iln512
}  // namespace onnxvq
